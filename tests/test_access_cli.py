"""The access-control commands: token create/list/revoke, access set/grant/revoke/list,
import --private, log --access, and the serve options (safe default, TLS files)."""

from __future__ import annotations

import json
import re

import pytest

from registry.auth.tokens import TOKEN_RE, well_formed


@pytest.fixture
def model_dir(tmp_path):
    d = tmp_path / "m"
    d.mkdir()
    (d / "config.json").write_text('{"model_type": "bert"}')
    return d


def test_token_create_prints_the_secret_alone_on_stdout(cli, home):
    r = cli("token", "create", "ci", "--scope", "read", "--scope", "inference", "--repos", "org/*",
            "--expires", "30d")
    assert r.exit_code == 0
    secret = r.stdout.strip()
    assert TOKEN_RE.fullmatch(secret) and well_formed(secret) and len(secret) == 52
    assert re.fullmatch(r"created token 'ci' \(scopes: inference, read; repos: org/\*; expires: "
                        r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z\); it is shown only now: store it\n",
                        r.stderr)
    assert (home / "auth.key").stat().st_mode & 0o777 == 0o600
    listed = cli("token", "list")
    assert secret not in listed.output and secret[4:24] not in listed.output
    lines = listed.output.splitlines()
    assert lines[0].split() == ["NAME", "SCOPES", "REPOS", "STATUS", "CREATED", "EXPIRES"]
    assert lines[2].split()[:4] == ["ci", "inference,read", "org/*", "active"]


def test_two_tokens_never_share_a_secret_and_a_changed_character_is_refused():
    from registry.auth.tokens import new_token_string

    a, b = new_token_string(), new_token_string()
    assert a != b and well_formed(a)
    flipped = a[:20] + ("A" if a[20] != "A" else "B") + a[21:]
    assert not well_formed(flipped)


@pytest.mark.parametrize("args, message", [
    (["bad name"], "Error: invalid token name 'bad name': use letters, digits and . _ - @ (at "
                   "most 100), starting with a letter or digit\n"),
    (["ci", "--expires", "soon"], "Error: invalid duration 'soon': use a number and a unit, e.g. "
                                  "90m, 12h, 30d, 8w, 1y\n"),
    (["ci", "--repos", "org/[ab]"], "Error: invalid repo pattern 'org/[ab]': use a repo id or a "
                                    "glob with * and ? like 'org/*'\n"),
])
def test_token_create_refuses_bad_input(cli, args, message):
    r = cli("token", "create", *args)
    assert (r.exit_code, r.output) == (1, message)


def test_token_names_are_unique_and_revocation_is_recorded(cli):
    assert cli("token", "create", "ci").exit_code == 0
    r = cli("token", "create", "ci")
    assert (r.exit_code, r.output) == (1, "Error: a token named 'ci' already exists (see "
                                          "'modeldepot token list'): pick another name\n")
    r = cli("token", "revoke", "ci")
    assert r.exit_code == 0 and r.output.startswith("revoked token 'ci' at 20")
    info = json.loads(cli("token", "list", "--json").output)
    assert [(t["name"], t["status"], t["scopes"], t["repos"]) for t in info] == [
        ("ci", "revoked", ["read"], ["*"])]
    r = cli("token", "revoke", "nobody")
    assert (r.exit_code, r.output) == (1, "Error: no token named 'nobody'; see 'modeldepot "
                                          "token list'\n")
    actions = [e["action"] for e in json.loads(cli("log", "--json").output)]
    assert actions[:2] == ["token-revoke", "token-create"]


def test_access_set_grant_revoke(cli, model_dir, depot):
    assert cli("import", model_dir, "--repo", "org/m", "--private").exit_code == 0
    assert depot.resolve("model", "org/m")["repo_meta"]["private"] is True
    assert cli("access", "set", "org/m", "public").output == "org/m: public\n"
    assert cli("access", "set", "org/m", "public").output == "org/m: public (unchanged)\n"
    assert cli("access", "set", "org/m", "private").output == "org/m: private\n"
    assert cli("access", "set", "org/m", "gated").output == "org/m: gated\n"
    meta = depot.resolve("model", "org/m")["repo_meta"]
    assert (meta["private"], meta["gated"]) == (True, "manual")
    assert cli("access", "set", "org/m", "ungated").output == "org/m: ungated\n"
    assert depot.resolve("model", "org/m")["repo_meta"]["gated"] is None
    r = cli("access", "set", "org/none", "private")
    assert (r.exit_code, r.output) == (1, "Error: model repo 'org/none' is not in the depot; "
                                          "see 'modeldepot list'\n")
    cli("token", "create", "alice")
    assert cli("access", "grant", "alice", "org/m").output == "approved 'alice' for org/m\n"
    again = cli("access", "grant", "alice", "org/m").output
    assert again.startswith("'alice' was already approved for org/m (by ")
    rows = json.loads(cli("access", "list", "--json").output)
    assert [(g["token"], g["type"], g["repo"]) for g in rows] == [("alice", "model", "org/m")]
    assert rows[0]["granted_by"] and rows[0]["granted_at"].endswith("Z")
    assert cli("access", "revoke", "alice", "org/m").output == "withdrew 'alice''s approval for org/m\n"
    r = cli("access", "revoke", "alice", "org/m")
    assert (r.exit_code, r.output) == (1, "Error: token 'alice' has no approval for org/m; see "
                                          "'modeldepot access list'\n")
    r = cli("access", "grant", "bob", "org/m")
    assert (r.exit_code, r.output) == (1, "Error: no token named 'bob'; see 'modeldepot token "
                                          "list'\n")
    assert cli("access", "list").output == "no approvals\n"


def test_log_access_filters_and_exports_json_lines(cli, depot):
    from registry.models import AccessRecord, utcnow
    from datetime import timedelta

    now = utcnow()
    with depot.db.session(write=True) as s:
        for i, (token, repo, age) in enumerate([("alice", "org/a", 3), (None, "org/b", 2),
                                                ("alice", "org/b", 0)]):
            s.add(AccessRecord(at=now - timedelta(hours=age), token=token, client="10.0.0.1",
                               method="GET", kind="download", repo_type="model", repo=repo,
                               commit="c" * 40, path="config.json", status=200,
                               bytes_sent=10 + i, outcome="ok"))
    r = cli("log", "--access", "--json")
    lines = r.output.splitlines()
    assert len(lines) == 3 and [json.loads(x)["bytes"] for x in lines] == [10, 11, 12]
    assert json.loads(lines[1])["token"] == "anonymous"
    pick = lambda *a: [json.loads(x)["bytes"] for x in cli("log", "--access", "--json", *a).output.splitlines()]  # noqa: E731
    assert pick("--token", "alice") == [10, 12]
    assert pick("--token", "anonymous") == [11]
    assert pick("--repo", "org/b") == [11, 12]
    assert pick("--since", "150m") == [11, 12]
    assert pick("--limit", "1") == [12]
    table = cli("log", "--access", "--repo", "org/a").output.splitlines()
    assert table[0].split() == ["AT", "TOKEN", "CLIENT", "METHOD", "KIND", "REPO", "COMMIT", "PATH",
                                "STATUS", "BYTES", "OUTCOME"]
    assert table[2].split()[1:] == ["alice", "10.0.0.1", "GET", "download", "org/a", "cccccccccccc",
                                    "config.json", "200", "10", "B", "ok"]
    r = cli("log", "--access", "--since", "yesterday")
    assert (r.exit_code, r.output) == (1, "Error: invalid --since 'yesterday': use a duration like "
                                          "2h or 7d, or a date like 2026-12-01 or "
                                          "2026-12-01T08:00:00Z\n")
    r = cli("log", "--since", "2h")
    assert r.exit_code == 2 and "--repo, --token and --since go with --access" in r.output


@pytest.mark.parametrize("host, mode", [("127.0.0.1", "none"), ("localhost", "none"),
                                        ("::1", "none"), ("0.0.0.0", "required"),
                                        ("192.168.1.5", "required"), ("depot.lan", "required")])
def test_serve_requires_tokens_off_loopback_by_default(host, mode):
    from registry.cli.access import auth_options

    options, context = auth_options(host, None, "x", None, 10, False, None, None)
    assert (options.mode, options.audit, context) == (mode, True, None)


def test_serve_tls_options_are_checked_before_serving(cli, tmp_path):
    r = cli("serve", "--tls-cert", tmp_path / "c.pem")
    assert r.exit_code == 2 and "--tls-cert and --tls-key go together" in r.output
    r = cli("serve", "--tls-cert", tmp_path / "c.pem", "--tls-key", tmp_path / "k.pem")
    assert (r.exit_code, r.output) == (1, f"Error: cannot read {tmp_path / 'c.pem'}: give "
                                          "--tls-cert and --tls-key as PEM files\n")
    (tmp_path / "c.pem").write_text("not a certificate")
    (tmp_path / "k.pem").write_text("not a key")
    r = cli("serve", "--tls-cert", tmp_path / "c.pem", "--tls-key", tmp_path / "k.pem")
    assert r.exit_code == 1 and r.output.startswith(
        f"Error: --tls-cert {tmp_path / 'c.pem'} and --tls-key {tmp_path / 'k.pem'} do not make "
        "a certificate chain (")


def test_env_server_lets_clients_send_a_depot_token(cli, monkeypatch):
    plain = json.loads(cli("env", "--server", "http://depot:8080", "--json").output)
    assert plain["HF_HUB_DISABLE_IMPLICIT_TOKEN"] == "1"  # a huggingface.co token stays home
    secret = cli("token", "create", "me").stdout.strip()
    monkeypatch.setenv("HF_TOKEN", secret)
    with_token = json.loads(cli("env", "--server", "http://depot:8080", "--json").output)
    assert "HF_HUB_DISABLE_IMPLICIT_TOKEN" not in with_token
    assert secret not in json.dumps(with_token)


def test_redact_hides_depot_tokens_in_text_meant_for_logs():
    """For anything that logs request data (the HTTP request log): no secret gets through."""
    from registry.auth.tokens import new_token_string, redact

    secret = new_token_string()
    line = f'GET /api/models "Authorization: Bearer {secret}" token={secret}x'
    assert redact(line) == 'GET /api/models "Authorization: Bearer mdp_[redacted]" token=mdp_[redacted]x'
