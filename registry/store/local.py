"""The local backend: content-addressed blobs in a directory plus the HF-cache-shaped view.

Layout under the depot home::

    blobs/sha256/ab/abcdef...          every file's bytes exactly once (read-only)
    hub/models--org--name/blobs/<etag>  hardlinks to the above, named as HF clients name them
    hub/models--org--name/snapshots/<commit>/<path> -> ../../blobs/<etag>   (relative symlinks)
    hub/models--org--name/refs/<name>   the commit, no trailing newline
    tmp/                                partial writes; never referenced by the registry

Every write goes to a process-unique file in ``tmp/``, is hashed and verified, then linked into
place with ``os.link`` (which refuses to replace an existing name), so two processes writing the
same content both succeed and neither can observe a half-written blob.
"""

from __future__ import annotations

import os
import re
import shutil
import uuid
from pathlib import Path
from typing import BinaryIO, Iterable, Iterator

from ..config import Settings
from ..errors import IntegrityError, InvalidInput
from ..lease import Lease
from .base import (
    CHUNK,
    SHA256_RE,
    Digest,
    Hasher,
    check_relpath,
    etag_for,
    hash_file,
    repo_folder_name,
)


class Store:
    """Blobs and the HF-cache view for one depot home."""

    backend = "local"

    def __init__(self, settings: Settings):
        self.settings = settings
        self.home = settings.home
        self.blobs = settings.blobs_dir
        self.tmp = settings.tmp_dir
        self.hub = settings.hub_cache
        self.locks = settings.locks_dir

    # -- blobs -------------------------------------------------------------------------------

    def blob_path(self, sha256: str) -> Path:
        if not SHA256_RE.match(sha256):
            raise InvalidInput(f"not a sha256: {sha256!r}")
        return self.blobs / sha256[:2] / sha256

    def has_blob(self, sha256: str, size: int | None = None) -> bool:
        try:
            st = self.blob_path(sha256).stat()
        except FileNotFoundError:
            return False
        return size is None or st.st_size == size

    def tmp_path(self, hint: str = "") -> Path:
        """A process-unique temp file name (the pid lets ``gc`` tell live writers from dead)."""
        self.tmp.mkdir(parents=True, exist_ok=True)
        safe = re.sub(r"[^A-Za-z0-9._-]", "_", hint)[-60:]
        return self.tmp / f"{os.getpid()}-{uuid.uuid4().hex[:12]}-{safe}"

    def adopt(
        self,
        tmp: Path,
        *,
        sha256: str | None = None,
        git_sha1: str | None = None,
        size: int | None = None,
        label: str = "",
        digest: Digest | None = None,
        lease: Lease | None = None,
    ) -> Digest:
        """Hash ``tmp`` (unless ``digest`` is given), check it against what is expected, and move
        it into ``blobs/``. ``tmp`` is consumed either way. ``lease`` (the writer's) holds the blob
        against ``gc`` from before it is linked until the writer publishes or ends."""
        try:
            got = digest or hash_file(tmp)
            what = label or tmp.name
            if size is not None and got.size != size:
                raise IntegrityError(f"{what}: size mismatch (expected {size}, got {got.size})")
            if sha256 is not None and got.sha256 != sha256:
                raise IntegrityError(
                    f"{what}: sha256 mismatch (expected {sha256}, got {got.sha256})"
                )
            if git_sha1 is not None and got.git_sha1 != git_sha1:
                raise IntegrityError(
                    f"{what}: git sha1 mismatch (expected {git_sha1}, got {got.git_sha1})"
                )
            if lease is not None:
                lease.hold_blobs([got.sha256])
            self._link_into_place(tmp, self.blob_path(got.sha256))
            return got
        finally:
            tmp.unlink(missing_ok=True)

    def _link_into_place(self, tmp: Path, final: Path) -> None:
        final.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(tmp, 0o444)
        try:
            os.link(tmp, final)
        except FileExistsError:
            pass  # same name == same content; the first writer wins

    def claim_blob(self, sha256: str, size: int | None, lease: Lease | None) -> bool:
        """``has_blob`` for a writer that will reference the blob: held by ``lease`` first, so a
        ``gc`` cannot remove it between this answer and the writer's publish."""
        if lease is not None:
            lease.hold_blobs([sha256])
        return self.has_blob(sha256, size)

    def ingest_file(self, src: Path, label: str = "", lease: Lease | None = None,
                    expect_sha256: str | None = None) -> Digest:
        """Copy ``src`` into the store while hashing it (the source may change later)."""
        tmp = self.tmp_path(src.name)
        size = src.stat().st_size
        hasher = Hasher(size)
        try:
            with open(src, "rb", buffering=0) as fin, open(tmp, "wb", buffering=0) as fout:
                buf = bytearray(CHUNK)
                view = memoryview(buf)
                while True:
                    n = fin.readinto(buf)
                    if not n:
                        break
                    hasher.update(view[:n])
                    fout.write(view[:n])
                os.fsync(fout.fileno())
            digest = hasher.digest()
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return self.adopt(tmp, digest=digest, label=label or str(src), lease=lease,
                          sha256=expect_sha256)

    def ingest_stream(self, stream: BinaryIO, size: int, label: str = "", **expect) -> Digest:
        """Write exactly ``size`` bytes from ``stream`` into the store, verifying ``expect``."""
        tmp = self.tmp_path(label)
        hasher = Hasher(size)
        try:
            with open(tmp, "wb", buffering=0) as fout:
                remaining = size
                while remaining:
                    chunk = stream.read(min(CHUNK, remaining))
                    if not chunk:
                        break
                    hasher.update(chunk)
                    fout.write(chunk)
                    remaining -= len(chunk)
                os.fsync(fout.fileno())
            digest = hasher.digest()
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return self.adopt(tmp, digest=digest, label=label, **expect)

    def iter_blobs(self) -> Iterator[tuple[str, Path]]:
        if not self.blobs.is_dir():
            return
        for sub in sorted(self.blobs.iterdir()):
            if sub.is_dir():
                for p in sorted(sub.iterdir()):
                    if SHA256_RE.match(p.name):
                        yield p.name, p

    def iter_blob_sizes(self) -> Iterator[tuple[str, int]]:
        for sha, path in self.iter_blobs():
            try:
                yield sha, path.stat().st_size
            except FileNotFoundError:
                pass

    def local_blob(self, sha256: str) -> Path:
        """A file on this host holding the blob's bytes (here: the blob itself)."""
        return self.blob_path(sha256)

    def check_blob(self, sha256: str) -> str | None:
        """Re-hash the blob where it is stored: None when sound, else "missing" or "corrupt"."""
        path = self.blob_path(sha256)
        if not path.exists():
            return "missing"
        return None if hash_file(path).sha256 == sha256 else "corrupt"

    def has_view(self, repo_type: str, name: str, commit: str) -> bool:
        """Whether this host's HF-cache view should hold ``commit`` (always, on the local backend;
        on an object store views are built per host on demand)."""
        return True

    def remove_blob(self, sha256: str) -> int:
        path = self.blob_path(sha256)
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            return 0
        path.unlink()
        return size

    # -- the HF-cache view -------------------------------------------------------------------

    def repo_dir(self, repo_type: str, name: str) -> Path:
        return self.hub / repo_folder_name(repo_type, name)

    def publish_snapshot(
        self, repo_type: str, name: str, commit: str, files: Iterable[tuple[str, str, str, bool]]
    ) -> Path:
        """Build ``snapshots/<commit>`` from (path, sha256, git_sha1, lfs) entries.

        The snapshot is assembled in ``tmp/`` and renamed into place, so a reader sees either no
        snapshot or a whole one. The caller holds the repo lock.
        """
        repo_dir = self.repo_dir(repo_type, name)
        final = repo_dir / "snapshots" / commit
        repo_blobs = repo_dir / "blobs"
        repo_blobs.mkdir(parents=True, exist_ok=True)
        (repo_dir / "refs").mkdir(exist_ok=True)
        files = list(files)
        staging = self.tmp_path(f"snapshot-{commit}")
        staging.mkdir(parents=True)
        try:
            for path, sha256, git_sha1, lfs in files:
                check_relpath(path)
                etag = etag_for(sha256, git_sha1, lfs)
                view_blob = repo_blobs / etag
                if not view_blob.exists():
                    src = self.blob_path(sha256)
                    if not src.exists():
                        raise IntegrityError(f"blob {sha256} for {path} is not in the store")
                    try:
                        os.link(src, view_blob)
                    except FileExistsError:
                        pass
                link = staging / path
                link.parent.mkdir(parents=True, exist_ok=True)
                depth = path.count("/")
                os.symlink("../" * (depth + 2) + f"blobs/{etag}", link)
            final.parent.mkdir(parents=True, exist_ok=True)
            if final.exists():
                # Same commit id means the same content: keep what is there, and add what a
                # partial revision (registry/proxy.py) did not have yet, one atomic rename each.
                for path, *_rest in files:
                    if not os.path.lexists(final / path):
                        (final / path).parent.mkdir(parents=True, exist_ok=True)
                        os.rename(staging / path, final / path)
                shutil.rmtree(staging)
            else:
                os.rename(staging, final)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return final

    def write_ref(self, repo_type: str, name: str, ref: str, commit: str) -> None:
        check_relpath(ref)
        path = self.repo_dir(repo_type, name) / "refs" / ref
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.tmp_path("ref")
        tmp.write_text(commit)  # no trailing newline: HF clients read it verbatim
        os.replace(tmp, path)

    def remove_ref(self, repo_type: str, name: str, ref: str) -> None:
        path = self.repo_dir(repo_type, name) / "refs" / ref
        path.unlink(missing_ok=True)
        refs_root = self.repo_dir(repo_type, name) / "refs"
        parent = path.parent
        while parent != refs_root and parent.is_dir() and not any(parent.iterdir()):
            parent.rmdir()
            parent = parent.parent

    def remove_snapshot(self, repo_type: str, name: str, commit: str) -> None:
        shutil.rmtree(self.repo_dir(repo_type, name) / "snapshots" / commit, ignore_errors=True)

    def prune_view_blobs(self, repo_type: str, name: str, keep_etags: set[str]) -> None:
        repo_blobs = self.repo_dir(repo_type, name) / "blobs"
        if repo_blobs.is_dir():
            for p in repo_blobs.iterdir():
                if p.name not in keep_etags:
                    p.unlink(missing_ok=True)

    def remove_repo_view(self, repo_type: str, name: str) -> None:
        shutil.rmtree(self.repo_dir(repo_type, name), ignore_errors=True)
