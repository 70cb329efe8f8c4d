"""Honest HTTP on every Hub route (issue 11): 4xx for bad input, a JSON 500 without exception
text, safe header values, HEAD equal to GET, 405 with Allow, conditionals by the content ETag,
links that never copy the Host header, no version in Server, and the Hub routes in OpenAPI."""

from __future__ import annotations

import errno
import hashlib
import http.client
import json
import re
from pathlib import Path

import pytest
import requests

from serverutil import AppServer

CONFIG = b'{"model_type": "bert"}'
WEIGHTS = bytes(range(256)) * 40  # 10,240 bytes, stored as an LFS file


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    from registry.config import Settings
    from registry.depot import Depot
    from registry.importer import import_dir
    from registry.server.app import ServeOptions, create_app

    root = tmp_path_factory.mktemp("hygiene")
    model = root / "model"
    model.mkdir()
    (model / "config.json").write_bytes(CONFIG)
    (model / "model.safetensors").write_bytes(WEIGHTS)
    ds = root / "ds"
    ds.mkdir()
    (ds / "data.csv").write_bytes(b"text,label\nhi,1\n")
    depot = Depot(Settings.from_env(home=root / "home"))
    import_dir(depot, model, "org/m")
    import_dir(depot, model, "org/m2")
    import_dir(depot, ds, "org/ds", repo_type="dataset")
    app = create_app(depot.settings, ServeOptions())  # inference too: its routes are known
    with AppServer(app) as server:
        yield {"url": server.url, "port": server.port, "app": app}


def raw(site, method: str, path: str, headers: dict | None = None, body: bytes | None = None):
    """One request byte for byte; (status, headers, body). Raises if no answer comes."""
    conn = http.client.HTTPConnection("127.0.0.1", site["port"], timeout=10)
    try:
        conn.putrequest(method, path, skip_host="Host" in (headers or {}),
                        skip_accept_encoding=True)
        for k, v in (headers or {}).items():
            conn.putheader(k, v)
        if body is not None:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


# -- item 3: 4xx, never 500, for bad input; a 500 never carries exception text ------------------


def test_cursor_past_any_integer_is_422(site):
    status, headers, body = raw(site, "GET", "/api/models?cursor=9223372036854775808")
    assert status == 422
    assert json.loads(body) == {"error": "cursor must be between 0 and 9007199254740992",
                                "error_type": "InvalidInput"}
    assert raw(site, "GET", "/api/models/org/m/tree/main?cursor=99999999999999999999")[0] == 422


@pytest.mark.parametrize("content_type, kind", [
    ("application/x-www-form-urlencoded; charset=x-bogus", "LookupError"),
    ("multipart/form-data", "ValueError"),
])
def test_paths_info_bodies_that_are_not_forms_are_422(site, content_type, kind):
    status, _h, body = raw(site, "POST", "/api/models/org/m/paths-info/main",
                           {"Content-Type": content_type}, b"paths=config.json")
    assert status == 422
    assert json.loads(body) == {
        "error": f"the body could not be read as a form ({kind}): send "
                 "application/x-www-form-urlencoded (paths=a&paths=b) or multipart/form-data "
                 "with a boundary", "error_type": "InvalidInput"}


def test_unexpected_failure_is_a_json_500_without_its_text(site, monkeypatch):
    from registry.server import hub_api

    def boom(*_a, **_k):
        raise RuntimeError("secret detail /etc/shadow")

    monkeypatch.setattr(hub_api, "list_repos", boom)
    status, headers, body = raw(site, "GET", "/api/models")
    assert status == 500
    assert json.loads(body) == {"error": "internal error: the server log has the details",
                                "error_type": "InternalError"}
    assert "secret" not in json.dumps(headers)


def test_inference_failure_is_the_same_500_without_its_text(site, monkeypatch):
    from registry.inference.service import InferenceService

    async def boom(*_a, **_k):
        raise KeyError("secret detail /etc/shadow")

    monkeypatch.setattr(InferenceService, "apredict", boom)
    status, headers, body = raw(site, "POST", "/models/org/m", {"Content-Type": "application/json"},
                                b'{"inputs": "hello"}')
    assert (status, json.loads(body)) == (500, {
        "error": "internal error: the server log has the details", "error_type": "InternalError"})


def test_running_out_of_descriptors_is_503_not_404(site, monkeypatch):
    from registry.server import files

    def no_fds(self):
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr(files.BlobResponse, "open", no_fds)
    status, headers, body = raw(site, "GET", "/org/m/resolve/main/config.json")
    assert (status, headers["retry-after"]) == (503, "1")
    assert json.loads(body) == {
        "error": "the server is out of resources (open files or memory) right now: retry "
                 "shortly", "error_type": "Unavailable"}


# -- item 4: header values built from input ------------------------------------------------------


@pytest.mark.parametrize("value", ["%1B", "%00", "%7F", "%C3%A9", "a%0D%0AX-Injected:%201"])
def test_header_values_from_input_are_sanitised(site, value):
    status, headers, body = raw(site, "GET", f"/api/models?expand={value}")
    assert status == 422
    assert headers["x-error-message"].startswith("unknown expand value(s): ")
    assert all(0x20 <= ord(c) < 0x7F for c in headers["x-error-message"])
    assert "x-injected" not in headers


# -- item 5: HEAD equals GET; unknown methods 405 with Allow ------------------------------------


@pytest.mark.parametrize("path", [
    "/api/models", "/api/datasets", "/api/models/org/m", "/api/models/org/m/revision/main",
    "/api/models/org/m/tree/main", "/api/models/org/m/refs", "/api/datasets/org/ds",
    "/api/datasets/org/ds/revision/main", "/api/datasets/org/ds/tree/main",
    "/api/datasets/org/ds/refs", "/api/models/org/nope", "/api/models/org/m/revision/v9",
    "/org/m/resolve/main/config.json", "/org/m/resolve/main/model.safetensors",
    "/datasets/org/ds/resolve/main/data.csv", "/org/m/resolve/main/missing.bin",
])
def test_head_agrees_with_get(site, path):
    g_status, g_headers, g_body = raw(site, "GET", path)
    h_status, h_headers, h_body = raw(site, "HEAD", path)
    assert h_status == g_status and h_body == b""
    for name in ("content-type", "content-length", "x-error-code", "etag", "x-repo-commit",
                 "x-linked-size"):
        assert h_headers.get(name) == g_headers.get(name), name
    assert int(g_headers["content-length"]) == len(g_body)


@pytest.mark.parametrize("method, path, allow", [
    ("POST", "/api/models/org/m", "GET,HEAD"),
    ("PUT", "/api/models/org/m/tree/main", "GET,HEAD"),
    ("DELETE", "/api/datasets/org/ds/refs", "GET,HEAD"),
    ("GET", "/api/models/org/m/paths-info/main", "POST"),
    ("OPTIONS", "/api/models", "GET,HEAD"),
    ("PUT", "/org/m/resolve/main/config.json", "GET,HEAD"),
    ("GET", "/v1/embeddings", "POST"),
    ("DELETE", "/health", "GET,HEAD"),
])
def test_unknown_methods_on_known_routes_are_405_with_allow(site, method, path, allow):
    status, headers, body = raw(site, method, path)
    assert (status, headers["allow"]) == (405, allow)
    assert json.loads(body) == {"error": f"{method} is not allowed here: use "
                                f"{', '.join(allow.split(','))}", "error_type": "MethodNotAllowed"}


def test_unknown_paths_are_json_404(site):
    status, headers, body = raw(site, "GET", "/no/such/thing")
    assert status == 404 and headers["content-type"].startswith("application/json")
    assert json.loads(body) == {"error": "no route for /no/such/thing", "error_type": "NotFound"}


# -- item 6: conditionals driven by the content-addressed ETag ------------------------------------


FILES = {"config.json": (CONFIG, hashlib.sha1(b"blob %d\0" % len(CONFIG) + CONFIG).hexdigest()),
         "model.safetensors": (WEIGHTS, hashlib.sha256(WEIGHTS).hexdigest())}


@pytest.mark.parametrize("name", sorted(FILES))
def test_conditionals_use_the_etag_the_server_sent(site, name):
    data, etag = FILES[name]
    path = f"/org/m/resolve/main/{name}"
    status, headers, _ = raw(site, "HEAD", path)
    assert headers["etag"] == f'"{etag}"'
    tag = headers["etag"]

    def req(**h):
        return raw(site, "GET", path, h)

    assert req(**{"If-Match": tag})[::2] == (200, data)
    assert req(**{"If-Match": f'"nope", {tag}'})[0] == 200
    assert req(**{"If-Match": '"nope"'})[0] == 412
    assert req(**{"If-Match": f"W/{tag}"})[0] == 412  # If-Match compares strongly
    assert req(**{"If-None-Match": f"W/{tag}"})[:1] == (304,)
    s, h, b = req(Range="bytes=0-3", **{"If-Range": tag})
    assert (s, b, h["content-range"]) == (206, data[:4], f"bytes 0-3/{len(data)}")
    assert req(Range="bytes=0-3", **{"If-Range": '"stale"'})[::2] == (200, data)
    assert req(Range="bytes=0-3", **{"If-Range": "Wed, 21 Oct 2015 07:28:00 GMT"})[::2] == \
        (200, data)


def _file_statuses(site) -> dict[str, float]:
    """GET answers of the route files are served by (``/{tail}``) by status, from /metrics."""
    text = raw(site, "GET", "/metrics")[2].decode()
    out: dict[str, float] = {}
    for m in re.finditer(r'^modeldepot_http_requests_total\{method="GET",route="([^"]*)",'
                         r'status="(\d+)"\} (\S+)$', text, re.M):
        if m[1] == "/{tail}":
            out[m[2]] = float(m[3])
    return out


def test_metrics_count_the_status_a_file_was_sent_with(site):
    path = "/org/m2/resolve/main/config.json"
    tag = raw(site, "HEAD", path)[1]["etag"]
    before = _file_statuses(site)
    assert raw(site, "GET", path, {"If-None-Match": tag})[0] == 304
    assert raw(site, "GET", path, {"Range": "bytes=0-1"})[0] == 206
    assert raw(site, "GET", path, {"If-Match": '"nope"'})[0] == 412
    after = _file_statuses(site)
    assert {k: after.get(k, 0) - before.get(k, 0) for k in ("200", "206", "304", "412")} == {
        "200": 0, "206": 1, "304": 1, "412": 1}


@pytest.mark.parametrize("range_header, status, want", [
    ("bytes=-0", 416, None),
    ("bytes=999999-", 416, None),
    ("items=0-1", 200, slice(None)),
    ("bytes=5-2", 200, slice(None)),
    ("bytes=0-1,4-5", 200, slice(None)),
    ("bytes=-5", 206, slice(-5, None)),
    ("bytes=-99999", 206, slice(None)),
    ("bytes=3-", 206, slice(3, None)),
    ("bytes=2-99999999999999999999999", 206, slice(2, None)),
])
def test_range_edge_cases(site, range_header, status, want):
    s, headers, body = raw(site, "GET", "/org/m/resolve/main/config.json",
                           {"Range": range_header})
    assert s == status
    if status == 416:
        assert headers["content-range"] == f"bytes */{len(CONFIG)}"
    else:
        assert body == CONFIG[want]


# -- item 10: links, Server, OpenAPI -----------------------------------------------------------


def test_link_header_never_copies_an_unknown_host(site):
    from registry.server.app import OPTIONS

    options = site["app"][OPTIONS]
    _s, headers, _b = raw(site, "GET", "/api/models?limit=1", {"Host": "evil.example"})
    assert headers["link"] == f'<http://127.0.0.1:{site["port"]}/api/models?limit=1&cursor=1>; ' \
                              'rel="next"'
    options.http.allowed_hosts = ["depot.lan"]
    try:
        _s, headers, _b = raw(site, "GET", "/api/models?limit=1", {"Host": "depot.lan:8080"})
        assert headers["link"] == '<http://depot.lan:8080/api/models?limit=1&cursor=1>; rel="next"'
        _s, headers, _b = raw(site, "GET", "/api/models?limit=1", {"Host": "evil.example"})
        assert headers["link"].startswith(f"<http://127.0.0.1:{site['port']}/")
        options.public_url = "https://depot.example.org/hub/"
        _s, headers, _b = raw(site, "GET", "/api/models?limit=1", {"Host": "depot.lan"})
        assert headers["link"] == ('<https://depot.example.org/hub/api/models?limit=1&cursor=1>;'
                                   ' rel="next"')
    finally:
        options.http.allowed_hosts = []
        options.public_url = None


def test_server_header_names_no_version(site):
    for path in ("/health", "/api/models", "/org/m/resolve/main/config.json", "/nope"):
        assert raw(site, "GET", path)[1]["server"] == "modeldepot"


def test_openapi_describes_the_hub_routes(site):
    spec = requests.get(site["url"] + "/openapi.json", timeout=10).json()
    for path, methods in {
        "/api/models": {"get"}, "/api/datasets": {"get"},
        "/api/models/{namespace}/{name}": {"get"},
        "/api/models/{namespace}/{name}/revision/{revision}": {"get"},
        "/api/models/{namespace}/{name}/tree/{revision}": {"get"},
        "/api/models/{namespace}/{name}/refs": {"get"},
        "/api/models/{namespace}/{name}/paths-info/{revision}": {"post"},
        "/api/datasets/{namespace}/{name}/paths-info/{revision}": {"post"},
        "/{namespace}/{name}/resolve/{revision}/{filename}": {"get", "head"},
        "/datasets/{namespace}/{name}/resolve/{revision}/{filename}": {"get", "head"},
        "/models/{repo_id}": {"post"}, "/v1/embeddings": {"post"}, "/health": {"get"},
    }.items():
        assert set(spec["paths"][path]) == methods, path
    cursor = next(p for p in spec["paths"]["/api/models"]["get"]["parameters"]
                  if p["name"] == "cursor")
    assert cursor["schema"] == {"type": "integer", "minimum": 0, "maximum": 2**53}
