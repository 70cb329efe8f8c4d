"""The pull-through proxy's library half: what the upstream says a revision is, recorded as a
partial revision, and single files fetched into it, verified, through ``hub.py``'s one download
path. The HTTP half (single flight, streaming to clients, metrics) is ``server/proxy.py``.

A revision seen through the proxy is recorded with its full file list (``meta["listing"]``:
path, size, LFS flag, sha256 for LFS files, git blob id for the others) and no file, or only the
files the store already holds; each file a client asks for is fetched once, verified like
``pull`` verifies, and added. ``modeldepot pull`` completes such a revision.

Nothing here ever sends a client's token: the upstream sees the proxy's own token only.
"""

from __future__ import annotations

import fnmatch
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Sequence

from sqlalchemy import select

from . import hub, names
from .depot import Depot, FileRecord
from .errors import (
    DepotError,
    EntryNotFound,
    Overloaded,
    RepoNotFound,
    RevisionNotFound,
    Unauthorized,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from .models import Event, Ref, Repo, Revision
from .naming import is_commit
from .store import git_blob_sha1, lfs_pointer
from .units import iso_z


# A hung upstream must not hold every client of a revision (they share one call) forever.
METADATA_TIMEOUT = 30.0


@dataclass(frozen=True)
class ProxyConfig:
    upstream: str
    token: str | None = field(default=None, repr=False)
    ttl: float = 300.0  # seconds a branch or tag name stays resolved
    allow: Sequence[str] = ()  # repo patterns (``org/*``, ``datasets/org/*``); empty: all
    deny: Sequence[str] = ()

    def allows(self, repo_type: str, name: str) -> bool:
        """Deny wins; with an allow list, only what it names. A ``datasets/`` prefix on a pattern
        restricts it to datasets, a plain pattern matches models and datasets alike."""
        keys = [name, f"{repo_type}s/{name}"]

        def hit(patterns):
            return any(fnmatch.fnmatchcase(k, p) for p in patterns for k in keys)

        return not hit(self.deny) and (not self.allow or hit(self.allow))


def label(repo_type: str, name: str) -> str:
    return name if repo_type == "model" else f"{repo_type}s/{name}"


# -- upstream failures as Hub-shaped errors -------------------------------------------------------


def upstream_failure(exc: BaseException, cfg: ProxyConfig, repo_type: str, name: str,
                     what: str | None = None) -> DepotError:
    """What the upstream did, as the error (status, X-Error-Code) the client's library expects."""
    import requests

    cause: BaseException | None = exc
    while cause is not None and getattr(cause, "response", None) is None and not isinstance(
            cause, (requests.ConnectionError, requests.Timeout)):
        cause = cause.__cause__
    where = label(repo_type, name) if what is None else f"{what} of {label(repo_type, name)}"
    if cause is None:
        return exc if isinstance(exc, DepotError) else UpstreamError(
            f"the upstream {cfg.upstream} failed for {where}: {exc}")
    if isinstance(cause, requests.Timeout):
        return UpstreamTimeout(f"the upstream {cfg.upstream} did not answer in time for {where}; "
                               "what the depot holds is still served, retry later")
    if isinstance(cause, requests.ConnectionError):
        return UpstreamUnavailable(f"the upstream {cfg.upstream} is unreachable, and the depot does "
                                   f"not hold {where}; what it holds is still served, retry later")
    resp = cause.response
    status, code = resp.status_code, resp.headers.get("X-Error-Code")
    if status in (401, 403):
        e: DepotError = Unauthorized(
            f"the upstream {cfg.upstream} refused {where} (HTTP {status}"
            f"{', ' + code if code else ''}); the depot fetches with its own upstream token "
            "(MODELDEPOT_PROXY_TOKEN), ask its operator for access")
        e.http_status, e.hub_code = status, code
        return e
    if status == 404:
        cls = {"RevisionNotFound": RevisionNotFound, "EntryNotFound": EntryNotFound}.get(
            code or "", RepoNotFound)
        return cls(f"{where} was not found on the upstream {cfg.upstream}")
    if status == 429:
        e = Overloaded(f"the upstream {cfg.upstream} is rate limiting the depot; retry later",
                       retry_after=resp.headers.get("Retry-After"))
        return e
    if status >= 500:
        e = UpstreamError(f"the upstream {cfg.upstream} failed (HTTP {status}) for {where}; "
                          "retry later")
        e.http_status = 502
        return e
    return UpstreamError(f"the upstream {cfg.upstream} answered HTTP {status} for {where}")


# -- renamed repos and the audit: one call site each, wired to persistent APIs at merge ------------


_REDIRECTS: "OrderedDict[tuple[str, str], str]" = OrderedDict()
_REDIRECTS_MAX = 4096
_redirects_lock = threading.Lock()


def _record_upstream_redirect(repo_type: str, old_id: str, new_id: str) -> None:
    """The upstream answers ``old_id`` as ``new_id`` (a renamed repo, e.g. gpt2 ->
    openai-community/gpt2). Kept in memory, bounded, for the running proxy; ``record_revision``
    also records it as a former name in the registry (registry/names.py) once the repo exists,
    so the old id survives a restart and works without the upstream."""
    with _redirects_lock:
        _REDIRECTS[(repo_type, old_id)] = new_id
        _REDIRECTS.move_to_end((repo_type, old_id))
        while len(_REDIRECTS) > _REDIRECTS_MAX:
            _REDIRECTS.popitem(last=False)


def canonical_name(depot: Depot, repo_type: str, name: str) -> str:
    """The repo id ``name`` is answered under: a renamed repo's new id, from this process's
    redirects or the registry's former names."""
    with _redirects_lock:
        known = _REDIRECTS.get((repo_type, name))
    if known is not None:
        return known
    with depot.db.session() as s:
        current = names.canonical_name(s, repo_type, name)
    if current is None:
        return name
    _record_upstream_redirect(repo_type, name, current)
    return current


def record_download(depot: Depot, repo_type: str, name: str, commit: str, path: str,
                    nbytes: int, outcome: str, **details) -> None:
    """One proxied download (fetched from the upstream) in the audit log.

    TODO(merge): the access audit (issue 13) records who downloaded what; route this through it.
    """
    with depot.db.session(write=True) as s:
        s.add(Event(actor="proxy", action="proxy-fetch", repo=label(repo_type, name),
                    commit=commit, details={"path": path, "bytes": nbytes, "outcome": outcome,
                                            **details}))


# -- what the registry already knows ---------------------------------------------------------------


@dataclass(frozen=True)
class LocalRev:
    kind: str  # "commit", "branch", "tag", "alias"
    commit: str
    partial: bool


def local_revision(depot: Depot, repo_type: str, name: str, rev: str | None) -> LocalRev | None:
    """How ``rev`` of ``name`` resolves in the registry (None: it does not)."""
    rev = rev or "main"
    with depot.db.session() as s:
        repo = s.scalar(select(Repo).where(Repo.type == repo_type, Repo.name == name))
        if repo is None:
            return None
        q = select(Revision).where(Revision.repo_id == repo.id, Revision.complete.is_(True))
        kind, found = "commit", None
        if is_commit(rev):
            found = s.scalar(q.where(Revision.commit == rev))
        else:
            ref = s.scalar(select(Ref).where(Ref.repo_id == repo.id, Ref.name == rev))
            if ref is not None:
                kind, found = ref.kind, s.scalar(q.where(Revision.commit == ref.commit))
            elif 7 <= len(rev) < 40 and all(c in "0123456789abcdef" for c in rev):
                matches = list(s.scalars(q.where(Revision.commit.startswith(rev))))
                found = matches[0] if len(matches) == 1 else None
        return LocalRev(kind, found.commit, found.partial) if found is not None else None


def listed_file(depot: Depot, repo_type: str, name: str, commit: str, path: str) -> dict | None:
    """The listing entry of ``path`` when the revision is partial and lacks it, else None."""
    with depot.db.session() as s:
        rev = s.scalar(select(Revision).join(Repo).where(
            Repo.type == repo_type, Repo.name == name, Revision.commit == commit,
            Revision.complete.is_(True)))
        if rev is None or not rev.partial or any(f.path == path for f in rev.files):
            return None
        return next((d for d in (rev.meta or {}).get("listing", []) if d["path"] == path), None)


# -- recording a revision the upstream knows -------------------------------------------------------


def _listing_entry(f: hub.UpstreamFile) -> dict:
    lfs = bool(f.lfs)
    git_sha1 = git_blob_sha1(lfs_pointer(f.sha256, f.size)) if lfs and f.sha256 else f.git_sha1
    return {"path": f.path, "size": f.size or 0, "lfs": lfs, "sha256": f.sha256 if lfs else None,
            "git_sha1": git_sha1}


def record_revision(depot: Depot, cfg: ProxyConfig, repo_type: str, name: str,
                    rev: str | None) -> tuple[str, str]:
    """Ask the upstream what ``rev`` of ``name`` is and record it (partial unless the store
    already holds every file). Returns (canonical repo id, commit)."""
    context = {"endpoint": cfg.upstream, "repo_type": repo_type, "name": name, "revision": rev}
    try:
        api = hub._api(cfg.upstream, cfg.token)
        info = hub._repo_info(api, repo_type, name, rev, context, timeout=METADATA_TIMEOUT)
        canonical = info.id or name
        if canonical != name:
            _record_upstream_redirect(repo_type, name, canonical)
        commit = info.sha
        requested = rev or "main"
        refs_to_record = [] if is_commit(requested) else [(requested, "branch")]
        if not is_commit(requested) and len(requested) < 40 and commit.startswith(requested):
            refs_to_record = []  # a short commit id, not a name
        known = local_revision(depot, repo_type, canonical, commit)
        if known is not None:  # a branch moved to a commit we hold: only the ref changes
            _move_refs(depot, repo_type, canonical, commit, refs_to_record, known.partial)
            return canonical, commit
        files = hub._file_list(api, info, canonical, repo_type, commit, context)
        for f in files:
            if not f.complete:
                url = hub._resolve_url(cfg.upstream, repo_type, canonical, commit, f.path)
                hub._call(hub._fill_from_head, f, url, cfg.token, cfg.upstream,
                          context={**context, "what": f.path})
        try:
            refs = hub._upstream_refs(api, repo_type, canonical, context)
        except (UpstreamError, RepoNotFound):
            refs = None
    except Exception as e:  # noqa: BLE001 - every upstream failure becomes one Hub-shaped error
        raise upstream_failure(e, cfg, repo_type, name) from e
    present = _present_records(depot, files)
    depot.publish(
        repo_type=repo_type, name=canonical, commit=commit, files=present, source="proxy",
        refs=hub._refs_to_record(None if not refs_to_record else requested, commit, refs),
        repo_fields=hub._repo_fields(info, repo_type, cfg.upstream, refs),
        revision_meta={"listing": [_listing_entry(f) for f in sorted(files, key=lambda f: f.path)],
                       "upstream": {"endpoint": cfg.upstream, "requested": rev,
                                    "seen_at": iso_z(datetime.now(timezone.utc))}},
        partial=True,
    )
    if canonical != name:
        try:
            names.add_repo_name(depot, repo_type, canonical, name, source="redirect")
        except DepotError:
            pass  # the old id is a repo of its own here, or another repo's name: keep those
    return canonical, commit


def upstream_json(cfg: ProxyConfig, path: str, timeout) -> Any:
    """GET ``path`` (``/api/...``) of the upstream with the proxy's own token, as JSON. Raises
    what huggingface_hub raises (``upstream_failure`` maps it)."""
    from huggingface_hub.utils import build_hf_headers, get_session, hf_raise_for_status

    headers = build_hf_headers(token=cfg.token or False, library_name="modeldepot")
    r = get_session().get(cfg.upstream + path, headers=headers, timeout=timeout)
    hf_raise_for_status(r)
    return r.json()


def upstream_refs(cfg: ProxyConfig, repo_type: str, name: str) -> dict:
    """The upstream's ``/refs`` answer for ``name``, pull requests included, each group a list
    of {name, ref, targetCommit}. Raises a Hub-shaped error on failure."""
    try:
        body = upstream_json(cfg, f"/api/{repo_type}s/{name}/refs?include_prs=1",
                             METADATA_TIMEOUT)
        out = {}
        for group in ("branches", "converts", "tags", "pullRequests"):
            out[group] = [{"name": str(i["name"]), "ref": str(i["ref"]),
                           "targetCommit": str(i["targetCommit"])}
                          for i in body.get(group) or [] if is_commit(i.get("targetCommit", ""))]
    except Exception as e:  # noqa: BLE001 - every upstream failure becomes one Hub-shaped error
        raise upstream_failure(e, cfg, repo_type, name) from e
    return out


def _present_records(depot: Depot, files: list[hub.UpstreamFile]) -> list[FileRecord]:
    """Records for the listed files whose content the store already holds (no download)."""
    by_git = hub._existing_by_git_sha1(depot, files)
    out = []
    for f in files:
        if f.lfs is False and f.git_sha1 in by_git:
            f.sha256 = by_git[f.git_sha1]
        if f.sha256 and f.lfs is not None and depot.store.has_blob(f.sha256, f.size):
            out.append(hub._record(f, hub.known_digest(depot.store, f)))
    return out


def _move_refs(depot: Depot, repo_type: str, name: str, commit: str,
               refs: list[tuple[str, str]], partial: bool) -> None:
    if not refs:
        return
    held = depot.resolve(repo_type, name, commit)
    depot.publish(repo_type=repo_type, name=name, commit=commit,
                  files=[FileRecord(**f) for f in held["files"]], source="proxy",
                  refs=refs, partial=partial, revision_meta={})


# -- fetching one file -----------------------------------------------------------------------------


def fetch_into_revision(depot: Depot, cfg: ProxyConfig, repo_type: str, name: str, commit: str,
                        entry: dict, listener=None, progress=None) -> FileRecord:
    """Fetch the listed file ``entry`` of ``name@commit`` (verified, resumable: the ``pull``
    download) and add it to the partial revision. Raises a Hub-shaped error on failure."""
    f = hub.UpstreamFile(entry["path"], size=entry["size"], lfs=entry["lfs"],
                         sha256=entry.get("sha256") if entry["lfs"] else None,
                         git_sha1=None if entry["lfs"] else entry.get("git_sha1"),
                         origin="listing")
    # The lease keeps gc off the fetched blob until the publish below references it.
    with depot.writing() as lease:
        try:
            record = hub.fetch_file(depot, repo_type, name, commit, f, endpoint=cfg.upstream,
                                    token=cfg.token, listener=listener, progress=progress,
                                    lease=lease)
        except Exception as e:  # noqa: BLE001 - an IntegrityError (no HTTP cause) stays itself
            raise upstream_failure(e, cfg, repo_type, name, what=f.path) from e
        depot.publish(repo_type=repo_type, name=name, commit=commit, files=[record],
                      source="proxy", refs=(), partial=True, revision_meta={},
                      event_details={"fetched": f.path, "bytes": f.size})
    return record
