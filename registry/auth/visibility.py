"""Repo visibility and approvals: private/public, grants for gated (and private) repos, and the
filter that listings and search apply so a caller never sees a repo it may not read."""

from __future__ import annotations

from sqlalchemy import and_, or_, select

from ..errors import InvalidInput, NotFound
from ..models import AccessGrant, Repo, utcnow
from ..units import iso_z
from .tokens import get_token_row

def _like(glob: str) -> str:
    escaped = glob.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped.replace("*", "%").replace("?", "_")


def listing_filter(viewer):
    """A SQL condition on Repo for what ``viewer`` may see listed; None: everything.

    Gated repos stay listed (as on the Hub, the gate is on the files); private ones appear only
    to callers approved for them; a token limited to patterns sees only repos matching them.
    """
    if viewer is None or viewer.admin:
        return None
    approved = [and_(Repo.type == t, Repo.name == n) for t, n in sorted(viewer.approvals)]
    condition = or_(Repo.private.is_(False), *approved) if approved else Repo.private.is_(False)
    if viewer.patterns:
        condition = and_(condition, or_(
            *[Repo.name.like(_like(p), escape="\\") for p in viewer.patterns]))
    return condition


def _repo(s, repo_type: str, name: str) -> Repo:
    from ..depot import Depot

    return Depot.get_repo(s, repo_type, name)


VISIBILITY = ("private", "public", "gated", "ungated")


def set_visibility(depot, repo_type: str, name: str, visibility: str) -> dict:
    """private/public: who sees the repo at all; gated/ungated: whether reading it needs an
    approval (a repo mirrored as gated upstream arrives gated)."""
    if visibility not in VISIBILITY:
        raise InvalidInput(f"unknown visibility {visibility!r}: use {', '.join(VISIBILITY)}")
    with depot.db.session(write=True) as s:
        repo = _repo(s, repo_type, name)
        if visibility in ("private", "public"):
            before, after = bool(repo.private), visibility == "private"
            repo.private = after
        else:
            before, after = repo.gated, (repo.gated or "manual") if visibility == "gated" else None
            repo.gated = after
        changed = before != after
        if changed:
            depot.log_event(s, "access-set", repo=repo.display, visibility=visibility)
        return {"repo": name, "type": repo_type, "visibility": visibility, "changed": changed,
                "private": bool(repo.private), "gated": repo.gated}


def grant(depot, token: str, repo_type: str, name: str, actor: str) -> dict:
    """Approve ``token`` for a repo (gated or private). The repo need not be mirrored yet."""
    from ..naming import validate_repo_id

    validate_repo_id(name)
    with depot.db.session(write=True) as s:
        row = get_token_row(s, token)
        existing = s.scalar(select(AccessGrant).where(
            AccessGrant.token_id == row.id, AccessGrant.repo_type == repo_type,
            AccessGrant.repo_name == name))
        if existing is not None:
            return {**_grant_json(existing, token), "changed": False}
        g = AccessGrant(token_id=row.id, repo_type=repo_type, repo_name=name, granted_by=actor,
                        granted_at=utcnow())
        s.add(g)
        s.flush()
        depot.log_event(s, "access-grant", repo=name if repo_type == "model" else
                        f"{repo_type}s/{name}", token=token, granted_by=actor)
        return {**_grant_json(g, token), "changed": True}


def revoke(depot, token: str, repo_type: str, name: str, actor: str) -> dict:
    with depot.db.session(write=True) as s:
        row = get_token_row(s, token)
        g = s.scalar(select(AccessGrant).where(
            AccessGrant.token_id == row.id, AccessGrant.repo_type == repo_type,
            AccessGrant.repo_name == name))
        if g is None:
            raise NotFound(f"token {token!r} has no approval for {name}; see "
                           "'modeldepot access list'")
        out = _grant_json(g, token)
        s.delete(g)
        depot.log_event(s, "access-revoke", repo=name if repo_type == "model" else
                        f"{repo_type}s/{name}", token=token, revoked_by=actor)
        return out


def list_grants(depot, repo: str | None = None, token: str | None = None) -> list[dict]:
    from ..models import AccessToken

    with depot.db.session() as s:
        q = (select(AccessGrant, AccessToken.name).join(AccessToken)
             .order_by(AccessGrant.repo_type, AccessGrant.repo_name, AccessToken.name))
        if repo:
            q = q.where(AccessGrant.repo_name == repo)
        if token:
            q = q.where(AccessToken.name == token)
        return [_grant_json(g, name) for g, name in s.execute(q)]


def _grant_json(g: AccessGrant, token: str) -> dict:
    return {"token": token, "type": g.repo_type, "repo": g.repo_name, "granted_by": g.granted_by,
            "granted_at": iso_z(g.granted_at)}
