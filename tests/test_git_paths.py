"""Paths inside ``.git`` at any depth never enter the depot and are never served.

Written into a plain directory, ``sub/.git/config`` with a ``core.fsmonitor`` line makes a
``git status`` there run a command: a download must not be able to plant one.
"""

from __future__ import annotations

import io
import tarfile

import pytest
import requests

from registry.depot import FileRecord, compute_commit
from registry.errors import InvalidInput
from registry.importer import import_dir
from serverutil import AppServer

PLANTED = b"[core]\n\tfsmonitor = touch /tmp/pwned\n"


def _publish(depot, path: str):
    d = depot.store.ingest_stream(io.BytesIO(PLANTED), len(PLANTED), label="x")
    files = [FileRecord.from_digest(path, d, lfs=False)]
    return depot.publish(repo_type="model", name="org/evil", commit=compute_commit(files),
                         files=files, source="import")


@pytest.mark.parametrize("path", ["sub/.git/config", "a/b/.git/hooks/post-checkout",
                                  "sub/.GIT/config", ".git/config"])
def test_publish_refuses_git_components_at_any_depth(depot, path):
    with pytest.raises(InvalidInput) as e:
        _publish(depot, path)
    assert str(e.value) == f"refusing file path inside .git: {path!r}"
    assert depot.inventory()["revisions"] == []


def test_git_like_names_that_are_not_git_are_fine(depot):
    assert _publish(depot, "sub/.gitattributes").created
    assert _publish(depot, "docs/.github/x.md").created


def test_import_skips_a_nested_git_file_and_dir(depot, tmp_path):
    src = tmp_path / "m"
    (src / "sub" / ".git").mkdir(parents=True)
    (src / "sub" / ".git" / "config").write_bytes(PLANTED)
    (src / "vendored").mkdir()
    (src / "vendored" / ".git").write_text("gitdir: ../.git/modules/vendored\n")
    (src / "config.json").write_text('{"model_type": "bert", "architectures": ["BertModel"]}')
    (src / "vendored" / "notes.txt").write_text("kept\n")
    result = import_dir(depot, src, "org/m")
    paths = [f["path"] for f in depot.resolve("model", "org/m")["files"]]
    assert paths == ["config.json", "vendored/notes.txt"] and result.created


def test_bundle_import_refuses_a_nested_git_path(cli, tmp_path, models):
    import json

    from registry.bundle import create_bundle
    from registry.config import Settings
    from registry.depot import Depot

    sender = Depot(Settings.from_env(home=tmp_path / "sender"))
    import_dir(sender, models.get("classifier"), "org/clf")
    out = io.BytesIO()
    create_bundle(sender, out, ["org/clf"])
    data = out.getvalue()
    # Rename config.json to sub/.git/config inside the manifest (same length keeps offsets).
    raw = data[512:512 + tarfile.TarInfo.frombuf(data[:512], "utf-8", "strict").size]
    manifest = json.loads(raw)
    assert b'"path":"config.json"' in raw
    forged = raw.replace(b'"path":"config.json"', b'"path":"s/.git/conf"', 1)
    assert len(forged) == len(raw)
    data = data[:512] + forged + data[512 + len(raw):]
    r = cli("bundle", "import", "-", input=data)
    commit = manifest["revisions"][0]["commit"]
    assert (r.exit_code, r.stderr) == (
        1, f"Error: the bundle on stdin: manifest.json is invalid: org/clf@{commit}: refusing file "
           "path inside .git: 's/.git/conf'; nothing was imported\n")


def test_pull_refuses_a_nested_git_path_before_downloading(depot, tmp_path, monkeypatch, models):
    from registry import hub
    from registry.config import Settings
    from registry.depot import Depot
    from registry.server.app import ServeOptions, create_app

    upstream = Depot(Settings.from_env(home=tmp_path / "up"))
    import_dir(upstream, models.get("classifier"), "org/clf")
    listed = hub._file_list

    def with_planted(*args, **kwargs):
        files = listed(*args, **kwargs)
        return files + [hub.UpstreamFile(path="sub/.git/config", size=len(PLANTED), lfs=False)]

    monkeypatch.setattr(hub, "_file_list", with_planted)
    seen = []
    app = create_app(upstream.settings, ServeOptions(inference=False))

    @__import__("aiohttp").web.middleware
    async def log(request, handler):
        seen.append(request.path)
        return await handler(request)

    app.middlewares.append(log)
    with AppServer(app) as server:
        with pytest.raises(InvalidInput) as e:
            hub.pull(depot, "model", "org/clf", endpoint=server.url)
    assert str(e.value) == "refusing file path inside .git: 'sub/.git/config'"
    assert not [p for p in seen if "/resolve/" in p]
    assert depot.inventory()["revisions"] == []


def test_server_never_hands_out_git_paths_registered_before_the_check(depot, monkeypatch):
    """A depot filled by an older modeldepot may hold such a path: it is not listed or served."""
    from registry import depot as depot_mod
    from registry.store import local as store_mod  # where Store.publish_snapshot looks it up
    from registry.server.app import ServeOptions, create_app

    monkeypatch.setattr(depot_mod, "check_relpath", lambda p: p)
    monkeypatch.setattr(store_mod, "check_relpath", lambda p: p)
    d = depot.store.ingest_stream(io.BytesIO(PLANTED), len(PLANTED), label="x")
    ok = depot.store.ingest_stream(io.BytesIO(b"{}"), 2, label="y")
    files = [FileRecord.from_digest("sub/.git/config", d, lfs=False),
             FileRecord.from_digest("config.json", ok, lfs=False)]
    depot.publish(repo_type="model", name="org/old", commit=compute_commit(files), files=files,
                  source="import")
    monkeypatch.undo()
    with AppServer(create_app(depot.settings, ServeOptions(inference=False))) as server:
        url = server.url
        info = requests.get(f"{url}/api/models/org/old", timeout=10).json()
        assert [s["rfilename"] for s in info["siblings"]] == ["config.json"]
        tree = requests.get(f"{url}/api/models/org/old/tree/main?recursive=1", timeout=10).json()
        assert [e["path"] for e in tree] == ["config.json"]
        listing = requests.get(f"{url}/api/models?full=1", timeout=10).json()
        assert [s["rfilename"] for s in listing[0]["siblings"]] == ["config.json"]
        r = requests.get(f"{url}/org/old/resolve/main/sub/.git/config", timeout=10)
        assert (r.status_code, r.headers.get("X-Error-Code")) == (404, "EntryNotFound")
        r = requests.post(f"{url}/api/models/org/old/paths-info/main",
                          data={"paths": ["sub/.git/config", "sub"]}, timeout=10)
        assert r.json() == []
