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

SUFFIX = ".lease"


@contextmanager
def _flocked(path: Path, mode: int) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, mode)
        yield
    finally:
        os.close(fd)  # also releases the flock


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
        return _flocked(self._lock, fcntl.LOCK_SH)

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
        with _flocked(self._lock, fcntl.LOCK_EX):
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
