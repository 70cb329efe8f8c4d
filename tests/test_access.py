"""Access control for a served depot: every route family x every token state, listings that do
not leak private names, the abuse limits, whoami-v2, and the access audit (in-process server)."""

from __future__ import annotations

import json
import os
import socket
import struct
import time

import pytest
import requests

from serverutil import AppServer

AUTH_REQUIRED = ("authentication required: send a depot token (set HF_TOKEN to a token from "
                 "'modeldepot token create'; ask the depot's administrator for one)")
INVALID = {"error": "Invalid credentials in Authorization header", "error_type": "InvalidToken"}
BIG = 32 * 1024 * 1024


def _csv_dataset(path):
    path.mkdir(parents=True, exist_ok=True)
    (path / "train.csv").write_text("text,label\nhello,0\nworld,1\n")
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory, models):
    """A depot with public, private, gated and out-of-pattern repos (models and datasets alike),
    and one token for each state."""
    from registry.auth.tokens import create_token, new_token_string, revoke_token
    from registry.auth.visibility import grant, set_visibility
    from registry.config import Settings
    from registry.depot import Depot
    from registry.importer import import_dir
    from registry.models import AccessToken, Repo, utcnow
    from sqlalchemy import select, update
    from datetime import timedelta

    root = tmp_path_factory.mktemp("access")
    depot = Depot(Settings.from_env(home=root / "home"))
    clf = models.get("classifier")
    data = _csv_dataset(root / "data")
    big = root / "big"
    big.mkdir()
    (big / "config.json").write_text('{"model_type": "bert"}')
    (big / "big.bin").write_bytes(os.urandom(BIG))
    for name in ("org/pub", "org/secret", "org/gated", "other/pub"):
        import_dir(depot, clf, name)
        import_dir(depot, data, name, repo_type="dataset")
    import_dir(depot, big, "org/big")
    for kind in ("model", "dataset"):
        set_visibility(depot, kind, "org/secret", "private")
    with depot.db.session(write=True) as s:  # what a pull of an upstream gated repo records
        s.execute(update(Repo).where(Repo.name == "org/gated").values(gated="manual"))
    tokens = {}
    for name, scopes, repos in [("reader", ["read"], ["org/*"]),
                                ("approved", ["read", "inference"], ["org/*"]),
                                ("infer", ["inference"], ["org/*"]),
                                ("admin", ["admin"], []),
                                ("revoked", ["read"], []),
                                ("expired", ["read"], [])]:
        tokens[name], _ = create_token(depot, name, scopes, repos,
                                       expires="1h" if name == "expired" else None, actor="test")
    revoke_token(depot, "revoked")
    with depot.db.session(write=True) as s:
        s.execute(update(AccessToken).where(AccessToken.name == "expired")
                  .values(expires_at=utcnow() - timedelta(seconds=1)))
        assert s.scalar(select(AccessToken.expires_at).where(AccessToken.name == "expired"))
    for kind in ("model", "dataset"):
        for repo in ("org/gated", "org/secret"):
            grant(depot, "approved", kind, repo, "test")
    tokens["unknown"] = new_token_string()
    return {"depot": depot, "tokens": tokens, "root": root}


def _server(world, **auth):
    from registry.auth import AuthOptions
    from registry.server.app import ServeOptions, create_app

    options = AuthOptions(**{"refresh_s": 0.2, "audit_flush_s": 0.1, **auth})
    app = create_app(world["depot"].settings, ServeOptions(auth=options))
    return AppServer(app)


@pytest.fixture(scope="module")
def required(world):
    # the table fails a lot of authentications; its audit would only get in the audit tests' way
    server = _server(world, mode="required", max_failures=100_000, audit=False)
    yield server
    server.close()


# -- the table: route family x token state --------------------------------------------------------

FAMILIES = {  # name -> (repo type, method, path template, request body)
    "info": ("model", "GET", "/api/models/{repo}", None),
    "revision": ("model", "GET", "/api/models/{repo}/revision/main", None),
    "tree": ("model", "GET", "/api/models/{repo}/tree/main?recursive=True", None),
    "refs": ("model", "GET", "/api/models/{repo}/refs", None),
    "paths-info": ("model", "POST", "/api/models/{repo}/paths-info/main", {"paths": "config.json"}),
    "resolve": ("model", "GET", "/{repo}/resolve/main/config.json", None),
    "head": ("model", "HEAD", "/{repo}/resolve/main/config.json", None),
    "dataset-info": ("dataset", "GET", "/api/datasets/{repo}/revision/main", None),
    "dataset-resolve": ("dataset", "GET", "/datasets/{repo}/resolve/main/train.csv", None),
    "inference": ("model", "POST", "/models/{repo}", {"inputs": "a fine film"}),
}
STATES = {  # name -> (header kind, repo)
    "no token": (None, "org/pub"),
    "malformed header": ("malformed", "org/pub"),
    "unknown token": ("unknown", "org/pub"),
    "revoked": ("revoked", "org/pub"),
    "expired": ("expired", "org/pub"),
    "wrong scope": ("wrong-scope", "org/pub"),
    "outside token repos": ("member", "other/pub"),
    "private repo": ("member", "org/secret"),
    "gated without approval": ("member", "org/gated"),
    "gated with approval": ("approved", "org/gated"),
    "private with approval": ("approved", "org/secret"),
    "valid": ("member", "org/pub"),
}


def _token_for(header_kind: str, family: str) -> str | None:
    """The token of a state; 'member' is a token with the family's scope and no approvals."""
    inference = family == "inference"
    return {"member": "infer" if inference else "reader",
            "wrong-scope": "reader" if inference else "infer",
            "approved": "approved", "revoked": "revoked", "expired": "expired",
            "unknown": "unknown"}.get(header_kind)


def _headers(world, header_kind):
    if header_kind is None:
        return {}
    if header_kind == "malformed":
        return {"Authorization": "Basic cmVhZGVyOnNlY3JldA=="}
    return {"Authorization": f"Bearer {world['tokens'][header_kind]}"}


def _expected(state: str, family: str) -> tuple[int, str | None, dict | None]:
    """(status, X-Error-Code, JSON body) a state gets; body None: the family's success. The
    inference API answers in its own shape, without X-Error-* headers."""
    status, code, body = _expected_hub(state, family)
    if family == "inference":
        code = None
        if state == "private repo":
            body = {"error": "model 'org/secret' is not in the depot; import or pull it first "
                    "(see 'modeldepot list')", "error_type": "RepoNotFound"}
    return status, code, body


def _expected_hub(state: str, family: str) -> tuple[int, str | None, dict | None]:
    kind, _method, _path, _body = FAMILIES[family]
    header_kind, repo = STATES[state]
    display = repo if kind == "model" else f"datasets/{repo}"
    token = _token_for(header_kind, family)
    if state == "no token":
        return 401, "RepoNotFound", {"error": AUTH_REQUIRED, "error_type": "AuthenticationRequired"}
    if state in ("malformed header", "unknown token", "revoked", "expired"):
        return 401, None, INVALID
    if state == "wrong scope":
        have, need = ("read", "inference") if family == "inference" else ("inference", "read or write")
        return 403, None, {"error": f"token {token!r} has scope {have}; this needs {need} (ask the "
                           "depot's administrator for a token with it)", "error_type": "Forbidden"}
    if state == "outside token repos":
        return 403, None, {"error": f"token {token!r} may not use {display}: it is limited to org/*",
                           "error_type": "Forbidden"}
    if state == "private repo":
        return 404, "RepoNotFound", {"error": f"{kind} repo 'org/secret' is not in the depot; see "
                                     "'modeldepot list'", "error_type": "RepoNotFound"}
    if state == "gated without approval":
        suffix = "" if kind == "model" else " --type dataset"
        return 403, "GatedRepo", {
            "error": f"Access to {kind} repo 'org/gated' is restricted and token {token!r} is not "
                     "approved for it: ask the depot's administrator to run 'modeldepot access "
                     f"grant {token} org/gated{suffix}'", "error_type": "GatedRepo"}
    return 200, None, None


def _call(url, world, family, header_kind, repo):
    kind, method, path, body = FAMILIES[family]
    headers = _headers(world, header_kind if header_kind not in ("member", "wrong-scope") else
                       _token_for(header_kind, family))
    kwargs = {"json": body} if family == "inference" else {"data": body} if body else {}
    return requests.request(method, url + path.format(repo=repo), headers=headers, timeout=120,
                            **kwargs)


def _check_success(family, repo, r, world):
    if family in ("info", "revision", "dataset-info"):
        assert r.json()["id"] == repo
    elif family == "tree":
        assert "config.json" in {e["path"] for e in r.json()}
    elif family == "refs":
        assert [b["name"] for b in r.json()["branches"]] == ["main"]
    elif family == "paths-info":
        assert [e["path"] for e in r.json()] == ["config.json"]
    elif family == "resolve":
        assert r.content == (world["depot"].snapshot_dir("model", repo, r.headers["X-Repo-Commit"])
                             / "config.json").read_bytes()
    elif family == "head":
        assert r.headers["X-Repo-Commit"] and r.content == b""
    elif family == "dataset-resolve":
        assert r.text == "text,label\nhello,0\nworld,1\n"
    elif family == "inference":
        assert {"label", "score"} <= set(r.json()[0])


@pytest.mark.parametrize("state", list(STATES))
@pytest.mark.parametrize("family", list(FAMILIES))
def test_route_family_by_token_state(required, world, family, state):
    header_kind, repo = STATES[state]
    status, code, body = _expected(state, family)
    r = _call(required.url, world, family, header_kind, repo)
    assert r.status_code == status, r.text
    assert r.headers.get("X-Error-Code") == code
    if body is None:
        _check_success(family, repo, r, world)
        return
    if FAMILIES[family][1] != "HEAD":
        assert r.json() == body
    if family != "inference":
        assert r.headers["X-Error-Message"] == body["error"]
    if status == 401:
        assert r.headers["WWW-Authenticate"] == 'Bearer realm="modeldepot"'
    if repo != "org/secret":  # nothing about the private repo in anyone else's refusal
        assert "secret" not in r.text and "secret" not in str(r.headers)


@pytest.mark.parametrize("family", [f for f in FAMILIES if f != "head"])
def test_a_private_repo_reads_exactly_like_a_missing_one(required, world, family):
    hidden = _call(required.url, world, family, "member", "org/secret")
    missing = _call(required.url, world, family, "member", "org/absent")
    code = None if family == "inference" else "RepoNotFound"  # the inference API sends none
    assert (hidden.status_code, hidden.headers.get("X-Error-Code")) == \
           (missing.status_code, missing.headers.get("X-Error-Code")) == (404, code)
    assert hidden.text.replace("org/secret", "org/absent") == missing.text


# -- listings ------------------------------------------------------------------------------------


@pytest.mark.parametrize("token, expected", [
    ("reader", ["org/big", "org/gated", "org/pub"]),
    ("approved", ["org/big", "org/gated", "org/pub", "org/secret"]),
    ("admin", ["org/big", "org/gated", "org/pub", "org/secret", "other/pub"]),
])
def test_listings_show_only_what_the_token_may_read(required, world, token, expected):
    auth = {"Authorization": f"Bearer {world['tokens'][token]}"}
    for search in ({}, {"search": "s"}, {"author": "org"}, {"full": "True"}):
        r = requests.get(required.url + "/api/models", params=search, headers=auth)
        assert r.status_code == 200
        names = [m["id"] for m in r.json()]
        assert names == [n for n in expected if not search.get("search") or "s" in n
                         if not search.get("author") or n.startswith("org/")]
        if "org/secret" not in expected:
            assert "secret" not in r.text
    gated = requests.get(required.url + "/api/models", params={"full": "True"}, headers=auth)
    assert {m["id"]: m["gated"] for m in gated.json()}["org/gated"] == "manual"
    datasets = requests.get(required.url + "/api/datasets", headers=auth).json()
    assert [d["id"] for d in datasets] == [n for n in expected if n != "org/big"]


def test_listing_without_a_token_is_refused_where_tokens_are_required(required):
    r = requests.get(required.url + "/api/models")
    assert (r.status_code, r.headers.get("X-Error-Code")) == (401, None)
    assert r.json() == {"error": AUTH_REQUIRED, "error_type": "AuthenticationRequired"}


def test_anonymous_read_serves_public_repos_only(world):
    with _server(world, mode="anonymous-read") as server:
        url = server.url
        assert requests.get(url + "/org/pub/resolve/main/config.json").status_code == 200
        assert [m["id"] for m in requests.get(url + "/api/models").json()] == \
               ["org/big", "org/gated", "org/pub", "other/pub"]
        hidden = requests.get(url + "/api/models/org/secret")
        assert (hidden.status_code, hidden.headers["X-Error-Code"]) == (404, "RepoNotFound")
        gated = requests.get(url + "/org/gated/resolve/main/config.json")
        assert (gated.status_code, gated.headers["X-Error-Code"]) == (401, "GatedRepo")
        assert gated.json() == {
            "error": "Access to model repo 'org/gated' is restricted: it is gated. Send a depot "
                     "token that is approved for it; ask the depot's administrator for one "
                     "('modeldepot access grant TOKEN org/gated')", "error_type": "GatedRepo"}
        # a bad token is refused even where none is needed, as on the Hub
        bad = requests.get(url + "/api/models/org/pub",
                           headers={"Authorization": f"Bearer {world['tokens']['revoked']}"})
        assert (bad.status_code, bad.json()) == (401, INVALID)
        infer = requests.post(url + "/models/org/pub", json={"inputs": "x"})
        assert (infer.status_code, infer.json()["error_type"]) == (401, "AuthenticationRequired")


def test_auth_none_ignores_stray_tokens(world):
    """No access control: today's behaviour, even with a huggingface.co token in HF_TOKEN."""
    with _server(world, mode="none") as server:
        r = requests.get(server.url + "/api/models/org/secret",
                         headers={"Authorization": "Bearer hf_notadepottoken"})
        assert r.status_code == 200 and r.json()["private"] is True


# -- operations routes and whoami ------------------------------------------------------------------


@pytest.mark.parametrize("path, token, status, body", [
    ("/health", None, 200, {"status": "ok"}),
    ("/metrics", None, 401, {"error": AUTH_REQUIRED, "error_type": "AuthenticationRequired"}),
    ("/metrics", "reader", 403, {"error": "token 'reader' has scope read; this needs admin (ask "
                                 "the depot's administrator for a token with it)",
                                 "error_type": "Forbidden"}),
    ("/metrics", "admin", 200, None),
    ("/docs", None, 401, {"error": AUTH_REQUIRED, "error_type": "AuthenticationRequired"}),
    ("/docs", "infer", 200, None),
    ("/openapi.json", "reader", 200, None),
    ("/api/whoami-v2", None, 401, INVALID),
    ("/api/whoami-v2", "revoked", 401, INVALID),
])
def test_operations_routes(required, world, path, token, status, body):
    headers = {"Authorization": f"Bearer {world['tokens'][token]}"} if token else {}
    r = requests.get(required.url + path, headers=headers)
    assert r.status_code == status
    if body is not None:
        assert r.json() == body


def test_whoami_v2_has_the_shape_huggingface_hub_reads(required, world):
    r = requests.get(required.url + "/api/whoami-v2",
                     headers={"Authorization": f"Bearer {world['tokens']['approved']}"})
    body = r.json()
    assert body["type"] == "user" and body["name"] == "approved" and body["orgs"] == []
    token = body["auth"]["accessToken"]
    assert {k: token[k] for k in ("displayName", "role", "scopes", "repos")} == {
        "displayName": "approved", "role": "read", "scopes": ["inference", "read"],
        "repos": ["org/*"]}


# -- abuse limits --------------------------------------------------------------------------------


def test_repeated_failed_authentication_is_refused_for_a_while(world):
    with _server(world, mode="required", max_failures=3, lockout_s=30) as server:
        bad = {"Authorization": f"Bearer {world['tokens']['unknown']}"}
        good = {"Authorization": f"Bearer {world['tokens']['reader']}"}
        assert requests.get(server.url + "/api/models/org/pub", headers=good).status_code == 200
        for _ in range(3):
            assert requests.get(server.url + "/api/models/org/pub", headers=bad).status_code == 401
        for headers in (bad, good):  # the address is refused, whatever it sends now
            r = requests.get(server.url + "/api/models/org/pub", headers=headers)
            assert r.status_code == 429
            assert 29 <= int(r.headers["Retry-After"]) <= 30
            assert r.json() == {"error": f"too many failed authentications from 127.0.0.1: try "
                                f"again in {r.headers['Retry-After']} s",
                                "error_type": "TooManyRequests"}


def test_per_token_rate_limit(world):
    with _server(world, mode="required", token_rate=2) as server:
        auth = {"Authorization": f"Bearer {world['tokens']['reader']}"}
        statuses = [requests.get(server.url + "/api/models/org/pub", headers=auth).status_code
                    for _ in range(3)]
        assert statuses == [200, 200, 429]
        other = {"Authorization": f"Bearer {world['tokens']['approved']}"}
        assert requests.get(server.url + "/api/models/org/pub", headers=other).status_code == 200


def test_failure_throttle_forgets_after_the_lockout():
    from registry.auth.throttle import FailureThrottle

    now = [0.0]
    t = FailureThrottle(max_failures=2, window_s=10, lockout_s=5, clock=lambda: now[0])
    t.failed("a")
    now[0] = 11  # the first failure fell out of the window
    t.failed("a")
    assert t.retry_after("a") is None
    t.failed("a")
    assert t.retry_after("a") == 5 and t.retry_after("b") is None
    now[0] = 16.5
    assert t.retry_after("a") is None


# -- revocation reaches a running server -----------------------------------------------------------


def test_revoking_a_token_reaches_a_running_server(world):
    from registry.auth.tokens import create_token, revoke_token

    secret, _ = create_token(world["depot"], "shortlived", ["read"], actor="test")
    with _server(world, mode="required") as server:
        auth = {"Authorization": f"Bearer {secret}"}
        assert requests.get(server.url + "/api/models/org/pub", headers=auth).status_code == 200
        revoke_token(world["depot"], "shortlived")
        deadline = time.monotonic() + 10
        while requests.get(server.url + "/api/models/org/pub", headers=auth).status_code == 200:
            assert time.monotonic() < deadline, "the revocation never reached the server"
            time.sleep(0.1)
        assert requests.get(server.url + "/api/models/org/pub", headers=auth).json() == INVALID


# -- the access audit ------------------------------------------------------------------------------


def _cut_off_download(port: int, token: str, path: str, read: int) -> int:
    """GET ``path``, read about ``read`` bytes, then reset the connection; body bytes received."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * 1024)
    s.connect(("127.0.0.1", port))
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n\r\n"
              .encode())
    received = b""
    while len(received) < read:
        chunk = s.recv(65536)
        assert chunk
        received += chunk
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST, not FIN
    s.close()
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK")
    return len(body)


def test_the_audit_records_exactly_the_downloads_made(world):
    from registry.auth.audit import records
    from registry.models import AccessRecord
    from sqlalchemy import delete

    depot, tokens = world["depot"], world["tokens"]
    with depot.db.session(write=True) as s:
        s.execute(delete(AccessRecord))
    commit = depot.resolve("model", "org/big")["commit"]
    config = len('{"model_type": "bert"}')
    with _server(world, mode="required") as server:
        def get(token, path, **headers):
            return requests.get(server.url + path,
                                headers={"Authorization": f"Bearer {tokens[token]}", **headers})

        assert get("reader", "/org/big/resolve/main/config.json").status_code == 200
        full = get("approved", "/org/big/resolve/main/big.bin")
        assert len(full.content) == BIG
        part = get("reader", "/org/big/resolve/main/big.bin", Range="bytes=100-1099")
        assert (part.status_code, len(part.content)) == (206, 1000)
        assert get("approved", "/org/secret/resolve/main/nope.json").status_code == 404
        assert requests.get(server.url + "/org/gated/resolve/main/config.json").status_code == 401
        requests.head(server.url + "/org/pub/resolve/main/config.json",
                      headers={"Authorization": f"Bearer {tokens['reader']}"})  # not a download
        got = _cut_off_download(server.port, tokens["approved"], "/org/big/resolve/main/big.bin",
                                256 * 1024)
        deadline = time.monotonic() + 20
        while not [r for r in records(depot) if r["outcome"] == "aborted"]:
            assert time.monotonic() < deadline, "the cut-off download was never recorded"
            time.sleep(0.1)
    rows = [(r["token"], r["method"], r["kind"], r["repo"], r["path"], r["status"], r["outcome"])
            for r in records(depot)]
    assert rows == [
        ("reader", "GET", "download", "org/big", "config.json", 200, "ok"),
        ("approved", "GET", "download", "org/big", "big.bin", 200, "ok"),
        ("reader", "GET", "download", "org/big", "big.bin", 206, "ok"),
        ("approved", "GET", "download", "org/secret", "nope.json", 404, "ok"),
        ("anonymous", "GET", "download", "org/gated", "config.json", 401, "refused"),
        ("approved", "GET", "download", "org/big", "big.bin", 200, "aborted"),
    ]
    recs = records(depot)
    assert [r["bytes"] for r in recs[:5]] == [config, BIG, 1000, 0, 0]
    assert [r["commit"] for r in recs[:3]] == [commit] * 3
    assert got <= recs[5]["bytes"] < BIG
    assert {r["client"] for r in recs} == {"127.0.0.1"}
    assert recs[4]["reason"] == "no token"


def test_metadata_reads_of_private_and_gated_repos_and_inference_are_audited(world):
    from registry.auth.audit import records
    from registry.models import AccessRecord
    from sqlalchemy import delete

    depot, tokens = world["depot"], world["tokens"]
    with depot.db.session(write=True) as s:
        s.execute(delete(AccessRecord))
    with _server(world, mode="required") as server:
        auth = {"Authorization": f"Bearer {tokens['approved']}"}
        for repo in ("org/pub", "org/secret", "org/gated"):  # only the last two are recorded
            assert requests.get(server.url + f"/api/models/{repo}", headers=auth).ok
        assert requests.post(server.url + "/models/org/pub", json={"inputs": "good"},
                             headers=auth).ok
    assert [(r["kind"], r["repo"], r["status"]) for r in records(depot)] == [
        ("metadata", "org/secret", 200), ("metadata", "org/gated", 200),
        ("inference", "org/pub", 200)]


def test_a_handler_that_learns_upstream_flags_refuses_like_the_middleware(world):
    """The pull-through proxy knows a repo is gated only once upstream says so."""
    from aiohttp import web
    from registry.auth import AuthOptions
    from registry.errors import DepotError
    from registry.server.app import ServeOptions, create_app
    from registry.server.auth_mw import enforce_upstream
    from registry.server.hub_api import error_response

    async def upstream_only(request):
        try:
            enforce_upstream(request, "model", "org/upstream-gated", gated="auto")
        except DepotError as e:
            return error_response(e)
        return web.json_response({"served": True})

    app = create_app(world["depot"].settings, ServeOptions(auth=AuthOptions(audit=False)))
    app.router.add_post("/proxy-test", upstream_only)  # a route of its own, as the proxy's
    with AppServer(app) as server:
        r = requests.post(server.url + "/proxy-test",
                          headers={"Authorization": f"Bearer {world['tokens']['reader']}"})
        assert (r.status_code, r.headers["X-Error-Code"]) == (403, "GatedRepo")
        assert "'reader' is not approved for it" in r.json()["error"]
        r = requests.post(server.url + "/proxy-test",
                          headers={"Authorization": f"Bearer {world['tokens']['admin']}"})
        assert r.json() == {"served": True}


def test_a_missing_repo_does_not_hint_at_a_private_one_of_the_other_type(world, required):
    """Without access control the server helpfully says 'it is a dataset repo'; a caller who
    may not see that private dataset must get the plain answer."""
    from registry.auth.visibility import set_visibility
    from registry.importer import import_dir

    depot = world["depot"]
    import_dir(depot, world["root"] / "data", "org/only-data", repo_type="dataset")
    set_visibility(depot, "dataset", "org/only-data", "private")
    try:
        time.sleep(0.5)  # the server's view refreshes every 0.2 s here
        auth = {"Authorization": f"Bearer {world['tokens']['reader']}"}
        for path in ("/api/models/org/only-data", "/org/only-data/resolve/main/train.csv"):
            r = requests.get(required.url + path, headers=auth)
            assert (r.status_code, r.json()) == (404, {
                "error": "model repo 'org/only-data' is not in the depot; see 'modeldepot list'",
                "error_type": "RepoNotFound"})
        admin = {"Authorization": f"Bearer {world['tokens']['admin']}"}
        r = requests.get(required.url + "/api/models/org/only-data", headers=admin)
        assert "it is a dataset repo (use --type dataset)" in r.json()["error"]
    finally:
        depot.rm("dataset", "org/only-data")  # the module's other tests list the datasets
