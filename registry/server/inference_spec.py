"""The OpenAPI description of the inference routes, as strict as their validation.

A body this schema allows is one the server takes as far as the body alone can say (what a
model accepts further depends on its task: a list of QA objects is valid JSON for every model
but only a question-answering model answers it); a body it refuses is one the server refuses
(422, or 404 when the repo is unknown, which is checked first). Keep the two together: a test
compares the parameter names here with ``tasks.PARAMETERS``.
"""

from __future__ import annotations

from ..inference.tasks import ALIASES, MAX_INPUTS, TASKS

RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait before trying again.",
                               "schema": {"type": "integer", "minimum": 0}}}

ERROR_SCHEMA = {"type": "object", "required": ["error", "error_type"], "properties": {
    "error": {"type": "string", "description": "What went wrong and what to do next."},
    "error_type": {"type": "string", "example": "InvalidInput"}}}

ERRORS = {
    "404": "Unknown model (not in the depot).",
    "413": "The body is larger than 16 MiB.",
    "415": "The body is not sent as 'Content-Type: application/json' (UTF-8).",
    "422": "Bad input: not JSON, nested deeper than 32 levels, NaN or Infinity, wrong shape, "
           "empty text, unknown parameter, a task the model cannot do, a dataset repo, more "
           "inputs than the queue holds.",
    "429": "The model's queue is full; retry after Retry-After seconds.",
    "500": "A bug: logged by the server; the body never carries its details.",
    "503": "The model does not fit the memory budget, or cannot be loaded now.",
}


def _any_case(*words: str) -> dict:
    """The words in any letter case (the server lower-cases them, as the pipelines do)."""
    def one(word: str) -> str:
        return "".join(f"[{c.lower()}{c.upper()}]" if c.isalpha() else c for c in word)

    return {"type": "string", "pattern": "^(" + "|".join(one(w) for w in words) + ")$",
            "description": "one of " + ", ".join(words) + " (any case)"}


# naming.parse_spec's rules: the Hub's repo id (at most 96 characters, no '--' or '..', parts
# neither start nor end with '-' or '.'), then an optional @revision (at most 200 characters, no
# NUL or backslash, no '..' segment).
REPO_SPEC_PATTERN = (r"^(?=[^@]{1,96}(?:@|$))(?![^@]*--)(?![^@]*\.\.)"
                     r"(?:\w(?:[\w.-]*\w)?/)?\w(?:[\w.-]*\w)?"
                     r"(?:@(?!(?:[^/]*/)*\.\.(?:/|$))[^\x00\\]{1,200})?$")
TEXT = {"type": "string", "pattern": r"\S", "description": "Text that is not blank (a lone "
        "surrogate is taken as U+FFFD)."}


def _integer(lo: int, hi: int | None = None, nullable: bool = False) -> dict:
    schema: dict = {"type": ["integer", "null"] if nullable else "integer", "minimum": lo}
    if hi is not None:
        schema["maximum"] = hi
    return schema


def _number(lo: float, hi: float | None = None) -> dict:
    schema: dict = {"type": "number", "minimum": lo}
    if hi is not None:
        schema["maximum"] = hi
    return schema


BOOLEAN = {"type": "boolean"}


def _strings(min_items: int) -> dict:
    one = {"type": "string", "minLength": 1}
    return {"anyOf": [one, {"type": "array", "minItems": min_items, "items": one}]}


# Every parameter some task takes, with the loosest of its bounds across those tasks (the
# model's task picks which ones apply; see docs/inference.md).
PARAMETER_SCHEMAS = {
    "top_k": _integer(0, nullable=True),
    "function_to_apply": _any_case("softmax", "sigmoid", "none"),
    "aggregation_strategy": _any_case("none", "simple", "first", "average", "max"),
    "ignore_labels": _strings(0),
    "doc_stride": _integer(1),
    "max_answer_len": _integer(1),
    "max_seq_len": _integer(8),
    "max_question_len": _integer(1),
    "handle_impossible_answer": BOOLEAN,
    "align_to_words": BOOLEAN,
    "targets": _strings(1),
    "pooling": _any_case("none", "mean", "cls", "max", "mean_sqrt_len", "lasttoken"),
    "normalize": BOOLEAN,
    "max_new_tokens": _integer(1, 4096),
    "min_new_tokens": _integer(0, 4096),
    "max_length": _integer(1, 8192),
    "min_length": _integer(0, 8192),
    "do_sample": BOOLEAN,
    "temperature": _number(0.0),
    "top_p": _number(0.0, 1.0),
    "num_beams": _integer(1, 16),
    "num_return_sequences": _integer(1, 16),
    "repetition_penalty": _number(0.0),
    "no_repeat_ngram_size": _integer(0, 64),
    "early_stopping": BOOLEAN,
    "return_full_text": BOOLEAN,
    "src_lang": {"type": "string", "minLength": 1},
    "tgt_lang": {"type": "string", "minLength": 1},
}


def _object(properties: dict, required: list[str]) -> dict:
    return {"type": "object", "required": required, "properties": properties,
            "additionalProperties": False}


def _text_list(most: int) -> dict:
    return {"type": "array", "minItems": 1, "maxItems": most, "items": TEXT}


QA = _object({"question": TEXT, "context": TEXT}, ["question", "context"])
PAIR = _object({"text": TEXT, "text_pair": TEXT}, ["text", "text_pair"])


def inference_body(max_inputs: int) -> dict:
    """``max_inputs``: the most a request may hold (``tasks.MAX_INPUTS``, or the server's
    --max-queue when smaller: a larger request could never be queued)."""
    similarity = _object({"source_sentence": TEXT, "sentences": _text_list(max_inputs - 1)},
                         ["source_sentence", "sentences"])
    return {
        **_object({
            "inputs": {"description": "A text or a list of texts; {question, context} (or a "
                       "list) for question-answering; {source_sentence, sentences} for "
                       "sentence-similarity; {text, text_pair} for text-classification.",
                       "anyOf": [TEXT, QA, PAIR, similarity,
                                 {"type": "array", "minItems": 1, "maxItems": max_inputs,
                                  "items": {"anyOf": [TEXT, QA, PAIR]}}]},
            "parameters": {"type": ["object", "null"], "properties": PARAMETER_SCHEMAS,
                           "additionalProperties": False,
                           "description": "The pipeline's parameters for the model's task, "
                           "e.g. top_k, aggregation_strategy (default simple), max_new_tokens; "
                           "a parameter of another task is refused (422)."},
            "options": {"type": ["object", "null"], "additionalProperties": False,
                        "properties": {
                            "backend": {"enum": ["auto", "onnx", "torch"], "default": "auto"},
                            "precision": {"enum": ["fp32", "int8"], "default": "fp32"},
                            "use_cache": {"type": "boolean", "description": "Accepted; no effect."},
                            "wait_for_model": {"type": "boolean",
                                               "description": "Accepted; no effect."}}},
        }, ["inputs"]),
        "example": {"inputs": "I loved this film", "parameters": {"top_k": 2}},
    }


def embeddings_body(max_inputs: int) -> dict:
    return {
        **_object({
            "model": {"anyOf": [
                {"type": "string", "pattern": REPO_SPEC_PATTERN},
                {"type": "string", "pattern": REPO_SPEC_PATTERN[:-1] + ":int8$"}],
                "description": "A repo id: org/name, optionally @revision; a trailing :int8 "
                               "asks for the export's quantized graph."},
            "input": {"anyOf": [TEXT, _text_list(max_inputs)]},
            "encoding_format": {"enum": ["float", "base64"], "default": "float"},
            "dimensions": {"type": "null", "description": "Not supported: the model decides."},
            "user": {"type": "string", "description": "Accepted; not used."},
            "precision": {"enum": ["fp32", "int8"], "default": "fp32",
                          "description": "int8: the ONNX export's quantized graph."},
        }, ["model", "input"]),
        "example": {"model": "org/embedder", "input": ["a sentence", "another"]},
    }


EMBEDDINGS_ANSWER = _object({
    "object": {"const": "list"},
    "data": {"type": "array", "items": _object({
        "object": {"const": "embedding"}, "index": {"type": "integer"},
        "embedding": {"anyOf": [{"type": "array", "items": {"type": "number"}},
                                {"type": "string", "description": "base64 of float32 LE"}]},
    }, ["object", "index", "embedding"])},
    "model": {"type": "string"},
    "usage": _object({"prompt_tokens": {"type": "integer"}, "total_tokens": {"type": "integer"}},
                     ["prompt_tokens", "total_tokens"]),
    "warning": {"type": "string", "description": "Only for an int8 export forced below its "
                "validation floor."},
}, ["object", "data", "model", "usage"])

TASK_PARAMETER = {
    "name": "task", "in": "path", "required": True,
    "schema": {"anyOf": [{"enum": list(TASKS) + sorted(ALIASES)},
                         {"type": "string", "pattern": r"^translation_[A-Za-z\-]+_to_[A-Za-z\-]+$"}]},
    "description": "A task name or alias (translation_xx_to_yy names the languages).",
}
REPO_PARAMETER = {"name": "repo_id", "in": "path", "required": True,
                  "schema": {"type": "string", "pattern": REPO_SPEC_PATTERN},
                  "description": "org/name, optionally @revision or @alias (org/name@prod)."}


def _responses(ok: dict) -> dict:
    responses = {"200": ok}
    for code, text in ERRORS.items():
        responses[code] = {"description": text, "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
        if code in ("429", "503"):
            responses[code]["headers"] = RETRY_AFTER
    return responses


def inference_paths(max_inputs: int = MAX_INPUTS) -> dict:
    """The inference routes' path items (the Hub routes' spec adds its own to these)."""
    ok = {"description": "The transformers pipeline's output for these inputs, e.g. "
          '[{"label": "POSITIVE", "score": 0.99}]. Truncated inputs are listed in the '
          "X-Truncated-Inputs header.", "content": {"application/json": {"schema": {}}}}
    body = {"required": True, "content": {"application/json": {
        "schema": inference_body(max_inputs)}}}
    return {
        "/models/{repo_id}": {"post": {
            "summary": "Run a model on its own task (Hugging Face Inference API style).",
            "parameters": [REPO_PARAMETER], "requestBody": body, "responses": _responses(ok)}},
        "/pipeline/{task}/{repo_id}": {"post": {
            "summary": "Run a model on the given task.",
            "parameters": [TASK_PARAMETER, REPO_PARAMETER],
            "requestBody": body, "responses": _responses(ok)}},
        "/v1/embeddings": {"post": {
            "summary": "OpenAI-compatible embeddings.",
            "requestBody": {"required": True, "content": {"application/json": {
                "schema": embeddings_body(max_inputs)}}},
            "responses": _responses({
                "description": '{"object": "list", "data": [{"object": "embedding", "index": 0, '
                               '"embedding": [...]}], "model": ..., "usage": {...}}',
                "content": {"application/json": {"schema": EMBEDDINGS_ANSWER}}})}},
        "/health": {"get": {"summary": "Liveness.", "responses": {"200": {
            "description": '{"status": "ok"}', "content": {"application/json": {"schema": {
                "type": "object", "required": ["status"],
                "properties": {"status": {"const": "ok"}}}}}}}}},
        "/metrics": {"get": {"summary": "Prometheus metrics: requests, latency histogram, "
                             "batch sizes, queue depths, loaded models.",
                             "responses": {"200": {"description": "Prometheus text format.",
                                                   "content": {"text/plain": {"schema": {
                                                       "type": "string"}}}}}}},
    }


def openapi_spec(max_inputs: int = MAX_INPUTS) -> dict:
    return {
        "openapi": "3.1.0",
        "info": {"title": "modeldepot inference API", "version": "1",
                 "description": "Answers from the depot's mirrored artifacts, offline: ONNX "
                 "Runtime when an ONNX export exists, else PyTorch."},
        "paths": inference_paths(max_inputs),
        "components": {"schemas": {"Error": ERROR_SCHEMA}},
    }
