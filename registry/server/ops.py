"""Operations routes: /health and /metrics (Prometheus text format).

Every request is counted and timed by route pattern (so the label set stays small however many
repos are served); the inference API adds batch sizes, queue depths and loaded models.
"""

from __future__ import annotations

import time

from aiohttp import web

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                   30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    """One registry per app (tests build many apps in one process)."""

    def __init__(self):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("modeldepot_http_requests", "HTTP requests answered.",
                                ["route", "method", "status"], registry=r)
        self.latency = Histogram("modeldepot_http_request_duration_seconds",
                                 "Time to answer an HTTP request (until the body starts).",
                                 ["route"], buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("modeldepot_inference_batch_size",
                                    "Inputs per model forward batch.", ["model"],
                                    buckets=BATCH_BUCKETS, registry=r)
        self.queue_depth = Gauge("modeldepot_inference_queue_depth",
                                 "Inputs waiting for a batch, per model.", ["model"], registry=r)
        self.models_loaded = Gauge("modeldepot_models_loaded", "Models loaded for inference.",
                                   registry=r)
        self.model_bytes = Gauge("modeldepot_model_memory_bytes",
                                 "Memory each loaded model counts for in the budget: what its "
                                 "load made resident, at least its weights.",
                                 ["model", "task", "backend", "precision"], registry=r)

    # The inference service reports through these three.
    def batch(self, label: str, size: int) -> None:
        self.batch_size.labels(label).observe(size)

    def queue(self, label: str, depth: int) -> None:
        self.queue_depth.labels(label).set(depth)

    def models(self, loaded: list) -> None:
        """``loaded``: (model, bytes it counts for) for each loaded model."""
        self.models_loaded.set(len(loaded))
        self.model_bytes.clear()
        for model, size in loaded:
            # Added, not set: two loads may share labels (an alias moved to a new ONNX export).
            self.model_bytes.labels(model.label, model.task, model.backend,
                                    model.precision).inc(size if size is not None else model.size_bytes)

    def render(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST


METRICS = web.AppKey("metrics", Metrics)


def _route(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


@web.middleware
async def measure(request: web.Request, handler):
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        if not response.prepared and hasattr(response, "status_for"):
            # a file's status (304, 206, 412, 416) is decided when aiohttp prepares it, after us
            status = response.status_for(request)
        return response
    except web.HTTPException as e:
        status = e.status
        raise
    finally:
        metrics = request.app[METRICS]
        route = _route(request)
        metrics.requests.labels(route, request.method, str(status)).inc()
        metrics.latency.labels(route).observe(time.perf_counter() - started)


async def health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def metrics_handler(request: web.Request) -> web.Response:
    body, content_type = request.app[METRICS].render()
    return web.Response(body=body, headers={"Content-Type": content_type})


def setup(app: web.Application) -> None:
    app[METRICS] = Metrics()
    app.middlewares.append(measure)
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", metrics_handler)
