"""End to end on loopback: depot A serves, depot B pulls from A and serves, and unmodified
``transformers`` / ``huggingface_hub`` with ``HF_ENDPOINT`` pointing at B get the originals."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from serverutil import running_server

MODELS = {  # repo -> (sample kind, AutoModel class, alias)
    "org/clf": ("classifier", "AutoModelForSequenceClassification", "prod"),
    "org/gpt2": ("gpt2", "AutoModelForCausalLM", "stable"),
    "org/bart": ("bart", "AutoModelForSeq2SeqLM", "prod"),
}

CLIENT = r"""
import json, sys
import torch
from huggingface_hub import HfApi, snapshot_download
import transformers

cases = json.loads(sys.argv[1])
out = {"models": {}}
text = "hello world, this is a test"
for repo, case in cases.items():
    cls = getattr(transformers, case["cls"])
    def run(where, rev=None):
        tok = transformers.AutoTokenizer.from_pretrained(where, revision=rev)
        model = cls.from_pretrained(where, revision=rev)
        ids = tok(text, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            kw = {"decoder_input_ids": ids[:, :3]} if model.config.is_encoder_decoder else {}
            logits = model(input_ids=ids, **kw).logits
        return ids, logits
    ids0, logits0 = run(case["src"])
    same = {}
    for rev in (None, case["alias"], case["commit"]):
        ids, logits = run(repo, rev)
        same[str(rev)] = bool(torch.equal(ids, ids0) and torch.equal(logits, logits0))
    out["models"][repo] = same

api = HfApi()
out["list"] = [m.id for m in api.list_models(author="org", full=True)]
info = api.model_info("org/clf", revision="prod", files_metadata=True)
out["info"] = {"sha": info.sha, "files": sorted((s.rfilename, s.size) for s in info.siblings),
               "pipeline_tag": info.pipeline_tag, "library_name": info.library_name}
out["snapshot"] = snapshot_download("org/bart", revision="prod")
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def depots(tmp_path_factory, models):
    """A imports and serves; B pulls everything from A (aliases included) and serves."""
    from registry.config import Settings
    from registry.depot import Depot
    from registry.hub import pull
    from registry.importer import import_dir

    root = tmp_path_factory.mktemp("e2e")
    a = Depot(Settings.from_env(home=root / "a"))
    for repo, (kind, _cls, _alias) in MODELS.items():
        import_dir(a, models.get(kind), repo)
    a.tag("model", "org/clf", None, "prod")
    b = Depot(Settings.from_env(home=root / "b"))
    with running_server(root / "a", ["--no-inference"]) as url_a:
        pulled = {repo: pull(b, "model", repo, endpoint=url_a) for repo in MODELS}
        b.tag("model", "org/gpt2", None, "stable")
        b.tag("model", "org/bart", None, "prod")
        with running_server(root / "b", ["--no-inference"]) as url_b:
            yield {"a": a, "b": b, "url_a": url_a, "url_b": url_b, "pulled": pulled,
                   "root": root}


def test_unmodified_clients_load_from_the_second_depot(depots, models, guard_log):
    b, pulled = depots["b"], depots["pulled"]
    assert pulled["org/clf"].refs == ["main", "prod"]  # A's alias came along as a tag
    cases = {repo: {"src": str(models.get(kind)), "cls": cls, "alias": alias,
                    "commit": pulled[repo].commit}
             for repo, (kind, cls, alias) in MODELS.items()}
    env = dict(os.environ, HF_ENDPOINT=depots["url_b"], HF_HOME=str(depots["root"] / "client"),
               TRANSFORMERS_VERBOSITY="error", HF_HUB_DISABLE_PROGRESS_BARS="1")
    proc = subprocess.run([sys.executable, "-c", CLIENT, json.dumps(cases)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    for repo in MODELS:
        assert out["models"][repo] == {"None": True, MODELS[repo][2]: True,
                                       pulled[repo].commit: True}, repo
    assert out["list"] == sorted(MODELS)
    clf = b.resolve("model", "org/clf", "prod")
    assert out["info"] == {"sha": clf["commit"],
                           "files": sorted([f["path"], f["size"]] for f in clf["files"]),
                           "pipeline_tag": "text-classification", "library_name": "transformers"}
    bart = b.resolve("model", "org/bart", "prod")
    assert out["snapshot"].endswith("/snapshots/" + bart["commit"])
    for f in bart["files"]:
        with open(os.path.join(out["snapshot"], f["path"]), "rb") as fh:
            assert fh.read() == b.store.blob_path(f["sha256"]).read_bytes()
    assert guard_log() == ""


def test_commits_and_hashes_survive_the_round_trip(depots):
    from registry.store import git_blob_sha1, lfs_pointer

    a, b = depots["a"], depots["b"]
    for repo in MODELS:
        ra, rb = a.resolve("model", repo), b.resolve("model", repo)
        assert rb["commit"] == ra["commit"]
        keys = ("path", "size", "sha256", "lfs")
        assert [{k: f[k] for k in keys} for f in rb["files"]] == [
            {k: f[k] for k in keys} for f in ra["files"]]
        for fa, fb in zip(ra["files"], rb["files"]):
            # An LFS file's git sha1 is its pointer's, as upstream reports it (the content is
            # checked by sha256); a regular file's is the content's.
            expected = (git_blob_sha1(lfs_pointer(fa["sha256"], fa["size"])) if fa["lfs"]
                        else fa["git_sha1"])
            assert fb["git_sha1"] == expected, fb["path"]
        assert {f["verification"] for f in rb["files"]} == {"verified"}


def test_cli_search_and_info_against_a_served_depot(depots, cli):
    url = depots["url_b"]
    r = cli("search", "--endpoint", url, "--sort", "createdAt", "--json")
    assert r.exit_code == 0, r.output
    assert sorted(m["id"] for m in json.loads(r.output)) == sorted(MODELS)
    r = cli("info", "org/gpt2@stable", "--endpoint", url, "--json")
    info = json.loads(r.output)
    assert info["sha"] == depots["pulled"]["org/gpt2"].commit
    assert info["refs"]["tags"] == {"stable": info["sha"]}
    r = cli("pull", "org/gpt2@stable", "--endpoint", url, "--json")
    out = json.loads(r.output)
    assert (out["downloaded_bytes"], out["refs"]) == (out["size"], ["main", "stable"])
