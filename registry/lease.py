"""Writer leases: how a live writer tells ``gc`` (and ``rm``) what it holds but has not yet
published.

A writer (import, pull, bundle import, ONNX export, and ``Depot.publish`` itself) stores blobs and
builds a snapshot before the registry transaction that makes them referenced. Until then the
registry alone would call them garbage. So each writer opens a lease file
``<home>/locks/leases/<pid>-<random>.lease``, keeps an exclusive ``flock`` on it for its whole
life, and appends one line per thing it holds *before* relying on it::

    blob <sha256>        a blob it stored, or found in the store and will reference
    repo <view folder>   an HF-cache view folder it is publishing a snapshot into

``gc`` reads the leases while it holds ``leases.lock`` exclusively; writers append (and create
their lease) under a shared hold of the same lock. So an announcement lands either before ``gc``
looks (and is respected) or after ``gc`` has finished deleting (and the writer then sees the
store as ``gc`` left it). A lease whose flock nobody holds belongs to a dead process: ``gc``
removes the file, and what it listed becomes ordinary garbage again. The kernel drops the flock
when a process dies, kill -9 included, so no lease outlives its writer.

When the registry is PostgreSQL, writers on other hosts share it (and, through a shared blob
store, the blobs), so a lease must be visible to ``gc`` on any host: ``AdvisoryLeases``. A writer
holds, on a connection of its own, a shared advisory lock per thing it holds; ``gc`` reads the
held advisory locks from ``pg_locks``. The same two-phase rule applies with an advisory lock in
place of ``leases.lock``. The server drops a dead writer's locks with its connection, so nothing
needs pruning. Blobs map to one of ``BLOB_BUCKETS`` keys (bounded lock-table use per writer); a
blob whose bucket a live writer holds is treated as held: conservative, ``gc`` keeps it for now.
"""

from __future__ import annotations

import fcntl
import os
import threading
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

from sqlalchemy import text

from . import locks
from .locks import flocked

SUFFIX = ".lease"
BLOB_BUCKETS = 1024
LEASES_LOCK = "leases"


@dataclass
class Claims:
    """What live writers hold: blobs by sha256 and view folders by name."""

    blobs: set[str] = field(default_factory=set)
    repos: set[str] = field(default_factory=set)


class Lease:
    """One writer's lease. Thread-safe: a writer's worker threads announce through it."""

    def __init__(self, leases: "Leases"):
        self._leases = leases
        self._mutex = threading.Lock()
        self._held: set[str] = set()
        self.path = leases.dir / f"{os.getpid()}-{uuid.uuid4().hex[:12]}{SUFFIX}"
        with leases._shared():
            self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
            fcntl.flock(self._fd, fcntl.LOCK_EX)

    def _announce(self, lines: Iterable[str]) -> None:
        with self._mutex:
            new = [line for line in dict.fromkeys(lines) if line not in self._held]
            if not new:
                return
            with self._leases._shared():
                data = "".join(line + "\n" for line in new).encode()
                while data:
                    data = data[os.write(self._fd, data):]
            self._held.update(new)

    def hold_blobs(self, shas: Iterable[str]) -> None:
        self._announce(f"blob {sha}" for sha in shas)

    def hold_repo(self, folder: str) -> None:
        self._announce([f"repo {folder}"])

    def close(self) -> None:
        if self._fd is None:
            return
        self.path.unlink(missing_ok=True)
        os.close(self._fd)
        self._fd = None


class Leases:
    """The leases of one depot home."""

    def __init__(self, locks_dir: Path):
        self.dir = locks_dir / "leases"
        self._lock = locks_dir / "leases.lock"

    def _shared(self):
        self.dir.mkdir(parents=True, exist_ok=True)
        return flocked(self._lock, shared=True)

    @contextmanager
    def writer(self) -> Iterator[Lease]:
        lease = Lease(self)
        try:
            yield lease
        finally:
            lease.close()

    @contextmanager
    def frozen(self, exclude: Lease | None = None, prune: bool = True) -> Iterator[Claims]:
        """Hold off new announcements and yield what live writers (other than ``exclude``)
        hold; leases of dead writers are removed on the way (``prune``)."""
        with flocked(self._lock):
            claims = Claims()
            entries = sorted(self.dir.glob(f"*{SUFFIX}")) if self.dir.is_dir() else []
            for path in entries:
                if exclude is not None and path == exclude.path:
                    continue
                text = _read_if_live(path, prune)
                if text is None:
                    continue
                for line in text.splitlines():
                    kind, _, key = line.partition(" ")
                    if kind == "blob":
                        claims.blobs.add(key)
                    elif kind == "repo":
                        claims.repos.add(key)
            yield claims


def _read_if_live(path: Path, prune: bool) -> str | None:
    """The lease's text if its writer still holds it; else None (removing the dead lease)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            with os.fdopen(os.dup(fd), "r", encoding="utf-8", errors="replace") as f:
                return f.read()
        if prune:
            path.unlink(missing_ok=True)
        return None
    finally:
        os.close(fd)


def _blob_key(sha256: str) -> int:
    return locks.advisory_key(f"lease-blob-{int(sha256[:8], 16) % BLOB_BUCKETS}")


def _repo_key(folder: str) -> int:
    return locks.advisory_key(f"lease-repo-{folder}")


class _Keyed:
    """A set-like view of held advisory-lock keys: ``x in held``, ``some_set - held``."""

    def __init__(self, keys: set[int], key):
        self._keys, self._key = keys, key

    def __contains__(self, item: str) -> bool:
        return self._key(item) in self._keys

    def __rsub__(self, other):
        return {x for x in other if x not in self}


@dataclass
class AdvisoryClaims:
    blobs: _Keyed
    repos: _Keyed


class AdvisoryLease:
    """One writer's lease on a PostgreSQL registry: advisory locks on a connection of its own."""

    def __init__(self, leases: "AdvisoryLeases"):
        self._leases = leases
        self._mutex = threading.Lock()
        self._held: set[int] = set()
        self._conn = locks.lock_connection(leases.url)
        self.backend_pid = self._conn.execute(text("SELECT pg_backend_pid()")).scalar()
        self.path = None  # no file: ``frozen(exclude=...)`` goes by the backend pid

    def _announce(self, keys: Iterable[int]) -> None:
        with self._mutex:
            new = [k for k in dict.fromkeys(keys) if k not in self._held]
            if not new or self._conn is None:
                return
            leases_key = locks.advisory_key(LEASES_LOCK)
            locks.acquire(self._conn, leases_key, shared=True)
            try:
                self._conn.execute(text("SELECT pg_advisory_lock_shared(k) FROM unnest(CAST(:ks AS bigint[])) AS k"),
                                   {"ks": new})
            finally:
                locks.release(self._conn, leases_key, shared=True)
            self._held.update(new)

    def hold_blobs(self, shas: Iterable[str]) -> None:
        self._announce(_blob_key(sha) for sha in shas)

    def hold_repo(self, folder: str) -> None:
        self._announce([_repo_key(folder)])

    def close(self) -> None:
        with self._mutex:
            if self._conn is not None:
                self._conn.close()  # the server drops every lock of the session
                self._conn = None


class AdvisoryLeases:
    """The leases of every writer on every host sharing one PostgreSQL registry."""

    def __init__(self, url: str):
        self.url = url

    @contextmanager
    def writer(self) -> Iterator[AdvisoryLease]:
        lease = AdvisoryLease(self)
        try:
            yield lease
        finally:
            lease.close()

    @contextmanager
    def frozen(self, exclude: AdvisoryLease | None = None,
               prune: bool = True) -> Iterator[AdvisoryClaims]:
        """Hold off new announcements (on all hosts) and yield what live writers hold."""
        conn = locks.lock_connection(self.url)
        try:
            locks.acquire(conn, locks.advisory_key(LEASES_LOCK))
            rows = conn.execute(text(
                "SELECT classid::bigint, objid::bigint FROM pg_locks "
                "WHERE locktype = 'advisory' AND objsubid = 1 AND granted "
                "AND pid <> pg_backend_pid() AND pid <> :exclude"),
                {"exclude": exclude.backend_pid if exclude is not None else -1}).all()
            held = {int.from_bytes(((hi << 32) | lo).to_bytes(8, "big"), "big", signed=True)
                    for hi, lo in rows}
            yield AdvisoryClaims(_Keyed(held, _blob_key), _Keyed(held, _repo_key))
        finally:
            conn.close()


def leases_for(settings, database):
    """File leases on the embedded default; advisory-lock leases on a PostgreSQL registry."""
    return AdvisoryLeases(database.url) if database.is_postgresql else Leases(settings.locks_dir)
