"""`serve --proxy`: a pull-through cache in front of an upstream Hub, on loopback.

The upstream is the tests' Hub emulator (test_hub_pull.py: depot A's real Hub API behind a
middleware that logs every request and can cut, kill, corrupt or refuse), plus the Xet, redirect
and throttling modes this file adds. The proxy is a real app on its own port (in-process unless a
test kills it, then a `modeldepot serve --proxy` subprocess); clients are unmodified
huggingface_hub calls.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import pytest
import requests
from aiohttp import web

from serverutil import ROOT, AppServer, free_port, stop_process, wait_http
from test_hub_pull import FAULTS, Faults, faulty

EXTRA = web.AppKey("extra", object)


@dataclass
class Extra:
    xet: bool = False  # answers carry Xet fields and headers, as huggingface.co's do
    redirect: dict = field(default_factory=dict)  # old repo id -> new (a renamed repo)
    slow: dict = field(default_factory=dict)  # file -> (bytes per chunk, seconds between chunks)
    down: bool = False  # every connection is dropped, kept-alive ones included
    retry_after: str | None = None  # every request: 429 with this Retry-After
    prs: dict = field(default_factory=dict)  # (repo, N) -> commit: refs/pr/N, as hf.co has them


def _xetify(value):
    if isinstance(value, dict):
        out = {k: _xetify(v) for k, v in value.items()}
        if "rfilename" in value or value.get("type") == "file":
            out["xetHash"] = "ab" * 32
        if "xetEnabled" in value:
            out["xetEnabled"] = True
        return out
    if isinstance(value, list):
        return [_xetify(v) for v in value]
    return value


@web.middleware
async def extra_modes(request: web.Request, handler):
    x: Extra = request.app[EXTRA]
    if x.down:
        request.transport.abort()
        raise web.HTTPServiceUnavailable()
    if x.retry_after:
        return web.json_response({"error": "slow down"}, status=429,
                                 headers={"Retry-After": x.retry_after})
    for old, new in x.redirect.items():
        for prefix in ("/api/models/", "/"):
            if request.path.startswith(prefix + old + "/") or request.path == prefix + old:
                raise web.HTTPTemporaryRedirect(prefix + new + request.path[len(prefix + old):])
    for (repo, n), commit in x.prs.items():  # hf.co resolves a pull request's ref itself
        for pr in (f"refs/pr/{n}", f"refs%2Fpr%2F{n}"):
            for action in ("resolve", "revision", "tree", "paths-info"):
                marker = f"{repo}/{action}/{pr}"
                if marker in request.raw_path and request.raw_path.split(marker)[1][:1] in ("", "/", "?"):
                    request = request.clone(rel_url=request.raw_path.replace(
                        marker, f"{repo}/{action}/{commit}", 1))
        if request.path == f"/api/models/{repo}/refs" and request.query.get("include_prs"):
            body = json.loads((await handler(request)).body)
            body["pullRequests"] = [{"name": f"refs/pr/{k}", "ref": f"refs/pr/{k}",
                                     "targetCommit": c} for (r, k), c in x.prs.items() if r == repo]
            return web.json_response(body)
    name = request.path.rsplit("/", 1)[-1]
    if request.method == "GET" and "/resolve/" in request.path and name in x.slow:
        from registry.server import hub_api
        from registry.server.app import DEPOT

        step, pause = x.slow[name]
        repo_type, targets = hub_api.parse_resolve(request.raw_path.lstrip("/"))
        _commit, row = hub_api._find_file(request.app[DEPOT], repo_type, targets)
        data = request.app[DEPOT].store.blob_path(row.sha256).read_bytes()
        resp = web.StreamResponse(headers={"ETag": f'"{row.sha256}"'})
        resp.content_length = len(data)
        await resp.prepare(request)
        for i in range(0, len(data), step):
            await resp.write(data[i:i + step])
            await asyncio.sleep(pause)
        await resp.write_eof()
        return resp
    resp = await handler(request)
    if x.xet and isinstance(resp, web.Response) and resp.body and resp.content_type == "application/json":
        resp = web.json_response(_xetify(json.loads(resp.body)), status=resp.status,
                                 headers={"X-Xet-Hash": "ab" * 32})
    elif x.xet:
        resp.headers["X-Xet-Hash"] = "ab" * 32
        resp.headers["X-Xet-Refresh-Route"] = "/api/models/x/xet-read-token/main"
    return resp


def _serve_depot(depot):
    from registry.server.app import ServeOptions, create_app

    app = create_app(depot.settings, ServeOptions(inference=False))
    faults = Faults()
    app[FAULTS] = faults
    app[EXTRA] = Extra()
    app.middlewares.append(faulty)
    app.middlewares.append(extra_modes)
    server = AppServer(app)
    faults.server = server
    return server, faults, app[EXTRA]


@pytest.fixture(scope="module")
def upstream_server(tmp_path_factory, models):
    from registry.config import Settings
    from registry.depot import Depot
    from registry.importer import import_dir

    root = tmp_path_factory.mktemp("upstream")
    depot = Depot(Settings.from_env(home=root / "home"))
    src = models.get("classifier")
    clf = import_dir(depot, src, "org/clf")
    depot.tag("model", "org/clf", None, "prod")
    ds = root / "ds"
    (ds / "data").mkdir(parents=True)
    (ds / "data" / "train.csv").write_text("text,label\nhi,1\nbye,0\n")
    import_dir(depot, ds, "org/ds", repo_type="dataset")
    server, faults, extra = _serve_depot(depot)
    with server:
        yield {"url": server.url, "faults": faults, "extra": extra, "depot": depot,
               "clf": clf.commit, "src": src, "root": root}


@pytest.fixture
def upstream(upstream_server):
    f: Faults = upstream_server["faults"]
    f.log.clear()
    f.cut.clear()
    f.die.clear()
    f.corrupt.clear()
    f.strip_info = f.no_tree = f.bad_etag = False
    f.status = None
    x: Extra = upstream_server["extra"]
    x.xet, x.redirect, x.slow, x.down, x.retry_after, x.prs = False, {}, {}, False, None, {}
    yield upstream_server
    if f.server._site is None:
        f.server.listen()


@pytest.fixture
def make_proxy(home):
    """Start an in-process proxy app (on the test's depot home) in front of an upstream;
    returns (url, its Depot)."""
    from registry.config import Settings
    from registry.depot import Depot
    from registry.proxy import ProxyConfig
    from registry.server.app import ServeOptions, create_app

    servers = []

    def make(upstream_url, depot_home=None, **cfg):
        settings = Settings.from_env(home=depot_home or home)
        options = ServeOptions(inference=False, proxy=ProxyConfig(upstream=upstream_url, **cfg))
        server = AppServer(create_app(settings, options))
        servers.append(server)
        return server.url, Depot(settings)

    yield make
    for s in servers:
        s.close()


def hf_download(url, repo, filename, tmp_path, **kw):
    from huggingface_hub import hf_hub_download

    return hf_hub_download(repo, filename, endpoint=url, cache_dir=tmp_path / "hf-cache", **kw)


def upstream_down(upstream) -> None:
    upstream["faults"].server.stop_listening()
    upstream["extra"].down = True


def api_gets(faults: Faults) -> list[str]:
    return [p for m, p, _r, _a in faults.log if p.startswith("/api/")]


# -- a miss fetches only what was asked; partial revisions -------------------------------------


def test_a_config_download_fetches_only_that_file_and_records_a_partial_revision(
        upstream, make_proxy, tmp_path, cli):
    url, depot = make_proxy(upstream["url"])
    path = hf_download(url, "org/clf", "config.json", tmp_path)
    src = upstream["src"]
    assert open(path, "rb").read() == (src / "config.json").read_bytes()
    # The weights were not downloaded: only config.json was fetched from the upstream.
    assert upstream["faults"].resolve_gets() == ["config.json"]
    commit = upstream["clf"]
    out = cli("show", "org/clf").output
    assert f"{commit[:12]}  proxy   main,prod  1/7 partial  710 B" in out
    assert (f"  partial: 1 of 7 files present; 'modeldepot pull org/clf@{commit[:12]}' fetches "
            "the rest\n") in out
    assert "model.safetensors" in out and "not fetched" in out
    assert "1 (1 partial)" in cli("list").output
    refusal = (f"Error: org/clf@{commit[:12]} is partial (1 of 7 files present, fetched through "
               f"the proxy); run 'modeldepot pull org/clf@{commit[:12]}' to complete it, then ")
    r = cli("lock", "org/clf", "-o", tmp_path / "depot.lock")
    assert (r.exit_code, r.output) == (1, refusal + "lock again\n")
    r = cli("bundle", "create", tmp_path / "b.tar", "org/clf")
    assert (r.exit_code, r.output) == (1, refusal + "create the bundle again\n")
    assert cli("verify").exit_code == 0
    # pull completes it, downloading only what is missing
    upstream["faults"].log.clear()
    r = cli("pull", "org/clf", "--endpoint", upstream["url"])
    assert r.exit_code == 0, r.output
    assert sorted(upstream["faults"].resolve_gets()) == sorted(
        p.name for p in src.iterdir() if p.name != "config.json")
    assert depot.show("model", "org/clf")["revision"]["partial"] is False
    assert cli("lock", "org/clf", "-o", tmp_path / "depot.lock").exit_code == 0


def test_metadata_routes_answer_the_whole_listing_of_a_partial_revision(upstream, make_proxy,
                                                                        tmp_path):
    from huggingface_hub import HfApi

    url, _depot = make_proxy(upstream["url"])
    direct = HfApi(endpoint=upstream["url"])
    proxied = HfApi(endpoint=url)
    want = direct.model_info("org/clf", files_metadata=True)
    want_tree = [(e.path, e.size, e.blob_id) for e in direct.list_repo_tree("org/clf",
                                                                            revision=want.sha)]
    got = proxied.model_info("org/clf", files_metadata=True)
    assert got.sha == want.sha
    assert [(s.rfilename, s.size, s.blob_id, s.lfs) for s in got.siblings] == [
        (s.rfilename, s.size, s.blob_id, s.lfs) for s in want.siblings]
    # Answered locally from now on: the tree, paths-info and the same info go nowhere.
    upstream["faults"].log.clear()
    tree = [(e.path, e.size, e.blob_id) for e in proxied.list_repo_tree("org/clf", revision=got.sha)]
    assert tree == want_tree
    paths = proxied.get_paths_info("org/clf", ["config.json", "model.safetensors"],
                                   revision=got.sha)
    assert [(p.path, p.size) for p in paths] == [
        ("config.json", (upstream["src"] / "config.json").stat().st_size),
        ("model.safetensors", (upstream["src"] / "model.safetensors").stat().st_size)]
    assert proxied.model_info("org/clf", revision=got.sha).sha == got.sha
    assert upstream["faults"].log == []


def test_snapshot_download_through_the_proxy_then_with_the_upstream_down(
        upstream, make_proxy, tmp_path, cli, guard_log):
    from huggingface_hub import snapshot_download

    url, depot = make_proxy(upstream["url"])
    snap = snapshot_download("org/clf", endpoint=url, cache_dir=tmp_path / "c1")
    src = upstream["src"]
    for p in src.iterdir():
        assert (tmp_path / "c1" / snap / p.name).read_bytes() == p.read_bytes()
    ds = snapshot_download("org/ds", repo_type="dataset", endpoint=url, cache_dir=tmp_path / "c1")
    assert open(os.path.join(ds, "data", "train.csv")).read() == "text,label\nhi,1\nbye,0\n"
    assert depot.show("model", "org/clf")["revision"]["partial"] is False
    upstream_down(upstream)
    again = snapshot_download("org/clf", endpoint=url, cache_dir=tmp_path / "c2")
    for p in src.iterdir():
        assert (tmp_path / "c2" / again / p.name).read_bytes() == p.read_bytes()
    r = cli("verify")
    assert r.exit_code == 0, r.output
    assert guard_log() == ""


# -- single flight ------------------------------------------------------------------------------


def test_concurrent_requests_cause_one_metadata_call_and_one_download(upstream, make_proxy,
                                                                      tmp_path):
    url, _depot = make_proxy(upstream["url"])
    upstream["extra"].slow["model.safetensors"] = (16 * 1024, 0.02)
    want = hashlib.sha256((upstream["src"] / "model.safetensors").read_bytes()).hexdigest()

    def one(i):
        return hashlib.sha256(open(hf_download(url, "org/clf", "model.safetensors",
                                               tmp_path / f"c{i}"), "rb").read()).hexdigest()

    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(one, range(8)))
    assert got == [want] * 8
    f = upstream["faults"]
    assert f.resolve_gets() == ["model.safetensors"]
    assert api_gets(f).count("/api/models/org/clf/revision/main") == 1
    metrics = requests.get(url + "/metrics").text
    assert 'modeldepot_proxy_single_flight_joins_total{kind="file"} 7.0' in metrics
    assert 'modeldepot_proxy_misses_total{kind="file"} 1.0' in metrics
    size = (upstream["src"] / "model.safetensors").stat().st_size
    assert f"modeldepot_proxy_upstream_bytes_total {float(size)}" in metrics


# -- verification: wrong bytes, dropped and killed upstreams ------------------------------------


def test_a_wrong_byte_reaches_no_client_and_nothing_is_registered(upstream, make_proxy, tmp_path):
    url, depot = make_proxy(upstream["url"])
    upstream["faults"].corrupt.add("model.safetensors")
    r = requests.get(f"{url}/org/clf/resolve/main/model.safetensors", stream=True)
    assert r.status_code == 200
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        r.content  # cut before the promised Content-Length
    with pytest.raises(Exception) as e:
        hf_download(url, "org/clf", "model.safetensors", tmp_path)
    assert "IncompleteRead" in repr(e.value) or "Connection broken" in str(e.value)
    files = {f["path"] for f in depot.show("model", "org/clf")["revision"]["files"]}
    assert "model.safetensors" not in files
    want = (upstream["src"] / "model.safetensors").read_bytes()
    assert not depot.store.has_blob(hashlib.sha256(want).hexdigest())
    events = [e for e in depot.events() if e["action"] == "proxy-fetch"]
    assert events[0]["details"]["outcome"] == "IntegrityError"
    upstream["faults"].corrupt.clear()
    assert open(hf_download(url, "org/clf", "model.safetensors", tmp_path), "rb").read() == want


def test_the_first_client_gets_bytes_before_the_file_is_stored(upstream, make_proxy):
    url, depot = make_proxy(upstream["url"])
    upstream["extra"].slow["model.safetensors"] = (8 * 1024, 0.05)
    data = (upstream["src"] / "model.safetensors").read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    with requests.get(f"{url}/org/clf/resolve/main/model.safetensors", stream=True) as r:
        first = r.raw.read(4096)
        assert first == data[:4096] and not depot.store.has_blob(sha)  # streamed, not stored yet
        rest = r.raw.read()
    assert first + rest == data and depot.store.has_blob(sha)


def test_ranges_of_a_cold_file(upstream, make_proxy, tmp_path):
    url, _depot = make_proxy(upstream["url"])
    data = (upstream["src"] / "model.safetensors").read_bytes()
    file_url = f"{url}/org/clf/resolve/main/model.safetensors"
    r = requests.get(file_url, headers={"Range": "bytes=0-99"})  # a safetensors header read
    assert (r.status_code, r.content, r.headers["Content-Range"]) == (
        206, data[:100], f"bytes 0-99/{len(data)}")
    url, _depot = make_proxy(upstream["url"], depot_home=tmp_path / "second")
    r = requests.get(f"{url}/org/clf/resolve/main/model.safetensors",
                     headers={"Range": "bytes=1000-"})  # a client resuming its download
    assert (r.status_code, r.content, r.headers["Content-Range"]) == (
        206, data[1000:], f"bytes 1000-{len(data) - 1}/{len(data)}")


def test_a_dropped_connection_is_resumed_into_a_complete_file(upstream, make_proxy, tmp_path):
    url, _depot = make_proxy(upstream["url"])
    upstream["faults"].cut["model.safetensors"] = 50_000
    want = (upstream["src"] / "model.safetensors").read_bytes()
    assert open(hf_download(url, "org/clf", "model.safetensors", tmp_path), "rb").read() == want
    assert upstream["faults"].gets("model.safetensors") == [None, "bytes=50000-"]


def test_an_upstream_killed_mid_file_gives_an_error_never_a_short_file(upstream, make_proxy,
                                                                        tmp_path):
    url, depot = make_proxy(upstream["url"])
    upstream["faults"].die["model.safetensors"] = 50_000
    r = requests.get(f"{url}/org/clf/resolve/main/model.safetensors", stream=True, timeout=60)
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        r.content
    assert "model.safetensors" not in {
        f["path"] for f in depot.show("model", "org/clf")["revision"]["files"]}
    upstream["faults"].server.listen()
    want = (upstream["src"] / "model.safetensors").read_bytes()
    assert open(hf_download(url, "org/clf", "model.safetensors", tmp_path), "rb").read() == want
    # The retry continued from the bytes the killed fetch had kept.
    assert upstream["faults"].gets("model.safetensors")[-1] == "bytes=50000-"


def test_proxy_killed_mid_fetch_then_restarted(upstream, tmp_path, cli_subprocess):
    home = tmp_path / "proxy-home"
    port = free_port()
    upstream["extra"].slow["model.safetensors"] = (8 * 1024, 0.05)
    args = [sys.executable, "-m", "cli", "--home", str(home), "serve", "--no-inference",
            "--port", str(port), "--proxy", upstream["url"]]
    proxy = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(url + "/health", proc=proxy)
        r = requests.get(f"{url}/org/clf/resolve/main/model.safetensors", stream=True, timeout=60)
        assert len(r.raw.read(1)) == 1  # the fetch is under way
        proxy.send_signal(signal.SIGKILL)
        proxy.wait(timeout=10)
    finally:
        stop_process(proxy)
    out = cli_subprocess("--home", home, "show", "org/clf")
    assert "model.safetensors" in out.stdout and "not fetched" in out.stdout
    r = cli_subprocess("--home", home, "verify")
    assert r.returncode == 0, r.stdout + r.stderr
    upstream["extra"].slow.clear()
    proxy = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_http(url + "/health", proc=proxy)
        want = (upstream["src"] / "model.safetensors").read_bytes()
        assert open(hf_download(url, "org/clf", "model.safetensors", tmp_path), "rb").read() == want
        ranges = upstream["faults"].gets("model.safetensors")
        assert ranges[0] is None and ranges[-1].startswith("bytes=")  # resumed, not restarted
    finally:
        stop_process(proxy)
    assert cli_subprocess("--home", home, "verify").returncode == 0


# -- revisions: TTL, stale-if-error, aliases ----------------------------------------------------


def test_a_moved_branch_is_seen_after_the_ttl_and_the_old_commit_when_the_upstream_is_down(
        upstream, make_proxy, tmp_path):
    from huggingface_hub import HfApi

    from registry.importer import import_dir

    up = upstream["depot"]
    work = tmp_path / "moving"
    work.mkdir()
    (work / "config.json").write_text("{}\n")
    (work / "a.txt").write_text("one\n")
    first = import_dir(up, work, "org/moving").commit
    url, _depot = make_proxy(upstream["url"], ttl=1.5)
    api = HfApi(endpoint=url)
    assert api.model_info("org/moving").sha == first
    (work / "a.txt").write_text("two\n")
    second = import_dir(up, work, "org/moving").commit
    upstream["faults"].log.clear()
    assert api.model_info("org/moving").sha == first  # within the TTL: not asked again
    assert api_gets(upstream["faults"]) == []
    time.sleep(1.6)
    assert api.model_info("org/moving").sha == second
    path = hf_download(url, "org/moving", "a.txt", tmp_path)
    assert open(path).read() == "two\n"
    upstream_down(upstream)
    time.sleep(1.6)
    assert api.model_info("org/moving").sha == second  # stale-if-error
    assert open(hf_download(url, "org/moving", "a.txt", tmp_path / "again")).read() == "two\n"
    assert api.model_info("org/moving", revision=first).sha == first  # a commit: cached forever
    assert "modeldepot_proxy_stale_served_total 1.0" in requests.get(url + "/metrics").text


def test_refs_are_the_upstreams_plus_the_registrys_own_and_pull_requests_resolve(
        upstream, make_proxy, tmp_path):
    from huggingface_hub import HfApi

    from registry.importer import import_dir

    up = upstream["depot"]
    work = tmp_path / "refs"
    work.mkdir()
    (work / "config.json").write_text("{}\n")
    (work / "a.txt").write_text("main\n")
    main = import_dir(up, work, "org/refs").commit
    (work / "a.txt").write_text("dev\n")
    dev = import_dir(up, work, "org/refs", ref="dev").commit
    (work / "a.txt").write_text("a pull request\n")
    pr = import_dir(up, work, "org/refs", ref="pr-head").commit
    (work / "a.txt").write_text("never fetched\n")
    never = import_dir(up, work, "org/refs", ref="never").commit
    upstream["extra"].prs = {("org/refs", 1): pr}
    url, depot = make_proxy(upstream["url"], ttl=60)
    api = HfApi(endpoint=url)
    assert api.model_info("org/refs").sha == main  # the proxy now holds main only
    depot.tag("model", "org/refs", main, "prod-here")
    refs = api.list_repo_refs("org/refs", include_pull_requests=True)
    # The upstream's branches, although the depot holds none of their commits yet, and the
    # registry's own alias; the upstream's pull request.
    assert {(b.name, b.target_commit) for b in refs.branches} == {
        ("main", main), ("dev", dev), ("pr-head", pr), ("never", never)}
    assert ("prod-here", main) in {(t.name, t.target_commit) for t in refs.tags}
    assert [(p.name, p.target_commit) for p in refs.pull_requests] == [("refs/pr/1", pr)]
    # A branch the /refs answer named is fetched on the first request for it.
    assert open(hf_download(url, "org/refs", "a.txt", tmp_path, revision="dev")).read() == "dev\n"
    # refs/pr/N resolves through the upstream, then within the TTL from the depot alone.
    assert api.model_info("org/refs", revision="refs/pr/1").sha == pr
    path = hf_download(url, "org/refs", "a.txt", tmp_path / "pr", revision="refs/pr/1")
    assert open(path).read() == "a pull request\n"
    assert sorted(f.path for f in api.list_repo_tree("org/refs", revision="refs/pr/1")) == [
        "a.txt", "config.json"]
    upstream["faults"].log.clear()
    path = hf_download(url, "org/refs", "a.txt", tmp_path / "pr2", revision="refs/pr/1")
    assert open(path).read() == "a pull request\n"
    assert api.list_repo_refs("org/refs").branches
    assert upstream["faults"].log == []
    # With the upstream down, a proxy that never saw its answer serves the registry's refs:
    # the branches at commits it recorded (pr-head is refs/pr/1's commit), not the other one;
    # refs/pr/1 itself is no branch of the registry.
    upstream_down(upstream)
    url2, _ = make_proxy(upstream["url"], ttl=60)
    assert {b.name for b in HfApi(endpoint=url2).list_repo_refs("org/refs").branches} == {
        "main", "dev", "pr-head"}


def test_registry_aliases_never_go_upstream(upstream, make_proxy, tmp_path, cli):
    from huggingface_hub import HfApi

    url, depot = make_proxy(upstream["url"])
    api = HfApi(endpoint=url)
    commit = api.model_info("org/clf").sha
    depot.tag("model", "org/clf", commit, "prod-here")
    upstream["faults"].log.clear()
    assert api.model_info("org/clf", revision="prod-here").sha == commit
    assert hf_download(url, "org/clf", "config.json", tmp_path, revision="prod-here")
    assert api_gets(upstream["faults"]) == []


# -- policy, identity, errors -------------------------------------------------------------------


def test_deny_and_allow_lists_never_reach_the_upstream(upstream, make_proxy, tmp_path):
    url, _depot = make_proxy(upstream["url"], allow=["org/*", "datasets/org/*"],
                             deny=["org/clf"])
    for repo in ("org/clf", "other/thing"):
        r = requests.get(f"{url}/api/models/{repo}")
        assert r.status_code == 404 and r.headers["X-Error-Code"] == "RepoNotFound"
        assert r.json()["error"] == (f"{repo} is not in the depot, and this proxy does not fetch "
                                     "it from its upstream (not in its allow list)")
        r = requests.get(f"{url}/{repo}/resolve/main/config.json")
        assert r.status_code == 404 and r.headers["X-Error-Code"] == "RepoNotFound"
    assert upstream["faults"].log == []
    assert requests.get(f"{url}/api/datasets/org/ds").status_code == 200


def test_the_proxy_uses_its_own_token_never_the_clients(upstream, make_proxy, tmp_path):
    url, _depot = make_proxy(upstream["url"], token="hf_proxy_token")
    r = requests.get(f"{url}/org/clf/resolve/main/config.json",
                     headers={"Authorization": "Bearer hf_client_token"})
    assert r.status_code == 200
    auths = {a for _m, _p, _r, a in upstream["faults"].log}
    assert auths == {"Bearer hf_proxy_token"}


@pytest.mark.parametrize("status, code, want_status, want_code, exc", [
    (401, "GatedRepo", 401, "GatedRepo", "GatedRepoError"),
    (403, "GatedRepo", 403, "GatedRepo", "GatedRepoError"),
    (404, "RepoNotFound", 404, "RepoNotFound", "RepositoryNotFoundError"),
    (500, None, 502, None, "HfHubHTTPError"),
])
def test_upstream_refusals_map_to_hub_errors(upstream, make_proxy, tmp_path, status, code,
                                             want_status, want_code, exc):
    url, _depot = make_proxy(upstream["url"])
    upstream["faults"].status = (status, code)
    r = requests.get(f"{url}/api/models/org/clf")
    assert r.status_code == want_status
    assert r.headers.get("X-Error-Code") == want_code
    from huggingface_hub import HfApi, errors

    with pytest.raises(getattr(errors, exc)) as e:
        HfApi(endpoint=url).model_info("org/clf")
    assert e.value.response.status_code == want_status


def test_a_file_the_upstream_refuses(upstream, make_proxy):
    url, depot = make_proxy(upstream["url"])
    requests.get(f"{url}/api/models/org/clf").raise_for_status()  # the revision is recorded
    upstream["faults"].status = (403, "GatedRepo")
    r = requests.get(f"{url}/org/clf/resolve/main/config.json")
    assert (r.status_code, r.headers["X-Error-Code"]) == (403, "GatedRepo")
    assert r.json()["error"] == (
        f"the upstream {upstream['url']} refused config.json of org/clf (HTTP 403, GatedRepo); "
        "the depot fetches with its own upstream token (MODELDEPOT_PROXY_TOKEN), ask its "
        "operator for access")
    assert "config.json" not in {f["path"] for f in depot.show("model", "org/clf")["revision"]["files"]}


def test_rate_limits_and_an_unreachable_upstream(upstream, make_proxy, tmp_path):
    url, depot = make_proxy(upstream["url"])
    requests.get(f"{url}/api/models/org/clf").raise_for_status()  # now cached
    upstream["extra"].retry_after = "7"
    r = requests.get(f"{url}/api/models/org/missing")
    assert (r.status_code, r.headers["Retry-After"], r.json()) == (429, "7", {
        "error": f"the upstream {upstream['url']} is rate limiting the depot; retry later",
        "error_type": "Overloaded"})
    upstream["extra"].retry_after = None
    upstream_down(upstream)
    r = requests.get(f"{url}/api/models/org/missing")
    assert r.status_code == 503
    assert r.json() == {"error": f"the upstream {upstream['url']} is unreachable, and the depot "
                                 "does not hold org/missing; what it holds is still served, retry "
                                 "later", "error_type": "UpstreamUnavailable"}
    assert requests.get(f"{url}/api/models/org/clf").status_code == 200
    assert "modeldepot_proxy_upstream_errors_total{kind=\"UpstreamUnavailable\"} 1.0" in \
        requests.get(url + "/metrics").text


# -- Xet, search, renamed repos, gated ------------------------------------------------------------


def test_xet_fields_and_headers_never_reach_clients(upstream, make_proxy, tmp_path):
    url, _depot = make_proxy(upstream["url"])
    upstream["extra"].xet = True
    direct = requests.get(f"{upstream['url']}/api/models/org/clf?blobs=true").text
    assert "xetHash" in direct and '"xetEnabled": true' in direct  # the emulator does add them
    for path in ("/api/models/org/clf?blobs=true", "/api/models/org/clf/tree/main",
                 "/api/models?search=clf&full=true",
                 "/api/models/org/clf?expand[]=siblings&expand[]=xetEnabled"):
        r = requests.get(url + path)
        assert r.status_code == 200, path
        assert "xetHash" not in r.text and '"xetEnabled": true' not in r.text, path
        assert not [h for h in r.headers if h.lower().startswith("x-xet")], path
    r = requests.get(f"{url}/org/clf/resolve/main/config.json", allow_redirects=False)
    assert r.status_code == 200 and not [h for h in r.headers if h.lower().startswith("x-xet")]


def test_search_merges_the_upstream_with_what_is_only_local(upstream, make_proxy, tmp_path, models):
    from registry.importer import import_dir

    url, depot = make_proxy(upstream["url"])
    import_dir(depot, models.get("classifier"), "mine/local-only")
    ids = [m["id"] for m in requests.get(f"{url}/api/models").json()]
    upstream_ids = [m["id"] for m in requests.get(f"{upstream['url']}/api/models").json()]
    assert "org/clf" in upstream_ids and "mine/local-only" not in upstream_ids
    assert ids == upstream_ids + ["mine/local-only"]
    upstream_down(upstream)
    assert [m["id"] for m in requests.get(f"{url}/api/models").json()] == ["mine/local-only"]


def test_a_renamed_repo_works_under_both_names(upstream, make_proxy, tmp_path):
    url, _depot = make_proxy(upstream["url"])
    upstream["extra"].redirect["gpt-legacy"] = "org/clf"
    want = (upstream["src"] / "config.json").read_bytes()
    assert open(hf_download(url, "gpt-legacy", "config.json", tmp_path), "rb").read() == want
    info = requests.get(f"{url}/api/models/gpt-legacy").json()
    assert info["id"] == "org/clf" and info["sha"] == upstream["clf"]
    assert requests.get(f"{url}/api/models/org/clf").json()["sha"] == upstream["clf"]


def test_the_upstreams_gated_flag_is_recorded(upstream, make_proxy, tmp_path):
    from sqlalchemy import update

    from registry.models import Repo

    up = upstream["depot"]
    with up.db.session(write=True) as s:
        s.execute(update(Repo).where(Repo.name == "org/ds").values(gated="manual"))
    try:
        url, depot = make_proxy(upstream["url"])
        assert requests.get(f"{url}/api/datasets/org/ds").json()["gated"] == "manual"
        assert depot.show("dataset", "org/ds")["repo"]["gated"] == "manual"
    finally:
        with up.db.session(write=True) as s:
            s.execute(update(Repo).where(Repo.name == "org/ds").values(gated=None))


def test_serve_proxy_takes_its_upstream_from_the_option_or_the_environment(upstream, tmp_path,
                                                                           cli):
    from serverutil import running_server

    # Without --proxy nothing changes: a repo the depot lacks is not found, nothing goes out.
    with running_server(tmp_path / "plain", ["--no-inference"],
                        env={"MODELDEPOT_ENDPOINT": upstream["url"]}) as url:
        r = requests.get(f"{url}/api/models/org/clf")
        assert r.status_code == 404 and r.headers["X-Error-Code"] == "RepoNotFound"
    assert upstream["faults"].log == []
    for args, env in ((["--proxy"], {"MODELDEPOT_ENDPOINT": upstream["url"]}),
                      ([], {"MODELDEPOT_PROXY": upstream["url"]})):
        upstream["faults"].log.clear()
        home = tmp_path / f"p{len(args)}"
        with running_server(home, ["--no-inference", *args], env=env) as url:
            r = requests.get(f"{url}/api/models/org/clf")
            assert (r.status_code, r.json()["sha"]) == (200, upstream["clf"])
        assert api_gets(upstream["faults"])[0] == "/api/models/org/clf"
    r = cli("list", env={"MODELDEPOT_PROXY_TTL": "soon"})
    assert (r.exit_code, r.output) == (
        1, "Error: MODELDEPOT_PROXY_TTL must be a number of seconds >= 0, got 'soon'\n")


# -- 32 clients on one cold 200 MB file -----------------------------------------------------------

BIG = 200 * 1024 * 1024


@pytest.fixture(scope="module")
def big_upstream(tmp_path_factory):
    from registry.config import Settings
    from registry.depot import Depot
    from registry.importer import import_dir

    root = tmp_path_factory.mktemp("big")
    src = root / "src"
    src.mkdir()
    data = os.urandom(BIG)  # generated once for the module
    (src / "weights.bin").write_bytes(data)
    (src / "config.json").write_text("{}\n")
    depot = Depot(Settings.from_env(home=root / "home"))
    import_dir(depot, src, "org/big")
    server, faults, _extra = _serve_depot(depot)
    with server:
        yield {"url": server.url, "faults": faults, "sha256": hashlib.sha256(data).hexdigest(),
               "root": root}
    del data


def test_32_clients_on_one_cold_200mb_file(big_upstream, tmp_path):
    home = tmp_path / "proxy-home"
    port = free_port()
    proxy = subprocess.Popen(
        [sys.executable, "-m", "cli", "--home", str(home), "serve", "--no-inference", "--port",
         str(port), "--proxy", big_upstream["url"]],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    barrier = threading.Barrier(32)

    def client(_i):
        barrier.wait()
        h = hashlib.sha256()
        n = 0
        with requests.get(f"{url}/org/big/resolve/main/weights.bin", stream=True,
                          timeout=300) as r:
            r.raise_for_status()
            for chunk in r.iter_content(1 << 20):
                h.update(chunk)
                n += len(chunk)
        return n, h.hexdigest()

    try:
        wait_http(url + "/health", proc=proxy)
        with ThreadPoolExecutor(32) as pool:
            got = list(pool.map(client, range(32)))
    finally:
        stop_process(proxy)
    assert got == [(BIG, big_upstream["sha256"])] * 32
    assert big_upstream["faults"].resolve_gets() == ["weights.bin"]


def test_a_gated_upstream_repo_is_proxied_only_for_approved_tokens(upstream, home, tmp_path):
    """Access control in front of the proxy: a repo the proxy just learned is gated upstream is
    refused (403 GatedRepo, nothing fetched) to a token without an approval, served to one with."""
    from sqlalchemy import update

    from registry.auth.policy import AuthOptions
    from registry.auth.tokens import create_token
    from registry.auth.visibility import grant
    from registry.config import Settings
    from registry.depot import Depot
    from registry.models import Repo
    from registry.proxy import ProxyConfig
    from registry.server.app import ServeOptions, create_app
    from serverutil import AppServer

    up = upstream["depot"]
    with up.db.session(write=True) as s:
        s.execute(update(Repo).where(Repo.name == "org/clf").values(gated="manual"))
    settings = Settings.from_env(home=home)
    depot = Depot(settings)
    outsider, _ = create_token(depot, "outsider", ["read"], actor="test")
    insider, _ = create_token(depot, "insider", ["read"], actor="test")
    server = AppServer(create_app(settings, ServeOptions(
        inference=False, auth=AuthOptions(mode="required", refresh_s=0.2),
        proxy=ProxyConfig(upstream=upstream["url"]))))
    try:
        url = server.url
        file_url = f"{url}/org/clf/resolve/main/config.json"
        r = requests.get(file_url, headers={"Authorization": f"Bearer {outsider}"})
        assert r.status_code == 403 and r.headers["X-Error-Code"] == "GatedRepo"
        assert "modeldepot access grant outsider org/clf" in r.json()["error"]
        assert upstream["faults"].resolve_gets() == []  # nothing fetched for the outsider
        r = requests.get(file_url)
        assert r.status_code == 401
        grant(depot, "insider", "model", "org/clf", "test")
        time.sleep(0.6)  # the server's view of approvals reloads every refresh_s
        r = requests.get(file_url, headers={"Authorization": f"Bearer {insider}"})
        assert r.status_code == 200
        assert r.content == (upstream["src"] / "config.json").read_bytes()
    finally:
        server.close()
        with up.db.session(write=True) as s:
            s.execute(update(Repo).where(Repo.name == "org/clf").values(gated=None))


def test_the_access_audit_counts_the_bytes_a_proxied_stream_sent(upstream, home, tmp_path):
    """A file streamed while it arrives is audited with what went out: all of it, or, when a
    wrong byte cut the connection, what the client got before the cut ("aborted")."""
    from registry.auth.audit import records
    from registry.auth.policy import AuthOptions
    from registry.auth.tokens import create_token
    from registry.config import Settings
    from registry.depot import Depot
    from registry.proxy import ProxyConfig
    from registry.server.app import ServeOptions, create_app
    from serverutil import AppServer

    settings = Settings.from_env(home=home)
    depot = Depot(settings)
    reader, _ = create_token(depot, "reader", ["read"], actor="test")
    server = AppServer(create_app(settings, ServeOptions(
        inference=False, auth=AuthOptions(mode="required"),
        proxy=ProxyConfig(upstream=upstream["url"]))))
    auth = {"Authorization": f"Bearer {reader}"}
    want = (upstream["src"] / "model.safetensors").read_bytes()
    try:
        upstream["faults"].corrupt.add("model.safetensors")
        r = requests.get(f"{server.url}/org/clf/resolve/main/model.safetensors", headers=auth,
                         stream=True)
        with pytest.raises(requests.exceptions.ChunkedEncodingError):
            r.content  # cut short of Content-Length
        upstream["faults"].corrupt.clear()
        r = requests.get(f"{server.url}/org/clf/resolve/main/model.safetensors", headers=auth)
        assert r.content == want
        time.sleep(1.2)  # the audit writes its batch every 0.5 s
    finally:
        server.close()
    rows = [(x["token"], x["status"], x["outcome"], x["bytes"])
            for x in records(depot, repo="org/clf") if x["path"] == "model.safetensors"]
    assert [r[:3] for r in rows] == [("reader", 200, "aborted"), ("reader", 200, "ok")]
    # bytes: what the socket took before the cut (every byte but the last may go out before
    # the file verified), then the whole file
    assert 0 < rows[0][3] < len(want) and rows[1][3] == len(want)
