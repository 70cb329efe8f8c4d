"""Shared pieces of the inference tests (no tests here): a depot with one tiny model per task,
each with its ONNX derived revision, built once per session; reference answers from
``transformers.pipeline`` on the same model files; and a tolerant comparison."""

from __future__ import annotations

import json
from pathlib import Path

# Imported here, at collection, with the test session's own settings: an in-process load must
# not be the first import and so freeze huggingface_hub offline for the session (see
# registry.inference.backends.offline_env).
import huggingface_hub  # noqa: F401
import numpy as np
import pytest

# repo id -> the ``models`` factory kind it is imported from
ZOO = {
    "zoo/classifier": "classifier",
    "zoo/ner": "ner",
    "zoo/qa": "qa",
    "zoo/fill-mask": "fill-mask",
    "zoo/embedder": "embedder",
    "zoo/gpt2": "gpt2",
    "zoo/bart": "bart",
}
TOL = 1e-4
LONG_TEXT = " ".join(["the movie was good but the book was bad"] * 40)
LONG_CONTEXT = ("Ada lives in Paris. " + "The river is long and the city is old. " * 12
                + "Bob lives in Berlin.")

# (id, repo, task, inputs, parameters): each is run by modeldepot and by the pipeline.
CASES = [
    ("sentiment", "zoo/classifier", "text-classification", "I loved this film", {}),
    ("sentiment-list-all-labels", "zoo/classifier", "sentiment-analysis",
     ["I loved this film", "awful, just awful"], {"top_k": None}),
    ("sentiment-pair", "zoo/classifier", "text-classification",
     {"text": "a good movie", "text_pair": "a bad book"}, {"top_k": 1}),
    ("ner-simple", "zoo/ner", "ner", "Ada lives in Paris and loves Berlin", {"ignore_labels": []}),
    ("ner-none", "zoo/ner", "token-classification", ["Ada lives in Paris", "Bob likes Rome"],
     {"aggregation_strategy": "none"}),
    ("ner-first", "zoo/ner", "token-classification", "Ada lives in Paris",
     {"aggregation_strategy": "first", "ignore_labels": []}),
    ("ner-average", "zoo/ner", "token-classification", "Ada lives in Paris",
     {"aggregation_strategy": "average", "ignore_labels": []}),
    ("ner-max", "zoo/ner", "token-classification", "Ada lives in Paris",
     {"aggregation_strategy": "max", "ignore_labels": []}),
    ("qa", "zoo/qa", "question-answering",
     {"question": "Where does Ada live?", "context": "Ada lives in Paris. Bob lives in Berlin."},
     {}),
    ("qa-long-context-top3", "zoo/qa", "question-answering",
     [{"question": "Where does Bob live?", "context": LONG_CONTEXT},
      {"question": "Who lives in Paris?", "context": "Ada lives in Paris."}],
     {"top_k": 3, "max_seq_len": 48, "doc_stride": 16}),
    ("fill-mask", "zoo/fill-mask", "fill-mask", "paris is the [MASK] of france.", {}),
    ("fill-mask-targets", "zoo/fill-mask", "fill-mask", ["the [MASK] was good.", "a [MASK] day"],
     {"targets": ["movie", "film", "day"]}),
    ("fill-mask-two-masks", "zoo/fill-mask", "fill-mask", "[MASK] is the [MASK] of france.",
     {"top_k": 2}),
    ("features", "zoo/embedder", "feature-extraction", "a small sentence", {"pooling": "none"}),
    ("embeddings", "zoo/embedder", "feature-extraction", ["a sentence", "another one here"], {}),
    ("similarity", "zoo/embedder", "sentence-similarity",
     {"source_sentence": "a good movie", "sentences": ["a good film", "the sea is blue"]}, {}),
    ("generation", "zoo/gpt2", "text-generation", "the movie was",
     {"do_sample": False, "max_new_tokens": 8}),
    ("summarization", "zoo/bart", "summarization", "the movie was good and the book was bad",
     {"max_new_tokens": 8}),
    ("translation", "zoo/bart", "translation", ["the movie was good", "a long day"],
     {"max_new_tokens": 8}),
]


def build_zoo(models, root: Path) -> Path:
    """The zoo's depot home, built on first call in this session (later calls reuse it)."""
    from registry.config import Settings
    from registry.depot import Depot
    from registry.export import export_onnx
    from registry.importer import import_dir

    home = root / "inference-zoo"
    marker = home / ".built"
    if marker.exists():
        return home
    depot = Depot(Settings.from_env(home=home))
    for repo, kind in ZOO.items():
        import_dir(depot, models.get(kind), repo)
        export_onnx(depot, "model", repo)
    data = root / "zoo-dataset"
    data.mkdir(exist_ok=True)
    (data / "train.csv").write_text("text,label\nI loved it,1\nawful,0\n")
    import_dir(depot, data, "zoo/reviews", repo_type="dataset")
    # A model with no ONNX export: 'auto' must fall back to PyTorch.
    import_dir(depot, models.get("classifier2"), "zoo/plain")
    marker.touch()
    return home


@pytest.fixture(scope="session")
def zoo_home(models, tmp_path_factory) -> Path:
    return build_zoo(models, tmp_path_factory.getbasetemp())


def zoo_settings(home: Path):
    from registry.config import Settings

    return Settings.from_env(home=home)


_pipelines: dict = {}


def _pipeline(models, repo: str, task: str):
    from transformers import pipeline

    kind = ZOO[repo]
    key = (kind, task)
    if key not in _pipelines:
        pipe_task = {"sentence-similarity": "feature-extraction"}.get(task, task)
        _pipelines[key] = pipeline(pipe_task, model=str(models.get(kind)))
    return _pipelines[key]


def reference(models, repo: str, task: str, inputs, params: dict):
    """What ``transformers.pipeline`` answers, in the shape modeldepot promises."""
    params = dict(params)
    pipe = _pipeline(models, repo, task)
    if task in ("ner", "token-classification"):
        params.setdefault("aggregation_strategy", "simple")
    if task in ("feature-extraction", "sentence-similarity") and params.pop("pooling", None) != "none":
        # sentence-transformers: mean pooling over tokens, then L2 normalization.
        texts = inputs if isinstance(inputs, list) else (
            [inputs["source_sentence"]] + inputs["sentences"] if isinstance(inputs, dict)
            else [inputs])
        vectors = []
        for text in texts:
            tokens = np.array(pipe(text)[0], dtype=np.float32)
            v = tokens.mean(axis=0)
            vectors.append(v / np.linalg.norm(v))
        if task == "sentence-similarity":
            return [float(np.dot(vectors[0], v)) for v in vectors[1:]]
        out = [v.tolist() for v in vectors]
        return out if isinstance(inputs, list) else out[0]
    if task == "question-answering" and isinstance(inputs, list):
        return pipe(question=[i["question"] for i in inputs],
                    context=[i["context"] for i in inputs], **params)
    if task == "question-answering":
        return pipe(**inputs, **params)
    return pipe(inputs, **params)


def plain(value):
    """numpy scalars -> Python numbers (the pipeline returns np.float32 scores)."""
    return json.loads(json.dumps(value, default=lambda o: o.item()))


def assert_close(got, want, tol: float = TOL, path: str = "$") -> None:
    got, want = plain(got), plain(want)
    _close(got, want, tol, path)


def _close(got, want, tol, path):
    if isinstance(want, float) or isinstance(got, float):
        assert isinstance(got, (int, float)) and abs(got - want) <= tol, f"{path}: {got} != {want}"
    elif isinstance(want, dict):
        assert isinstance(got, dict) and set(got) == set(want), f"{path}: keys {got} != {want}"
        for k in want:
            _close(got[k], want[k], tol, f"{path}.{k}")
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), f"{path}: {got} != {want}"
        for i, (g, w) in enumerate(zip(got, want)):
            _close(g, w, tol, f"{path}[{i}]")
    else:
        assert got == want, f"{path}: {got!r} != {want!r}"
