"""Who may do what: the principal behind a request, and the decisions about it.

Everything here is plain Python over an in-memory view of the registry (``AccessState``), so the
server decides without a database round trip per request; the view is reloaded every
``refresh_s`` seconds, which bounds how long a revocation takes to bite.

Decisions, in order, for a request that names a repo:

1. the route family needs a scope (Hub reads: read/write/admin; inference: inference/admin;
   ``/metrics``: admin) -> 403, whatever the repo, so a refusal says nothing about it;
2. the repo is outside the token's patterns -> 403, again whatever the repo (it may not exist);
3. the repo is private and the caller has no approval -> 404 ``RepoNotFound``, word for word what
   a repo that does not exist gets;
4. the repo is gated and the caller has no approval -> ``GatedRepo`` (401 anonymous, 403 token).

An admin token passes 2-4; ``--auth none`` skips them all (anyone who reaches the port reads
everything).
"""

from __future__ import annotations

import fnmatch
import hmac
from collections import defaultdict
from dataclasses import dataclass, field

from sqlalchemy import or_, select

from ..errors import (
    AuthenticationRequired,
    Forbidden,
    GatedRepo,
    InvalidToken,
    RepoNotFound,
)
from ..models import AccessGrant, AccessToken, Repo
from . import tokens as tk

MODES = ("required", "anonymous-read", "none")
INVALID_CREDENTIALS = "Invalid credentials in Authorization header"  # huggingface_hub keys on it
# route family -> scopes that allow it
FAMILY_SCOPES = {
    "hub": {"read", "write", "admin"},
    "inference": {"inference", "admin"},
    "metrics": {"admin"},
    "docs": set(tk.SCOPES),
    "other": set(tk.SCOPES),
    # the web page: browsing reads like the Hub API; its operations view shows the access
    # audit (who downloaded what), so it is for admins
    "ui": {"read", "write", "admin"},
    "ui-ops": {"admin"},
}
# families an anonymous caller may use under --auth anonymous-read
ANONYMOUS_READ = {"hub", "docs", "other", "ui"}


@dataclass
class AuthOptions:
    """How `modeldepot serve` controls access (registry/server/auth_mw.py reads it)."""

    mode: str = "required"
    audit: bool = True
    admin_contact: str = "the depot's administrator"
    # failed authentications from one address within the window before it is refused a while
    max_failures: int = 10
    failure_window_s: float = 60.0
    lockout_s: float = 60.0
    # requests per second one token may make (burst of the same size); None: unlimited
    token_rate: float | None = None
    refresh_s: float = 2.0
    audit_flush_s: float = 0.5


@dataclass(frozen=True)
class Principal:
    """The caller: a live token, or anonymous (token None)."""

    token: tk.TokenRecord | None = None
    approvals: frozenset = frozenset()

    @property
    def name(self) -> str | None:
        return self.token.name if self.token else None

    @property
    def admin(self) -> bool:
        return self.token is not None and "admin" in self.token.scopes

    @property
    def patterns(self) -> tuple[str, ...]:
        return self.token.repos if self.token is not None else ()

    def approved(self, repo_type: str, name: str) -> bool:
        return self.admin or (repo_type, name) in self.approvals

    def in_patterns(self, name: str) -> bool:
        return self.admin or not self.patterns or any(
            fnmatch.fnmatchcase(name, p) for p in self.patterns)


@dataclass(frozen=True)
class RepoFlags:
    private: bool
    gated: str | None


@dataclass
class AccessState:
    """A snapshot of tokens, approvals and restricted (private or gated) repos."""

    tokens: dict[str, tk.TokenRecord] = field(default_factory=dict)
    approvals: dict[int, frozenset] = field(default_factory=dict)
    restricted: dict[tuple[str, str], RepoFlags] = field(default_factory=dict)
    key: bytes | None = None
    # tokens this snapshot has already verified (the hash is the costly part of a request);
    # only good ones, so garbage from a guesser cannot grow it. Gone with the snapshot.
    verified: dict[str, tk.TokenRecord] = field(default_factory=dict)

    @classmethod
    def load(cls, depot) -> "AccessState":
        with depot.db.session() as s:
            toks = {r.lookup: tk.TokenRecord.of(r) for r in s.scalars(select(AccessToken))}
            grants: dict[int, set] = defaultdict(set)
            for g in s.scalars(select(AccessGrant)):
                grants[g.token_id].add((g.repo_type, g.repo_name))
            restricted = {
                (t, n): RepoFlags(bool(p), g or None)
                for t, n, p, g in s.execute(
                    select(Repo.type, Repo.name, Repo.private, Repo.gated)
                    .where(or_(Repo.private.is_(True), Repo.gated.is_not(None))))
            }
        return cls(toks, {k: frozenset(v) for k, v in grants.items()}, restricted,
                   tk.load_key(depot.settings))

    def flags(self, repo_type: str, name: str) -> RepoFlags | None:
        return self.restricted.get((repo_type, name))

    def authenticate(self, header: str | None) -> Principal | None:
        """The principal an ``Authorization`` header names; None when there is none.

        Raises InvalidToken (with ``details["reason"]`` for the audit) for anything else.
        """
        if header is None:
            return None
        scheme, _, value = header.strip().partition(" ")
        value = value.strip()
        if scheme.lower() != "bearer" or not value:
            raise invalid_credentials("malformed Authorization header")
        rec = self.verified.get(value)
        if rec is None:
            rec = self._verify(value)
            if len(self.verified) < 10_000:
                self.verified[value] = rec
        status = rec.status()
        if status != "active":
            raise invalid_credentials(f"{status} token", token=rec.name)
        return Principal(rec, self.approvals.get(rec.id, frozenset()))


    def _verify(self, value: str) -> tk.TokenRecord:
        if not tk.well_formed(value):
            raise invalid_credentials("not a depot token")
        rec = self.tokens.get(tk.lookup_of(value))
        if rec is None or self.key is None:
            raise invalid_credentials("unknown token")
        if not hmac.compare_digest(tk.digest(self.key, rec.salt, value), rec.digest):
            raise invalid_credentials("unknown token")
        return rec


def invalid_credentials(reason: str, token: str | None = None) -> InvalidToken:
    return InvalidToken(INVALID_CREDENTIALS, reason=reason, token=token)


def repo_display(repo_type: str, name: str) -> str:
    return name if repo_type == "model" else f"{repo_type}s/{name}"


def _grant_command(token: str, repo_type: str, name: str) -> str:
    suffix = "" if repo_type == "model" else f" --type {repo_type}"
    return f"modeldepot access grant {token} {name}{suffix}"


def check_family(principal: Principal | None, family: str, options: AuthOptions,
                 names_repo: bool = False) -> None:
    """Refuse a caller who may not use this route family at all."""
    if options.mode == "none" or family == "open":
        return
    if principal is None or principal.token is None:
        if options.mode == "anonymous-read" and family in ANONYMOUS_READ:
            return
        e = AuthenticationRequired(
            "authentication required: send a depot token (set HF_TOKEN to a token from "
            f"'modeldepot token create'; ask {options.admin_contact} for one)", reason="no token")
        if names_repo:
            # what the Hub answers an anonymous caller about a repo it may not see: the client
            # raises RepositoryNotFoundError and tells the user to authenticate
            e.hub_code = "RepoNotFound"
        raise e
    allowed = FAMILY_SCOPES.get(family, set())
    if not allowed & principal.token.scopes:
        need = " or ".join(sorted(allowed - {"admin"}) or ["admin"])
        raise Forbidden(
            f"token {principal.name!r} has scope {', '.join(sorted(principal.token.scopes))}; "
            f"this needs {need} (ask {options.admin_contact} for a token with it)",
            reason="scope")


def not_found(family: str, repo_type: str, name: str) -> RepoNotFound:
    """Word for word what the handlers of ``family`` say about a repo that does not exist."""
    if family == "inference":
        return RepoNotFound(f"model {name!r} is not in the depot; import or pull it first (see "
                            "'modeldepot list')", reason="private")
    return RepoNotFound(f"{repo_type} repo {name!r} is not in the depot; see 'modeldepot list'",
                        reason="private")


def check_repo(principal: Principal | None, repo_type: str, name: str, flags: RepoFlags | None,
               options: AuthOptions, family: str = "hub") -> None:
    """Refuse access to one repo (after check_family passed)."""
    if options.mode == "none":
        return
    principal = principal or Principal()
    if not principal.in_patterns(name):
        raise Forbidden(
            f"token {principal.name!r} may not use {repo_display(repo_type, name)}: it is "
            f"limited to {', '.join(principal.patterns)}", reason="outside token repos")
    if flags is None or principal.approved(repo_type, name):
        return
    if flags.private:
        raise not_found(family, repo_type, name)
    if flags.gated:
        who = principal.name
        if who is None:
            raise GatedRepo(
                f"Access to {repo_type} repo {name!r} is restricted: it is gated. Send a depot "
                f"token that is approved for it; ask {options.admin_contact} for one "
                f"('{_grant_command('TOKEN', repo_type, name)}')", status=401, reason="gated")
        raise GatedRepo(
            f"Access to {repo_type} repo {name!r} is restricted and token {who!r} is not "
            f"approved for it: ask {options.admin_contact} to run "
            f"'{_grant_command(who, repo_type, name)}'", reason="gated")
