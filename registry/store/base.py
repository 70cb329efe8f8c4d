"""What every blob backend shares: hashing, digests, names, path checks, the file lock.

A backend (registry/store/local.py, registry/store/s3.py) is a ``Store``: ``has_blob``,
``claim_blob``, ``adopt``/``ingest_file``/``ingest_stream`` (the only ways bytes enter, each
verifying before anything is visible under the sha256 name), ``local_blob`` (a file on disk with
the bytes, for readers that need one), ``check_blob`` (re-hash where the bytes live),
``iter_blob_sizes``, ``remove_blob``, and the HF-cache view of this host.
"""

from __future__ import annotations

import hashlib
import re
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from ..errors import IntegrityError, InvalidInput

CHUNK = 4 * 1024 * 1024
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
SHA1_RE = re.compile(r"^[0-9a-f]{40}$")


@contextmanager
def file_lock(path: Path, timeout: float = -1) -> Iterator[None]:
    """An inter-process lock (flock-based), usable across processes sharing one home."""
    from filelock import FileLock

    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path), timeout=timeout):
        yield


@dataclass(frozen=True)
class Digest:
    """What we know about some bytes: enough to name, verify and serve them."""

    sha256: str
    git_sha1: str
    size: int


class Hasher:
    """sha256 and git blob sha1 in one pass. The git sha1 needs the size up front."""

    def __init__(self, size: int):
        self.size = size
        self.seen = 0
        self._sha256 = hashlib.sha256()
        self._sha1 = hashlib.sha1(b"blob %d\0" % size)

    def update(self, chunk: bytes | memoryview) -> None:
        self._sha256.update(chunk)
        self._sha1.update(chunk)
        self.seen += len(chunk)

    def digest(self) -> Digest:
        if self.seen != self.size:
            raise IntegrityError(f"expected {self.size} bytes, read {self.seen}")
        return Digest(self._sha256.hexdigest(), self._sha1.hexdigest(), self.size)


def hash_file(path: Path) -> Digest:
    size = path.stat().st_size
    hasher = Hasher(size)
    with open(path, "rb", buffering=0) as f:
        buf = bytearray(CHUNK)
        view = memoryview(buf)
        while True:
            n = f.readinto(buf)
            if not n:
                break
            hasher.update(view[:n])
    return hasher.digest()


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    """The git-lfs pointer file text; its git sha1 is what the Hub reports as an LFS file's oid."""
    return (
        f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n"
    ).encode()


def etag_for(sha256: str, git_sha1: str, lfs: bool) -> str:
    """The name HF clients give a blob: sha256 for LFS files, git blob sha1 otherwise."""
    return sha256 if lfs else git_sha1


def repo_folder_name(repo_type: str, name: str) -> str:
    return f"{repo_type}s--" + name.replace("/", "--")


def check_relpath(path: str) -> str:
    """Refuse file names that could escape a snapshot directory or confuse the HF cache."""
    if (
        not path
        or "\0" in path
        or "\\" in path
        or path.startswith("/")
        or re.match(r"^[A-Za-z]:", path)
        or len(path) > 1000
    ):
        raise InvalidInput(f"refusing unsafe file path {path!r}")
    parts = path.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise InvalidInput(f"refusing unsafe file path {path!r}")
    if in_git_dir(path):
        raise InvalidInput(f"refusing file path inside .git: {path!r}")
    return path


def in_git_dir(path: str) -> bool:
    """A ``.git`` component at any depth: written into a plain directory, ``sub/.git/config``
    makes ``git`` there run what it says (``core.fsmonitor``). Case-insensitive, as on the
    file systems where ``.GIT`` is ``.git``."""
    return any(part.lower() == ".git" for part in path.split("/"))
