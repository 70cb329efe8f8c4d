"""Access control commands: `token create|list|revoke`, `access set|grant|revoke|list`, the
`serve` options for authentication and TLS, and `log --access`."""

from __future__ import annotations

import ipaddress
import json
from typing import Callable

import click

from ._common import emit_json, human_size, json_option, pass_app, repo_type_option, table


def _actor() -> str:
    from ..depot import actor

    return actor()


# -- token ----------------------------------------------------------------------------------------


@click.group("token")
def token_group():
    """Depot tokens: clients send one as HF_TOKEN (Authorization: Bearer ...)."""


@token_group.command("create")
@click.argument("name")
@click.option("--scope", "scopes", multiple=True,
              type=click.Choice(["read", "write", "admin", "inference"]),
              help="What the token may do (repeatable) [default: read].")
@click.option("--repos", "repos", multiple=True, metavar="PATTERN",
              help="Repo ids or globs (org/*) it may use (repeatable) [default: every repo].")
@click.option("--expires", metavar="DURATION", help="Lifetime, e.g. 12h, 30d, 1y [default: never].")
@json_option
@pass_app
def token_create(app, name, scopes, repos, expires, as_json):
    """Create token NAME and print its secret, once (it is stored only as a hash).

    The secret alone goes to stdout, so TOKEN=$(modeldepot token create ci) works.
    """
    from ..auth.tokens import create_token

    secret, info = create_token(app.depot, name, scopes or ("read",), repos, expires)
    if as_json:
        emit_json({**info, "token": secret})
        return
    click.echo(secret)
    click.echo(f"created token {name!r} (scopes: {', '.join(info['scopes'])}; repos: "
               f"{', '.join(info['repos'])}; expires: {info['expires_at'] or 'never'}); it is "
               "shown only now: store it", err=True)


@token_group.command("list")
@json_option
@pass_app
def token_list(app, as_json):
    """List tokens (never their secrets)."""
    from ..auth.tokens import list_tokens

    rows = list_tokens(app.depot)
    if as_json:
        emit_json(rows)
        return
    if not rows:
        click.echo("no tokens; create one with 'modeldepot token create NAME'")
        return
    click.echo(table(
        [(r["name"], ",".join(r["scopes"]), ",".join(r["repos"]), r["status"],
          r["created_at"][:19], (r["expires_at"] or "never")[:19]) for r in rows],
        ["NAME", "SCOPES", "REPOS", "STATUS", "CREATED", "EXPIRES"],
    ))


@token_group.command("revoke")
@click.argument("name")
@json_option
@pass_app
def token_revoke(app, name, as_json):
    """Revoke token NAME: refused from now on (a running server notices within seconds)."""
    from ..auth.tokens import revoke_token

    info = revoke_token(app.depot, name)
    if as_json:
        emit_json(info)
    else:
        click.echo(f"revoked token {name!r} at {info['revoked_at']}")


# -- access ---------------------------------------------------------------------------------------


@click.group("access")
def access_group():
    """Repo visibility (private/public) and approvals for gated and private repos."""


@access_group.command("set")
@click.argument("repo")
@click.argument("visibility", type=click.Choice(["private", "public", "gated", "ungated"]))
@repo_type_option
@json_option
@pass_app
def access_set(app, repo, visibility, repo_type, as_json):
    """Make REPO private (invisible to tokens without an approval) or public; gated (listed, but
    read only with an approval) or ungated."""
    from ..auth.visibility import set_visibility

    info = set_visibility(app.depot, repo_type, repo, visibility)
    if as_json:
        emit_json(info)
    else:
        click.echo(f"{repo}: {visibility}" + ("" if info["changed"] else " (unchanged)"))


@access_group.command("grant")
@click.argument("token")
@click.argument("repo")
@repo_type_option
@json_option
@pass_app
def access_grant(app, token, repo, repo_type, as_json):
    """Approve TOKEN for gated (or private) REPO; recorded with who granted it and when."""
    from ..auth.visibility import grant

    info = grant(app.depot, token, repo_type, repo, _actor())
    if as_json:
        emit_json(info)
    else:
        click.echo(f"approved {token!r} for {repo}" if info["changed"] else
                   f"{token!r} was already approved for {repo} (by {info['granted_by']} at "
                   f"{info['granted_at']})")


@access_group.command("revoke")
@click.argument("token")
@click.argument("repo")
@repo_type_option
@json_option
@pass_app
def access_revoke(app, token, repo, repo_type, as_json):
    """Withdraw TOKEN's approval for REPO."""
    from ..auth.visibility import revoke

    info = revoke(app.depot, token, repo_type, repo, _actor())
    if as_json:
        emit_json(info)
    else:
        click.echo(f"withdrew {token!r}'s approval for {repo}")


@access_group.command("list")
@click.option("--repo", help="Only approvals for this repo.")
@click.option("--token", help="Only approvals of this token.")
@json_option
@pass_app
def access_list(app, repo, token, as_json):
    """List approvals: token, repo, who granted it and when."""
    from ..auth.visibility import list_grants

    rows = list_grants(app.depot, repo=repo, token=token)
    if as_json:
        emit_json(rows)
        return
    if not rows:
        click.echo("no approvals")
        return
    click.echo(table([(r["token"], r["repo"] if r["type"] == "model" else f"datasets/{r['repo']}",
                       r["granted_by"], r["granted_at"][:19]) for r in rows],
                     ["TOKEN", "REPO", "GRANTED BY", "AT"]))


# -- log --access ---------------------------------------------------------------------------------


def access_log_options(f: Callable) -> Callable:
    """The options `log` takes for the access audit."""
    for decorator in reversed([
        click.option("--access", is_flag=True,
                     help="Show the access audit: downloads, reads of private/gated repos, "
                     "inference calls, refusals (oldest first)."),
        click.option("--repo", "access_repo", metavar="REPO",
                     help="With --access: only this repo (datasets/NAME for a dataset)."),
        click.option("--token", "access_token", metavar="NAME",
                     help="With --access: only this token ('anonymous' for none)."),
        click.option("--since", metavar="WHEN",
                     help="With --access: since a duration ago (2h, 7d) or a date/time (UTC)."),
    ]):
        f = decorator(f)
    return f


def show_access_log(app, repo, token, since, limit, as_json) -> None:
    """``--json`` prints JSON lines (one record a line), for export."""
    from ..auth.audit import records

    rows = records(app.depot, repo=repo, token=token, since=since, limit=limit)
    if as_json:
        for r in rows:
            click.echo(json.dumps(r, separators=(",", ":")))
        return
    if not rows:
        click.echo("no access recorded" + (" matching" if repo or token or since else ""))
        return
    click.echo(table(
        [(r["at"][:19], r["token"], r["client"] or "-", r["method"], r["kind"],
          (r["repo"] if r["repo_type"] != "dataset" else f"datasets/{r['repo']}") or "-",
          (r["commit"] or "")[:12] or "-", r["path"] or "-", r["status"], human_size(r["bytes"]),
          r["outcome"] + (f" ({r['reason']})" if r["reason"] else ""))
         for r in rows],
        ["AT", "TOKEN", "CLIENT", "METHOD", "KIND", "REPO", "COMMIT", "PATH", "STATUS", "BYTES",
         "OUTCOME"],
    ))


# -- serve ----------------------------------------------------------------------------------------


def serve_auth_options(f: Callable) -> Callable:
    """`serve` options for access control and TLS; ``auth_options`` turns them into settings."""
    for decorator in reversed([
        click.option("--auth", "auth_mode", type=click.Choice(["required", "anonymous-read", "none"]),
                     help="Who may use the server: a token is required; anyone may read public "
                     "repos (tokens for the rest); or no access control. [default: required "
                     "on a non-loopback address, none on loopback]"),
        click.option("--admin-contact", metavar="WHO",
                     help="Whom refusals tell users to ask (an e-mail, a channel).",
                     default="the depot's administrator"),
        click.option("--token-rate-limit", type=click.FloatRange(min=0, min_open=True),
                     metavar="N", help="Requests per second one token may make (429 beyond)."),
        click.option("--max-auth-failures", default=10, show_default=True,
                     type=click.IntRange(min=1),
                     help="Failed authentications per address per minute before it is refused "
                     "for a minute (429)."),
        click.option("--no-audit", is_flag=True, help="Do not record the access audit."),
        click.option("--tls-cert", type=click.Path(dir_okay=False), metavar="FILE",
                     help="Serve HTTPS with this PEM certificate (chain) ..."),
        click.option("--tls-key", type=click.Path(dir_okay=False), metavar="FILE",
                     help="... and this PEM private key."),
    ]):
        f = decorator(f)
    return f


def _loopback(host: str) -> bool:
    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def auth_options(host: str, auth_mode, admin_contact, token_rate_limit, max_auth_failures,
                 no_audit, tls_cert, tls_key):
    """(AuthOptions, ssl context or None) for `serve`."""
    from ..auth import AuthOptions

    if bool(tls_cert) != bool(tls_key):
        raise click.UsageError("--tls-cert and --tls-key go together")
    context = None
    if tls_cert:
        from ..server.tls import server_context

        context = server_context(tls_cert, tls_key)
    mode = auth_mode or ("none" if _loopback(host) else "required")
    if mode == "none" and not _loopback(host):
        click.echo(f"warning: --auth none on {host}: anyone who reaches the port reads every "
                   "repo, private and gated ones included", err=True)
    if mode == "none" and no_audit:
        return None, context  # nothing to do per request: no middleware at all
    options = AuthOptions(mode=mode, audit=not no_audit, admin_contact=admin_contact,
                          token_rate=token_rate_limit, max_failures=max_auth_failures)
    return options, context


def register(group: click.Group) -> None:
    group.add_command(token_group)
    group.add_command(access_group)
