"""The inference API: Hugging Face Inference API style and OpenAI-compatible embeddings.

    POST /models/{repo_id}[@rev]            {"inputs": ..., "parameters": {...}, "options": {...}}
    POST /pipeline/{task}/{repo_id}[@rev]   the same, with the task chosen
    POST /v1/embeddings                     {"model": "org/name", "input": "text" | ["...", ...]}
    (its OpenAPI paths: openapi_spec(), served with the others by openapi.py)

Answers have the transformers pipeline's shapes. Models load on first use (``--models`` loads
some at start-up), stay loaded within ``--memory-budget-mb``, and concurrent requests to a model
are batched. Errors are JSON ``{"error", "error_type"}`` with a 4xx status (429/503 when
overloaded, with ``Retry-After``); an unexpected failure is a 500 with the same shape and a
generic message (the details go to the server log, never to the client), and the server keeps
serving.

Bodies must be sent as ``Content-Type: application/json`` (415 otherwise): a browser lets any
page POST ``text/plain`` across sites without asking, and that must not run a model. They are
parsed by ``registry.jsonsafe`` (depth bounded, NaN and Infinity refused), so no body can make
the parser recurse or hand a non-finite number to a model.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import logging

from aiohttp import web

from .. import jsonsafe
from ..errors import DepotError, InvalidInput, UnsupportedMediaType
from ..inference.service import InferenceService
from ..inference.tasks import MAX_INPUTS  # noqa: F401 - openapi.py reads the limit here
from .app import DEPOT, OPTIONS
from .http import INTERNAL_ERROR
from .inference_spec import openapi_spec  # noqa: F401 - the family's paths, for openapi.py
from .ops import METRICS

log = logging.getLogger("modeldepot.inference")

INFERENCE = web.AppKey("inference", InferenceService)
BODY_KEYS = {"inputs", "parameters", "options"}
OPTION_KEYS = {"backend", "precision", "use_cache", "wait_for_model"}
EMBEDDING_KEYS = {"model", "input", "encoding_format", "dimensions", "user", "precision"}
INT8_SUFFIX = ":int8"  # "model": "org/name:int8", for OpenAI clients that cannot add a field
MAX_BODY_DEPTH = 32  # the deepest body the API takes has 4 levels (a list of QA objects)
RETRY_AFTER_S = 1  # a full queue drains in well under a second at the default sizes


def _error(status: int, message: str, error_type: str) -> web.Response:
    return web.json_response({"error": message, "error_type": error_type}, status=status)


def json_errors(handler):
    """Every failure leaves as a JSON error body; none takes the server down."""

    @functools.wraps(handler)
    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except DepotError as e:
            response = web.json_response(e.to_json(), status=e.http_status)
            if e.http_status in (429, 503):
                response.headers["Retry-After"] = str(e.details.get("retry_after", RETRY_AFTER_S))
            return response
        except web.HTTPRequestEntityTooLarge as e:
            return _error(413, f"the request body is too large ({e.text}): send fewer or "
                          "shorter inputs per request", "RequestEntityTooLarge")
        except web.HTTPException as e:
            return _error(e.status, e.reason, type(e).__name__.removeprefix("HTTP"))
        except (asyncio.CancelledError, KeyboardInterrupt, SystemExit):
            raise  # the client went away, or the server is stopping
        except BaseException:  # a bug, or a library's panic: logged, never shown to the client
            log.exception("inference request failed: %s %s", request.method, request.path)
            return _error(500, INTERNAL_ERROR, "InternalError")

    return wrapped


async def _json_body(request: web.Request, allowed: set[str], example: str) -> dict:
    charset = (request.charset or "utf-8").lower()
    if request.content_type != "application/json" or charset not in ("utf-8", "utf8"):
        got = request.headers.get("Content-Type", "none")
        raise UnsupportedMediaType(
            f"the request body must be UTF-8 JSON sent with 'Content-Type: application/json' "
            f"(got {got[:100]!r}): send {example}")
    raw = await request.read()
    try:
        body = jsonsafe.loads(raw, max_bytes=request.client_max_size, max_depth=MAX_BODY_DEPTH)
    except jsonsafe.JSONInputError as e:
        raise InvalidInput(f"the request body is not JSON this API accepts ({e}): send "
                           f"{example}") from None
    if not isinstance(body, dict):
        raise InvalidInput(f"the request body must be a JSON object like {example}")
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise InvalidInput(f"unknown field {unknown[0]!r}: the body takes {', '.join(sorted(allowed))}")
    return body


def _options(body: dict) -> dict:
    options = body.get("options")
    if options is None:
        options = {}
    if not isinstance(options, dict):
        raise InvalidInput('"options" must be a JSON object, e.g. {"backend": "onnx"}')
    unknown = sorted(set(options) - OPTION_KEYS)
    if unknown:
        raise InvalidInput(f"unknown option {unknown[0]!r}: options are {', '.join(sorted(OPTION_KEYS))}")
    for flag in ("use_cache", "wait_for_model"):  # the Inference API's; accepted, no effect here
        if not isinstance(options.get(flag, False), bool):
            raise InvalidInput(f'"options.{flag}" must be true or false')
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
    if not isinstance(body.get("user", ""), str):
        raise InvalidInput('"user" must be a string')
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
    # Any character, newlines included: a repo id that cannot be one gets a JSON 422 from the
    # handler, not the router's plain-text 404.
    app.router.add_post(r"/models/{repo_id:[\s\S]+}", predict_handler)
    app.router.add_post(r"/pipeline/{task}/{repo_id:[\s\S]+}", predict_handler)
    app.router.add_post("/v1/embeddings", embeddings_handler)
