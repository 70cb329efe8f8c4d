"""The depot: import, the HF-cache view, dedup, crash safety, concurrency, verify, bad input."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from registry.depot import FileRecord, compute_commit
from registry.errors import IntegrityError, InvalidInput
from registry.importer import import_dir
from registry.store import check_relpath

from s3util import both_backends, stacks

LOAD_SCRIPT = r"""
import json, sys, torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer
src, repo, revs = sys.argv[1], sys.argv[2], sys.argv[3:]
text = ["the movie was great", "a terrible day in paris"]

def run(where, **kw):
    tok = AutoTokenizer.from_pretrained(where, **kw)
    model = AutoModelForSequenceClassification.from_pretrained(where, **kw).eval()
    with torch.no_grad():
        out = model(**tok(text, return_tensors="pt", padding=True)).logits
    return tok(text)["input_ids"], out.tolist()

want = run(src)
got = {rev: run(repo, revision=None if rev == "-" else rev) for rev in revs}
print(json.dumps({"want": want, "got": got}))
"""


def hf_env(home: Path) -> dict:
    return {
        "HF_HUB_CACHE": str(home / "hub"),
        "HUGGINGFACE_HUB_CACHE": str(home / "hub"),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }


def tree_state(home: Path) -> dict:
    """Every path under the home with its size (to prove that nothing changed)."""
    out = {}
    for root, dirs, files in os.walk(home):
        for name in dirs + files:
            p = Path(root) / name
            if "locks" in p.parts or p.name.startswith("depot.db"):
                continue
            out[str(p.relative_to(home))] = p.lstat().st_size if p.is_file() or p.is_symlink() else -1
    return out


def registry_state(cli) -> tuple:
    listing = cli("list", "--json").output
    inventory = json.loads(cli("inventory").output)
    inventory.pop("depot_id")
    return listing, inventory


# -- import and the HF-cache view -------------------------------------------------------------


@stacks
def test_import_loads_offline_by_repo_id_alias_and_commit(backend, cli, models, home):
    src = models.get("classifier")
    r = cli("import", src, "--repo", "org/clf", "--json")
    assert r.exit_code == 0, r.output
    result = json.loads(r.output)
    commit = result["commit"]
    assert result == {
        "repo": "org/clf", "repo_type": "model", "commit": commit, "created": True,
        "refs": ["main"], "size": result["size"], "file_count": 7,
    }
    assert cli("tag", "org/clf", "prod").exit_code == 0
    env = dict(os.environ, **hf_env(home))
    out = subprocess.run(
        [sys.executable, "-c", LOAD_SCRIPT, str(src), "org/clf", "-", "main", "prod", commit],
        capture_output=True, text=True, env=env, check=True,
    )
    data = json.loads(out.stdout)
    for rev, got in data["got"].items():
        assert got == data["want"], rev
    from huggingface_hub import scan_cache_dir

    scan = scan_cache_dir(home / "hub")
    assert scan.warnings == []
    (repo,) = scan.repos
    assert repo.repo_id == "org/clf"
    assert {r.commit_hash for r in repo.revisions} == {commit}
    assert (home / "hub" / "models--org--clf" / "refs" / "prod").read_text() == commit


def test_import_records_metadata(depot, models):
    result = import_dir(depot, models.get("classifier"), "org/clf")
    info = depot.show("model", "org/clf")
    repo = info["repo"]
    assert repo["pipeline_tag"] == "text-classification"
    assert repo["library_name"] == "transformers"
    assert repo["license"] == "mit"
    assert {"test", "transformers", "bert", "license:mit"} <= set(repo["tags"])
    assert info["revision"]["meta"]["architectures"] == ["BertForSequenceClassification"]
    # parameter count from the safetensors header equals what torch counts
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(models.get("classifier"))
    assert info["revision"]["meta"]["parameter_count"] == sum(p.numel() for p in model.parameters())
    files = {f["path"]: f for f in info["revision"]["files"]}
    assert files["model.safetensors"]["lfs"] is True and files["config.json"]["lfs"] is False
    # git_sha1 is what the Hub reports as the blob id: the content's, or the LFS pointer's
    from registry.store import git_blob_sha1, lfs_pointer

    src = models.get("classifier")
    weights = files["model.safetensors"]
    assert weights["git_sha1"] == git_blob_sha1(lfs_pointer(weights["sha256"], weights["size"]))
    assert files["config.json"]["git_sha1"] == git_blob_sha1((src / "config.json").read_bytes())
    assert info["revision"]["commit"] == result.commit


def test_same_bytes_same_commit_and_reimport_is_a_noop(cli, models, home):
    src = models.get("classifier")
    first = cli("import", src, "--repo", "org/clf")
    before = tree_state(home)
    second = cli("import", src, "--repo", "org/clf")
    assert second.exit_code == 0
    assert second.output.startswith("already present, nothing changed: org/clf@")
    assert first.output.split("@")[1].split()[0] == second.output.split("@")[1].split()[0]
    assert tree_state(home) == before
    events = json.loads(cli("log", "--json").output)
    assert [e["action"] for e in events] == ["import"]


def test_commit_id_is_deterministic_and_content_derived():
    a = [FileRecord("a", 1, "0" * 64, "1" * 40), FileRecord("b", 2, "2" * 64, "3" * 40)]
    assert compute_commit(a) == compute_commit(list(reversed(a)))
    assert compute_commit(a) != compute_commit(a[:1])
    assert compute_commit(a) != compute_commit([a[0], FileRecord("b", 2, "4" * 64, "3" * 40)])


@both_backends
def test_shared_files_are_stored_once(cli, models, home, tmp_path):
    src = models.get("classifier")
    other = tmp_path / "other"
    shutil.copytree(src, other)
    (other / "README.md").write_text("a different card\n")
    assert cli("import", src, "--repo", "org/one").exit_code == 0
    assert cli("import", other, "--repo", "org/two").exit_code == 0
    blobs = [p for p in (home / "blobs").rglob("*") if p.is_file()]
    src_sizes = sum(p.stat().st_size for p in src.iterdir() if p.is_file())
    # 7 files per repo, 6 of them identical: 8 blobs, stored bytes = one copy + one README
    assert len(blobs) == 8
    stored = sum(p.stat().st_size for p in blobs)
    assert stored == src_sizes + len("a different card\n")
    # the HF view hardlinks into blobs/, so it costs no extra bytes on disk
    inodes = {p.stat().st_ino for p in (home / "hub").glob("*/blobs/*")}
    assert len(inodes) == 8
    assert inodes <= {p.stat().st_ino for p in blobs}
    du = json.loads(cli("du", "--json").output)
    assert du["stored"] == stored
    readme = len((src / "README.md").read_bytes())
    assert du["logical"] == 2 * src_sizes - readme + len("a different card\n")
    assert du["saved_by_dedup"] == du["logical"] - stored


# -- crash safety ----------------------------------------------------------------------------


@both_backends
@pytest.mark.parametrize(
    "point", ["import:after-file", "publish:after-snapshot", "publish:before-commit"]
)
def test_import_killed_at_a_failpoint_leaves_nothing_visible(cli, cli_subprocess, models, home, point):
    src = models.get("classifier")
    r = cli_subprocess("import", src, "--repo", "org/clf", env={"MODELDEPOT_FAILPOINT": point})
    assert r.returncode == 137
    assert json.loads(cli("list", "--json").output) == []
    assert not (home / "hub" / "models--org--clf" / "refs" / "main").exists()
    assert cli("show", "org/clf").exit_code == 1
    # a re-run succeeds and gc cleans what the dead process left
    assert cli("import", src, "--repo", "org/clf").exit_code == 0
    gc = json.loads(cli("gc", "--json").output)
    assert gc["dry_run"] is False
    assert list((home / "tmp").iterdir()) == []
    assert cli("verify").exit_code == 0
    assert json.loads(cli("gc", "--json", "--dry-run").output)["bytes_freed"] == 0


@stacks
def test_import_killed_by_a_signal_midway(backend, cli, cli_subprocess, home, tmp_path):
    """A real SIGKILL at an arbitrary moment during a long import."""
    src = tmp_path / "big"
    src.mkdir()
    (src / "config.json").write_text('{"model_type": "bert", "architectures": ["BertModel"]}')
    for i in range(40):
        (src / f"shard-{i:03d}.bin").write_bytes(os.urandom(2 * 1024 * 1024))
    env = dict(os.environ)
    proc = subprocess.Popen([sys.executable, "-m", "cli", "import", str(src), "--repo", "org/big"],
                            env=env, cwd=Path(__file__).parent.parent,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 60
    while time.time() < deadline:
        blobs = list((home / "blobs").rglob("*")) if (home / "blobs").exists() else []
        if len([b for b in blobs if b.is_file()]) >= 5:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert json.loads(cli("list", "--json").output) == []
    r = cli("import", src, "--repo", "org/big")
    assert r.exit_code == 0, r.output
    cli("gc")
    assert cli("verify").exit_code == 0
    assert list((home / "tmp").iterdir()) == []


@stacks
def test_concurrent_imports_of_overlapping_models(backend, cli, models, home, tmp_path):
    a = models.get("classifier")
    b = tmp_path / "b"
    shutil.copytree(a, b)
    (b / "extra.txt").write_text("only in b\n")
    procs = [
        subprocess.Popen([sys.executable, "-m", "cli", "import", str(src), "--repo", repo],
                         cwd=Path(__file__).parent.parent, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
        for src, repo in [(a, "org/a"), (b, "org/b"), (a, "org/a2"), (b, "org/a")]
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err
    names = sorted(r["name"] for r in json.loads(cli("list", "--json").output))
    assert names == ["org/a", "org/a2", "org/b"]
    assert len(json.loads(cli("show", "org/a", "--json").output)["revisions"]) == 2
    r = cli("verify")
    assert r.exit_code == 0, r.output


# -- verify ----------------------------------------------------------------------------------


@stacks
def test_verify_reports_a_flipped_byte_with_repo_revision_and_path(backend, cli, models,
                                                                    raw_blobs):
    src = models.get("classifier")
    commit = json.loads(cli("import", src, "--repo", "org/clf", "--json").output)["commit"]
    show = json.loads(cli("show", "org/clf", "--json").output)
    sha = next(f["sha256"] for f in show["revision"]["files"] if f["path"] == "model.safetensors")
    data = bytearray(raw_blobs.read(sha))
    data[1000] ^= 0xFF
    raw_blobs.write(sha, bytes(data))
    r = cli("verify")
    assert r.exit_code == 1
    assert f"CORRUPT: org/clf@{commit[:12]} model.safetensors (sha256 {sha[:16]}…)" in r.output
    assert r.output.endswith("1 problem(s)\n")
    report = json.loads(cli("verify", "--json").output)
    assert report["problems"] == [{"problem": "corrupt", "type": "model", "repo": "org/clf",
                                   "commit": commit, "path": "model.safetensors", "sha256": sha}]
    raw_blobs.delete(sha)
    r = cli("verify", "org/clf")
    assert r.exit_code == 1
    assert f"MISSING: org/clf@{commit[:12]} model.safetensors" in r.output


# -- registry commands -----------------------------------------------------------------------


def test_list_filters_sorts_and_json(cli, models, tmp_path):
    cli("import", models.get("classifier"), "--repo", "org/clf")
    cli("import", models.get("ner"), "--repo", "acme/ner")
    cli("import", models.get("encoder"), "--repo", "org/encoder")
    names = lambda *args: [r["name"] for r in json.loads(cli("list", "--json", *args).output)]  # noqa: E731
    assert names() == ["acme/ner", "org/clf", "org/encoder"]
    assert names("--task", "token-classification") == ["acme/ner"]
    assert names("--author", "org") == ["org/clf", "org/encoder"]
    assert names("--search", "ENC") == ["org/encoder"]
    assert names("--search", "%") == []
    assert names("--limit", "1") == ["acme/ner"]
    assert names("--library", "transformers", "--task", "feature-extraction") == ["org/encoder"]
    sizes = [r["size"] for r in json.loads(cli("list", "--json", "--sort", "size").output)]
    assert sizes == sorted(sizes, reverse=True)
    row = json.loads(cli("list", "--json", "--search", "clf").output)[0]
    assert set(row) == {"name", "type", "task", "library", "license", "author", "revisions",
                        "partial_revisions", "size", "downloads", "served_downloads", "updated_at",
                        "gated", "private"}
    text = cli("list").output.splitlines()
    assert text[0].split() == ["REPO", "TASK", "LIBRARY", "REVS", "SIZE", "UPDATED"]
    assert cli("list", "--search", "nothing-like-this").output == "no repos match\n"


@stacks
def test_show_tag_untag_rm(backend, cli, models, tmp_path, home):
    src = models.get("classifier")
    c1 = json.loads(cli("import", src, "--repo", "org/clf", "--json").output)["commit"]
    v2 = tmp_path / "v2"
    shutil.copytree(src, v2)
    (v2 / "README.md").write_text("---\nlicense: mit\n---\nversion two\n")
    c2 = json.loads(cli("import", v2, "--repo", "org/clf", "--json").output)["commit"]
    assert cli("tag", f"org/clf@{c1[:10]}", "prod").output == f"org/clf: prod -> {c1}\n"
    assert cli("tag", "org/clf", "prod").output == f"org/clf: prod -> {c2} (was {c1[:12]})\n"
    r = cli("tag", "org/clf", "main")
    assert r.exit_code == 1
    assert r.output == "Error: 'main' is an upstream branch of org/clf; pick another alias name\n"
    show = json.loads(cli("show", "org/clf@prod", "--json").output)
    assert show["revision"]["commit"] == c2
    assert {r["commit"] for r in show["revisions"]} == {c1, c2}
    text = cli("show", "org/clf").output
    assert "revisions:" in text and "model.safetensors" in text
    assert cli("untag", "org/clf", "prod").output == f"org/clf: removed alias prod (was {c2[:12]})\n"
    assert not (home / "hub" / "models--org--clf" / "refs" / "prod").exists()
    r = cli("untag", "org/clf", "prod")
    assert r.output == "Error: org/clf has no alias 'prod'\n" and r.exit_code == 1

    # rm one revision: only the README blob of c1 is freed; shared blobs stay
    plan = json.loads(cli("rm", f"org/clf@{c1}", "--dry-run", "--json").output)
    readme = len((src / "README.md").read_bytes())
    assert plan == {"repo": "org/clf", "type": "model", "revisions": [c1], "refs": [],
                    "blobs_freed": 1, "bytes_freed": readme, "repo_removed": False, "dry_run": True}
    assert cli("show", f"org/clf@{c1}").exit_code == 0
    r = cli("rm", f"org/clf@{c1}")
    assert r.output == f"removed revision org/clf: 1 revision(s), refs -; frees 1 blob(s), {readme} B\n"
    assert cli("show", f"org/clf@{c1}").exit_code == 1
    assert not (home / "hub" / "models--org--clf" / "snapshots" / c1).exists()
    assert cli("verify").exit_code == 0
    r = cli("rm", "org/clf")
    assert r.exit_code == 0 and "removed repo org/clf" in r.output
    assert json.loads(cli("list", "--json").output) == []
    assert not (home / "hub" / "models--org--clf").exists()
    assert [p for p in (home / "blobs").rglob("*") if p.is_file()] == []
    actions = [e["action"] for e in json.loads(cli("log", "--json").output)]
    assert actions == ["rm", "rm", "untag", "tag", "tag", "import", "import"]


@stacks
def test_gc_removes_unreferenced_blobs_and_dead_temp_files(backend, cli, models, home, depot,
                                                            raw_blobs):
    cli("import", models.get("classifier"), "--repo", "org/clf")
    kept = depot.store.ingest_file(models.get("classifier") / "vocab.txt")  # referenced by org/clf
    orphan_tmp = home / "tmp" / "999999999-deadbeef-partial"
    orphan_tmp.write_bytes(b"x" * 100)
    import hashlib

    data = b"nobody refers to me"
    sha = hashlib.sha256(data).hexdigest()
    raw_blobs.write(sha, data)
    dry = json.loads(cli("gc", "--dry-run", "--json").output)
    assert dry == {"blobs": 1, "temp_files": 1, "stray_views": 0,
                   "bytes_freed": len(data) + 100, "dry_run": True}
    assert orphan_tmp.exists()
    r = cli("gc")
    assert r.output == f"freed {len(data) + 100} B: 1 blob(s), 1 temp file(s), 0 stray cache entr(ies)\n"
    assert not orphan_tmp.exists()
    assert depot.store.has_blob(kept.sha256)
    assert cli("verify").exit_code == 0


def test_env_prints_shell_lines(cli, home):
    out = cli("env").output
    assert f"export HF_HUB_CACHE={home / 'hub'}\n" in out
    assert f"export HUGGINGFACE_HUB_CACHE={home / 'hub'}\n" in out
    assert "export HF_HUB_OFFLINE=1\n" in out
    server = json.loads(cli("env", "--server", "http://depot:8080/", "--json").output)
    assert server["HF_ENDPOINT"] == "http://depot:8080"
    assert server["HF_HUB_DISABLE_IMPLICIT_TOKEN"] == "1"
    assert server["HF_UPDATE_DOWNLOAD_COUNTS"] == "0"


# -- bad input -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args, message",
    [
        (["import", "{missing}", "--repo", "org/x"], "Error: no such directory: {missing}\n"),
        (["import", "{empty}", "--repo", "org/x"],
         "Error: no model files in {empty}: expected config.json or weights (*.safetensors, "
         "*.bin, *.onnx, ...), as save_pretrained writes them\n"),
        (["import", "{model}", "--repo", "../x"],
         "Error: invalid repo id '../x': use 'org/name' (letters, digits, '-', '_', '.'; no '--' or '..')\n"),
        (["import", "{model}", "--repo", "a--b"],
         "Error: invalid repo id 'a--b': use 'org/name' (letters, digits, '-', '_', '.'; no '--' or '..')\n"),
        (["import", "{model}", "--repo", "org/x", "--ref", "../../etc"],
         "Error: invalid ref name '../../etc': use letters, digits, '.', '_', '-', '/' (and not a 40-hex commit id)\n"),
        (["show", "org/nope"], "Error: model repo 'org/nope' is not in the depot; see 'modeldepot list'\n"),
        (["show", "org/clf@nope"],
         "Error: revision 'nope' of org/clf is not in the depot; see 'modeldepot show org/clf'\n"),
        (["rm", "org/nope"], "Error: model repo 'org/nope' is not in the depot; see 'modeldepot list'\n"),
        (["rm", "org/clf@" + "0" * 40],
         f"Error: revision '{'0' * 40}' of org/clf is not in the depot; see 'modeldepot show org/clf'\n"),
        (["tag", "org/nope", "prod"], "Error: model repo 'org/nope' is not in the depot; see 'modeldepot list'\n"),
        (["tag", "org/clf@nope", "prod"],
         "Error: revision 'nope' of org/clf is not in the depot; see 'modeldepot show org/clf'\n"),
        (["tag", "org/clf", "a" * 40],
         f"Error: invalid ref name '{'a' * 40}': use letters, digits, '.', '_', '-', '/' (and not a 40-hex commit id)\n"),
        (["show", "org/clf", "--type", "dataset"],
         "Error: dataset repo 'org/clf' is not in the depot; it is a model repo (use --type model)\n"),
        (["show", "org/clf@"], "Error: empty revision in 'org/clf@': use REPO@REVISION\n"),
        (["import", "{traversal}", "--repo", "org/x"], "Error: refusing unsafe file path '..\\\\evil.json'\n"),
    ],
)
def test_bad_input_is_one_line_and_changes_nothing(cli, models, home, tmp_path, args, message):
    src = models.get("classifier")
    cli("import", src, "--repo", "org/clf")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no model here")
    traversal = tmp_path / "traversal"
    shutil.copytree(src, traversal)
    (traversal / "..\\evil.json").write_text("{}")
    subst = {"missing": tmp_path / "missing", "empty": empty, "model": src, "traversal": traversal}
    args = [a.format(**subst) for a in args]
    before_tree, before_registry = tree_state(home), registry_state(cli)
    r = cli(*args)
    assert r.exit_code == 1
    assert r.output == message.format(**subst)
    assert "Traceback" not in r.output
    assert tree_state(home) == before_tree
    assert registry_state(cli) == before_registry


def test_usage_errors_exit_2(cli):
    r = cli("import")
    assert r.exit_code == 2
    assert "Missing argument 'DIRECTORY'" in r.output


@pytest.mark.parametrize("path", ["../x", "a/../b", "/etc/passwd", "a//b", "a\\b", ".git/config",
                                  "", "./a", "C:x"])
def test_unsafe_paths_are_refused(path):
    with pytest.raises(InvalidInput):
        check_relpath(path)


def test_publish_refuses_traversing_file_records(depot):
    rec = FileRecord("../evil", 1, "0" * 64, "0" * 40)
    with pytest.raises(InvalidInput, match="refusing unsafe file path '../evil'"):
        depot.publish(repo_type="model", name="org/x", commit="1" * 40, files=[rec], source="import")
    assert depot.list_repos() == []


def test_every_command_has_help(cli):
    from cli import main

    def walk(group, prefix):
        for name, cmd in group.commands.items():
            yield prefix + [name], cmd
            if hasattr(cmd, "commands"):
                yield from walk(cmd, prefix + [name])

    for path, cmd in walk(main, []):
        r = cli(*path, "--help")
        assert r.exit_code == 0, path
        assert cmd.help, f"'modeldepot {' '.join(path)}' has no help text"


def test_gc_keeps_a_partial_download_that_a_live_process_holds(cli, home):
    import fcntl

    (home / "tmp").mkdir(parents=True, exist_ok=True)
    held = home / "tmp" / "pull-abc.incomplete"
    dead = home / "tmp" / "pull-def.incomplete"
    held.write_bytes(b"partial")
    dead.write_bytes(b"partial")
    with open(held, "rb") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        r = json.loads(cli("gc", "--json").output)
        assert r["temp_files"] == 1
        assert held.exists() and not dead.exists()


def test_an_unexpected_error_is_one_line_unless_debugging(cli, monkeypatch):
    from registry.depot import Depot

    def boom(self, **kwargs):
        raise ValueError("something broke")

    monkeypatch.setattr(Depot, "list_repos", boom)
    r = cli("list")
    assert r.exit_code == 1
    assert r.output == ("Error: unexpected ValueError: something broke "
                        "(set MODELDEPOT_DEBUG=1 for the traceback)\n")
    monkeypatch.setenv("MODELDEPOT_DEBUG", "1")
    with pytest.raises(ValueError, match="something broke"):
        cli("list")


@both_backends
def test_a_short_stream_is_refused_and_stores_nothing(depot, home):
    import io

    with pytest.raises(IntegrityError, match="^expected 10 bytes, read 5$"):
        depot.store.ingest_stream(io.BytesIO(b"12345"), 10, label="short")
    assert list(depot.store.iter_blob_sizes()) == []
    assert list((home / "tmp").iterdir()) == []
