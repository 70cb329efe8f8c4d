"""ONNX export: every supported task exports and matches PyTorch, the recipe is recorded, a
repeat is a no-op, failures and kills leave nothing visible, and optimum loads the result from
the HF-cache view offline."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select

from registry.depot import FileRecord, compute_commit
from registry.export import export_onnx, recipe_inputs, recipe_key
from registry.importer import import_dir
from registry.models import Artifact, Revision
from registry.quantize import calibration_digest
from serverutil import kill_when_reached

ROOT = Path(__file__).resolve().parent.parent
ALL_FP32 = {"text2text-generation": ["onnx/encoder_model.onnx", "onnx/decoder_model.onnx",
                                     "onnx/decoder_with_past_model.onnx"]}
# kind in the models fixture -> (task inferred from the registry, transformers Auto class, metric)
TASKS = {
    "classifier": ("text-classification", "AutoModelForSequenceClassification", "top1_agreement"),
    "ner": ("token-classification", "AutoModelForTokenClassification", "top1_agreement"),
    "qa": ("question-answering", "AutoModelForQuestionAnswering", "top1_agreement"),
    "embedder": ("feature-extraction", "AutoModel", "cosine_similarity"),
    "fill-mask": ("fill-mask", "AutoModelForMaskedLM", "top1_agreement"),
    "gpt2": ("text-generation", "AutoModelForCausalLM", "token_agreement"),
    "bart": ("text2text-generation", "AutoModelForSeq2SeqLM", "token_agreement"),
}


def _import(depot, models, kind, name="org/m"):
    return import_dir(depot, models.get(kind), name).commit


def _onnx_vs_torch(snapshot: Path, src: Path, auto_class: str) -> float:
    """Independently of the exporter's own validation: run the stored graph with optimum's ORT
    classes (loaded the way users load it) and PyTorch on one fresh input; max abs diff."""
    import torch
    import transformers
    from optimum.onnxruntime import (ORTModelForCausalLM, ORTModelForSeq2SeqLM)

    tok = transformers.AutoTokenizer.from_pretrained(src)
    torch_model = getattr(transformers, auto_class).from_pretrained(src).eval()
    enc = tok(["the mother of the city is old"], return_tensors="pt")
    with torch.no_grad():
        if auto_class == "AutoModelForSeq2SeqLM":
            dec = torch.tensor([[torch_model.config.decoder_start_token_id, 5, 9]])
            ref = torch_model(**enc, decoder_input_ids=dec).logits
            ort = ORTModelForSeq2SeqLM.from_pretrained(snapshot, subfolder="onnx")
            got = ort(**enc, decoder_input_ids=dec).logits
        elif auto_class == "AutoModelForCausalLM":
            ref = torch_model(**enc).logits
            got = ORTModelForCausalLM.from_pretrained(snapshot, subfolder="onnx")(**enc).logits
        else:
            import onnxruntime

            sess = onnxruntime.InferenceSession(str(snapshot / "onnx" / "model.onnx"))
            feed = {i.name: enc[i.name].numpy() for i in sess.get_inputs()}
            got = torch.from_numpy(sess.run(None, feed)[0])
            ref = torch_model(**enc)[0]
    return float((ref - got).abs().max())


@pytest.mark.slow
@pytest.mark.parametrize("kind", list(TASKS))
def test_each_task_exports_and_matches_pytorch(depot, models, kind, guard_log):
    task, auto_class, metric = TASKS[kind]
    parent = _import(depot, models, kind)
    result = export_onnx(depot, "model", "org/m", quantize="int8", min_agreement=0.0)

    assert result["created"] is True
    assert (result["parent_commit"], result["ref"]) == (parent, "onnx")
    recipe = result["recipe"]
    assert recipe["task"] == task
    fp32 = ALL_FP32.get(task, "onnx/model.onnx")
    int8 = ([p.replace(".onnx", "_quantized.onnx") for p in fp32] if isinstance(fp32, list)
            else "onnx/model_quantized.onnx")
    assert recipe["files"] == {"fp32": fp32, "int8": int8}
    v = recipe["validation"]
    assert v["fp32"]["passed"] is True and v["atol"] == 1e-4
    assert v["fp32"]["max_abs_diff"] and all(d <= 1e-4 for d in v["fp32"]["max_abs_diff"].values())
    assert v["int8"]["metric"] == metric and 0.0 <= v["int8"]["value"] <= 1.0
    assert v["int8"]["floor"] == 0.0 and v["int8"]["passed"] is True

    resolved = depot.resolve("model", "org/m", "onnx")
    assert resolved["commit"] == result["commit"] and resolved["parent_commit"] == parent
    snapshot = Path(resolved["snapshot"])
    assert _onnx_vs_torch(snapshot, models.get(kind), auto_class) <= 1e-4
    assert guard_log() == ""


def test_recipe_row_lineage_and_files(depot, models):
    parent = _import(depot, models, "classifier", "org/clf")
    source_files = depot.resolve("model", "org/clf")["files"]
    result = export_onnx(depot, "model", "org/clf", optimize="O2", quantize="int8")

    with depot.db.session() as s:
        art, rev = s.execute(select(Artifact, Revision).join(Revision)).one()
        assert (art.kind, art.parent_commit, rev.parent_commit, rev.source) == (
            "onnx", parent, parent, "derived")
        recipe, key = art.recipe, art.recipe_key
        files = [FileRecord(f.path, f.size, f.sha256, f.git_sha1, f.lfs) for f in rev.files]
    assert recipe == result["recipe"]
    assert key == recipe_key(recipe_inputs("text-classification", "text-classification", "bert",
                                           recipe["opset"], "O2", recipe["quantization"]), parent)
    assert rev.commit == compute_commit(files, salt=f"derived:{parent}:{key}")
    assert recipe["versions"] == {d: metadata.version(d) for d in
                                  ("optimum", "optimum-onnx", "onnx", "onnxruntime",
                                   "transformers", "torch")}
    assert (recipe["task"], recipe["optimize"], recipe["quantize"]) == (
        "text-classification", "O2", "int8")
    assert recipe["quantization"] == {
        "mode": "int8", "approach": "static", "method": "smoothquant-static",
        "smoothing_alpha": {"layer_norm": 0.6, "activation": 0.7, "other": 0.0},
        "calibration": {"texts": "registry/data/sentiment, split train", "rows": 315,
                        "sha256": calibration_digest()},
        "per_channel": True, "validation_texts": recipe["quantization"]["validation_texts"]}
    assert recipe["opset"] == 18 and recipe["duration_s"] > 0
    int8 = dict(recipe["validation"]["int8"])
    assert int8.pop("quantized") == {
        "method": "smoothquant-static", "weights": "int8, symmetric, per output channel, smoothed",
        "activations": "uint8, static per tensor, calibrated, smoothed per input channel",
        "quantized": {"Attention": 2, "MatMul": 6}, "kept_fp32": {}, "smoothed_inputs": 6}
    assert int8 == {"metric": "top1_agreement", "value": 1.0, "floor": 0.99, "passed": True,
                    "forced": False}
    assert recipe["validation"]["samples"] == 61  # registry/validation_texts.py
    # the source files, unchanged, plus optimum's onnx/ folder
    derived = {f["path"]: f["sha256"] for f in depot.resolve("model", "org/clf", "onnx")["files"]}
    assert {f["path"]: f["sha256"] for f in source_files}.items() <= derived.items()
    assert {"onnx/model.onnx", "onnx/model_quantized.onnx", "onnx/config.json"} <= set(derived)
    assert not [p for p in derived if "calibration" in p]  # the calibration graph is temporary
    shown = depot.show("model", "org/clf")
    assert shown["revision"]["derived"] == [result["commit"]]
    assert [r["kind"] for r in shown["revisions"]] == [None, "onnx"]


def test_rerun_same_recipe_is_a_noop(cli, depot, models, monkeypatch):
    parent = _import(depot, models, "classifier", "org/clf")
    r = cli("onnx", "export", "org/clf", "--json")
    assert r.exit_code == 0, r.output
    first = json.loads(r.output)

    import registry.export

    def no_work(*args, **kwargs):
        raise AssertionError("a repeated export must not redo any work")

    monkeypatch.setattr(registry.export, "_build", no_work)
    events = len(depot.events())
    r = cli("onnx", "export", f"org/clf@{parent[:12]}")
    assert r.exit_code == 0, r.output
    assert r.output == (f"already exported: org/clf@{parent[:12]} with this recipe is "
                        f"{first['commit']} (ref onnx); nothing exported\n")
    assert len(depot.events()) == events

    # the same recipe under another ref: still no work, the new ref points at the same revision
    r = cli("onnx", "export", "org/clf", "--ref", "edge", "--json")
    again = json.loads(r.output)
    assert (again["created"], again["commit"], again["ref_moved"]) == (False, first["commit"], True)
    assert depot.resolve("model", "org/clf", "edge")["commit"] == first["commit"]
    assert len(depot.show("model", "org/clf")["revisions"]) == 2

    r = cli("onnx", "export", "org/clf@onnx")
    assert (r.exit_code, r.output) == (1, (
        f"Error: org/clf@{first['commit'][:12]} is itself a derived (onnx) revision; export its "
        f"source instead: org/clf@{parent}\n"))


def _state(depot):
    inv = depot.inventory()
    return inv["blobs"], inv["revisions"], sorted(p.name for p in (
        depot.store.repo_dir("model", "org/clf") / "refs").iterdir())


@pytest.mark.parametrize("args, message", [
    (["--task", "image-classification"],
     "Error: task 'image-classification' is not supported for ONNX export: use one of "
     "text-classification, token-classification, question-answering, feature-extraction, "
     "fill-mask, text-generation, text2text-generation\n"),
    (["--task", "summarization"],
     "Error: cannot export org/clf@{p} for text2text-generation: optimum exports bert models "
     "only for feature-extraction, fill-mask, question-answering, text-classification, "
     "token-classification\n"),
    (["--ref", "main"], "Error: 'main' is an upstream branch of org/clf; pick another --ref\n"),
    (["--type", "dataset"], "Error: ONNX export works on model repos, not dataset repos\n"),
])
def test_bad_requests_register_nothing(cli, depot, models, args, message):
    parent = _import(depot, models, "classifier", "org/clf")
    before = _state(depot)
    r = cli("onnx", "export", "org/clf", *args)
    assert (r.exit_code, r.output) == (1, message.format(p=parent[:12]))
    assert _state(depot) == before


def test_unsupported_architecture_unknown_task_no_weights_dataset(cli, depot, models, tmp_path):
    odd = tmp_path / "odd"
    shutil.copytree(models.get("classifier"), odd)
    (odd / "config.json").write_text(json.dumps({"model_type": "reformer",
                                                 "architectures": ["ReformerModelWithLMHead"]}))
    odd_commit = import_dir(depot, odd, "org/odd").commit
    bare = tmp_path / "bare"
    shutil.copytree(models.get("classifier"), bare)
    (bare / "model.safetensors").unlink()
    bare_commit = import_dir(depot, bare, "org/bare").commit
    untagged = tmp_path / "untagged"
    shutil.copytree(models.get("classifier"), untagged)
    config = json.loads((untagged / "config.json").read_text())
    (untagged / "config.json").write_text(json.dumps({**config, "architectures": []}))
    untagged_commit = import_dir(depot, untagged, "org/untagged").commit
    data = tmp_path / "ds"
    data.mkdir()
    (data / "train.csv").write_text("text,label\nhello,1\n")
    import_dir(depot, data, "org/ds", repo_type="dataset")
    before = depot.inventory()

    r = cli("onnx", "export", "org/odd")
    assert (r.exit_code, r.output) == (1, (
        f"Error: cannot export org/odd@{odd_commit[:12]}: architecture ReformerModelWithLMHead "
        "(model type 'reformer') is not supported by optimum's ONNX exporter\n"))
    r = cli("onnx", "export", "org/bare")
    assert (r.exit_code, r.output) == (1, (
        f"Error: org/bare@{bare_commit[:12]} has no PyTorch weights (*.safetensors or "
        "pytorch_model.bin); import or pull a revision that has them\n"))
    r = cli("onnx", "export", "org/untagged")
    assert (r.exit_code, r.output) == (1, (
        f"Error: cannot infer an exportable task for org/untagged@{untagged_commit[:12]} "
        "(pipeline tag none); pass --task with one of: text-classification, "
        "token-classification, question-answering, feature-extraction, fill-mask, "
        "text-generation, text2text-generation\n"))
    r = cli("onnx", "export", "org/ds")
    assert (r.exit_code, r.output) == (
        1, "Error: org/ds is a dataset repo; ONNX export works on model repos\n")
    assert depot.inventory() == before


def _no_export_dirs(depot) -> bool:
    tmp = depot.store.tmp
    return not tmp.exists() or not [p for p in tmp.iterdir() if "export-" in p.name]


def test_failed_validation_registers_nothing_and_says_by_how_much(cli, depot, models):
    _import(depot, models, "classifier", "org/clf")
    before = _state(depot)
    r = cli("onnx", "export", "org/clf", "--atol", "1e-12")
    assert r.exit_code == 1
    assert re.fullmatch(
        r"Error: fp32 ONNX output 'logits' differs from PyTorch by up to (\S+), over the "
        r"tolerance 1e-12 \((\S+)x\); nothing was registered\. Pass --atol to accept it\n",
        r.output), r.output
    assert _state(depot) == before and _no_export_dirs(depot)


def test_int8_is_calibrated_on_other_texts_than_it_is_validated_on():
    from registry.quantize import calibration_texts
    from registry.validation_texts import SENTENCES

    texts = calibration_texts()
    assert len(texts) == 315 and texts[0] == "Not good, not worth the hassle."  # the train split
    assert not set(texts) & set(SENTENCES)


def test_int8_below_floor_is_refused_unless_forced(cli, depot, models):
    _import(depot, models, "embedder", "org/emb")
    # int8 always moves an embedding a little, so a floor of exactly 1 must refuse it
    r = cli("onnx", "export", "org/emb", "--quantize", "int8", "--min-agreement", "1")
    assert r.exit_code == 1
    m = re.fullmatch(
        r"Error: int8 cosine similarity with fp32 is ([01]\.\d{6}), below the floor 1 by (\S+); "
        r"nothing was registered\. Pass --force to register it anyway, or export without "
        r"--quantize\n", r.output)
    assert m, r.output
    assert depot.resolve("model", "org/emb")["commit"] and len(
        depot.show("model", "org/emb")["revisions"]) == 1
    assert _no_export_dirs(depot)

    r = cli("onnx", "export", "org/emb", "--quantize", "int8", "--min-agreement", "1", "--force")
    assert r.exit_code == 0, r.output
    int8 = depot.show("model", "org/emb", "onnx")["revision"]["recipe"]["validation"]["int8"]
    assert (int8["passed"], int8["forced"]) == (False, True)
    assert int8["value"] == float(m.group(1)) and (int8["floor"], int8["mean_floor"]) == (1, 1)
    assert (f"  int8 vs fp32 (61 texts): cosine similarity min {int8['value']:.4f} (floor 1), "
            f"mean {int8['mean']:.4f} (floor 1) FORCED: below the floor\n") in r.output
    warning = (f"int8 export forced below its validation floor: cosine similarity min "
               f"{int8['value']:.4f} (floor 1), mean {int8['mean']:.4f} (floor 1); its answers "
               "may differ from fp32")

    # ... and every place that shows or uses it says so
    r = cli("onnx", "list")
    assert f" {int8['value']:.3f} FORCED " in r.output, r.output
    assert [row["warning"] for row in json.loads(cli("onnx", "list", "--json").output)] == [warning]
    assert f"\n  warning: {warning}\n" in cli("show", "org/emb@onnx").output
    assert json.loads(cli("show", "org/emb@onnx", "--json").output)["revision"]["warning"] == warning
    assert "warning" not in cli("show", "org/emb").output  # the source revision is fine
    r = cli("run", "org/emb", "--int8", "some text", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["warning"] == warning
    assert r.stderr == f"warning: {warning}\n"
    r = cli("run", "org/emb", "some text", "--json")  # fp32 met its tolerance: no warning
    assert json.loads(r.stdout)["warning"] is None and r.stderr == ""
    _check_http_warnings(depot, warning)


def _check_http_warnings(depot, warning):
    import asyncio

    from aiohttp.test_utils import TestClient, TestServer

    from registry.server.app import ServeOptions, create_app

    async def main():
        app = create_app(depot.settings, ServeOptions(hub_api=False))
        async with TestClient(TestServer(app)) as client:
            r = await client.post("/models/org/emb", json={"inputs": "some text",
                                                           "options": {"precision": "int8"}})
            assert r.status == 200 and r.headers["X-Inference-Warning"] == warning
            r = await client.post("/models/org/emb", json={"inputs": "some text"})
            assert r.status == 200 and "X-Inference-Warning" not in r.headers
            r = await client.post("/v1/embeddings", json={"model": "org/emb", "input": "x",
                                                           "precision": "int8"})
            assert r.status == 200 and (await r.json())["warning"] == warning
            r = await client.post("/v1/embeddings", json={"model": "org/emb", "input": "x"})
            assert "warning" not in await r.json()

    asyncio.run(main())


KILL_SCRIPT = """
import os, sys, time
from registry.config import Settings
from registry.depot import Depot
from registry.export import export_onnx

def stop_at(stage):
    if stage == "publishing":  # every file is in the store; nothing is registered yet
        open(sys.argv[1], "w").write(str(os.getpid()))
        time.sleep(600)

export_onnx(Depot(Settings.from_env()), "model", "org/clf", quantize="int8", progress=stop_at)
"""


def test_killed_export_leaves_nothing_visible_and_rerun_works(cli, depot, models, tmp_path):
    commit = _import(depot, models, "classifier", "org/clf")
    before = _state(depot)
    kill_when_reached(KILL_SCRIPT, tmp_path / "reached")

    assert before[2] == sorted(["main", commit[:7]])  # the ref and the short id (cacheview.py)
    assert _state(depot) == before  # no revision, ref or blob is registered...
    assert cli("onnx", "list").output == (
        "no ONNX exports yet; make one with 'modeldepot onnx export REPO'\n")
    gc = json.loads(cli("gc", "--json").output)
    assert gc["blobs"] >= 2 and gc["temp_files"] >= 1  # ...and gc removes what the kill left

    r = cli("onnx", "export", "org/clf", "--quantize", "int8", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["created"] is True
    assert depot.verify("model", "org/clf")["ok"] is True


LOAD_SCRIPT = """
import json
from optimum.onnxruntime import ORTModelForSequenceClassification
from transformers import AutoTokenizer
out = {}
for name in ("model.onnx", "model_quantized.onnx"):
    model = ORTModelForSequenceClassification.from_pretrained(
        "org/clf", revision="onnx", subfolder="onnx", file_name=name)
    tok = AutoTokenizer.from_pretrained("org/clf", revision="onnx", subfolder="onnx")
    out[name] = model(**tok(["i love this movie"], return_tensors="pt")).logits.tolist()
print(json.dumps(out))
"""


def test_optimum_loads_the_derived_revision_from_the_hf_cache_offline(cli, depot, models, home,
                                                                      guard_log):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    _import(depot, models, "classifier", "org/clf")
    assert cli("onnx", "export", "org/clf", "--quantize", "int8").exit_code == 0
    env = dict(os.environ, HF_HUB_CACHE=str(home / "hub"), HUGGINGFACE_HUB_CACHE=str(home / "hub"),
               HF_HUB_OFFLINE="1")
    proc = subprocess.run([sys.executable, "-c", LOAD_SCRIPT], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout.strip().splitlines()[-1])

    src = models.get("classifier")
    tok = AutoTokenizer.from_pretrained(src)
    with torch.no_grad():
        ref = AutoModelForSequenceClassification.from_pretrained(src).eval()(
            **tok(["i love this movie"], return_tensors="pt")).logits.numpy()
    assert np.abs(np.array(got["model.onnx"]) - ref).max() <= 1e-4
    assert np.argmax(got["model_quantized.onnx"]) == np.argmax(ref)
    assert guard_log() == ""


def test_onnx_list(cli, depot, models):
    assert cli("onnx", "list").output == (
        "no ONNX exports yet; make one with 'modeldepot onnx export REPO'\n")
    parent = _import(depot, models, "classifier", "org/clf")
    r = cli("onnx", "export", "org/clf", "--optimize", "O1", "--ref", "fast")
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    commit = depot.resolve("model", "org/clf", "fast")["commit"]
    assert lines[0] == (f"exported org/clf@{parent[:12]} to ONNX (text-classification, opset 18, "
                        f"optimize O1): fast -> {commit}")
    assert re.fullmatch(r"  fp32 vs PyTorch: max abs diff \S+ \(atol 0\.0001\)", lines[1])
    rows = json.loads(cli("onnx", "list", "org/clf", "--json").output)
    assert [(r["commit"], r["parent_commit"], r["refs"], r["task"], r["optimize"], r["quantize"])
            for r in rows] == [(commit, parent, ["fast"], "text-classification", "O1", None)]
    table = cli("onnx", "list").output.splitlines()
    assert table[0].split() == ["REPO", "COMMIT", "PARENT", "REFS", "TASK", "OPSET", "OPT",
                                "QUANT", "FP32", "DIFF", "INT8", "AGREE", "SIZE", "CREATED"]
    assert table[2].split()[:8] == ["org/clf", commit[:12], parent[:12], "fast",
                                    "text-classification", "18", "O1", "-"]
