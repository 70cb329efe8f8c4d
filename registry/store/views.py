"""The HF-cache view of a revision on this host, built on demand where the blobs live elsewhere.

On the local backend every published revision has its view (``Depot.publish`` builds it). On an
object store a revision published by another replica has no view here until something on this
host needs files on disk (``run``, the inference API): then its blobs are read through the local
cache and the view is built exactly as ``publish`` builds it.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select

from ..models import File, Repo, Revision


def ensure_view(depot, repo_type: str, name: str, commit: str) -> Path:
    snapshot = depot.snapshot_dir(repo_type, name, commit)
    if snapshot.is_dir() or depot.store.backend == "local":
        return snapshot
    with depot.db.session() as s:
        files = [(f.path, f.sha256, f.git_sha1, f.lfs) for f in s.scalars(
            select(File).join(Revision).join(Repo).where(
                Repo.type == repo_type, Repo.name == name, Revision.commit == commit))]
    with depot.repo_lock(repo_type, name):  # the lock publishing holds (registry/locks.py)
        depot.store.publish_snapshot(repo_type, name, commit, files)
    return snapshot
