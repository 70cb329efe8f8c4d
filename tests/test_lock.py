"""Lockfiles: what `lock` writes, `verify --lock` proving the bytes, and `sync` filling a depot
offline (listing what is missing) or from an upstream depot."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from registry.bundle import create_bundle, import_bundle
from registry.cli._common import human_size
from registry.config import Settings
from registry.depot import Depot
from registry.importer import import_dir
from test_bundle import RECIPE, add_derived

SYNC_OFFLINE_ERROR = (
    "Error: {n} locked revision(s) missing and sync is offline; run 'modeldepot sync' with an "
    "upstream (--endpoint URL or MODELDEPOT_ENDPOINT), or import a bundle that holds them "
    "('modeldepot bundle import')\n")
DERIVED_HINT = ("(derived ONNX revision: only another depot's 'serve' can supply it; or carry it in "
                "a bundle, or re-export it)")


def open_depot(home: Path) -> Depot:
    return Depot(Settings.from_env(home=home))


@pytest.fixture(scope="module")
def locked(tmp_path_factory, models):
    """Depot A (org/clf with alias prod and a derived ONNX revision), a lockfile pinning both,
    and a bundle of them."""
    root = tmp_path_factory.mktemp("locked")
    a = open_depot(root / "a")
    import_dir(a, models.get("classifier"), "org/clf")
    a.tag("model", "org/clf", None, "prod")
    parent, derived = add_derived(a)
    from registry.lockfile import build_lock, write_lock

    lock = write_lock(build_lock(a, ["org/clf@prod", "org/clf@onnx"]), root / "modeldepot.lock")
    bundle = root / "all.bundle"
    create_bundle(a, bundle, ["org/clf"])
    return {"root": root, "home": root / "a", "depot": a, "parent": parent, "derived": derived,
            "lock": lock, "bundle": bundle}


def test_lock_pins_commit_refs_files_and_recipe_one_file_per_line(cli, models, tmp_path):
    home = tmp_path / "a"
    cli("--home", home, "import", models.get("classifier"), "--repo", "org/clf")
    cli("--home", home, "tag", "org/clf", "prod")
    parent, derived = add_derived(open_depot(home))
    out = tmp_path / "modeldepot.lock"
    r = cli("--home", home, "lock", "org/clf@prod", "org/clf@onnx", "org/clf", "-o", out)
    assert r.exit_code == 0, r.output
    depot = open_depot(home)
    files = {c: depot.resolve("model", "org/clf", c)["files"] for c in (parent, derived)}
    assert r.output == f"locked 2 revision(s), {len(files[parent]) + len(files[derived])} file(s) in {out}\n"

    def entry(commit, requested, refs, artifact, parent_commit):
        lines = ",\n".join(
            f'        {{"path": "{f["path"]}", "size": {f["size"]}, "sha256": "{f["sha256"]}"}}'
            for f in files[commit])
        return (
            "    {\n"
            '      "type": "model",\n'
            '      "repo": "org/clf",\n'
            f'      "requested": "{requested}",\n'
            f'      "commit": "{commit}",\n'
            f'      "parent_commit": {json.dumps(parent_commit)},\n'
            f'      "refs": {refs},\n'
            f'      "artifact": {artifact},\n'
            f'      "size": {sum(f["size"] for f in files[commit])},\n'
            '      "files": [\n'
            f"{lines}\n"
            "      ]\n"
            "    }")

    artifact = json.dumps({"kind": "onnx", "recipe_key": "k1", "recipe": RECIPE}, indent=2)
    artifact = artifact.replace("\n", "\n      ")
    entries = sorted([
        (parent, entry(parent, "prod", '{"main": "branch", "prod": "alias"}', "null", None)),
        (derived, entry(derived, "onnx", '{"onnx": "alias"}', artifact, parent)),
    ])
    assert out.read_text() == ('{\n  "format": "modeldepot-lock/1",\n  "entries": [\n'
                               + ",\n".join(e for _, e in entries) + "\n  ]\n}\n")
    # '-' writes the same text to stdout.
    r = cli("--home", home, "lock", "org/clf@prod", "org/clf@onnx", "-o", "-")
    assert r.output == out.read_text()


def test_verify_lock_proves_the_bytes_and_only_the_locked_ones(cli, locked, tmp_path, models):
    b = tmp_path / "b"
    import_bundle(open_depot(b), [locked["bundle"]])
    depot = open_depot(b)
    r = cli("--home", b, "verify", "--lock", locked["lock"])
    files = [f for rev in ("prod", "onnx") for f in depot.resolve("model", "org/clf", rev)["files"]]
    blobs = {f["sha256"] for f in files}
    assert (r.exit_code, r.output) == (
        0, f"verified {len(blobs)} blob(s), {human_size(sum(f['size'] for f in files))}: ok\n")

    # Damage outside the lockfile does not matter to it; damage inside does.
    import_dir(depot, models.get("ner"), "org/other")
    other = depot.resolve("model", "org/other")["files"][0]["sha256"]
    _corrupt(depot.store.blob_path(other))
    assert cli("--home", b, "verify", "--lock", locked["lock"]).exit_code == 0
    weights = next(f for f in depot.resolve("model", "org/clf")["files"] if f["path"] == "model.safetensors")
    _corrupt(depot.store.blob_path(weights["sha256"]))
    r = cli("--home", b, "verify", "--lock", locked["lock"])
    assert r.exit_code == 1
    assert r.output.splitlines()[:2] == [
        f"CORRUPT: org/clf@{locked['parent'][:12]} model.safetensors (sha256 {weights['sha256'][:16]}…)",
        f"CORRUPT: org/clf@{locked['derived'][:12]} model.safetensors (sha256 {weights['sha256'][:16]}…)",
    ]


def _corrupt(path: Path) -> None:
    os.chmod(path, 0o644)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_verify_lock_reports_what_is_not_registered(cli, locked, tmp_path):
    lock = json.loads(locked["lock"].read_text())
    lock["entries"][0]["files"][0]["sha256"] = "0" * 64
    tampered = tmp_path / "tampered.lock"
    tampered.write_text(json.dumps(lock))
    path = lock["entries"][0]["files"][0]["path"]
    commit = lock["entries"][0]["commit"]
    r = cli("--home", locked["home"], "verify", "--lock", tampered)
    assert r.exit_code == 1
    assert r.output.splitlines()[0] == f"NOT REGISTERED: org/clf@{commit[:12]} {path}"
    r = cli("--home", locked["home"], "sync", tampered, "--offline")
    assert r.exit_code == 1
    assert f"DIFFERS  org/clf@{commit[:12]} (its files are not the locked ones)" in r.stdout.splitlines()
    assert r.stderr == ("Error: 1 locked revision(s) are in the depot with other files than the lockfile "
                        "pins; the lockfile or the depot was altered: check with 'modeldepot verify "
                        "--lock FILE'\n")
    r = cli("--home", locked["home"], "verify", "org/clf", "--lock", tampered)
    assert (r.exit_code, r.stderr.splitlines()[-1]) == (2, "Error: give REPO[@REV] or --lock FILE, not both")


@pytest.mark.parametrize("content, message", [
    ("[1, 2", "{path} is not a modeldepot lockfile (not valid JSON: Expecting ',' delimiter at line 1 column 6)"),
    ('{"format": ' * 50_000 + "1" + "}" * 50_000,
     "{path} is not a modeldepot lockfile (not valid JSON: nested deeper than 64 levels)"),
    ('{"format": "modeldepot-lock/2", "entries": []}',
     "{path} has lockfile format 'modeldepot-lock/2'; this modeldepot reads 'modeldepot-lock/1' only: "
     "upgrade modeldepot"),
    ('{"entries": []}', "{path} is not a modeldepot lockfile (no format); make one with 'modeldepot lock "
                        "REPO[@REV] -o FILE'"),
    ('{"format": "modeldepot-lock/1", "entries": [{"type": "model", "repo": "org/x", "commit": "abc"}]}',
     "{path} is invalid: org/x@abc: commit must be 40 lowercase hex digits"),
])
def test_bad_lockfiles_are_refused(cli, tmp_path, content, message):
    path = tmp_path / "bad.lock"
    path.write_text(content)
    for args in (("sync", path, "--offline"), ("verify", "--lock", path)):
        r = cli(*args)
        assert (r.exit_code, r.stderr) == (1, f"Error: {message.format(path=path)}\n")


def test_sync_offline_lists_missing_then_passes_after_a_bundle(cli, locked, tmp_path):
    b = tmp_path / "b"
    parent, derived = locked["parent"][:12], locked["derived"][:12]
    r = cli("--home", b, "sync", locked["lock"], "--offline")
    missing = sorted([f"MISSING  org/clf@{parent}", f"MISSING  org/clf@{derived} {DERIVED_HINT}"],
                     key=lambda line: line.split("@")[1])
    assert (r.exit_code, r.stdout.splitlines(), r.stderr) == (1, missing, SYNC_OFFLINE_ERROR.format(n=2))
    # MODELDEPOT_OFFLINE=1 means the same; nothing was added either way.
    r = cli("--home", b, "sync", locked["lock"], env={"MODELDEPOT_OFFLINE": "1"})
    assert (r.exit_code, r.stderr) == (1, SYNC_OFFLINE_ERROR.format(n=2))
    assert open_depot(b).inventory()["revisions"] == []

    cli("--home", b, "bundle", "import", locked["bundle"])
    open_depot(b).tag("model", "org/clf", derived, "prod")  # someone moved the alias
    r = cli("--home", b, "sync", locked["lock"], "--offline")
    lines = sorted([f"present  org/clf@{parent} (aliases: prod)", f"present  org/clf@{derived}"],
                   key=lambda line: line.split("@")[1])
    assert (r.exit_code, r.output) == (0, "\n".join(lines) + "\nall 2 locked revision(s) present\n")
    assert open_depot(b).resolve("model", "org/clf", "prod")["commit"] == locked["parent"]


def test_sync_pulls_missing_revisions_from_an_upstream_depot(cli, locked, tmp_path, guard_log):
    from registry.server.app import ServeOptions, create_app
    from serverutil import AppServer

    b = tmp_path / "b"
    app = create_app(locked["depot"].settings, ServeOptions(inference=False))
    with AppServer(app) as upstream:
        r = cli("--home", b, "sync", locked["lock"], "--endpoint", upstream.url)
    assert r.exit_code == 0, r.output
    pulled = sorted(f"pulled   org/clf@{c[:12]}" for c in (locked["parent"], locked["derived"]))
    assert r.output == "\n".join(pulled) + (
        "\nall 2 locked revision(s) present (2 pulled)\n")
    assert cli("--home", b, "verify", "--lock", locked["lock"]).exit_code == 0
    # The derived revision's lineage and recipe come from the lockfile.
    shown = json.loads(cli("--home", b, "show", f"org/clf@{locked['derived']}", "--json").output)
    assert (shown["revision"]["parent_commit"], shown["revision"]["recipe"]) == (locked["parent"], RECIPE)
    assert open_depot(b).resolve("model", "org/clf", "prod")["commit"] == locked["parent"]
    # A second sync has nothing to do.
    r = cli("--home", b, "sync", locked["lock"], "--offline")
    assert (r.exit_code, r.output.splitlines()[-1]) == (0, "all 2 locked revision(s) present")
    assert guard_log() == ""
