"""End to end: depot A serves (a real `modeldepot serve`), depot P is `modeldepot serve --proxy A`
with nothing pulled, and unmodified transformers / huggingface_hub / datasets with
``HF_ENDPOINT`` pointing at P get the originals; then, with A stopped, the same calls from a fresh
client cache still work from P, and P's `verify` is clean; with the pinned clients and with the
current releases."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from serverutil import ROOT, running_server
from test_clients_current import _interpreter

CLIENT = r"""
import filecmp, json, os, sys
import torch, transformers, datasets
from huggingface_hub import hf_hub_download, snapshot_download
datasets.disable_progress_bars()
src = sys.argv[1]
text = "hello world, this is a test"
out = {}
def run(where):
    tok = transformers.AutoTokenizer.from_pretrained(where)
    model = transformers.AutoModelForSequenceClassification.from_pretrained(where)
    with torch.no_grad():
        return model(**tok(text, return_tensors="pt")).logits
out["same_logits"] = bool(torch.equal(run("org/clf"), run(src)))
pipe = transformers.pipeline("text-classification", model="org/clf")
out["same_pipeline"] = pipe(text) == transformers.pipeline("text-classification", model=src)(text)
out["same_config"] = filecmp.cmp(hf_hub_download("org/clf", "config.json"),
                                 os.path.join(src, "config.json"), shallow=False)
snap = snapshot_download("org/clf")
out["same_snapshot"] = sorted(os.listdir(snap)) == sorted(os.listdir(src)) and all(
    filecmp.cmp(os.path.join(snap, f), os.path.join(src, f), shallow=False) for f in os.listdir(src))
out["rows"] = datasets.load_dataset("org/ds", split="train").to_list()
print(json.dumps(out))
"""


def _client(python: str, url: str, src, hf_home) -> dict:
    # Xet is left on: whatever the upstream is, the proxy's answers never send a client there.
    env = dict(os.environ, HF_ENDPOINT=url, HF_HOME=str(hf_home),
               HF_HUB_DISABLE_IMPLICIT_TOKEN="1", HF_UPDATE_DOWNLOAD_COUNTS="0",
               TRANSFORMERS_VERBOSITY="error")
    env.pop("HF_HUB_DISABLE_XET", None)
    p = subprocess.run([python, "-c", CLIENT, str(src)], cwd=ROOT, capture_output=True,
                       text=True, timeout=600, env=env)
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(p.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("which", ["pinned", "current"])
def test_unmodified_clients_through_the_proxy_then_with_the_upstream_stopped(
        which, tmp_path, models, cli, guard_log):
    """The pinned clients of the main venv and the current releases (.venv-clients:
    huggingface_hub 2.4, transformers 5.23, datasets 5.2), as the team's developers run them."""
    from registry.config import Settings
    from registry.depot import Depot
    from registry.importer import import_dir

    python = _interpreter(which)
    a = Depot(Settings.from_env(home=tmp_path / "a"))
    src = models.get("classifier")
    import_dir(a, src, "org/clf")
    ds = tmp_path / "ds"
    (ds / "data").mkdir(parents=True)
    (ds / "data" / "train.csv").write_text("text,label\nhi,1\nbye,0\n")
    import_dir(a, ds, "org/ds", repo_type="dataset")
    want = {"same_logits": True, "same_pipeline": True, "same_config": True,
            "same_snapshot": True, "rows": [{"text": "hi", "label": 1}, {"text": "bye", "label": 0}]}

    upstream = running_server(tmp_path / "a", ["--no-inference"])
    url_a = upstream.__enter__()
    try:
        with running_server(tmp_path / "p", ["--no-inference", "--proxy", url_a]) as url_p:
            assert _client(python, url_p, src, tmp_path / "hf1") == want
            upstream.__exit__(None, None, None)
            upstream = None
            assert _client(python, url_p, src, tmp_path / "hf2") == want
    finally:
        if upstream is not None:
            upstream.__exit__(None, None, None)
    r = cli("--home", tmp_path / "p", "verify")
    assert r.exit_code == 0, r.output
    shown = json.loads(cli("--home", tmp_path / "p", "show", "org/clf", "--json").output)
    assert shown["revision"]["partial"] is False and shown["revision"]["source"] == "proxy"
    # datasets asks 'datasets-server.<endpoint host>' (a hard-coded host pattern); the guard
    # refuses that lookup and datasets carries on. Nothing else left loopback.
    assert {line.split(" ", 1)[1] for line in guard_log().splitlines()} <= {
        "resolve datasets-server.127.0.0.1"}
