"""The depot: the registry database and the store, kept consistent with each other.

Every way a revision enters the depot (local import, Hub pull, bundle import, ONNX export) ends in
``Depot.publish``: the blobs are already in the store and verified; ``publish`` builds the HF-cache
snapshot, then records repo, revision, files, refs and an event in one transaction, then writes
the ref files. Until that transaction commits nothing is visible: a crash before it leaves only
garbage that ``gc`` removes.
"""

from __future__ import annotations

import contextlib
import getpass
import hashlib
import json
import os
import socket
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

from sqlalchemy import case, delete, func, select
from sqlalchemy.orm import Session, selectinload

from . import cacheview, names
from .config import Settings
from .db import Database
from .faults import failpoint
from .lease import leases_for
from .locks import lock_for
from .errors import Conflict, IntegrityError, InvalidInput, RepoNotFound, RevisionNotFound
from .models import Artifact, Blob, DepotInfo, Event, File, Ref, Repo, Revision, utcnow
from .naming import (
    is_commit,
    validate_ref_name,
    validate_repo_id,
    validate_repo_type,
)
from .store import (
    Digest,
    open_store,
    check_relpath,
    etag_for,
    git_blob_sha1,
    lfs_pointer,
    repo_folder_name,
)
from .units import iso_z


@dataclass
class FileRecord:
    path: str
    size: int
    sha256: str
    git_sha1: str
    lfs: bool = False
    verification: str = "local"

    @property
    def etag(self) -> str:
        return etag_for(self.sha256, self.git_sha1, self.lfs)

    @classmethod
    def from_digest(cls, path: str, digest: Digest, lfs: bool, verification: str = "local") -> "FileRecord":
        """``git_sha1`` is the git blob id the Hub reports (tree ``oid``, sibling ``blobId``):
        for an LFS file that is the id of its pointer file, not of the content."""
        git_sha1 = git_blob_sha1(lfs_pointer(digest.sha256, digest.size)) if lfs else digest.git_sha1
        return cls(path, digest.size, digest.sha256, git_sha1, lfs, verification)


@dataclass
class PublishResult:
    repo: str
    repo_type: str
    commit: str
    created: bool
    refs: list[str]
    size: int
    file_count: int

    def to_json(self) -> dict:
        return asdict(self)


def compute_commit(files: Iterable[FileRecord], salt: str = "") -> str:
    """A deterministic 40-hex revision id for locally made revisions: same bytes, same id."""
    h = hashlib.sha1(b"modeldepot-revision-v1\0" + salt.encode() + b"\0")
    for f in sorted(files, key=lambda f: f.path):
        h.update(f"{f.path}\0{f.sha256}\0{int(f.lfs)}\n".encode())
    return h.hexdigest()


def actor() -> str:
    try:
        user = getpass.getuser()
    except Exception:  # no passwd entry in some containers
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()}"


SORTS = ("name", "size", "date", "downloads")


class Depot:
    """One depot home: registry + store."""

    def __init__(self, settings: Settings, migrate: bool = True):
        self.settings = settings
        self.store = open_store(settings)
        settings.home.mkdir(parents=True, exist_ok=True)
        self.db = Database(settings, migrate=migrate)
        # Locks and leases hold across every process sharing the registry: this home's processes
        # on SQLite, every host on PostgreSQL (registry/locks.py, registry/lease.py).
        self.lock = lock_for(settings, self.db)
        self.leases = leases_for(settings, self.db)

    # -- identity and the audit log ----------------------------------------------------------

    def depot_id(self) -> str:
        with self.db.session() as s:
            row = s.get(DepotInfo, "depot_id")
            if row:
                return row.value
        with self.db.session(write=True) as s:
            row = s.get(DepotInfo, "depot_id")
            if row is None:
                row = DepotInfo(key="depot_id", value=uuid.uuid4().hex)
                s.add(row)
            return row.value

    @staticmethod
    def log_event(
        s: Session, action: str, repo: str | None = None, commit: str | None = None, **details
    ) -> None:
        s.add(Event(actor=actor(), action=action, repo=repo, commit=commit, details=details))

    def events(self, repo: str | None = None, limit: int = 50,
               action: str | None = None) -> list[dict]:
        with self.db.session() as s:
            q = select(Event).order_by(Event.id.desc()).limit(limit)
            if repo:
                q = q.where(Event.repo == repo)
            if action:
                q = q.where(Event.action == action)
            return [
                {
                    "at": iso_z(e.at),
                    "actor": e.actor,
                    "action": e.action,
                    "repo": e.repo,
                    "commit": e.commit,
                    "details": e.details,
                }
                for e in s.scalars(q)
            ]

    # -- locks -------------------------------------------------------------------------------

    def blobs_lock(self):
        """Held while blobs are checked-and-registered (publish) or deleted (rm, gc)."""
        return self.lock("blobs")

    def lock_blob(self, sha256: str | None):
        """Held while one blob is fetched into the store. Across hosts only (PostgreSQL): within
        one home the fetch's partial file is its own lock (registry/hub.py)."""
        if sha256 and self.db.is_postgresql:
            return self.lock(f"blob-{sha256}")
        return contextlib.nullcontext()

    def repo_lock(self, repo_type: str, name: str):
        """Held while a repo's revisions, refs and HF-cache view change."""
        return self.lock(repo_folder_name(repo_type, name))

    def writing(self):
        """A writer's lease (``with depot.writing() as lease``): what it announces through it
        (``Store.adopt``/``claim_blob`` with ``lease=``) ``gc`` and ``rm`` leave alone until the
        writer ends. See registry/lease.py."""
        return self.leases.writer()

    # -- publishing --------------------------------------------------------------------------

    def publish(
        self,
        *,
        repo_type: str,
        name: str,
        commit: str,
        files: Sequence[FileRecord],
        source: str,
        refs: Sequence[tuple[str, str]] = (("main", "branch"),),
        parent_commit: str | None = None,
        repo_fields: dict[str, Any] | None = None,
        revision_meta: dict[str, Any] | None = None,
        artifact: dict[str, Any] | None = None,
        event_details: dict[str, Any] | None = None,
        partial: bool = False,
    ) -> PublishResult:
        """Make a revision whose blobs are all in the store visible, atomically.

        ``partial``: ``files`` are some of the files that ``revision_meta["listing"]`` names
        (the pull-through proxy); they are added to what a partial revision of that commit already
        holds, and it becomes complete once every listed file is present.
        """
        validate_repo_type(repo_type)
        validate_repo_id(name)
        if not is_commit(commit):
            raise InvalidInput(f"not a 40-hex commit id: {commit!r}")
        seen: set[str] = set()
        for f in files:
            check_relpath(f.path)
            if f.path in seen:
                raise InvalidInput(f"duplicate file path {f.path!r}")
            seen.add(f.path)
        for ref, kind in refs:
            validate_ref_name(ref)
        size = sum(f.size for f in files)

        failpoint("publish:start")
        with self.writing() as lease, self.repo_lock(repo_type, name):
            with self.db.session() as s:
                names.refuse_former_name(s, repo_type, name)
            if partial:
                merged = self._merge_partial(repo_type, name, commit, files, revision_meta or {})
                if merged is None:  # already complete: nothing to add
                    return PublishResult(repo=name, repo_type=repo_type, commit=commit,
                                         created=False, refs=[r for r, _ in refs], size=size,
                                         file_count=len(files))
                files, revision_meta, partial = merged
                size = sum(f.size for f in files)
            if self._already_published(repo_type, name, commit, refs):
                cacheview.write_short_refs(self, repo_type, name)
                return PublishResult(repo=name, repo_type=repo_type, commit=commit, created=False,
                                     refs=[r for r, _ in refs], size=size, file_count=len(files))
            # The snapshot and its blobs are unreferenced until the commit below: hold them.
            lease.hold_repo(repo_folder_name(repo_type, name))
            lease.hold_blobs(f.sha256 for f in files)
            self.store.publish_snapshot(
                repo_type, name, commit, [(f.path, f.sha256, f.git_sha1, f.lfs) for f in files]
            )
            failpoint("publish:after-snapshot")
            with self.blobs_lock():
                for f in files:
                    if not self.store.has_blob(f.sha256, f.size):
                        raise IntegrityError(
                            f"blob for {f.path} vanished from the store (a concurrent 'rm' or "
                            "'gc'?); run the command again"
                        )
                with self.db.session(write=True) as s:
                    created = self._record(
                        s,
                        repo_type=repo_type,
                        name=name,
                        commit=commit,
                        files=files,
                        source=source,
                        refs=refs,
                        parent_commit=parent_commit,
                        repo_fields=repo_fields or {},
                        revision_meta=revision_meta or {},
                        artifact=artifact,
                        size=size,
                        event_details=event_details or {},
                        partial=partial,
                    )
                    failpoint("publish:before-commit")
            for ref, _kind in refs:
                self.store.write_ref(repo_type, name, ref, commit)
            cacheview.write_short_refs(self, repo_type, name)
        return PublishResult(
            repo=name,
            repo_type=repo_type,
            commit=commit,
            created=created,
            refs=[r for r, _ in refs],
            size=size,
            file_count=len(files),
        )

    def _merge_partial(self, repo_type, name, commit, files, revision_meta):
        """(files, meta, still partial) for a partial publish, or None if already complete."""
        with self.db.session() as s:
            rev = s.scalar(select(Revision).join(Repo).where(
                Repo.type == repo_type, Repo.name == name, Revision.commit == commit))
            if rev is not None and rev.complete and not rev.partial:
                return None
            present = {f.path: FileRecord(f.path, f.size, f.sha256, f.git_sha1, f.lfs,
                                          f.verification) for f in (rev.files if rev else [])}
            meta = {**((rev.meta or {}) if rev else {}), **revision_meta}
        present.update({f.path: f for f in files})
        listed = {d["path"] for d in meta.get("listing", [])}
        return [present[p] for p in sorted(present)], meta, not listed <= set(present)

    def _already_published(self, repo_type, name, commit, refs) -> bool:
        """True when the revision is complete and every ref already points at it (a no-op)."""
        with self.db.session() as s:
            repo = s.scalar(select(Repo).where(Repo.type == repo_type, Repo.name == name))
            if repo is None:
                return False
            rev = s.scalar(select(Revision).where(Revision.repo_id == repo.id,
                                                  Revision.commit == commit))
            if rev is None or not rev.complete or rev.partial:
                return False
            current = {r.name: r.commit for r in repo.refs}
            if any(current.get(ref) != commit for ref, _ in refs):
                return False
        snapshot = self.snapshot_dir(repo_type, name, commit)
        return snapshot.is_dir() and all(
            (self.store.repo_dir(repo_type, name) / "refs" / ref).is_file() for ref, _ in refs
        )

    def _record(self, s: Session, *, repo_type, name, commit, files, source, refs, parent_commit,
                repo_fields, revision_meta, artifact, size, event_details, partial=False) -> bool:
        repo = s.scalar(select(Repo).where(Repo.type == repo_type, Repo.name == name))
        now = utcnow()
        if repo is None:
            repo = Repo(type=repo_type, name=name, author=name.split("/")[0] if "/" in name else None,
                        tags=[], meta={}, created_at=now)
            s.add(repo)
        for key, value in repo_fields.items():
            if not hasattr(Repo, key):
                raise InvalidInput(f"unknown repo field {key!r}")
            if value is not None:
                setattr(repo, key, value)
        repo.updated_at = now
        s.flush()

        rev = s.scalar(select(Revision).where(Revision.repo_id == repo.id, Revision.commit == commit))
        created = rev is None or not rev.complete or rev.partial
        first_seen = rev.created_at if rev is not None and rev.partial else now
        if rev is not None and (not rev.complete or rev.partial):  # replaced by what it grew to
            s.delete(rev)
            s.flush()
            rev = None
        if rev is None:
            rev = Revision(
                repo_id=repo.id, commit=commit, parent_commit=parent_commit, source=source,
                complete=True, size=size, file_count=len(files), meta=revision_meta,
                created_at=first_seen, partial=partial,
            )
            s.add(rev)
            s.flush()
            wanted = {f.sha256: f.size for f in files}
            have = set()
            shas = list(wanted)
            for i in range(0, len(shas), 500):
                have.update(s.scalars(select(Blob.sha256).where(Blob.sha256.in_(shas[i:i + 500]))))
            s.add_all(Blob(sha256=sha, size=sz) for sha, sz in wanted.items() if sha not in have)
            s.flush()
            s.add_all(
                File(revision_id=rev.id, path=f.path, size=f.size, sha256=f.sha256,
                     git_sha1=f.git_sha1, lfs=f.lfs, verification=f.verification)
                for f in files
            )
            if artifact is not None:
                s.add(Artifact(revision_id=rev.id, parent_commit=parent_commit or "", **artifact))
        moved = {}
        for ref, kind in refs:
            row = s.scalar(select(Ref).where(Ref.repo_id == repo.id, Ref.name == ref))
            if row is None:
                s.add(Ref(repo_id=repo.id, name=ref, kind=kind, commit=commit, updated_at=now))
                moved[ref] = None
            elif row.commit != commit:
                moved[ref] = row.commit
                row.commit, row.kind, row.updated_at = commit, kind, now
        if created or moved:
            self.log_event(s, source, repo=repo.display, commit=commit, size=size,
                           files=len(files), refs=moved, parent=parent_commit, **event_details)
        return created

    # -- lookups -----------------------------------------------------------------------------

    @staticmethod
    def get_repo(s: Session, repo_type: str, name: str) -> Repo:
        validate_repo_id(name)
        repo = s.scalar(select(Repo).where(Repo.type == repo_type, Repo.name == name))
        if repo is None:
            other = s.scalar(select(Repo.type).where(Repo.name == name))
            hint = (f"; it is a {other} repo (use --type {other})" if other else
                    "; see 'modeldepot list'")
            raise RepoNotFound(f"{repo_type} repo {name!r} is not in the depot{hint}")
        return repo

    @classmethod
    def resolve_in(cls, s: Session, repo_type: str, name: str, rev: str | None) -> tuple[Repo, Revision]:
        """Find a complete revision by commit, ref or alias, or unique commit prefix."""
        repo = cls.get_repo(s, repo_type, name)
        q = select(Revision).where(Revision.repo_id == repo.id, Revision.complete.is_(True))
        revision = None
        if rev is None:
            ref = s.scalar(select(Ref).where(Ref.repo_id == repo.id, Ref.name == "main"))
            if ref is not None:
                revision = s.scalar(q.where(Revision.commit == ref.commit))
            if revision is None:
                revision = s.scalar(
                    q.where(Revision.parent_commit.is_(None)).order_by(Revision.created_at.desc())
                ) or s.scalar(q.order_by(Revision.created_at.desc()))
        elif is_commit(rev):
            revision = s.scalar(q.where(Revision.commit == rev))
        else:
            ref = s.scalar(select(Ref).where(Ref.repo_id == repo.id, Ref.name == rev))
            if ref is not None:
                revision = s.scalar(q.where(Revision.commit == ref.commit))
            elif 7 <= len(rev) < 40 and all(c in "0123456789abcdef" for c in rev):
                matches = list(s.scalars(q.where(Revision.commit.startswith(rev))).all())
                if len(matches) == 1:
                    revision = matches[0]
        if revision is None:
            raise RevisionNotFound(
                f"revision {rev or 'main'!r} of {name} is not in the depot; "
                f"see 'modeldepot show {name}'"
            )
        return repo, revision

    def resolve(self, repo_type: str, name: str, rev: str | None = None) -> dict:
        """Resolve to a plain dict: repo, commit, files (path, size, sha256, git_sha1, lfs)."""
        with self.db.session() as s:
            repo, revision = self.resolve_in(s, repo_type, name, rev)
            return {
                "repo": repo.name,
                "type": repo.type,
                "commit": revision.commit,
                "parent_commit": revision.parent_commit,
                "snapshot": str(self.store.repo_dir(repo.type, repo.name) / "snapshots" / revision.commit),
                "files": [self._file_json(f) for f in revision.files],
                "meta": revision.meta,
                "repo_meta": self._repo_json(repo),
            }

    def snapshot_dir(self, repo_type: str, name: str, commit: str) -> Path:
        return self.store.repo_dir(repo_type, name) / "snapshots" / commit

    @staticmethod
    def _file_json(f: File) -> dict:
        return {"path": f.path, "size": f.size, "sha256": f.sha256, "git_sha1": f.git_sha1,
                "lfs": f.lfs, "verification": f.verification}

    @staticmethod
    def _repo_json(r: Repo) -> dict:
        return {
            "type": r.type, "name": r.name, "author": r.author, "pipeline_tag": r.pipeline_tag,
            "library_name": r.library_name, "license": r.license, "tags": r.tags or [],
            "gated": r.gated, "private": r.private, "card_data": r.card_data, "meta": r.meta or {},
            "downloads": r.downloads, "likes": r.likes,
            "upstream_last_modified": iso_z(r.upstream_last_modified),
            "upstream_created_at": iso_z(r.upstream_created_at),
            "source": r.source, "created_at": iso_z(r.created_at), "updated_at": iso_z(r.updated_at),
        }

    # -- list / show -------------------------------------------------------------------------

    def list_repos(
        self,
        *,
        repo_type: str | None = None,
        search: str | None = None,
        task: str | None = None,
        author: str | None = None,
        library: str | None = None,
        sort: str = "name",
        descending: bool | None = None,
        limit: int | None = None,
        offset: int = 0,
        visible=None,
    ) -> list[dict]:
        """Repos matching the filters; ``visible`` is an extra SQL condition on Repo (what a
        viewer may see: ``registry.auth.visibility.listing_filter``)."""
        if sort not in SORTS:
            raise InvalidInput(f"unknown sort {sort!r}: use one of {', '.join(SORTS)}")
        if limit is not None and limit < 0:
            raise InvalidInput("--limit must be >= 0")
        size_q = (
            select(Revision.repo_id, func.max(Revision.size).label("size"))
            .where(Revision.complete.is_(True))
            .group_by(Revision.repo_id)
            .subquery()
        )
        q = select(Repo)
        if visible is not None:
            q = q.where(visible)
        if repo_type:
            q = q.where(Repo.type == validate_repo_type(repo_type))
        if search:
            like = "%" + search.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
            q = q.where(Repo.name.ilike(like, escape="\\"))
        if task:
            q = q.where(Repo.pipeline_tag == task)
        if author:
            q = q.where(Repo.author == author)
        if library:
            q = q.where(Repo.library_name == library)
        desc = descending if descending is not None else sort in ("size", "date", "downloads")
        if sort == "name":
            order = Repo.name
        elif sort == "date":
            order = Repo.updated_at
        elif sort == "downloads":
            order = Repo.downloads
        else:
            q = q.outerjoin(size_q, size_q.c.repo_id == Repo.id)
            order = size_q.c.size
        q = q.order_by(order.desc() if desc else order.asc(), Repo.name).offset(offset)
        if limit is not None:
            q = q.limit(limit)
        with self.db.session() as s:
            repos = list(s.scalars(q))
            stats = {}
            if repos:
                ids = [r.id for r in repos]
                for repo_id, n, size, partial in s.execute(
                    select(Revision.repo_id, func.count(), func.max(Revision.size),
                           func.sum(case((Revision.partial.is_(True), 1), else_=0)))
                    .where(Revision.repo_id.in_(ids), Revision.complete.is_(True))
                    .group_by(Revision.repo_id)
                ):
                    stats[repo_id] = (n, size, int(partial or 0))
            return [
                {
                    "name": r.name,
                    "type": r.type,
                    "task": r.pipeline_tag,
                    "library": r.library_name,
                    "license": r.license,
                    "author": r.author,
                    "revisions": stats.get(r.id, (0, 0))[0],
                    "size": stats.get(r.id, (0, 0))[1] or 0,
                    "partial_revisions": stats.get(r.id, (0, 0, 0))[2],
                    "downloads": r.downloads,
                    "served_downloads": r.served_downloads or 0,
                    "updated_at": iso_z(r.updated_at),
                    "gated": r.gated,
                    "private": bool(r.private),
                }
                for r in repos
            ]

    def show(self, repo_type: str, name: str, rev: str | None = None) -> dict:
        with self.db.session() as s:
            repo = self.get_repo(s, repo_type, name)
            _, current = self.resolve_in(s, repo_type, name, rev)
            revisions = list(
                s.scalars(
                    select(Revision)
                    .where(Revision.repo_id == repo.id, Revision.complete.is_(True))
                    .options(selectinload(Revision.artifact))
                    .order_by(Revision.created_at)
                )
            )
            refs_by_commit: dict[str, list[dict]] = {}
            for ref in sorted(repo.refs, key=lambda r: r.name):
                refs_by_commit.setdefault(ref.commit, []).append({"name": ref.name, "kind": ref.kind})
            children: dict[str, list[str]] = {}
            for r in revisions:
                if r.parent_commit:
                    children.setdefault(r.parent_commit, []).append(r.commit)
            disk = s.scalar(
                select(func.coalesce(func.sum(Blob.size), 0)).where(
                    Blob.sha256.in_(
                        select(File.sha256).join(Revision).where(Revision.repo_id == repo.id)
                    )
                )
            )
            lineage = []
            parent = current.parent_commit
            while parent:
                lineage.append(parent)
                p = next((r for r in revisions if r.commit == parent), None)
                parent = p.parent_commit if p else None
            return {
                "repo": self._repo_json(repo),
                "disk_use": int(disk or 0),
                "revision": {
                    "commit": current.commit,
                    "parent_commit": current.parent_commit,
                    "source": current.source,
                    "created_at": iso_z(current.created_at),
                    "size": current.size,
                    "refs": refs_by_commit.get(current.commit, []),
                    "meta": current.meta,
                    "recipe": current.artifact.recipe if current.artifact else None,
                    "lineage": lineage,
                    "derived": children.get(current.commit, []),
                    "files": [self._file_json(f) for f in current.files],
                    **self._partial_json(current),
                },
                "revisions": [
                    {
                        "commit": r.commit,
                        "parent_commit": r.parent_commit,
                        "source": r.source,
                        "created_at": iso_z(r.created_at),
                        "size": r.size,
                        "files": r.file_count,
                        "refs": [x["name"] for x in refs_by_commit.get(r.commit, [])],
                        "derived": children.get(r.commit, []),
                        "kind": r.artifact.kind if r.artifact else None,
                        "partial": r.partial,
                        "listed_files": len((r.meta or {}).get("listing", [])) if r.partial else r.file_count,
                    }
                    for r in revisions
                ],
            }

    @staticmethod
    def _partial_json(rev: Revision) -> dict:
        """A partial revision's state: which listed files are not in the store yet."""
        if not rev.partial:
            return {"partial": False, "missing_files": []}
        have = {f.path for f in rev.files}
        return {"partial": True, "missing_files": [
            {k: d.get(k) for k in ("path", "size", "lfs", "sha256", "git_sha1")}
            for d in (rev.meta or {}).get("listing", []) if d["path"] not in have]}

    # -- refs --------------------------------------------------------------------------------

    def tag(self, repo_type: str, name: str, rev: str | None, alias: str) -> dict:
        validate_ref_name(alias)
        with self.repo_lock(repo_type, name):
            with self.db.session(write=True) as s:
                repo, revision = self.resolve_in(s, repo_type, name, rev)
                ref = s.scalar(select(Ref).where(Ref.repo_id == repo.id, Ref.name == alias))
                previous = None
                if ref is not None and ref.kind != "alias":
                    raise Conflict(
                        f"{alias!r} is an upstream {ref.kind} of {name}; pick another alias name"
                    )
                if ref is None:
                    s.add(Ref(repo_id=repo.id, name=alias, kind="alias", commit=revision.commit))
                else:
                    previous = ref.commit
                    ref.commit, ref.updated_at = revision.commit, utcnow()
                self.log_event(s, "tag", repo=repo.display, commit=revision.commit, alias=alias,
                               previous=previous)
                commit = revision.commit
            self.store.write_ref(repo_type, name, alias, commit)
        return {"repo": name, "alias": alias, "commit": commit, "previous": previous}

    def untag(self, repo_type: str, name: str, alias: str) -> dict:
        with self.repo_lock(repo_type, name):
            with self.db.session(write=True) as s:
                repo = self.get_repo(s, repo_type, name)
                ref = s.scalar(select(Ref).where(Ref.repo_id == repo.id, Ref.name == alias))
                if ref is None:
                    raise RevisionNotFound(f"{name} has no alias {alias!r}")
                if ref.kind != "alias":
                    raise Conflict(f"{alias!r} is an upstream {ref.kind} of {name}, not an alias")
                commit = ref.commit
                s.delete(ref)
                self.log_event(s, "untag", repo=repo.display, commit=commit, alias=alias)
            self.store.remove_ref(repo_type, name, alias)
        return {"repo": name, "alias": alias, "commit": commit}

    def add_repo_name(self, repo_type: str, repo_id: str, former_id: str,
                      source: str = "manual") -> dict:
        """Let ``former_id`` (a legacy or pre-rename id) reach ``repo_id``: see registry/names.py."""
        return names.add_repo_name(self, repo_type, repo_id, former_id, source)

    # -- removal -----------------------------------------------------------------------------

    def rm(self, repo_type: str, name: str, rev: str | None = None, dry_run: bool = False) -> dict:
        """Remove one revision (``rev``) or the whole repo; blobs still used elsewhere stay."""
        with self.repo_lock(repo_type, name), self.blobs_lock(), \
                self.leases.frozen(prune=not dry_run) as claims:
            with self.db.session(write=not dry_run) as s:
                repo = self.get_repo(s, repo_type, name)
                if rev is None:
                    doomed = list(repo.revisions)
                else:
                    doomed = [self.resolve_in(s, repo_type, name, rev)[1]]
                doomed_ids = [r.id for r in doomed]
                doomed_commits = {r.commit for r in doomed}
                candidate = set(
                    s.scalars(select(File.sha256).where(File.revision_id.in_(doomed_ids)))
                )
                still_used = set(
                    s.scalars(
                        select(File.sha256).where(
                            File.sha256.in_(candidate), File.revision_id.notin_(doomed_ids)
                        )
                    )
                )
                freed = candidate - still_used
                freed_bytes = int(
                    s.scalar(select(func.coalesce(func.sum(Blob.size), 0)).where(Blob.sha256.in_(freed)))
                    or 0
                )
                refs = [r.name for r in repo.refs if r.commit in doomed_commits]
                whole = rev is None or len(doomed) == len(repo.revisions)
                plan = {
                    "repo": name,
                    "type": repo_type,
                    "revisions": sorted(doomed_commits),
                    "refs": sorted(refs),
                    "blobs_freed": len(freed),
                    "bytes_freed": freed_bytes,
                    "repo_removed": whole,
                    "dry_run": dry_run,
                }
                if dry_run:
                    return plan
                keep_etags = {
                    etag_for(f.sha256, f.git_sha1, f.lfs)
                    for r in repo.revisions
                    if r.id not in doomed_ids
                    for f in r.files
                }
                if whole:
                    s.delete(repo)  # cascades to its revisions, files and refs
                else:
                    for r in doomed:
                        s.delete(r)
                    for ref in list(repo.refs):
                        if ref.commit in doomed_commits:
                            s.delete(ref)
                s.flush()
                if freed:
                    s.execute(delete(Blob).where(Blob.sha256.in_(freed)))
                self.log_event(s, "rm", repo=repo.display, commit=None if whole else doomed[0].commit,
                               revisions=sorted(doomed_commits), bytes_freed=freed_bytes)
            # The registry no longer points at these; now the files can go.
            for commit in doomed_commits:
                self.store.remove_snapshot(repo_type, name, commit)
            for ref in refs:
                self.store.remove_ref(repo_type, name, ref)
            if whole:
                self.store.remove_repo_view(repo_type, name)
            else:
                self.store.prune_view_blobs(repo_type, name, keep_etags)
                cacheview.write_short_refs(self, repo_type, name)
            for sha in freed - claims.blobs:  # a live writer is about to reference those
                self.store.remove_blob(sha)
        return plan

    def gc(self, dry_run: bool = False) -> dict:
        """Remove what the registry does not reference: blobs, stale temp files, stray views."""
        with self.blobs_lock(), self.leases.frozen(prune=not dry_run) as claims:
            with self.db.session() as s:
                referenced = set(s.scalars(select(File.sha256).distinct()))
                views = {
                    (r.type, r.name): {
                        rev.commit: {etag_for(f.sha256, f.git_sha1, f.lfs) for f in rev.files}
                        for rev in r.revisions
                        if rev.complete
                    }
                    for r in s.scalars(select(Repo).options(selectinload(Repo.revisions)))
                }
                name_links = names.view_names(s)
                stale_rows = list(s.scalars(select(Blob.sha256).where(Blob.sha256.notin_(referenced)))) \
                    if referenced else list(s.scalars(select(Blob.sha256)))
            # What live writers hold but have not published yet is not garbage (registry/lease.py).
            stale_rows = [sha for sha in stale_rows if sha not in claims.blobs]
            blobs = [(sha, size) for sha, size in self.store.iter_blob_sizes()
                     if sha not in referenced and sha not in claims.blobs]
            tmp = [p for p in self._stale_tmp()]
            stray_views: list[Path] = []
            known_dirs = {repo_folder_name(t, n): (t, n) for (t, n) in views}
            if self.store.hub.is_dir():
                for d in self.store.hub.iterdir():
                    if d.name.startswith(".") or d.name in claims.repos:
                        continue
                    if d.is_symlink() and name_links.get(d.name) == os.readlink(d):
                        continue  # a former name's link into its repo's view (registry/names.py)
                    key = known_dirs.get(d.name)
                    if key is None:
                        stray_views.append(d)
                        continue
                    snaps = d / "snapshots"
                    if snaps.is_dir():
                        stray_views.extend(x for x in snaps.iterdir() if x.name not in views[key])
                    keep = set().union(*views[key].values()) if views[key] else set()
                    vb = d / "blobs"
                    if vb.is_dir():
                        stray_views.extend(x for x in vb.iterdir() if x.name not in keep)
            freed = sum(size for _, size in blobs) + sum(_du(p) for p in tmp)
            result = {
                "blobs": len(blobs),
                "temp_files": len(tmp),
                "stray_views": len(stray_views),
                "bytes_freed": freed,
                "dry_run": dry_run,
            }
            if dry_run:
                return result
            import shutil

            for sha, _ in blobs:
                self.store.remove_blob(sha)
            for p in tmp + stray_views:
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    p.unlink(missing_ok=True)
            if stale_rows:
                with self.db.session(write=True) as s:
                    s.execute(delete(Blob).where(Blob.sha256.in_(stale_rows)))
            with self.db.session(write=True) as s:
                self.log_event(s, "gc", **{k: v for k, v in result.items() if k != "dry_run"})
        return result

    def _stale_tmp(self) -> Iterable[Path]:
        """Temp entries whose writing process is gone (names start with the writer's pid)."""
        if not self.store.tmp.is_dir():
            return
        for p in self.store.tmp.iterdir():
            pid_s = p.name.split("-", 1)[0]
            if pid_s.isdigit() and _pid_alive(int(pid_s)) and int(pid_s) != os.getpid():
                # Only trust a live pid for a day; pids get reused.
                if time.time() - p.lstat().st_mtime < 86400:
                    continue
            elif not pid_s.isdigit() and _flocked(p):
                continue  # a resumable partial download that a live pull holds (registry/hub.py)
            yield p

    # -- disk use and verification -----------------------------------------------------------

    def du(self) -> dict:
        with self.db.session() as s:
            total = int(s.scalar(select(func.coalesce(func.sum(Blob.size), 0))) or 0)
            logical = int(s.scalar(select(func.coalesce(func.sum(File.size), 0))) or 0)
            per_repo = []
            for repo in s.scalars(select(Repo).order_by(Repo.type, Repo.name)):
                shas = select(File.sha256).join(Revision).where(Revision.repo_id == repo.id)
                size = s.scalar(select(func.coalesce(func.sum(Blob.size), 0)).where(Blob.sha256.in_(shas)))
                other = select(File.sha256).join(Revision).where(Revision.repo_id != repo.id)
                unique = s.scalar(
                    select(func.coalesce(func.sum(Blob.size), 0)).where(
                        Blob.sha256.in_(shas), Blob.sha256.notin_(other)
                    )
                )
                per_repo.append({"repo": repo.display, "size": int(size or 0), "unique": int(unique or 0)})
        tmp = _du(self.store.tmp) if self.store.tmp.exists() else 0
        return {"stored": total, "logical": logical, "saved_by_dedup": logical - total,
                "temp": tmp, "repos": per_repo}

    def largest_repos(self, limit: int = 25) -> list[dict]:
        """The repos that take the most disk (each blob counted once per repo), largest first:
        one query, so it stays fast on a registry of 100,000 repos."""
        pairs = (select(Revision.repo_id.label("repo_id"), File.sha256.label("sha256"))
                 .join(File, File.revision_id == Revision.id).distinct().subquery())
        q = (select(Repo, func.sum(Blob.size).label("size"))
             .join(pairs, pairs.c.repo_id == Repo.id)
             .join(Blob, Blob.sha256 == pairs.c.sha256)
             .group_by(Repo.id).order_by(func.sum(Blob.size).desc(), Repo.name).limit(limit))
        with self.db.session() as s:
            return [{"repo": r.display, "type": r.type, "name": r.name, "size": int(size or 0)}
                    for r, size in s.execute(q)]

    def disk_totals(self) -> dict:
        """Bytes stored, bytes the files add up to, and what deduplication saves."""
        with self.db.session() as s:
            stored = int(s.scalar(select(func.coalesce(func.sum(Blob.size), 0))) or 0)
            logical = int(s.scalar(select(func.coalesce(func.sum(File.size), 0))) or 0)
        return {"stored": stored, "logical": logical, "saved_by_dedup": logical - stored}

    def verify(
        self,
        repo_type: str | None = None,
        name: str | None = None,
        rev: str | None = None,
        expected: Sequence[dict] | None = None,
    ) -> dict:
        """Re-hash blobs offline against the registry; report missing and corrupt files.

        ``expected`` (from a lockfile) lists {repo, type, commit, files:[{path,size,sha256}]}
        that must be present too.
        """
        problems: list[dict] = []
        with self.db.session() as s:
            q = (
                select(Repo, Revision, File)
                .join(Revision, Revision.repo_id == Repo.id)
                .join(File, File.revision_id == Revision.id)
                .where(Revision.complete.is_(True))
            )
            if name:
                repo, revision = (self.resolve_in(s, repo_type or "model", name, rev) if rev
                                  else (self.get_repo(s, repo_type or "model", name), None))
                q = q.where(Repo.id == repo.id)
                if revision is not None:
                    q = q.where(Revision.id == revision.id)
            elif repo_type:
                q = q.where(Repo.type == repo_type)
            elif expected:
                # Re-hash only what the lockfile pins, not the whole depot.
                q = q.where(Revision.commit.in_({e["commit"] for e in expected}))
            users: dict[str, list[tuple[str, str, str, str, str, bool, int]]] = {}
            for repo, revision, f in s.execute(q):
                users.setdefault(f.sha256, []).append(
                    (repo.type, repo.name, revision.commit, f.path, f.git_sha1, f.lfs, f.size)
                )
        if expected:
            for entry in expected:
                for f in entry["files"]:
                    key = f["sha256"]
                    users.setdefault(key, [])
                    if not any(u[0] == entry.get("type", "model") and u[1] == entry["repo"]
                               and u[2] == entry["commit"] and u[3] == f["path"] for u in users[key]):
                        problems.append({"problem": "not registered", "repo": entry["repo"],
                                         "commit": entry["commit"], "path": f["path"]})

        def check(sha: str) -> tuple[str, str | None]:
            return sha, self.store.check_blob(sha)

        workers = min(4, (os.cpu_count() or 2))
        with ThreadPoolExecutor(workers) as pool:
            results = list(pool.map(check, sorted(users)))
        checked_bytes = 0
        for sha, problem in results:
            for (t, n, commit, path, git_sha1, lfs, size) in users[sha]:
                checked_bytes += size
                if problem:
                    problems.append({"problem": problem, "type": t, "repo": n, "commit": commit,
                                     "path": path, "sha256": sha})
                    continue
                link = self.snapshot_dir(t, n, commit) / path
                if self.store.has_view(t, n, commit) and not link.is_file():
                    problems.append({"problem": "view missing", "type": t, "repo": n,
                                     "commit": commit, "path": path, "sha256": sha})
        result = {"ok": not problems, "blobs": len(users), "bytes": checked_bytes,
                  "problems": problems}
        # The last run's outcome, for operators (the web page's operations view); kept as one
        # depot_info row, not an audit event: verifying changes nothing.
        summary = {"at": iso_z(utcnow()), "actor": actor(), "ok": result["ok"],
                   "blobs": result["blobs"], "bytes": checked_bytes, "problems": len(problems),
                   "scope": "lockfile" if expected else (name or "all")}
        with self.db.session(write=True) as s:
            row = s.get(DepotInfo, "last_verify")
            if row is None:
                s.add(DepotInfo(key="last_verify", value=json.dumps(summary)[:500]))
            else:
                row.value = json.dumps(summary)[:500]
        return result

    def last_verify(self) -> dict | None:
        """The summary of the last `verify` run on this depot, or None."""
        with self.db.session() as s:
            row = s.get(DepotInfo, "last_verify")
            return json.loads(row.value) if row else None

    def inventory(self) -> dict:
        """What this depot holds: its id, every blob, every revision (for incremental bundles)."""
        with self.db.session() as s:
            blobs = {sha: size for sha, size in s.execute(select(Blob.sha256, Blob.size))}
            revisions = [
                {"type": t, "repo": n, "commit": c}
                for t, n, c in s.execute(
                    select(Repo.type, Repo.name, Revision.commit)
                    .join(Revision, Revision.repo_id == Repo.id)
                    .where(Revision.complete.is_(True))
                    .order_by(Repo.type, Repo.name, Revision.commit)
                )
            ]
        return {"format": "modeldepot-inventory/1", "depot_id": self.depot_id(),
                "blobs": dict(sorted(blobs.items())), "revisions": revisions}


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _flocked(path: Path) -> bool:
    """True when another process holds an flock on ``path``."""
    import fcntl

    if not path.is_file() or path.is_symlink():
        return False
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing also releases the lock if we got it
    return False


def _du(path: Path) -> int:
    if path.is_symlink() or path.is_file():
        return path.lstat().st_size
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(root, f)).st_size
            except FileNotFoundError:
                pass
    return total
