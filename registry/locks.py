"""Named locks that hold across every process sharing a registry: ``depot.lock(name)``.

On the embedded default (SQLite, one host) a lock is an ``flock`` on ``<home>/locks/<name>.lock``.
When the registry is PostgreSQL, several hosts share it, so a lock is a session-level advisory
lock (``pg_advisory_lock``) held on a connection of its own for as long as the lock is held:
the server drops it when that connection ends, a host dying or kill -9 included, so no lock
outlives its holder. The connections come from a pool-less engine: a pooled connection would
keep its session (and its locks) alive after being "returned".

Both kinds are blocking, exclusive by default or ``shared=True`` (many sharers or one exclusive).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, ContextManager, Iterator

from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine

LockFn = Callable[..., ContextManager[None]]


@contextmanager
def flocked(path: Path, shared: bool = False) -> Iterator[None]:
    """An ``flock`` on ``path`` (created if missing) for the duration of the block."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # also releases the flock


def advisory_key(name: str) -> int:
    """The signed 64-bit advisory-lock key of a lock name (what ``pg_advisory_lock`` takes)."""
    digest = hashlib.sha256(b"modeldepot-lock\0" + name.encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


_lock_engines: dict[str, Engine] = {}
_lock_engines_mutex = threading.Lock()


def lock_engine(url: str) -> Engine:
    """A pool-less engine for lock-holding connections (one per process and URL)."""
    from sqlalchemy import create_engine
    from sqlalchemy.pool import NullPool

    with _lock_engines_mutex:
        engine = _lock_engines.get(url)
        if engine is None:
            engine = _lock_engines[url] = create_engine(
                url, poolclass=NullPool, isolation_level="AUTOCOMMIT")
        return engine


def lock_connection(url: str) -> Connection:
    """A connection of its own whose session-level advisory locks last until it is closed."""
    return lock_engine(url).connect()


def acquire(conn: Connection, key: int, shared: bool = False) -> None:
    fn = "pg_advisory_lock_shared" if shared else "pg_advisory_lock"
    conn.execute(text(f"SELECT {fn}(:k)"), {"k": key})


def release(conn: Connection, key: int, shared: bool = False) -> None:
    fn = "pg_advisory_unlock_shared" if shared else "pg_advisory_unlock"
    conn.execute(text(f"SELECT {fn}(:k)"), {"k": key})


class FileLocks:
    """Locks of one depot home (the embedded default)."""

    def __init__(self, locks_dir: Path):
        self.dir = locks_dir

    def __call__(self, name: str, shared: bool = False) -> ContextManager[None]:
        return flocked(self.dir / f"{name}.lock", shared)


class AdvisoryLocks:
    """Locks of a PostgreSQL registry, shared by every host that uses it."""

    def __init__(self, url: str):
        self.url = url

    @contextmanager
    def __call__(self, name: str, shared: bool = False) -> Iterator[None]:
        conn = lock_connection(self.url)
        try:
            acquire(conn, advisory_key(name), shared)
            yield
        finally:
            conn.close()  # ends the session, which releases its advisory locks


def lock_for(settings, database=None) -> LockFn:
    """The lock kind that fits the registry: advisory locks on PostgreSQL, else file locks."""
    from .db import is_postgresql

    url = database.url if database is not None else settings.database_url
    return AdvisoryLocks(url) if is_postgresql(url) else FileLocks(settings.locks_dir)
