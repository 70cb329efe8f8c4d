"""The Hub API served from the registry: shapes, headers and errors that HF clients rely on."""

from __future__ import annotations

import hashlib
import http.client
import json
from pathlib import Path

import pytest
import requests

from serverutil import AppServer


def _write(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    return root


@pytest.fixture(scope="module")
def hub(tmp_path_factory, models):
    """A depot with a classifier (+ alias prod), a nested repo and a dataset, served in-process."""
    from registry.config import Settings
    from registry.depot import Depot
    from registry.importer import import_dir
    from registry.server.app import ServeOptions, create_app

    root = tmp_path_factory.mktemp("hubsrv")
    settings = Settings.from_env(home=root / "home")
    depot = Depot(settings)
    clf = import_dir(depot, models.get("classifier"), "org/clf")
    depot.tag("model", "org/clf", None, "prod")
    nested = _write(root / "nested", {
        "config.json": b'{"model_type": "bert", "architectures": ["BertModel"]}',
        "sub/dir/a.json": b'{"a": 1}',
        "sub/b.txt": b"bee\n",
        "weights/model.safetensors": b"\0" * 64,
    })
    nest = import_dir(depot, nested, "org/nested")
    import_dir(depot, _write(root / "ds", {"data/train.csv": b"text,label\nhi,1\n"}),
               "org/tiny-ds", repo_type="dataset")
    import_dir(depot, nested, "solo")  # a bare, canonical-style repo id
    with AppServer(create_app(settings, ServeOptions(inference=False))) as server:
        yield {"url": server.url, "depot": depot, "clf": clf.commit, "nested": nest.commit,
               "src": models.get("classifier")}


def get(hub, path, **kw):
    return requests.get(hub["url"] + path, timeout=10, **kw)


def raw_get(hub, path: str) -> tuple[int, dict, bytes]:
    """GET ``path`` byte for byte (requests would normalise ``..`` away before sending)."""
    host, port = hub["url"].removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.putrequest("GET", path, skip_accept_encoding=True)
        conn.endheaders()
        r = conn.getresponse()
        return r.status, dict(r.getheaders()), r.read()
    finally:
        conn.close()


def git_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def test_resolve_regular_file_headers(hub):
    data = (hub["src"] / "config.json").read_bytes()
    r = requests.head(hub["url"] + "/org/clf/resolve/main/config.json", timeout=10)
    assert r.status_code == 200
    assert r.headers["X-Repo-Commit"] == hub["clf"]
    assert r.headers["ETag"] == f'"{git_sha1(data)}"'
    assert r.headers["X-Linked-Size"] == str(len(data))
    assert r.headers["Content-Length"] == str(len(data))
    assert r.headers["Accept-Ranges"] == "bytes"
    assert "X-Linked-Etag" not in r.headers and "X-Xet-Hash" not in r.headers
    r = get(hub, "/org/clf/resolve/main/config.json", headers={"Accept-Encoding": "gzip, br"})
    assert r.content == data and "Content-Encoding" not in r.headers


def test_resolve_lfs_file_by_alias_and_commit(hub):
    data = (hub["src"] / "model.safetensors").read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    for rev in ("prod", hub["clf"]):
        r = requests.head(f"{hub['url']}/org/clf/resolve/{rev}/model.safetensors", timeout=10)
        assert r.status_code == 200
        assert r.headers["X-Linked-Etag"] == f'"{sha}"'
        assert r.headers["ETag"] == f'"{sha}"'
        assert r.headers["X-Repo-Commit"] == hub["clf"]
        assert r.headers["X-Linked-Size"] == str(len(data))
    assert get(hub, "/org/clf/resolve/prod/model.safetensors").content == data


def test_range_requests(hub):
    data = (hub["src"] / "model.safetensors").read_bytes()
    r = get(hub, "/org/clf/resolve/main/model.safetensors", headers={"Range": "bytes=0-0"})
    assert (r.status_code, r.content) == (206, data[:1])
    assert r.headers["Content-Range"] == f"bytes 0-0/{len(data)}"
    r = get(hub, "/org/clf/resolve/main/model.safetensors", headers={"Range": "bytes=1000-"})
    assert (r.status_code, r.content) == (206, data[1000:])
    assert r.headers["Content-Range"] == f"bytes 1000-{len(data) - 1}/{len(data)}"
    assert r.headers["ETag"] == f'"{hashlib.sha256(data).hexdigest()}"'
    r = get(hub, "/org/clf/resolve/main/model.safetensors",
            headers={"Range": f"bytes={len(data) + 5}-"})
    assert r.status_code == 416


def test_dataset_resolve_and_bare_repo_id(hub):
    r = get(hub, "/datasets/org/tiny-ds/resolve/main/data/train.csv")
    assert (r.status_code, r.content) == (200, b"text,label\nhi,1\n")
    assert get(hub, "/solo/resolve/main/sub/b.txt").content == b"bee\n"
    assert get(hub, "/api/models/solo").json()["id"] == "solo"
    assert get(hub, "/api/models/solo/revision/main").json()["sha"] == hub["nested"]


@pytest.mark.parametrize("path, code, message", [
    ("/org/nope/resolve/main/config.json", "RepoNotFound",
     "model repo 'org/nope' is not in the depot; see 'modeldepot list'"),
    ("/org/clf/resolve/v9/config.json", "RevisionNotFound",
     "revision 'v9' of org/clf is not in the depot; see 'modeldepot show org/clf'"),
    ("/datasets/org/clf/resolve/main/config.json", "RepoNotFound",
     "dataset repo 'org/clf' is not in the depot; it is a model repo (use --type model)"),
    ("/api/models/org/nope", "RepoNotFound",
     "model repo 'org/nope' is not in the depot; see 'modeldepot list'"),
    ("/api/models/org/clf/revision/v9", "RevisionNotFound",
     "revision 'v9' of org/clf is not in the depot; see 'modeldepot show org/clf'"),
    ("/api/models/org/clf/tree/main/additional_chat_templates?recursive=False&expand=False",
     "EntryNotFound", None),
])
def test_errors_carry_hub_codes(hub, path, code, message):
    r = get(hub, path)
    assert r.status_code == 404
    assert r.headers["X-Error-Code"] == code
    body = r.json()
    assert body["error_type"] == code
    if message:
        assert body["error"] == message and r.headers["X-Error-Message"] == message


def test_missing_file_404_carries_commit(hub):
    r = requests.head(hub["url"] + "/org/clf/resolve/prod/custom_generate/generate.py", timeout=10)
    assert r.status_code == 404
    assert r.headers["X-Error-Code"] == "EntryNotFound"
    assert r.headers["X-Repo-Commit"] == hub["clf"]


@pytest.mark.parametrize("path", [
    "/org/clf/resolve/main/../../../../etc/passwd",
    "/org/clf/resolve/main/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
    "/org/clf/resolve/main/..%2F..%2F..%2Fetc%2Fpasswd",
    "/org/clf/resolve/main/%2Fetc%2Fpasswd",
    "/org/clf/resolve/main/sub%00dir",
    "/org/clf/resolve/main/blobs/sha256",
])
def test_traversal_never_reaches_the_filesystem(hub, path):
    status, headers, body = raw_get(hub, path)
    assert status == 404
    assert headers["X-Error-Code"] == "EntryNotFound"
    assert headers["X-Repo-Commit"] == hub["clf"]
    assert b"root:" not in body


@pytest.mark.parametrize("path, code", [
    ("/org/clf/resolve/" + "a" * 5000 + "/config.json", "RevisionNotFound"),
    ("/org/clf/resolve/..%2F..%2Fetc/config.json", "RevisionNotFound"),
    ("/org/clf/resolve/%00/config.json", "RevisionNotFound"),
    ("/..%2F..%2Fetc/passwd/resolve/main/config.json", "RepoNotFound"),
    ("/api/models/org/clf/revision/..%2F..%2F..", "RevisionNotFound"),
    ("/api/models/..%2Fetc/clf", "RepoNotFound"),
])
def test_absurd_revisions_and_repo_ids(hub, path, code):
    status, headers, _body = raw_get(hub, path)
    assert (status, headers.get("X-Error-Code")) == (404, code)


def test_model_info_with_blobs(hub):
    data = (hub["src"] / "model.safetensors").read_bytes()
    plain = get(hub, "/api/models/org/clf").json()
    assert plain["sha"] == hub["clf"] and plain["id"] == "org/clf"
    assert {"rfilename": "config.json"} in plain["siblings"]
    assert plain["pipeline_tag"] == "text-classification"
    assert plain["library_name"] == "transformers"
    assert plain["lastModified"].endswith("Z") and plain["createdAt"].endswith("Z")
    assert plain["gated"] is False and plain["private"] is False
    assert plain["cardData"]["license"] == "mit"
    info = get(hub, "/api/models/org/clf/revision/prod?blobs=True").json()
    sib = {s["rfilename"]: s for s in info["siblings"]}
    pointer = (f"version https://git-lfs.github.com/spec/v1\noid sha256:"
               f"{hashlib.sha256(data).hexdigest()}\nsize {len(data)}\n").encode()
    assert sib["model.safetensors"] == {
        "rfilename": "model.safetensors", "size": len(data), "blobId": git_sha1(pointer),
        "lfs": {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data),
                "pointerSize": len(pointer)},
    }
    cfg = (hub["src"] / "config.json").read_bytes()
    assert sib["config.json"] == {"rfilename": "config.json", "size": len(cfg),
                                  "blobId": git_sha1(cfg)}


def test_tree_recursive_and_paginated(hub, monkeypatch):
    from registry.server import hub_api

    top = get(hub, "/api/models/org/nested/tree/main?recursive=False&expand=False").json()
    assert [(e["type"], e["path"]) for e in top] == [
        ("file", "config.json"), ("directory", "sub"), ("directory", "weights")]
    sub = get(hub, "/api/models/org/nested/tree/main/sub?recursive=True&expand=True").json()
    assert [(e["type"], e["path"]) for e in sub] == [
        ("file", "sub/b.txt"), ("directory", "sub/dir"), ("file", "sub/dir/a.json")]
    assert sub[0]["oid"] == git_sha1(b"bee\n") and sub[0]["lastCommit"]["id"] == hub["nested"]
    # Directory oids are real git tree ids: the tree of sub/dir holds one blob, a.json.
    blob = bytes.fromhex(git_sha1(b'{"a": 1}'))
    body = b"100644 a.json\0" + blob
    assert sub[1]["oid"] == hashlib.sha1(b"tree %d\0" % len(body) + body).hexdigest()
    monkeypatch.setattr(hub_api, "TREE_PAGE_SIZE", 2)
    r = get(hub, "/api/models/org/nested/tree/main?recursive=True&expand=False")
    assert len(r.json()) == 2
    assert r.links["next"]["url"] == (hub["url"] + "/api/models/org/nested/tree/main?"
                                      "recursive=True&expand=False&cursor=2")
    paths, url = [], hub["url"] + "/api/models/org/nested/tree/main?recursive=True"
    while url:
        r = requests.get(url, timeout=10)
        paths += [e["path"] for e in r.json()]
        url = r.links.get("next", {}).get("url")
    assert paths == ["config.json", "sub", "sub/b.txt", "sub/dir", "sub/dir/a.json", "weights",
                     "weights/model.safetensors"]


def test_refs_paths_info_and_commits(hub):
    refs = get(hub, "/api/models/org/clf/refs").json()
    assert refs == {
        "branches": [{"name": "main", "ref": "refs/heads/main", "targetCommit": hub["clf"]}],
        "converts": [],
        "tags": [{"name": "prod", "ref": "refs/tags/prod", "targetCommit": hub["clf"]}],
    }
    r = requests.post(hub["url"] + "/api/models/org/nested/paths-info/main", timeout=10,
                      data={"paths": ["sub/b.txt", "sub", "nope"], "expand": "False"})
    assert [(e["type"], e["path"]) for e in r.json()] == [("file", "sub/b.txt"),
                                                          ("directory", "sub")]
    commits = get(hub, "/api/models/org/clf/commits/main").json()
    assert [c["id"] for c in commits] == [hub["clf"]]


def test_listing_filters_sort_and_pagination(hub):
    ids = lambda r: [m["id"] for m in r.json()]  # noqa: E731
    assert ids(get(hub, "/api/models")) == ["org/clf", "org/nested", "solo"]
    assert ids(get(hub, "/api/models?search=CL")) == ["org/clf"]
    assert ids(get(hub, "/api/models?author=org")) == ["org/clf", "org/nested"]
    assert ids(get(hub, "/api/models?filter=text-classification&filter=license:mit")) == ["org/clf"]
    assert ids(get(hub, "/api/models?filter=test&filter=nope")) == []
    assert ids(get(hub, "/api/models?pipeline_tag=feature-extraction")) == ["org/nested", "solo"]
    assert ids(get(hub, "/api/datasets?search=tiny")) == ["org/tiny-ds"]
    r = get(hub, "/api/models?limit=1&sort=createdAt&direction=-1")
    assert ids(r) == ["solo"]
    assert r.links["next"]["url"] == (hub["url"] + "/api/models?limit=1&sort=createdAt&"
                                      "direction=-1&cursor=1")
    assert ids(requests.get(r.links["next"]["url"], timeout=10)) == ["org/nested"]
    full = get(hub, "/api/models?search=clf&full=True&cardData=True").json()[0]
    assert full["sha"] == hub["clf"] and full["cardData"]["license"] == "mit"
    assert {"rfilename": "config.json"} in full["siblings"]
    plain = get(hub, "/api/models?search=clf").json()[0]
    assert "siblings" not in plain and "cardData" not in plain
    expanded = get(hub, "/api/models?search=clf&expand=sha&expand=downloads").json()[0]
    assert expanded == {"_id": plain["_id"], "id": "org/clf", "sha": hub["clf"], "downloads": 0}
    r = get(hub, "/api/models?sort=bogus")
    assert r.status_code == 422 and r.json() == {
        "error": "unknown sort 'bogus': use one of downloads, likes, lastModified, createdAt",
        "error_type": "InvalidInput"}


def test_huggingface_hub_client_against_the_server(hub, tmp_path):
    """The unmodified client library, in-process (its endpoint passed explicitly)."""
    from huggingface_hub import HfApi, hf_hub_download

    api = HfApi(endpoint=hub["url"], token=False)
    assert [m.id for m in api.list_models(author="org", limit=5)] == ["org/clf", "org/nested"]
    info = api.model_info("org/clf", revision="prod", files_metadata=True)
    assert info.sha == hub["clf"]
    assert sorted(s.rfilename for s in info.siblings) == sorted(
        p.name for p in hub["src"].iterdir())
    assert [f.path for f in api.list_repo_tree("org/nested", "sub", recursive=True)] == [
        "sub/b.txt", "sub/dir", "sub/dir/a.json"]
    assert api.list_repo_refs("org/clf").tags[0].name == "prod"
    assert [d.id for d in api.list_datasets(search="tiny")] == ["org/tiny-ds"]
    path = hf_hub_download("org/tiny-ds", "data/train.csv", repo_type="dataset",
                           cache_dir=tmp_path, endpoint=hub["url"], token=False)
    assert Path(path).read_bytes() == b"text,label\nhi,1\n"
    assert json.loads(Path(hf_hub_download("org/clf", "config.json", revision="prod",
                                           cache_dir=tmp_path, endpoint=hub["url"],
                                           token=False)).read_text())["model_type"] == "bert"
