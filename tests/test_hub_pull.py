"""``pull`` / ``search`` / ``info`` against a faulty upstream on loopback.

The upstream is depot A's real Hub API (in-process) behind a middleware that can drop a
connection mid-file, die mid-download, serve a wrong byte, hide optional metadata, or refuse
access; it logs every request so tests can see what was (not) downloaded.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from dataclasses import dataclass, field

import pytest
from aiohttp import web

from s3util import both_backends, stacks
from serverutil import AppServer, free_port

FAULTS = web.AppKey("faults", object)


@dataclass
class Faults:
    log: list = field(default_factory=list)  # (method, path, Range, Authorization)
    cut: dict = field(default_factory=dict)  # file -> bytes sent before the connection drops
    die: dict = field(default_factory=dict)  # file -> bytes sent before the server goes away
    corrupt: set = field(default_factory=set)  # files served with one byte flipped
    strip_info: bool = False  # repo info without sizes, blob ids or LFS entries
    no_tree: bool = False  # no tree API
    bad_etag: bool = False  # HEAD ETags that are not content hashes
    status: tuple | None = None  # (HTTP status, X-Error-Code or None) for every request
    server: AppServer | None = None

    def gets(self, name: str) -> list:
        """The Range header of every GET of file ``name``."""
        return [rng for method, path, rng, _auth in self.log
                if method == "GET" and "/resolve/" in path and path.endswith("/" + name)]

    def resolve_gets(self) -> list[str]:
        return [path.rsplit("/", 1)[1] for method, path, _r, _a in self.log
                if method == "GET" and "/resolve/" in path]


async def _send_partial(request: web.Request, data: bytes, n: int) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Accept-Ranges": "bytes"})
    resp.content_length = len(data)
    await resp.prepare(request)
    await resp.write(data[:n])
    await resp.drain()
    request.transport.close()  # flushes what was written, then hangs up mid-file
    return resp


@web.middleware
async def faulty(request: web.Request, handler):
    from registry.server import hub_api
    from registry.server.app import DEPOT

    f: Faults = request.app[FAULTS]
    f.log.append((request.method, request.path, request.headers.get("Range"),
                  request.headers.get("Authorization")))
    if f.status is not None:
        status, code = f.status
        return web.json_response({"error": "no access"}, status=status,
                                 headers={"X-Error-Code": code} if code else None)
    path = request.path
    if "/resolve/" in path:
        name = path.split("/resolve/", 1)[1].split("/", 1)[1]
        if request.method == "GET" and (name in f.cut or name in f.die or name in f.corrupt):
            repo_type, targets = hub_api.parse_resolve(request.raw_path.lstrip("/"))
            depot = request.app[DEPOT]
            _commit, row = hub_api._find_file(depot, repo_type, targets)
            data = depot.store.blob_path(row.sha256).read_bytes()
            if name in f.corrupt:
                return web.Response(body=data[:-1] + bytes([data[-1] ^ 1]))
            if name in f.cut:
                return await _send_partial(request, data, f.cut.pop(name))
            n = f.die.pop(name)
            f.server.stop_listening()
            return await _send_partial(request, data, n)
        resp = await handler(request)
        if f.bad_etag and isinstance(resp, hub_api.BlobResponse):
            resp._content_etag = "5f1e-1a2b3c"  # an mtime/inode style ETag, as some servers give
            resp.headers.pop("X-Linked-Etag", None)
        return resp
    if f.no_tree and "/tree/" in path:
        return web.json_response({"error": "no tree here"}, status=404)
    resp = await handler(request)
    if f.strip_info and resp.status == 200 and b'"siblings"' in resp.body:
        body = json.loads(resp.body)
        body["siblings"] = [{"rfilename": s["rfilename"]} for s in body["siblings"]]
        return web.json_response(body)
    return resp


@pytest.fixture(scope="module")
def upstream_server(tmp_path_factory, models):
    from registry.config import Settings
    from registry.depot import Depot
    from registry.importer import import_dir
    from registry.server.app import ServeOptions, create_app

    root = tmp_path_factory.mktemp("upstream")
    depot = Depot(Settings.from_env(home=root / "home"))
    src = models.get("classifier")
    clf = import_dir(depot, src, "org/clf")
    depot.tag("model", "org/clf", None, "prod")
    copy = root / "clf-copy"
    shutil.copytree(src, copy)
    (copy / "README.md").write_text("---\nlicense: apache-2.0\n---\nA copy.\n")
    import_dir(depot, copy, "org/clf-copy")
    ds = root / "ds"
    (ds / "data").mkdir(parents=True)
    (ds / "data" / "train.csv").write_text("text,label\nhi,1\n")
    import_dir(depot, ds, "org/ds", repo_type="dataset")
    app = create_app(depot.settings, ServeOptions(inference=False))
    faults = Faults()
    app[FAULTS] = faults
    app.middlewares.append(faulty)
    with AppServer(app) as server:
        faults.server = server
        yield {"url": server.url, "faults": faults, "depot": depot, "clf": clf.commit, "src": src}


@pytest.fixture
def upstream(upstream_server):
    f: Faults = upstream_server["faults"]
    f.log.clear()
    f.cut.clear()
    f.die.clear()
    f.corrupt.clear()
    f.strip_info = f.no_tree = f.bad_etag = False
    f.status = None
    yield upstream_server
    f.server.listen() if f.server._site is None else None


def pull(depot, upstream, name="org/clf", rev=None, **kw):
    from registry.hub import pull

    return pull(depot, kw.pop("repo_type", "model"), name, rev, endpoint=upstream["url"], **kw)


@stacks
def test_pull_verifies_records_metadata_and_reports_progress(backend, depot, upstream):
    class Progress:
        def __init__(self):
            self.total, self.bytes, self.files = None, 0, []

        def start(self, total_bytes, total_files):
            self.total = (total_bytes, total_files)

        def update(self, n):
            self.bytes += n

        def file_done(self, path):
            self.files.append(path)

    progress = Progress()
    result = pull(depot, upstream, progress=progress)
    src = upstream["src"]
    size = sum(p.stat().st_size for p in src.iterdir())
    assert (result.commit, result.file_count, result.size) == (upstream["clf"], 7, size)
    assert (result.downloaded_files, result.downloaded_bytes, result.reused_files) == (7, size, 0)
    assert progress.total == (size, 7) and progress.bytes == size
    assert sorted(progress.files) == sorted(p.name for p in src.iterdir())
    shown = depot.show("model", "org/clf", "prod")
    repo, rev = shown["repo"], shown["revision"]
    assert repo["source"] == upstream["url"]
    assert (repo["pipeline_tag"], repo["library_name"], repo["license"]) == (
        "text-classification", "transformers", "mit")
    assert "license:mit" in repo["tags"] and repo["card_data"]["license"] == "mit"
    assert repo["meta"]["refs"] == {"branches": {"main": result.commit},
                                    "tags": {"prod": result.commit}}
    assert repo["meta"]["config"]["model_type"] == "bert"
    assert repo["upstream_last_modified"].endswith("Z") and repo["downloads"] == 0
    assert sorted((r["name"], r["kind"]) for r in rev["refs"]) == [("main", "branch"),
                                                                   ("prod", "tag")]
    assert rev["source"] == "pull" and rev["meta"]["lfs_classification"] == "upstream"
    files = {f["path"]: f for f in rev["files"]}
    assert {f["verification"] for f in files.values()} == {"verified"}
    assert files["model.safetensors"]["lfs"] and not files["config.json"]["lfs"]
    data = (src / "model.safetensors").read_bytes()
    assert files["model.safetensors"]["sha256"] == hashlib.sha256(data).hexdigest()
    # Every file was fetched by commit, never by branch name.
    assert {p.split("/resolve/")[1].split("/")[0] for _m, p, _r, _a in upstream["faults"].log
            if "/resolve/" in p} == {result.commit}


def test_pull_of_a_mirrored_repo_downloads_nothing(depot, upstream, cli):
    pull(depot, upstream)
    upstream["faults"].log.clear()
    r = cli("pull", "org/clf@prod", "--endpoint", upstream["url"])
    assert r.exit_code == 0, r.output
    assert r.output == (f"pulled org/clf@{upstream['clf'][:12]} from {upstream['url']} (7 files, "
                        "146.2 KB; nothing downloaded; 7 already in the depot); refs: main, prod\n")
    assert upstream["faults"].resolve_gets() == []


def test_shared_files_are_not_downloaded_again(depot, upstream):
    pull(depot, upstream)
    upstream["faults"].log.clear()
    result = pull(depot, upstream, "org/clf-copy")
    assert upstream["faults"].resolve_gets() == ["README.md"]
    assert (result.downloaded_files, result.reused_files) == (1, 6)
    assert depot.show("model", "org/clf-copy")["repo"]["license"] == "apache-2.0"


@pytest.mark.parametrize("strip, no_tree, source", [(True, False, "tree"), (True, True, "head")])
def test_missing_optional_metadata_is_filled_from_tree_or_head(depot, upstream, strip, no_tree,
                                                               source):
    f = upstream["faults"]
    f.strip_info, f.no_tree = strip, no_tree
    result = pull(depot, upstream)
    assert result.unverified == []
    files = {x["path"]: x for x in depot.show("model", "org/clf")["revision"]["files"]}
    assert {x["verification"] for x in files.values()} == {"verified"}
    assert files["model.safetensors"]["lfs"] and not files["vocab.txt"]["lfs"]
    asked_tree = any("/tree/" in p for _m, p, _r, _a in f.log)
    heads = [p for m, p, _r, _a in f.log if m == "HEAD"]
    assert asked_tree and (len(heads) == (7 if source == "head" else 0))


def test_no_hash_anywhere_is_recorded_as_computed(depot, upstream, cli):
    f = upstream["faults"]
    f.strip_info = f.no_tree = f.bad_etag = True
    r = cli("pull", "org/clf", "--endpoint", upstream["url"])
    assert r.exit_code == 0, r.output
    names = sorted(p.name for p in upstream["src"].iterdir())
    assert r.output.startswith(
        f"warning: {upstream['url']} gave no hash to check 7 file(s) against; their hashes "
        f"were computed on arrival and are recorded as 'computed': {', '.join(names)}\n")
    files = depot.show("model", "org/clf")["revision"]["files"]
    assert {x["verification"] for x in files} == {"computed"}
    assert depot.resolve("model", "org/clf")["meta"]["unverified"] == names
    # Without an upstream classification, the Hub's default .gitattributes rules decide.
    assert depot.resolve("model", "org/clf")["meta"]["lfs_classification"] == "partly guessed"


def test_dropped_connection_resumes_within_the_run(depot, upstream):
    f = upstream["faults"]
    f.cut["model.safetensors"] = 50_000
    result = pull(depot, upstream)
    assert f.gets("model.safetensors") == [None, "bytes=50000-"]
    data = (upstream["src"] / "model.safetensors").read_bytes()
    blob = depot.store.blob_path(hashlib.sha256(data).hexdigest())
    assert blob.read_bytes() == data and result.downloaded_bytes == result.size


@both_backends
def test_upstream_killed_mid_download_then_resumed(depot, upstream, cli):
    f = upstream["faults"]
    f.die["model.safetensors"] = 50_000
    r = cli("pull", "org/clf", "--endpoint", upstream["url"])
    assert r.exit_code == 1
    # Downloads run in parallel: once the upstream is gone, whichever file fails last-try first
    # is the one named. The file that was cut mid-stream says how far it got.
    url = re.escape(upstream["url"])
    assert re.match(rf"Error: downloading (model\.safetensors from {url} failed after 50\.0 KB of "
                    rf"134\.0 KB|\S+ from {url} failed after .*): cannot reach {url} "
                    r"\(connection refused\)", r.output), r.output
    assert r.output.endswith("Nothing was registered; run the same pull again to resume\n")
    assert depot.list_repos() == []
    data = (upstream["src"] / "model.safetensors").read_bytes()
    partial = depot.store.tmp / f"pull-{hashlib.sha256(data).hexdigest()}.incomplete"
    assert partial.stat().st_size == 50_000
    f.server.listen()
    f.log.clear()
    r = cli("pull", "org/clf", "--endpoint", upstream["url"])
    assert r.exit_code == 0, r.output
    assert f.gets("model.safetensors") == ["bytes=50000-"]
    assert not partial.exists()
    assert depot.verify()["ok"]


@both_backends
def test_wrong_byte_is_refused_and_nothing_registered(depot, upstream, cli):
    f = upstream["faults"]
    f.corrupt.add("model.safetensors")
    data = (upstream["src"] / "model.safetensors").read_bytes()
    good = hashlib.sha256(data).hexdigest()
    bad = hashlib.sha256(data[:-1] + bytes([data[-1] ^ 1])).hexdigest()
    r = cli("pull", "org/clf", "--endpoint", upstream["url"])
    assert r.exit_code == 1
    assert r.output == (f"Error: org/clf@{upstream['clf'][:12]}: model.safetensors: sha256 "
                        f"mismatch (expected {good}, got {bad}); the file from {upstream['url']} "
                        "was discarded and nothing was registered\n")
    assert depot.list_repos() == []
    assert not depot.store.has_blob(bad) and not depot.store.has_blob(good)
    assert not list(depot.store.tmp.glob(f"pull-{good}.incomplete"))


@pytest.mark.parametrize("args, status, message", [
    (["org/nope"], None,
     "Error: org/nope was not found on {url} (if it is private, pass a token with --token or "
     "HF_TOKEN; if it is a dataset, add --type dataset); check the repo id with "
     "'modeldepot search'"),
    (["org/clf@v9"], None,
     "Error: revision 'v9' of org/clf does not exist on {url}; see 'modeldepot info org/clf' "
     "for its branches and tags"),
    (["org/clf"], (401, None),
     "Error: {url} refused access to org/clf (HTTP 401): pass a token that has access "
     "(--token or HF_TOKEN)"),
    (["org/clf"], (403, None),
     "Error: {url} refused access to org/clf (HTTP 403): pass a token that has access "
     "(--token or HF_TOKEN)"),
    (["org/clf"], (403, "GatedRepo"),
     "Error: org/clf is gated on {url}: accept its conditions on the Hub, then pass a token "
     "that has access (--token or HF_TOKEN)"),
    (["org/clf", "--type", "dataset"], None,
     "Error: datasets/org/clf was not found on {url} (if it is private, pass a token with "
     "--token or HF_TOKEN; if it is a model, add --type model); check the repo id with "
     "'modeldepot search'"),
])
def test_upstream_errors_are_one_line(depot, upstream, cli, args, status, message):
    upstream["faults"].status = status
    r = cli("pull", *args, "--endpoint", upstream["url"])
    assert (r.exit_code, r.output) == (1, message.format(url=upstream["url"]) + "\n")
    assert depot.list_repos() == []


def test_endpoint_down_fails_fast(depot, cli):
    url = f"http://127.0.0.1:{free_port()}"
    for command in (["pull", "org/clf"], ["info", "org/clf"], ["search"]):
        r = cli(*command, "--endpoint", url)
        assert (r.exit_code, r.output) == (1, f"Error: cannot reach {url} (connection refused); "
                                              "check --endpoint / MODELDEPOT_ENDPOINT and that "
                                              "the server is up\n")


def test_not_a_hub_endpoint(cli):
    async def anything(_request):
        return web.json_response({"hello": "world"})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", anything)
    with AppServer(app) as server:
        r = cli("info", "org/clf", "--endpoint", server.url)
    assert (r.exit_code, r.output) == (1, (
        f"Error: {server.url} gave an answer modeldepot cannot read (KeyError: 'id'); is it a "
        "Hugging Face Hub endpoint?\n"))


def test_offline_depot_refuses_to_contact_upstream(cli, upstream):
    url = upstream["url"]
    r = cli("search", "--endpoint", url, env={"MODELDEPOT_OFFLINE": "1"})
    assert (r.exit_code, r.output) == (
        1, f"Error: the depot is offline (MODELDEPOT_OFFLINE); not contacting {url}\n")
    assert upstream["faults"].log == []


def test_token_goes_to_the_endpoint_only_when_given(depot, upstream, monkeypatch, tmp_path):
    from huggingface_hub import constants

    # A token huggingface_hub would pick up implicitly (meant for huggingface.co) is not sent.
    token_file = tmp_path / "hf-token"
    token_file.write_text("hf_implicit")
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(token_file))
    f = upstream["faults"]
    pull(depot, upstream)
    assert f.log and {auth for *_rest, auth in f.log} == {None}
    f.log.clear()
    pull(depot, upstream, "org/clf-copy", token="hf_given")
    assert {auth for *_rest, auth in f.log} == {"Bearer hf_given"}


def test_dataset_pull_and_include_exclude(depot, upstream, cli):
    result = pull(depot, upstream, "org/ds", repo_type="dataset")
    assert (result.repo_type, result.file_count) == ("dataset", 1)
    assert depot.resolve("dataset", "org/ds")["files"][0]["path"] == "data/train.csv"
    r = cli("pull", "org/clf", "--include", "*.json", "--exclude", "tokenizer*",
            "--endpoint", upstream["url"], "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert (out["file_count"], out["downloaded_files"]) == (2, 2)
    assert sorted(f["path"] for f in depot.resolve("model", "org/clf")["files"]) == [
        "config.json", "special_tokens_map.json"]
    r = cli("pull", "org/clf", "--endpoint", upstream["url"])
    commit = upstream["clf"][:12]
    assert (r.exit_code, r.output) == (1, (
        f"Error: org/clf@{commit} is already in the depot with 2 files (an earlier "
        "--include/--exclude pull), without README.md, model.safetensors, tokenizer.json, ...; "
        f"run 'modeldepot rm org/clf@{commit}' and pull again\n"))
    r = cli("pull", "org/clf", "--include", "nothing*", "--endpoint", upstream["url"])
    assert (r.exit_code, r.output) == (1, f"Error: no file of org/clf@{commit} matches "
                                          "--include/--exclude; see 'modeldepot info' for its "
                                          "files\n")


def test_search_and_info_against_another_depot(upstream, cli):
    url = upstream["url"]
    r = cli("search", "--endpoint", url, "--author", "org", "--json")
    assert [m["id"] for m in json.loads(r.output)] == ["org/clf", "org/clf-copy"]
    r = cli("search", "--endpoint", url, "--task", "text-classification", "--tag", "license:mit")
    assert r.output.splitlines()[0].split() == ["REPO", "TASK", "LIBRARY", "DOWNLOADS", "LIKES",
                                                "UPDATED"]
    assert [line.split()[0] for line in r.output.splitlines()[2:]] == ["org/clf"]
    r = cli("search", "--type", "dataset", "--json", env={"MODELDEPOT_ENDPOINT": url})
    assert [m["id"] for m in json.loads(r.output)] == ["org/ds"]
    r = cli("info", "org/clf@prod", "--endpoint", url, "--json")
    data = json.loads(r.output)
    assert data["sha"] == upstream["clf"] and data["license"] == "mit"
    assert data["refs"] == {"branches": {"main": upstream["clf"]}, "tags": {"prod": upstream["clf"]}}
    weights = (upstream["src"] / "model.safetensors").read_bytes()
    assert {"path": "model.safetensors", "size": len(weights), "lfs": True,
            "sha256": hashlib.sha256(weights).hexdigest(), "git_sha1": None,
            "origin": "info"} in data["files"]
    r = cli("info", "org/clf", "--endpoint", url)
    assert r.output.splitlines()[0] == f"model org/clf@main -> {upstream['clf']}  ({url})"
    assert "model.safetensors        134.0 KB  lfs  " + hashlib.sha256(weights).hexdigest() \
        in r.output


@stacks
def test_concurrent_pulls_into_one_depot(backend, depot, upstream):
    from concurrent.futures import ThreadPoolExecutor

    from registry.depot import Depot

    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda _: pull(Depot(depot.settings), upstream), range(2)))
    assert {r.commit for r in results} == {upstream["clf"]}
    assert sorted(r.created for r in results) == [False, True]
    data = (upstream["src"] / "model.safetensors").read_bytes()
    # The LFS file (known by sha256 up front) was fetched once; the waiter found it in the store.
    assert len(upstream["faults"].gets("model.safetensors")) == 1
    assert depot.verify()["ok"] and depot.store.has_blob(hashlib.sha256(data).hexdigest())
    assert list(depot.store.tmp.glob("pull-*")) == []


@pytest.mark.parametrize("window", ["publish:start", "publish:after-snapshot"])
def test_gc_during_pull_keeps_what_the_pull_holds(backend, depot, upstream, window):
    from registry import faults
    from registry.depot import Depot

    runs = []
    with faults.hook(window, lambda: runs.append(Depot(depot.settings).gc())):
        result = pull(depot, upstream)
    assert result.created and len(runs) == 1
    assert runs[0]["blobs"] == 0 and runs[0]["stray_views"] == 0
    report = depot.verify()
    assert report["problems"] == [] and report["ok"]


def test_two_hosts_pull_the_same_repo_at_once(pg_url, upstream, tmp_path):
    """Two homes (hosts) on one PostgreSQL registry and one blob store pull org/clf at the same
    moment: both succeed, the LFS file is fetched once, and both verify clean."""
    from concurrent.futures import ThreadPoolExecutor
    from pathlib import Path

    from pg import hosts
    from registry.depot import Depot

    a, b = (Depot(s) for s in hosts(pg_url, tmp_path))
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda d: pull(d, upstream), [a, b]))
    assert {r.commit for r in results} == {upstream["clf"]}
    assert sorted(r.created for r in results) == [False, True]
    assert len(upstream["faults"].gets("model.safetensors")) == 1
    stored = sorted(p.name for p in a.settings.blobs_dir.glob("*/*"))
    assert stored == sorted(a.inventory()["blobs"])  # each blob once, in the shared store
    for d in (a, b):
        report = d.verify()
        assert report["problems"] == [] and report["ok"]
        assert Path(d.resolve("model", "org/clf")["snapshot"], "config.json").is_file()
