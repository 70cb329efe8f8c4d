"""Tasks: names, what a model can do, request validation, and pipeline-shaped outputs.

Inputs and outputs follow the transformers pipeline of each task (the Inference API of the Hub
uses the same shapes), so ``modeldepot run``, the HTTP API and ``transformers.pipeline`` agree.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

from ..errors import InvalidInput

ENCODER_TASKS = (
    "text-classification",
    "token-classification",
    "question-answering",
    "fill-mask",
    "feature-extraction",
    "sentence-similarity",
)
SEQ2SEQ_TASKS = ("summarization", "translation", "text2text-generation")
GENERATION_TASKS = ("text-generation",) + SEQ2SEQ_TASKS
TASKS = ENCODER_TASKS + GENERATION_TASKS

ALIASES = {
    "sentiment-analysis": "text-classification",
    "ner": "token-classification",
    "embeddings": "feature-extraction",
    "sentence-embeddings": "feature-extraction",
}
TRANSLATION_RE = re.compile(r"^translation_([A-Za-z\-]+)_to_([A-Za-z\-]+)$")

# Architecture suffix -> the tasks its head answers, most specific suffix first.
ARCH_TASKS = [
    ("ForSequenceClassification", ["text-classification"]),
    ("ForTokenClassification", ["token-classification"]),
    ("ForQuestionAnswering", ["question-answering"]),
    ("ForMaskedLM", ["fill-mask"]),
    ("ForCausalLM", ["text-generation"]),
    ("LMHeadModel", ["text-generation"]),
    ("ForConditionalGeneration", list(SEQ2SEQ_TASKS)),
    ("MTModel", ["translation", "text2text-generation"]),
    ("Model", ["feature-extraction", "sentence-similarity"]),
]

# What an ONNX export made for one task (optimum's task names) can answer.
EXPORT_TASKS = {
    "text-classification": ["text-classification"],
    "sequence-classification": ["text-classification"],
    "token-classification": ["token-classification"],
    "question-answering": ["question-answering"],
    "fill-mask": ["fill-mask"],
    "masked-lm": ["fill-mask"],
    "feature-extraction": ["feature-extraction", "sentence-similarity"],
    "sentence-similarity": ["feature-extraction", "sentence-similarity"],
    "text-generation": ["text-generation"],
    "text2text-generation": list(SEQ2SEQ_TASKS),
    "summarization": list(SEQ2SEQ_TASKS),
    "translation": list(SEQ2SEQ_TASKS),
}

MAX_INPUTS = 1024


def normalize_task(task: str | None) -> str | None:
    """The canonical task name (``translation_en_to_fr`` keeps its languages)."""
    if task is None:
        return None
    task = task.strip()
    if not TRANSLATION_RE.match(task):
        task = ALIASES.get(task.lower(), task.lower())
    if task in TASKS or TRANSLATION_RE.match(task):
        return task
    raise InvalidInput(
        f"unknown task {task!r}: use one of {', '.join(TASKS)} (or sentiment-analysis, ner)"
    )


def task_family(task: str) -> str:
    """``translation_en_to_fr`` -> ``translation``; other names are their own family."""
    return "translation" if TRANSLATION_RE.match(task) else task


def export_tasks(recipe_task: str | None) -> list[str]:
    """The tasks an ONNX export recorded with ``recipe_task`` answers ([] when unknown)."""
    if not recipe_task:
        return []
    base = recipe_task.replace("-with-past", "")
    return EXPORT_TASKS.get(base, [])


def model_tasks(config: dict, pipeline_tag: str | None, sentence_transformers: bool) -> list[str]:
    """What a model can do, the default first: its registry task when it is one of them."""
    tasks: list[str] = []
    if sentence_transformers:
        tasks = ["feature-extraction", "sentence-similarity"]
    else:
        for arch in config.get("architectures") or []:
            for suffix, found in ARCH_TASKS:
                if arch.endswith(suffix):
                    tasks = list(found)
                    break
            if tasks:
                break
    tag = ALIASES.get(pipeline_tag or "", pipeline_tag)
    if sentence_transformers:
        # The Hub tags these repos sentence-similarity, yet its Inference API answers a plain
        # string with the embedding; {"source_sentence", "sentences"} asks for similarity.
        return tasks
    if tag in tasks:
        tasks.remove(tag)
        tasks.insert(0, tag)
    elif not tasks and tag in TASKS:
        tasks = [tag]
    return tasks


# -- parameters ---------------------------------------------------------------------------------


def _int(name: str, lo: int = 1, hi: int | None = None, allow_none: bool = False):
    def check(v):
        if v is None and allow_none:
            return None
        if isinstance(v, float) and v.is_integer():  # JSON's 2.0 is the integer 2
            v = int(v)
        if isinstance(v, bool) or not isinstance(v, int) or v < lo or (hi is not None and v > hi):
            bound = f"between {lo} and {hi}" if hi is not None else f">= {lo}"
            raise InvalidInput(f"parameter {name!r} must be an integer {bound}")
        return v
    return check


def _num(name: str, lo: float = 0.0, hi: float | None = None):
    def check(v):
        number = None
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            try:
                number = float(v)  # an integer beyond a float's range overflows here
            except OverflowError:
                pass
        # NaN compares false with everything and 1e999 parses as infinity: both refused.
        if (number is None or not math.isfinite(number) or number < lo
                or (hi is not None and number > hi)):
            bound = f"between {lo} and {hi}" if hi is not None else f">= {lo}"
            raise InvalidInput(f"parameter {name!r} must be a finite number {bound}")
        return number
    return check


def _bool(name: str):
    def check(v):
        if not isinstance(v, bool):
            raise InvalidInput(f"parameter {name!r} must be true or false")
        return v
    return check


def _choice(name: str, choices: tuple[str, ...]):
    def check(v):
        if not isinstance(v, str) or v.lower() not in choices:
            raise InvalidInput(f"parameter {name!r} must be one of {', '.join(choices)}")
        return v.lower()
    return check


LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def _unicode(value: str) -> str:
    """JSON's escapes can spell lone surrogates (``"\\ud800"``), which no tokenizer takes; each
    becomes U+FFFD, as a browser makes any string into text (WHATWG's USVString)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return LONE_SURROGATE.sub("\ufffd", value)
    return value


def _strings(name: str, allow_empty: bool = False):
    def check(v):
        if isinstance(v, str):
            v = [v]
        if (not isinstance(v, list) or (not v and not allow_empty)
                or not all(isinstance(x, str) and x for x in v)):
            raise InvalidInput(f"parameter {name!r} must be a string or a list of strings")
        return [_unicode(x) for x in v]
    return check


def _lang(name: str):
    def check(v):
        if not isinstance(v, str) or not v:
            raise InvalidInput(f"parameter {name!r} must be a language code")
        return _unicode(v)
    return check


_GENERATE = {
    "max_new_tokens": _int("max_new_tokens", 1, 4096),
    "min_new_tokens": _int("min_new_tokens", 0, 4096),
    "max_length": _int("max_length", 1, 8192),
    "min_length": _int("min_length", 0, 8192),
    "do_sample": _bool("do_sample"),
    "temperature": _num("temperature", 0.0),
    "top_k": _int("top_k", 0, 100000),
    "top_p": _num("top_p", 0.0, 1.0),
    "num_beams": _int("num_beams", 1, 16),
    "num_return_sequences": _int("num_return_sequences", 1, 16),
    "repetition_penalty": _num("repetition_penalty", 0.0),
    "no_repeat_ngram_size": _int("no_repeat_ngram_size", 0, 64),
    "early_stopping": _bool("early_stopping"),
}

PARAMETERS: dict[str, dict[str, Any]] = {
    "text-classification": {
        "top_k": _int("top_k", 1, allow_none=True),
        "function_to_apply": _choice("function_to_apply", ("softmax", "sigmoid", "none")),
    },
    "token-classification": {
        "aggregation_strategy": _choice(
            "aggregation_strategy", ("none", "simple", "first", "average", "max")
        ),
        "ignore_labels": _strings("ignore_labels", allow_empty=True),
    },
    "question-answering": {
        "top_k": _int("top_k", 1, 100),
        "doc_stride": _int("doc_stride", 1),
        "max_answer_len": _int("max_answer_len", 1),
        "max_seq_len": _int("max_seq_len", 8),
        "max_question_len": _int("max_question_len", 1),
        "handle_impossible_answer": _bool("handle_impossible_answer"),
        "align_to_words": _bool("align_to_words"),
    },
    "fill-mask": {
        "top_k": _int("top_k", 1, 1000),
        "targets": _strings("targets"),
    },
    "feature-extraction": {
        "pooling": _choice("pooling", ("none", "mean", "cls", "max", "mean_sqrt_len", "lasttoken")),
        "normalize": _bool("normalize"),
    },
    "sentence-similarity": {},
    "text-generation": {**_GENERATE, "return_full_text": _bool("return_full_text")},
    "summarization": dict(_GENERATE),
    "translation": {**_GENERATE, "src_lang": _lang("src_lang"), "tgt_lang": _lang("tgt_lang")},
    "text2text-generation": dict(_GENERATE),
}


def check_parameters(task: str, params: Any) -> dict:
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise InvalidInput('"parameters" must be a JSON object, e.g. {"top_k": 2}')
    allowed = PARAMETERS[task_family(task)]
    out = {}
    for key, value in params.items():
        if key not in allowed:
            accepted = ", ".join(allowed) or "none"
            raise InvalidInput(f"unknown parameter {key!r} for {task}; accepted: {accepted}")
        out[key] = allowed[key](value)
    return out


def params_key(params: dict) -> str:
    """Requests whose parameters have the same key can share a batch."""
    return json.dumps(params, sort_keys=True)


# -- inputs -------------------------------------------------------------------------------------


@dataclass
class Request:
    """One call, normalized: the items to run and how to shape the answer."""

    task: str
    items: list
    single: bool
    params: dict = field(default_factory=dict)


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise InvalidInput(f"{where} must be a string, got {type(value).__name__}")
    if not value.strip():
        raise InvalidInput(f"{where} is empty: send some text")
    return _unicode(value)


def _list(value: list, what: str) -> list:
    if not value:
        raise InvalidInput(f'"inputs" is an empty list: send at least one {what}')
    if len(value) > MAX_INPUTS:
        raise InvalidInput(f'"inputs" has {len(value)} items; send at most {MAX_INPUTS} per request')
    return value


def _qa_item(value: Any, where: str) -> tuple[str, str]:
    if not isinstance(value, dict) or set(value) - {"question", "context"} or len(value) != 2:
        raise InvalidInput(
            f'{where} must be an object {{"question": "...", "context": "..."}}'
        )
    return (_text(value["question"], f"{where}.question"), _text(value["context"], f"{where}.context"))


def _classification_item(value: Any, where: str):
    if isinstance(value, dict):
        if set(value) != {"text", "text_pair"}:
            raise InvalidInput(f'{where} must be a string or {{"text": ..., "text_pair": ...}}')
        return (_text(value["text"], f"{where}.text"), _text(value["text_pair"], f"{where}.text_pair"))
    return _text(value, where)


def parse_inputs(task: str, inputs: Any, params: Any = None) -> Request:
    """Validate ``inputs`` (as the pipeline and the Inference API take them) for ``task``."""
    family = task_family(task)
    checked = check_parameters(task, params)
    if inputs is None:
        raise InvalidInput('missing "inputs": send {"inputs": "some text"}')
    if family == "question-answering":
        if isinstance(inputs, list):
            items = [_qa_item(v, f"inputs[{i}]") for i, v in enumerate(_list(inputs, "question"))]
            return Request(task, items, False, checked)
        return Request(task, [_qa_item(inputs, '"inputs"')], True, checked)
    if family == "sentence-similarity":
        if (not isinstance(inputs, dict) or set(inputs) != {"source_sentence", "sentences"}
                or not isinstance(inputs["sentences"], list)):
            raise InvalidInput(
                '"inputs" must be {"source_sentence": "...", "sentences": ["...", ...]}'
            )
        source = _text(inputs["source_sentence"], "inputs.source_sentence")
        sentences = [_text(s, f"inputs.sentences[{i}]")
                     for i, s in enumerate(_list(inputs["sentences"], "sentence"))]
        return Request(task, [source] + sentences, True, checked)
    item = _classification_item if family == "text-classification" else _text
    if isinstance(inputs, list):
        items = [item(v, f"inputs[{i}]") for i, v in enumerate(_list(inputs, "text"))]
        return Request(task, items, False, checked)
    if isinstance(inputs, str) or (family == "text-classification" and isinstance(inputs, dict)):
        return Request(task, [item(inputs, '"inputs"')], True, checked)
    raise InvalidInput(
        f'"inputs" must be a string or a list of strings for {task}, got {type(inputs).__name__}'
    )


def task_for_inputs(task: str | None, inputs: Any) -> str | None:
    """The task a request means when it names none: the similarity shape says so itself."""
    if task is None and isinstance(inputs, dict) and set(inputs) == {"source_sentence",
                                                                        "sentences"}:
        return "sentence-similarity"
    return task


def inputs_from_texts(task: str, texts: list[str], context: str | None = None) -> Any:
    """The ``inputs`` that command-line texts stand for: one text is a single input, several a
    list; with ``context`` each text is a question about it; for sentence-similarity the first
    text is compared with the others."""
    family = task_family(task)
    if family == "question-answering" or context is not None:
        if context is None:
            raise InvalidInput("question-answering needs --context TEXT (the questions are INPUT)")
        if family != "question-answering":
            raise InvalidInput(f"--context is for question-answering, not {task}")
        items = [{"question": t, "context": context} for t in texts]
        return items[0] if len(items) == 1 else items
    if family == "sentence-similarity":
        if len(texts) < 2:
            raise InvalidInput("sentence-similarity needs two or more INPUT texts: the first is "
                               "compared with the others")
        return {"source_sentence": texts[0], "sentences": texts[1:]}
    return texts[0] if len(texts) == 1 else list(texts)


def collate(request: Request, outputs: list) -> Any:
    """Shape per-item outputs the way ``transformers.pipeline`` returns them for these inputs."""
    family = task_family(request.task)
    if family == "sentence-similarity":
        return _cosines(outputs[0], outputs[1:])
    if family == "text-classification" and "top_k" not in request.params:
        if request.single and isinstance(request.items[0], tuple):
            return outputs[0]  # a lone text pair comes back bare, as from the pipeline
        return outputs  # the pipeline's legacy shape: one dict per text, in a list even for one
    if request.single:
        return outputs[0]
    if family in ("question-answering", "fill-mask") and len(outputs) == 1:
        return outputs[0]  # both pipelines unwrap a one-element list
    if family in SEQ2SEQ_TASKS and all(len(o) == 1 for o in outputs):
        return [o[0] for o in outputs]
    return outputs


def _cosines(source: list[float], others: list[list[float]]) -> list[float]:
    import math

    def norm(v):
        return math.sqrt(sum(x * x for x in v)) or 1e-12

    ns = norm(source)
    return [sum(a * b for a, b in zip(source, o)) / (ns * norm(o)) for o in others]
