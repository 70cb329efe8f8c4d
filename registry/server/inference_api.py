"""The inference API: Hugging Face Inference API style and OpenAI-compatible embeddings.

    POST /models/{repo_id}[@rev]            {"inputs": ..., "parameters": {...}, "options": {...}}
    POST /pipeline/{task}/{repo_id}[@rev]   the same, with the task chosen
    POST /v1/embeddings                     {"model": "org/name", "input": "text" | ["...", ...]}
    GET  /openapi.json, GET /docs

Answers have the transformers pipeline's shapes. Models load on first use (``--models`` loads
some at start-up), stay loaded within ``--memory-budget-mb``, and concurrent requests to a model
are batched. Errors are JSON ``{"error", "error_type"}`` with a 4xx status (429/503 when
overloaded); an unexpected failure is a 500 with the same shape, and the server keeps serving.
"""

from __future__ import annotations

import base64
import functools
import html
import json
import logging

from aiohttp import web

from ..errors import DepotError, InvalidInput
from ..inference.service import InferenceService
from .app import DEPOT, OPTIONS
from .ops import METRICS

log = logging.getLogger("modeldepot.inference")

INFERENCE = web.AppKey("inference", InferenceService)
BODY_KEYS = {"inputs", "parameters", "options"}
OPTION_KEYS = {"backend", "precision", "use_cache", "wait_for_model"}
EMBEDDING_KEYS = {"model", "input", "encoding_format", "dimensions", "user", "precision"}
INT8_SUFFIX = ":int8"  # "model": "org/name:int8", for OpenAI clients that cannot add a field


def _error(status: int, message: str, error_type: str) -> web.Response:
    return web.json_response({"error": message, "error_type": error_type}, status=status)


def json_errors(handler):
    """Every failure leaves as a JSON error body; none takes the server down."""

    @functools.wraps(handler)
    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except DepotError as e:
            return web.json_response(e.to_json(), status=e.http_status)
        except web.HTTPRequestEntityTooLarge as e:
            return _error(413, f"the request body is too large ({e.text}): send fewer or "
                          "shorter inputs per request", "RequestEntityTooLarge")
        except web.HTTPException as e:
            return _error(e.status, e.reason, type(e).__name__.removeprefix("HTTP"))
        except Exception as e:
            log.exception("inference request failed")
            return _error(500, f"internal error: {type(e).__name__}: {e}", "InternalError")

    return wrapped


async def _json_body(request: web.Request, allowed: set[str], example: str) -> dict:
    try:
        body = json.loads(await request.text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise InvalidInput(f"the request body is not valid JSON: send {example}") from None
    if not isinstance(body, dict):
        raise InvalidInput(f"the request body must be a JSON object like {example}")
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise InvalidInput(f"unknown field {unknown[0]!r}: the body takes {', '.join(sorted(allowed))}")
    return body


def _options(body: dict) -> dict:
    options = body.get("options") or {}
    if not isinstance(options, dict):
        raise InvalidInput('"options" must be a JSON object, e.g. {"backend": "onnx"}')
    unknown = sorted(set(options) - OPTION_KEYS)
    if unknown:
        raise InvalidInput(f"unknown option {unknown[0]!r}: options are {', '.join(sorted(OPTION_KEYS))}")
    backend = options.get("backend", "auto")
    precision = options.get("precision", "fp32")
    if backend not in ("auto", "onnx", "torch"):
        raise InvalidInput('"options.backend" must be "auto", "onnx" or "torch"')
    if precision not in ("fp32", "int8"):
        raise InvalidInput('"options.precision" must be "fp32" or "int8"')
    return {"backend": backend, "precision": precision}


def _headers(answer) -> dict:
    model = answer.model
    headers = {"X-Model": model["model"], "X-Task": model["task"], "X-Backend": model["backend"]}
    if model["commit"]:
        headers["X-Model-Commit"] = model["commit"]
    if model["answered_by"]:
        headers["X-Answered-By"] = model["answered_by"]
    warnings = ([answer.warning] if answer.warning else []) + answer.notes()
    if answer.truncated:
        headers["X-Truncated-Inputs"] = ",".join(str(i) for i in answer.truncated)
    if warnings:
        headers["X-Inference-Warning"] = "; ".join(warnings)
    return headers


@json_errors
async def predict_handler(request: web.Request) -> web.Response:
    spec = request.match_info["repo_id"]
    task = request.match_info.get("task")
    body = await _json_body(request, BODY_KEYS, '{"inputs": "some text"}')
    if "inputs" not in body:
        raise InvalidInput('missing "inputs": send {"inputs": "some text"}')
    options = _options(body)
    answer = await request.app[INFERENCE].apredict(
        spec, body["inputs"], body.get("parameters"), task=task, **options)
    return web.json_response(answer.output, headers=_headers(answer))


@json_errors
async def embeddings_handler(request: web.Request) -> web.Response:
    """OpenAI's /v1/embeddings: sentence-transformers pooling when the repo configures it, else
    mean pooling; unit-length vectors unless the repo's configuration says otherwise."""
    body = await _json_body(request, EMBEDDING_KEYS, '{"model": "org/name", "input": "text"}')
    model_id = body.get("model")
    if not isinstance(model_id, str) or not model_id:
        raise InvalidInput('"model" must be a repo id, e.g. "org/embedder"')
    inputs = body.get("input")
    if isinstance(inputs, list) and inputs and all(isinstance(x, (int, list)) for x in inputs):
        raise InvalidInput('"input" as token ids is not supported: send text')
    if not isinstance(inputs, (str, list)):
        raise InvalidInput('"input" must be a string or a list of strings')
    encoding = body.get("encoding_format", "float")
    if encoding not in ("float", "base64"):
        raise InvalidInput('"encoding_format" must be "float" or "base64"')
    if body.get("dimensions") is not None:
        raise InvalidInput('"dimensions" is not supported: the model decides the size')
    precision = body.get("precision", "fp32")
    if model_id.endswith(INT8_SUFFIX):
        model_id, precision = model_id[:-len(INT8_SUFFIX)], "int8"
    if precision not in ("fp32", "int8"):
        raise InvalidInput('"precision" must be "fp32" or "int8"')
    service = request.app[INFERENCE]
    _, model = await service.model(model_id, "feature-extraction", precision=precision)
    params = {} if model.runner.pooling else {"pooling": "mean", "normalize": True}
    answer = await service.apredict(model_id, inputs, params, task="feature-extraction",
                                    precision=precision)
    vectors = [answer.output] if isinstance(inputs, str) else answer.output
    if encoding == "base64":
        import numpy as np

        vectors = [base64.b64encode(np.asarray(v, dtype="<f4").tobytes()).decode() for v in vectors]
    return web.json_response({
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)],
        "model": model_id,
        "usage": {"prompt_tokens": answer.tokens, "total_tokens": answer.tokens},
        **({"warning": answer.warning} if answer.warning else {}),
    }, headers=_headers(answer))


# -- OpenAPI --------------------------------------------------------------------------------------

ERROR_SCHEMA = {"type": "object", "required": ["error", "error_type"], "properties": {
    "error": {"type": "string", "description": "What went wrong and what to do next."},
    "error_type": {"type": "string", "example": "InvalidInput"}}}
ERRORS = {
    "404": "Unknown model (not in the depot).",
    "422": "Bad input: empty text, wrong JSON shape, unknown parameter, a task the model cannot "
           "do, a dataset repo.",
    "429": "Too many inputs queued for this model; retry shortly.",
    "503": "The model does not fit the memory budget, or cannot be loaded now.",
}


def _responses(ok: dict) -> dict:
    error = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    return {"200": ok, **{code: {"description": text, **error} for code, text in ERRORS.items()}}


def openapi_spec() -> dict:
    inference_body = {
        "type": "object", "required": ["inputs"],
        "properties": {
            "inputs": {"description": "A string, a list of strings, {question, context} for "
                       "question-answering, {source_sentence, sentences} for "
                       "sentence-similarity, or {text, text_pair} for text-classification."},
            "parameters": {"type": "object", "description": "The pipeline's parameters, e.g. "
                           "top_k, aggregation_strategy (default simple), max_new_tokens."},
            "options": {"type": "object", "properties": {
                "backend": {"enum": ["auto", "onnx", "torch"], "default": "auto"},
                "precision": {"enum": ["fp32", "int8"], "default": "fp32"}}},
        },
        "example": {"inputs": "I loved this film", "parameters": {"top_k": 2}},
    }
    repo = {"name": "repo_id", "in": "path", "required": True, "schema": {"type": "string"},
            "description": "org/name, optionally @revision or @alias (org/name@prod)."}
    ok = {"description": "The transformers pipeline's output for these inputs, e.g. "
          '[{"label": "POSITIVE", "score": 0.99}]. Truncated inputs are listed in the '
          "X-Truncated-Inputs header.", "content": {"application/json": {"schema": {}}}}
    body = {"required": True, "content": {"application/json": {"schema": inference_body}}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "modeldepot inference API", "version": "1",
                 "description": "Answers from the depot's mirrored artifacts, offline: ONNX "
                 "Runtime when an ONNX export exists, else PyTorch."},
        "paths": {
            "/models/{repo_id}": {"post": {
                "summary": "Run a model on its own task (Hugging Face Inference API style).",
                "parameters": [repo], "requestBody": body, "responses": _responses(ok)}},
            "/pipeline/{task}/{repo_id}": {"post": {
                "summary": "Run a model on the given task.",
                "parameters": [{"name": "task", "in": "path", "required": True,
                                "schema": {"type": "string"}}, repo],
                "requestBody": body, "responses": _responses(ok)}},
            "/v1/embeddings": {"post": {
                "summary": "OpenAI-compatible embeddings.",
                "requestBody": {"required": True, "content": {"application/json": {"schema": {
                    "type": "object", "required": ["model", "input"], "properties": {
                        "model": {"type": "string"},
                        "input": {"oneOf": [{"type": "string"},
                                            {"type": "array", "items": {"type": "string"}}]},
                        "encoding_format": {"enum": ["float", "base64"]},
                        "precision": {"enum": ["fp32", "int8"], "default": "fp32",
                                      "description": "int8: the export's quantized graph "
                                      "(also: a model id ending in :int8)."}},
                    "example": {"model": "org/embedder", "input": ["a sentence", "another"]}}}}},
                "responses": _responses({"description": '{"object": "list", "data": [{"object": '
                                         '"embedding", "index": 0, "embedding": [...]}], '
                                         '"model": ..., "usage": {...}}'})}},
            "/health": {"get": {"summary": "Liveness.", "responses": {"200": {
                "description": '{"status": "ok"}'}}}},
            "/metrics": {"get": {"summary": "Prometheus metrics: requests, latency histogram, "
                                 "batch sizes, queue depths, loaded models.",
                                 "responses": {"200": {"description": "text/plain"}}}},
        },
        "components": {"schemas": {"Error": ERROR_SCHEMA}},
    }


async def openapi_handler(request: web.Request) -> web.Response:
    return web.json_response(openapi_spec())


async def docs_handler(request: web.Request) -> web.Response:
    """The spec as one self-contained page: an air-gapped browser cannot fetch Swagger UI."""
    spec = openapi_spec()
    parts = [f"<h1>{html.escape(spec['info']['title'])}</h1>",
             f"<p>{html.escape(spec['info']['description'])}</p>",
             '<p>Machine-readable: <a href="openapi.json">openapi.json</a></p>']
    for path, methods in spec["paths"].items():
        for method, op in methods.items():
            parts.append(f"<h2><code>{method.upper()} {html.escape(path)}</code></h2>")
            parts.append(f"<p>{html.escape(op['summary'])}</p>")
            schema = (op.get("requestBody", {}).get("content", {}).get("application/json", {})
                      .get("schema", {}))
            if "example" in schema:
                parts.append("<p>Example body:</p><pre>"
                             + html.escape(json.dumps(schema["example"], indent=2)) + "</pre>")
            rows = "".join(f"<tr><td>{code}</td><td>{html.escape(r['description'])}</td></tr>"
                           for code, r in op["responses"].items())
            parts.append(f"<table><tr><th>status</th><th>meaning</th></tr>{rows}</table>")
    page = ("<!doctype html><html><head><meta charset='utf-8'><title>modeldepot inference API"
            "</title><style>body{font-family:sans-serif;max-width:60em;margin:2em auto}"
            "pre{background:#f4f4f4;padding:1em}td,th{text-align:left;padding:.2em 1em}</style>"
            "</head><body>" + "".join(parts) + "</body></html>")
    return web.Response(text=page, content_type="text/html")


async def _close(app: web.Application) -> None:
    await app[INFERENCE].close()


def setup(app: web.Application) -> None:
    options = app[OPTIONS]
    service = InferenceService(
        app[DEPOT],
        memory_budget_mb=options.memory_budget_mb,
        max_batch_size=options.max_batch_size,
        max_wait_ms=options.max_wait_ms,
        max_queue=options.max_queue,
        max_batch_tokens=options.max_batch_tokens,
        only_registered=options.only_registered,
        metrics=app.get(METRICS),
    )
    app[INFERENCE] = service
    app.on_cleanup.append(_close)
    # Preloading here makes a bad --models entry a start-up error, not a first-request one.
    for entry in options.preload:
        service.preload(entry)
    app.router.add_post("/models/{repo_id:.+}", predict_handler)
    app.router.add_post("/pipeline/{task}/{repo_id:.+}", predict_handler)
    app.router.add_post("/v1/embeddings", embeddings_handler)
    app.router.add_get("/openapi.json", openapi_handler)
    app.router.add_get("/docs", docs_handler)
