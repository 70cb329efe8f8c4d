"""Air-gap bundles: one streamable tar that carries revisions, their registry metadata and every
needed blob once, from one depot to another (optionally as numbered volumes).

Layout, plain ustar (so ``tar tvf`` lists it and ``cat OUT.* | tar t`` lists split volumes;
a member of 8 GiB or more gets a GNU base-256 size field, which those tools read too)::

    manifest.json      always first: format, source depot, revisions, refs, files, recipes, blobs
    blobs/<sha256>     each blob once, in the order manifest.json lists them
    two zero blocks    the end-of-archive marker

Reading trusts nothing in the archive. Tar headers are parsed by the standard library
(``TarInfo.frombuf``), but members are never extracted by name: only ``manifest.json`` and
``blobs/<sha256>`` regular files that the manifest declares are accepted, and their bytes go
straight into ``Store.ingest_stream``, which verifies size and sha256 before anything lands in
``blobs/``. Revisions are published (``Depot.publish``) only after the whole stream has been read
and checked, so a failed or killed import never leaves a visible revision.

The tar stream is written and read here rather than through ``tarfile.open``: the writer knows
the exact archive size before it starts (it is recorded in the manifest, which is how a missing
or truncated volume is caught before any byte is stored), copies blobs with ``sendfile``, and the
reader accepts exactly this layout, refusing PAX/GNU extension headers it never needs.
"""

from __future__ import annotations

import errno
import glob
import hashlib
import json
import math
import os
import re
import shutil
import tarfile
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterable, Sequence

from sqlalchemy import select
from sqlalchemy.orm import selectinload

from . import __version__, jsonsafe, names
from .depot import Depot, FileRecord
from .units import iso_z
from .errors import Conflict, DepotError, IntegrityError, InvalidInput
from .lease import Lease
from .models import REF_KINDS, File, Ref, Repo, Revision, utcnow
from .naming import is_commit, parse_spec, validate_ref_name, validate_repo_id, validate_repo_type
from .store import (SHA1_RE, SHA256_RE, Digest, check_relpath, git_blob_sha1, hash_file,
                    lfs_pointer)

FORMAT = "modeldepot-bundle/1"
INVENTORY_FORMAT = "modeldepot-inventory/1"
MANIFEST_NAME = "manifest.json"
# JSON from another depot is parsed only within these bounds (registry/jsonsafe.py). 64 MiB is
# some 200,000 files. Python holds a real manifest in about 4x its size, but a hostile one of
# tiny objects (``[{},{},...]``) in ~20x: the count of objects and arrays is bounded too (a file
# is one object; a real manifest has about one per 250 bytes).
MAX_MANIFEST = 64 * 1024 * 1024
MAX_INVENTORY = 64 * 1024 * 1024
MAX_CONTAINERS = 1_000_000
# Far beyond any real file, small enough that sums of sizes stay exact in JSON and in SQL.
MAX_SIZE = 2**50
MAX_VOLUMES = 999
MIN_VOLUME = 1024
BLOCK = 512
END_OF_ARCHIVE = b"\0" * (2 * BLOCK)
BLOB_MEMBER_RE = re.compile(r"^blobs/([0-9a-f]{64})$")
COPY_CHUNK = 4 * 1024 * 1024

# Repo columns a bundle carries, with the JSON type each must have (or null).
REPO_FIELD_TYPES = {"author": str, "pipeline_tag": str, "library_name": str, "license": str,
                    "tags": list, "gated": str, "private": bool, "card_data": dict, "meta": dict,
                    "downloads": int, "likes": int, "upstream_last_modified": str,
                    "upstream_created_at": str, "source": str}
REPO_FIELDS = tuple(REPO_FIELD_TYPES)
DATETIME_FIELDS = ("upstream_last_modified", "upstream_created_at")

Progress = Callable[[int], None] | None


# -- sizes ---------------------------------------------------------------------------------------

def _padding(size: int) -> int:
    return -size % BLOCK


def _member_size(size: int) -> int:
    return BLOCK + size + _padding(size)


# The largest size ustar's 11 octal digits hold is 8 GiB - 1; real checkpoints are larger.
USTAR_MAX_SIZE = 8**11 - 1


def _tar_header(name: str, size: int, mtime: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode, info.type = size, mtime, 0o444, tarfile.REGTYPE
    if size <= USTAR_MAX_SIZE:
        return info.tobuf(tarfile.USTAR_FORMAT)
    # GNU base-256 size field (read by GNU tar, bsdtar and Python's tarfile): still a single
    # 512-byte header, so the archive size computed up front stays exact.
    return info.tobuf(tarfile.GNU_FORMAT)


def _fmt_bytes(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"


# -- reading what a depot holds ------------------------------------------------------------------

def _repo_fields(repo: Repo) -> dict[str, Any]:
    out = {}
    for key in REPO_FIELDS:
        value = getattr(repo, key)
        out[key] = iso_z(value) if key in DATETIME_FIELDS else value
    return out


def revision_entry(repo: Repo, rev: Revision) -> dict[str, Any]:
    """Everything the registry knows about one revision, as plain JSON-ready data."""
    art = rev.artifact
    return {
        "type": repo.type,
        "repo": repo.name,
        "commit": rev.commit,
        "parent_commit": rev.parent_commit,
        "source": rev.source,
        "created_at": iso_z(rev.created_at),
        "refs": sorted(({"name": r.name, "kind": r.kind} for r in repo.refs if r.commit == rev.commit),
                       key=lambda r: r["name"]),
        "artifact": ({"kind": art.kind, "recipe_key": art.recipe_key, "recipe": art.recipe}
                     if art else None),
        "meta": rev.meta or {},
        "files": [{"path": f.path, "size": f.size, "sha256": f.sha256, "git_sha1": f.git_sha1,
                   "lfs": f.lfs, "verification": f.verification} for f in rev.files],
    }


def refuse_partial(repo, rev, what: str) -> None:
    """A lock or bundle pins every file of a commit: a partial revision has only some."""
    if rev.partial:
        listed = len((rev.meta or {}).get("listing", []))
        flag = "" if repo.type == "model" else f" --type {repo.type}"
        raise Conflict(
            f"{repo.display}@{rev.commit[:12]} is partial ({rev.file_count} of {listed} files "
            f"present, fetched through the proxy); run 'modeldepot pull {repo.name}@"
            f"{rev.commit[:12]}{flag}' to complete it, then {what} again"
        )


def select_revisions(
    depot: Depot, specs: Sequence[str] = (), *, all_revisions: bool = False, repo_type: str = "model",
    with_ancestors: bool = True,
) -> tuple[list[dict], list[dict]]:
    """The repos and revisions that ``REPO`` (all its revisions), ``REPO@REV`` (that one) and
    ``all_revisions`` name, plus the revisions derived ones were made from (``with_ancestors``),
    parents before children. Returns (repos, revisions) as plain data."""
    validate_repo_type(repo_type)
    parsed = [parse_spec(s) for s in specs]
    with depot.db.session() as s:
        chosen: dict[int, Revision] = {}
        complete = select(Revision).where(Revision.complete.is_(True))
        if all_revisions:
            chosen.update((r.id, r) for r in s.scalars(complete))
        for spec in parsed:
            if spec.revision:
                _, rev = Depot.resolve_in(s, repo_type, spec.name, spec.revision)
                chosen[rev.id] = rev
            else:
                repo = Depot.get_repo(s, repo_type, spec.name)
                chosen.update((r.id, r) for r in s.scalars(complete.where(Revision.repo_id == repo.id)))
        pending = list(chosen.values()) if with_ancestors else []
        while pending:
            rev = pending.pop()
            if rev.parent_commit:
                parent = s.scalar(complete.where(Revision.repo_id == rev.repo_id,
                                                 Revision.commit == rev.parent_commit))
                if parent is not None and parent.id not in chosen:
                    chosen[parent.id] = parent
                    pending.append(parent)
        for rev in chosen.values():
            refuse_partial(rev.repo, rev, "create the bundle")
        revs = list(s.scalars(
            select(Revision).where(Revision.id.in_(list(chosen)))
            .options(selectinload(Revision.files), selectinload(Revision.artifact),
                     selectinload(Revision.repo).selectinload(Repo.refs))
        )) if chosen else []
        by_commit = {(r.repo_id, r.commit): r for r in revs}

        def depth(r: Revision) -> int:
            d, seen = 0, set()
            while r.parent_commit and (r.repo_id, r.parent_commit) in by_commit and r.id not in seen:
                seen.add(r.id)
                r, d = by_commit[(r.repo_id, r.parent_commit)], d + 1
            return d

        revs.sort(key=lambda r: (r.repo.type, r.repo.name, depth(r), r.created_at, r.commit))
        repos: dict[int, dict] = {}
        for r in revs:
            repos.setdefault(r.repo_id, {"type": r.repo.type, "name": r.repo.name,
                                         "fields": _repo_fields(r.repo),
                                         "former_names": names.bundle_names(r.repo)})
        return list(repos.values()), [revision_entry(r.repo, r) for r in revs]


def load_inventory(path: Path | str) -> dict[str, int]:
    """The blobs a receiving depot holds, from the JSON ``modeldepot inventory`` prints."""
    hint = "make it with 'modeldepot inventory > have.json' on the receiving depot"
    try:
        with open(path, "rb") as f:
            data = jsonsafe.loads(f.read(MAX_INVENTORY + 1), max_bytes=MAX_INVENTORY,
                                  max_containers=MAX_CONTAINERS)
    except FileNotFoundError:
        raise InvalidInput(f"--have {path}: no such file; {hint}") from None
    except jsonsafe.JSONInputError as e:
        raise InvalidInput(f"--have {path} is not valid JSON ({e}); {hint}") from None
    if not isinstance(data, dict) or data.get("format") != INVENTORY_FORMAT:
        raise InvalidInput(f"--have {path} is not a modeldepot inventory; {hint}")
    blobs = data.get("blobs")
    if not isinstance(blobs, dict) or not all(
        isinstance(k, str) and SHA256_RE.match(k) and type(v) is int and v >= 0 for k, v in blobs.items()
    ):
        raise InvalidInput(f"--have {path}: 'blobs' must map sha256 to size; {hint}")
    return blobs


# -- writing -------------------------------------------------------------------------------------

def volume_name(out: Path, index: int) -> Path:
    return out.with_name(f"{out.name}.{index:03d}")


class _Sink:
    """Bytes out to a stream (stdout), one file, or numbered volumes of at most ``volume_size``
    bytes each.

    Files are written under a temporary name and renamed when the archive is complete, so a
    failed or interrupted ``create`` never leaves something that looks like a bundle."""

    def __init__(self, targets: list[Path] | None, volume_size: int | None, progress: Progress,
                 stream: BinaryIO | None = None):
        self.targets = targets
        self.volume_size = volume_size
        self.progress = progress
        self.partials: list[Path] = []
        self.stream: BinaryIO | None = None
        self.fd: int | None = None
        if targets is None:
            try:  # a real file descriptor lets the kernel copy (sendfile)
                stream.flush()
                self.fd = stream.fileno()
            except (AttributeError, OSError, ValueError):
                self.stream = stream
        self.index = -1
        self.room = math.inf
        self.total = 0

    def _next_volume(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
        self.index += 1
        final = self.targets[self.index]
        partial = final.with_name(f".{final.name}.{os.getpid()}.partial")
        self.partials.append(partial)
        self.fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        self.room = self.volume_size or math.inf

    def _span(self, count: int) -> int:
        if self.targets is not None and (self.fd is None or self.room == 0):
            self._next_volume()
        return int(min(count, self.room))

    def _done(self, n: int) -> None:
        self.room -= n
        self.total += n
        if self.progress:
            self.progress(n)

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            want = self._span(len(view))
            if self.stream is not None:
                self.stream.write(view[:want])
                n = want
            else:
                n = os.write(self.fd, view[:want])
            self._done(n)
            view = view[n:]

    def copy_from(self, src_fd: int, count: int) -> None:
        """Copy ``count`` bytes of ``src_fd`` in the kernel (sendfile) where it can."""
        offset = 0
        while offset < count:
            want = self._span(count - offset)
            if self.stream is not None:
                data = os.pread(src_fd, min(want, COPY_CHUNK), offset)
                self.stream.write(data)
                n = len(data)
            else:
                try:
                    n = os.sendfile(self.fd, src_fd, offset, want)
                except OSError as e:
                    if e.errno not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                        raise
                    n = os.write(self.fd, os.pread(src_fd, min(want, COPY_CHUNK), offset))
            if n == 0:
                raise IntegrityError("a blob file shrank while it was being written to the bundle; "
                                     "run 'modeldepot verify'")
            self._done(n)
            offset += n

    def commit(self) -> list[Path]:
        if self.targets is None:
            if self.stream is not None:
                self.stream.flush()
            return []
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        for partial, final in zip(self.partials, self.targets):
            os.replace(partial, final)
        return self.targets[: len(self.partials)]

    def abort(self) -> None:
        if self.targets is not None and self.fd is not None:
            os.close(self.fd)
            self.fd = None
        for p in self.partials:
            p.unlink(missing_ok=True)


def _manifest_bytes(manifest: dict, blob_sizes: list[int]) -> bytes:
    """Serialize the manifest with its own archive size in it (a fixed point: the size depends
    on the manifest's length only through 512-byte padding, so this settles at once)."""
    size = 0
    for _ in range(8):
        manifest["archive_size"] = size
        data = json.dumps(manifest, separators=(",", ":"), ensure_ascii=False).encode()
        new = _member_size(len(data)) + sum(_member_size(n) for n in blob_sizes) + len(END_OF_ARCHIVE)
        if new == size:
            return data
        size = new
    raise RuntimeError("bundle manifest size did not settle")  # pragma: no cover


def create_bundle(
    depot: Depot,
    out: Path | str | BinaryIO,
    specs: Sequence[str] = (),
    *,
    all_revisions: bool = False,
    repo_type: str = "model",
    have: dict[str, int] | None = None,
    split: int | None = None,
    progress: Progress = None,
    on_start: Callable[[int], None] | None = None,
) -> dict:
    """Write a bundle of the named revisions to ``out`` (a path, or a binary stream such as
    stdout). ``have`` (the
    receiver's inventory blobs) leaves out what the receiver holds; ``split`` writes numbered
    volumes ``OUT.000``, ``OUT.001``, ... of at most that many bytes."""
    if not specs and not all_revisions:
        raise InvalidInput("name at least one REPO[@REV] to bundle, or use --all")
    to_stream = hasattr(out, "write")
    if split is not None:
        if to_stream:
            raise InvalidInput("--split needs an output file, not stdout")
        if split < MIN_VOLUME:
            raise InvalidInput(f"--split {split}: volumes must be at least {MIN_VOLUME} bytes")
    repos, revisions = select_revisions(depot, specs, all_revisions=all_revisions, repo_type=repo_type)
    if not revisions:
        raise InvalidInput("the depot holds no revisions to bundle; add some with 'modeldepot "
                           "import' or 'modeldepot pull'")
    have = have or {}
    needed: dict[str, int] = {}
    left_out: dict[str, int] = {}
    for rev in revisions:
        for f in rev["files"]:
            target = left_out if have.get(f["sha256"]) == f["size"] else needed
            target.setdefault(f["sha256"], f["size"])
    blobs = [{"sha256": sha, "size": size} for sha, size in needed.items()]
    created = utcnow()
    manifest = {
        "format": FORMAT,
        "bundle_id": uuid.uuid4().hex,
        "created_at": iso_z(created),
        "created_by": f"modeldepot {__version__}",
        "source_depot_id": depot.depot_id(),
        "archive_size": 0,
        "volume_size": split,
        "left_out": {"blobs": len(left_out), "bytes": sum(left_out.values())},
        "repos": repos,
        "revisions": revisions,
        "blobs": blobs,
    }
    data = _manifest_bytes(manifest, [b["size"] for b in blobs])
    total = manifest["archive_size"]
    targets: list[Path] | None = None
    if not to_stream:
        out = Path(out)
        count = max(1, math.ceil(total / split)) if split else 1
        if count > MAX_VOLUMES:
            raise InvalidInput(f"--split {split} would make {count} volumes (at most {MAX_VOLUMES}); "
                               "use a larger size")
        targets = [volume_name(out, i) for i in range(count)] if split else [out]
        for t in targets:
            if t.exists():
                raise Conflict(f"{t} already exists; remove it or choose another name")
        if not out.parent.is_dir():
            raise InvalidInput(f"no such directory: {out.parent}")
    if on_start:
        on_start(total)
    sink = _Sink(targets, split, progress, out if to_stream else None)
    mtime = int(created.timestamp())
    try:
        sink.write(_tar_header(MANIFEST_NAME, len(data), mtime) + data + b"\0" * _padding(len(data)))
        for blob in blobs:
            sha, size = blob["sha256"], blob["size"]
            try:
                fd = os.open(depot.store.local_blob(sha), os.O_RDONLY)
            except FileNotFoundError:
                raise IntegrityError(f"blob {sha} is missing from the store (a concurrent 'rm' or "
                                     "'gc'?); run 'modeldepot verify', then try again") from None
            try:
                if os.fstat(fd).st_size != size:
                    raise IntegrityError(f"blob {sha} has the wrong size in the store; "
                                         "run 'modeldepot verify'")
                sink.write(_tar_header(f"blobs/{sha}", size, mtime))
                sink.copy_from(fd, size)
            finally:
                os.close(fd)
            sink.write(b"\0" * _padding(size))
        sink.write(END_OF_ARCHIVE)
        if sink.total != total:  # pragma: no cover - a bug, not a user error
            raise RuntimeError(f"wrote {sink.total} bytes, expected {total}")
        paths = sink.commit()
    except BaseException:
        sink.abort()
        raise
    with depot.db.session(write=True) as s:
        depot.log_event(s, "bundle", bundle_id=manifest["bundle_id"],
                        out=[str(p) for p in paths] or "-", revisions=len(revisions),
                        blobs=len(blobs), bytes=total)
    return {
        "bundle_id": manifest["bundle_id"],
        "paths": [str(p) for p in paths],
        "archive_size": total,
        "repos": len(repos),
        "revisions": [{"type": r["type"], "repo": r["repo"], "commit": r["commit"],
                       "refs": [x["name"] for x in r["refs"]]} for r in revisions],
        "blobs": len(blobs),
        "blob_bytes": sum(b["size"] for b in blobs),
        "left_out_blobs": len(left_out),
        "left_out_bytes": sum(left_out.values()),
    }


# -- reading -------------------------------------------------------------------------------------

class _Source:
    """One byte stream over stdin, one file, or volumes read back to back."""

    def __init__(self, paths: list[Path] | None, stream: BinaryIO | None, progress: Progress):
        self.paths = paths
        self.stream = stream
        self.progress = progress
        self.position = 0
        self._index = -1
        self._file: BinaryIO | None = None

    def read(self, n: int) -> bytes:
        while True:
            if self.stream is not None:
                data = self.stream.read(n)
            else:
                if self._file is None:
                    if self._index + 1 >= len(self.paths):
                        return b""
                    self._index += 1
                    self._file = open(self.paths[self._index], "rb", buffering=0)
                data = self._file.read(n)
                if not data:
                    self._file.close()
                    self._file = None
                    continue
            self.position += len(data)
            if self.progress and data:
                self.progress(len(data))
            return data

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class _Receiver:
    """Writes one blob member to a temp file while hashing it, then seals it into the store.

    sha256 and the git blob sha1 run on two threads (hashlib releases the GIL), so each gets a
    core while this thread reads and writes; ``fsync`` and ``Store.adopt`` (which re-checks the
    digest and links the blob into place) run on a third, overlapping the next member. Blobs are
    still only ever linked into ``blobs/`` after they are durable and verified."""

    def __init__(self, store, lease: Lease):
        self.store = store
        self.lease = lease
        self.hashers = ThreadPoolExecutor(2, thread_name_prefix="bundle-hash")
        self.sealer = ThreadPoolExecutor(1, thread_name_prefix="bundle-seal")
        self.sealing: list = []
        self.sealed: list[str] = []

    def receive(self, reader: "_TarReader", info: tarfile.TarInfo, sha: str, git_sha1: bool) -> Digest:
        """``git_sha1``: also hash the content's git blob id. Not needed when every file of the
        blob is an LFS file whose git id is its pointer's (then the digest's git_sha1 is "")."""
        size = info.size
        tmp = self.store.tmp_path(f"blob-{sha[:16]}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        hashers = [hashlib.sha256()]
        if git_sha1:
            hashers.append(hashlib.sha1(b"blob %d\0" % size))  # as store.Hasher
        try:
            pending: tuple = ()
            remaining = size
            while remaining:
                chunk = reader.read_exact(min(COPY_CHUNK, remaining), info.name)
                for fut in pending:
                    fut.result()
                pending = tuple(self.hashers.submit(h.update, chunk) for h in hashers)
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd, view):]
                remaining -= len(chunk)
            for fut in pending:
                fut.result()
            reader.skip_padding(info)
        except BaseException:
            os.close(fd)
            tmp.unlink(missing_ok=True)
            raise
        digest = Digest(hashers[0].hexdigest(), hashers[1].hexdigest() if git_sha1 else "", size)
        if digest.sha256 != sha:
            os.close(fd)
            tmp.unlink(missing_ok=True)
            raise IntegrityError(f"{reader.label}: blob {sha} is damaged (its bytes do not match its "
                                 "sha256); copy the bundle again")
        self.sealing.append(self.sealer.submit(self._seal, tmp, fd, digest))
        return digest

    def _seal(self, tmp: Path, fd: int, digest: Digest) -> None:
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        self.store.adopt(tmp, digest=digest, sha256=digest.sha256, size=digest.size,
                         label=f"blob {digest.sha256}", lease=self.lease)
        self.sealed.append(digest.sha256)

    def finish(self) -> None:
        """Wait for every blob to be sealed; raise the first failure."""
        try:
            for fut in self.sealing:
                fut.result()
        finally:
            self.close()

    def close(self) -> None:
        self.hashers.shutdown(wait=True)
        self.sealer.shutdown(wait=True)


class _TarReader:
    """Walks the members of a bundle, accepting only what a bundle may contain."""

    def __init__(self, source: _Source, label: str):
        self.source = source
        self.label = label
        self.seen: set[str] = set()

    def error(self, what: str, cls: type[DepotError] = InvalidInput) -> DepotError:
        return cls(f"{self.label}{'' if what.startswith(':') else ' '}{what}")

    def read_exact(self, n: int, what: str) -> bytes:
        parts, got = [], 0
        while got < n:
            chunk = self.source.read(n - got)
            if not chunk:
                raise self.error(f"is truncated (it ends inside {what})")
            parts.append(chunk)
            got += len(chunk)
        return b"".join(parts)

    def next_member(self) -> tarfile.TarInfo | None:
        """The next member's header, or None at the end-of-archive marker."""
        at = self.source.position
        head = self.source.read(BLOCK)
        while at == 0 and 0 < len(head) < BLOCK and (more := self.source.read(BLOCK - len(head))):
            head += more
        if at == 0 and len(head) < BLOCK:
            raise self.error(f"is not a modeldepot bundle (it is {len(head)} bytes, too short for a "
                             "tar archive)")
        if not head:
            raise self.error("is truncated or a volume is missing (the end-of-archive marker is "
                             "missing)")
        if len(head) < BLOCK:
            head += self.read_exact(BLOCK - len(head), "a tar header")
        if head == bytes(BLOCK):
            return None
        try:
            info = tarfile.TarInfo.frombuf(head, "utf-8", "strict")
        except (tarfile.HeaderError, UnicodeDecodeError) as e:
            raise self.error(f"is not a modeldepot bundle or is damaged (bad tar header at byte "
                             f"{at}: {e})") from None
        self.check_member(info)
        return info

    def check_member(self, info: tarfile.TarInfo) -> None:
        name = info.name
        refuse = lambda why: self.error(f": refusing member {name!r}: {why}")  # noqa: E731
        parts = name.split("/")
        if name.startswith("/") or ".." in parts:
            raise refuse("absolute path or '..'")
        if info.issym():
            raise refuse("symbolic link (a bundle holds only regular files)")
        if info.islnk():
            raise refuse("hard link (a bundle holds only regular files)")
        if info.ischr() or info.isblk() or info.isfifo():
            raise refuse("device file (a bundle holds only regular files)")
        if info.isdir():
            raise refuse("directory (a bundle holds only regular files)")
        if info.type not in (tarfile.REGTYPE, tarfile.AREGTYPE):
            raise refuse(f"unsupported tar member type {info.type!r}")
        if name in self.seen:
            raise refuse("it appears twice")
        self.seen.add(name)

    def skip(self, info: tarfile.TarInfo) -> None:
        remaining = info.size + _padding(info.size)
        while remaining:
            chunk = self.source.read(min(COPY_CHUNK, remaining))
            if not chunk:
                raise self.error(f"is truncated (it ends inside {info.name})")
            remaining -= len(chunk)

    def skip_padding(self, info: tarfile.TarInfo) -> None:
        if _padding(info.size):
            self.read_exact(_padding(info.size), f"the padding of {info.name}")

    def read_manifest(self) -> dict:
        info = self.next_member()
        if info is None or info.name != MANIFEST_NAME:
            raise self.error(f"is not a modeldepot bundle: it does not start with {MANIFEST_NAME}")
        if info.size > MAX_MANIFEST:
            raise self.error(f": {MANIFEST_NAME} is {info.size} bytes, over the {MAX_MANIFEST} "
                             "byte limit; refusing it")
        raw = self.read_exact(info.size, MANIFEST_NAME)
        self.skip_padding(info)
        try:
            manifest = jsonsafe.loads(raw, max_bytes=MAX_MANIFEST, max_containers=MAX_CONTAINERS)
        except jsonsafe.JSONInputError as e:
            raise self.error(f": {MANIFEST_NAME} is not valid JSON ({e})") from None
        validate_manifest(manifest, self.label)
        return manifest


# -- manifest validation -------------------------------------------------------------------------

def _is_int(v: Any) -> bool:
    return type(v) is int and 0 <= v <= MAX_SIZE


def _check(cond: bool, where: str, what: str) -> None:
    if not cond:
        raise InvalidInput(f"{where} is invalid: {what}")


def validate_files(files: Any, label: str, where: str, full: bool = True) -> None:
    """Files as a manifest or lockfile lists them: safe unique paths, sizes and hashes."""
    _check(isinstance(files, list), label, f"{where}: 'files' must be a list")
    paths = set()
    for f in files:
        _check(isinstance(f, dict), label, f"{where}: each file must be an object")
        path = f.get("path")
        try:
            check_relpath(path) if isinstance(path, str) else None
        except InvalidInput as e:
            _check(False, label, f"{where}: {e}")
        _check(isinstance(path, str) and path not in paths, label,
               f"{where}: missing or duplicate file path {path!r}")
        paths.add(path)
        _check(_is_int(f.get("size")), label, f"{where}: {path}: size must be a whole number of "
                                                 f"bytes up to {MAX_SIZE}")
        _check(isinstance(f.get("sha256"), str) and bool(SHA256_RE.match(f["sha256"])), label,
               f"{where}: {path}: sha256 must be 64 hex digits")
        if full:
            _check(isinstance(f.get("git_sha1"), str) and bool(SHA1_RE.match(f["git_sha1"])), label,
                   f"{where}: {path}: git_sha1 must be 40 hex digits")
            _check(isinstance(f.get("lfs"), bool), label, f"{where}: {path}: lfs must be true or false")
            _check(isinstance(f.get("verification", "local"), str), label,
                   f"{where}: {path}: verification must be a string")


def validate_revision(rev: Any, label: str, full: bool = True) -> str:
    """One revision entry (shared by manifests and lockfiles); returns its display name."""
    _check(isinstance(rev, dict), label, "each revision must be an object")
    try:
        validate_repo_type(rev.get("type"))
        validate_repo_id(rev.get("repo"))
    except InvalidInput as e:
        _check(False, label, str(e))
    where = f"{rev['repo']}@{rev.get('commit')}"
    _check(is_commit(rev.get("commit")), label, f"{where}: commit must be 40 lowercase hex digits")
    _check(rev.get("parent_commit") is None or is_commit(rev["parent_commit"]), label,
           f"{where}: parent_commit must be null or a commit")
    refs = rev.get("refs")
    if full:
        _check(isinstance(refs, list), label, f"{where}: 'refs' must be a list")
        for ref in refs:
            _check(isinstance(ref, dict) and ref.get("kind") in REF_KINDS, label,
                   f"{where}: each ref needs a name and a kind ({', '.join(REF_KINDS)})")
        _check(isinstance(rev.get("meta"), dict), label, f"{where}: 'meta' must be an object")
    else:
        _check(isinstance(refs, dict) and all(k in REF_KINDS for k in refs.values()), label,
               f"{where}: 'refs' must map names to kinds ({', '.join(REF_KINDS)})")
        refs = [{"name": n} for n in refs]
    for ref in refs:
        try:
            validate_ref_name(ref.get("name"))
        except InvalidInput as e:
            _check(False, label, f"{where}: {e}")
    art = rev.get("artifact")
    _check(art is None or (isinstance(art, dict) and isinstance(art.get("kind"), str)
                           and isinstance(art.get("recipe_key"), str)
                           and isinstance(art.get("recipe"), dict)), label,
           f"{where}: 'artifact' must be null or have kind, recipe_key and recipe")
    validate_files(rev.get("files"), label, where, full)
    return where


def validate_manifest(m: Any, label: str) -> None:
    if not isinstance(m, dict) or not isinstance(m.get("format"), str):
        raise InvalidInput(f"{label} is not a modeldepot bundle ({MANIFEST_NAME} has no format)")
    if m["format"] != FORMAT:
        raise InvalidInput(f"{label} has bundle format {m['format']!r}; this modeldepot reads "
                           f"{FORMAT!r} only: upgrade modeldepot on this side")
    label = f"{label}: {MANIFEST_NAME}"
    for key in ("bundle_id", "source_depot_id", "created_at"):
        _check(isinstance(m.get(key), str), label, f"{key!r} must be a string")
    _check(_is_int(m.get("archive_size")), label, "'archive_size' must be a whole number")
    _check(m.get("volume_size") is None or (_is_int(m["volume_size"]) and m["volume_size"] >= MIN_VOLUME),
           label, "'volume_size' must be null or a whole number")
    for key in ("repos", "revisions", "blobs"):
        _check(isinstance(m.get(key), list), label, f"{key!r} must be a list")
    repos = set()
    for repo in m["repos"]:
        _check(isinstance(repo, dict) and isinstance(repo.get("fields"), dict), label,
               "each repo needs type, name and fields")
        try:
            validate_repo_type(repo.get("type"))
            validate_repo_id(repo.get("name"))
        except InvalidInput as e:
            _check(False, label, str(e))
        fields = repo["fields"]
        _check(set(fields) <= set(REPO_FIELDS), label,
               f"{repo['name']}: unknown repo fields {sorted(set(fields) - set(REPO_FIELDS))}")
        for key, value in fields.items():
            kind = REPO_FIELD_TYPES[key]
            _check(value is None or (isinstance(value, kind) and (kind is bool or type(value) is not bool)),
                   label, f"{repo['name']}: {key} must be {kind.__name__} or null")
        for key in DATETIME_FIELDS:
            if fields.get(key) is not None:
                _check(_parse_time(fields[key]) is not None, label, f"{repo['name']}: {key} is not a time")
        _check(names.valid_bundle_names(repo.get("former_names", [])), label,
               f"{repo['name']}: former_names must be a list of {{name, source}}")
        repos.add((repo["type"], repo["name"]))
    seen = set()
    for rev in m["revisions"]:
        where = validate_revision(rev, label)
        key = (rev["type"], rev["repo"], rev["commit"])
        _check(key not in seen, label, f"{where} is listed twice")
        _check((rev["type"], rev["repo"]) in repos, label, f"{where}: its repo is not in 'repos'")
        seen.add(key)
    sizes: dict[str, int] = {}
    for rev in m["revisions"]:
        for f in rev["files"]:
            _check(sizes.setdefault(f["sha256"], f["size"]) == f["size"], label,
                   f"blob {f['sha256']} is listed with two sizes")
    blob_bytes = 0
    declared = set()
    for b in m["blobs"]:
        _check(isinstance(b, dict) and isinstance(b.get("sha256"), str)
               and bool(SHA256_RE.match(b["sha256"])) and _is_int(b.get("size")), label,
               "each blob needs a sha256 and a size")
        _check(b["sha256"] not in declared, label, f"blob {b['sha256']} is listed twice")
        _check(sizes.get(b["sha256"]) == b["size"], label,
               f"blob {b['sha256']} is not a file of any revision, or has another size there")
        declared.add(b["sha256"])
        blob_bytes += b["size"]
    if blob_bytes > m["archive_size"]:
        raise InvalidInput(f"{label} declares {_fmt_bytes(blob_bytes)} of blobs in "
                           f"a bundle of {_fmt_bytes(m['archive_size'])}; refusing it")


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.rstrip("Z")).replace(tzinfo=None)
    except ValueError:
        return None


# -- volumes -------------------------------------------------------------------------------------

_VOLUME_RE = re.compile(r"^(.*)\.(\d{3})$")


def find_volumes(paths: Sequence[Path | str]) -> list[Path]:
    """The files to read, in order. ``OUT.000`` alone brings its numbered siblings along."""
    paths = [Path(p) for p in paths]
    if len(paths) == 1 and (m := _VOLUME_RE.match(paths[0].name)) and m.group(2) == "000":
        paths = list(paths[0].parent.glob(f"{glob.escape(m.group(1))}.[0-9][0-9][0-9]")) or paths
    numbered = [_VOLUME_RE.match(p.name) for p in paths]
    if all(numbered):
        paths = [p for _, p in sorted(zip(numbered, paths), key=lambda x: int(x[0].group(2)))]
    return paths


def _check_layout(paths: list[Path], manifest: dict, label: str) -> None:
    """Compare the files given with the sizes the manifest promises, before anything is stored."""
    total, vsize = manifest["archive_size"], manifest["volume_size"]
    sizes = [p.stat().st_size for p in paths]
    if vsize is None:
        if len(paths) != 1:
            raise InvalidInput(f"{label} is a single-file bundle; give only that file")
        if sizes[0] != total:
            raise InvalidInput(f"{label} is truncated or damaged: it is {sizes[0]} bytes, its "
                               f"manifest says {total}; copy it again")
        return
    count = max(1, math.ceil(total / vsize))
    numbers = [int(m.group(2)) if (m := _VOLUME_RE.match(p.name)) else None for p in paths]
    if len(paths) != count:
        missing = []
        if all(n is not None for n in numbers):
            stem = _VOLUME_RE.match(paths[0].name).group(1)
            missing = [volume_name(paths[0].with_name(stem), i).name
                       for i in range(count) if i not in numbers]
        what = f"missing {', '.join(missing)}" if missing else f"{len(paths)} given"
        raise InvalidInput(f"{label} has {count} volumes but {what}; give all {count} volumes")
    for i, (p, size) in enumerate(zip(paths, sizes)):
        want = vsize if i < count - 1 else total - vsize * (count - 1)
        if size != want:
            raise InvalidInput(f"volume {p.name} is {size} bytes but should be {want}: it is "
                               "truncated or damaged; copy it again")


# -- import --------------------------------------------------------------------------------------

@dataclass
class _Plan:
    new: list[dict] = field(default_factory=list)
    present: list[dict] = field(default_factory=list)
    moved_refs: list[tuple[str, str, str | None, str]] = field(default_factory=list)
    to_write: dict[str, int] = field(default_factory=dict)
    held: dict[str, int] = field(default_factory=dict)
    lacking: list[tuple[dict, dict]] = field(default_factory=list)
    # (type, repo) -> repo fields the receiver has set that the bundle would change
    differing_fields: dict[tuple[str, str], list[str]] = field(default_factory=dict)

    @property
    def moving(self) -> list[tuple[str, str, str | None, str]]:
        """Existing refs the import would point at another commit (new refs are not moves)."""
        return [m for m in self.moved_refs if m[2] is not None and m[2] != m[3]]


def plan_import(depot: Depot, manifest: dict, lease: Lease | None = None) -> _Plan:
    """What importing would change: new revisions, moved refs, blobs to write or already held.
    With the importer's ``lease``, the blobs found held stay held against ``gc``."""
    plan = _Plan()
    in_bundle = {b["sha256"] for b in manifest["blobs"]}
    with depot.db.session() as s:
        for entry in manifest["repos"]:
            repo = s.scalar(select(Repo).where(Repo.type == entry["type"], Repo.name == entry["name"]))
            if repo is None:
                continue
            have = _repo_fields(repo)
            differ = sorted(k for k, v in entry["fields"].items()
                            if v is not None and have.get(k) is not None and have[k] != v)
            if differ:
                plan.differing_fields[(entry["type"], entry["name"])] = differ
        for rev in manifest["revisions"]:
            repo = s.scalar(select(Repo).where(Repo.type == rev["type"], Repo.name == rev["repo"]))
            exists = repo is not None and s.scalar(select(Revision.id).where(
                Revision.repo_id == repo.id, Revision.commit == rev["commit"],
                Revision.complete.is_(True))) is not None
            (plan.present if exists else plan.new).append(rev)
            current = ({r.name: (r.commit, r.kind) for r in s.scalars(select(Ref).where(Ref.repo_id == repo.id))}
                       if repo is not None else {})
            for ref in rev["refs"]:
                was = current.get(ref["name"])
                if was != (rev["commit"], ref["kind"]):
                    plan.moved_refs.append((rev["repo"], ref["name"], was[0] if was else None, rev["commit"]))
    for rev in plan.new:
        for f in rev["files"]:
            sha, size = f["sha256"], f["size"]
            if sha in plan.to_write or sha in plan.held:
                continue
            if depot.store.claim_blob(sha, size, lease):
                plan.held[sha] = size
            elif sha in in_bundle:
                plan.to_write[sha] = size
            else:
                plan.lacking.append((rev, f))
    return plan


def _git_sha1_claims(revisions: Iterable[dict]) -> dict[str, list[dict]]:
    claims: dict[str, list[dict]] = {}
    for rev in revisions:
        for f in rev["files"]:
            claims.setdefault(f["sha256"], []).append(f)
    return claims


def _check_git_sha1(sha: str, size: int, names: set[str], claims: list[dict], label: str) -> None:
    """Every file's git sha1 must name these bytes: the content's git blob sha1 (required for
    regular files, whose ETag it is) or, for LFS files, the sha1 of the LFS pointer."""
    pointer = git_blob_sha1(lfs_pointer(sha, size))
    for f in claims:
        if f["git_sha1"] not in names and not (f["lfs"] and f["git_sha1"] == pointer):
            raise IntegrityError(f"{label}: git sha1 {f['git_sha1']} recorded for {f['path']} does "
                                 f"not match blob {sha}; refusing it")


def _check_held(depot: Depot, plan: _Plan, claims: dict[str, list[dict]], label: str) -> None:
    """Blobs the depot already holds: their git sha1s must agree with what the registry knows,
    or else with the bytes (hashed only when the registry cannot vouch for them)."""
    known: dict[str, set[str]] = {}
    shas = list(plan.held)
    with depot.db.session() as s:
        for i in range(0, len(shas), 500):
            for sha, git in s.execute(select(File.sha256, File.git_sha1).where(
                    File.sha256.in_(shas[i:i + 500])).distinct()):
                known.setdefault(sha, set()).add(git)
    for sha, size in plan.held.items():
        try:
            _check_git_sha1(sha, size, known.get(sha, set()), claims[sha], label)
        except IntegrityError:
            _check_git_sha1(sha, size, {hash_file(depot.store.local_blob(sha)).git_sha1},
                            claims[sha], label)


def _discard(depot: Depot, written: list[str], lease: Lease) -> None:
    """Remove blobs this import wrote that no revision uses (so a refused bundle changes nothing),
    unless another live writer holds them."""
    if not written:
        return
    with depot.blobs_lock(), depot.leases.frozen(exclude=lease) as claims, depot.db.session() as s:
        used = set(s.scalars(select(File.sha256).where(File.sha256.in_(written)).distinct()))
        for sha in written:
            if sha not in used and sha not in claims.blobs:
                depot.store.remove_blob(sha)


def _publish(depot: Depot, manifest: dict, rev: dict, repo_fields: dict) -> bool:
    fields = dict(repo_fields)
    for key in DATETIME_FIELDS:
        fields[key] = _parse_time(fields.get(key))
    art = rev["artifact"]
    return depot.publish(
        repo_type=rev["type"],
        name=rev["repo"],
        commit=rev["commit"],
        files=[FileRecord(f["path"], f["size"], f["sha256"], f["git_sha1"], f["lfs"],
                          f.get("verification", "local")) for f in rev["files"]],
        source="bundle",
        refs=[(r["name"], r["kind"]) for r in rev["refs"]],
        parent_commit=rev["parent_commit"],
        repo_fields=fields,
        revision_meta=rev["meta"],
        artifact=({"kind": art["kind"], "recipe_key": art["recipe_key"], "recipe": art["recipe"]}
                  if art else None),
        event_details={"bundle_id": manifest["bundle_id"], "from_depot": manifest["source_depot_id"],
                       "original_source": rev.get("source")},
    ).created


def open_bundle(paths: Sequence[Path | str] | None, stream: BinaryIO | None = None,
                progress: Progress = None) -> tuple[_TarReader, dict, list[Path]]:
    """Open a bundle (files, or ``stream`` for stdin) and read and check its manifest."""
    files = find_volumes(paths) if paths else []
    for p in files:
        if not p.is_file():
            raise InvalidInput(f"no such bundle file: {p}")
    label = files[0].name if files else "the bundle on stdin"
    source = _Source(files or None, stream, progress)
    reader = _TarReader(source, label)
    try:
        manifest = reader.read_manifest()
        if files:
            _check_layout(files, manifest, label)
    except BaseException:
        source.close()
        raise
    return reader, manifest, files


def inspect_bundle(depot: Depot | None, paths: Sequence[Path | str] | None,
                   stream: BinaryIO | None = None) -> dict:
    """What a bundle holds and, given a depot, what that depot lacks of it (reads the manifest
    only)."""
    reader, manifest, files = open_bundle(paths, stream)
    reader.source.close()
    out = {
        "format": manifest["format"],
        "bundle_id": manifest["bundle_id"],
        "created_at": manifest["created_at"],
        "source_depot_id": manifest["source_depot_id"],
        "files": [str(p) for p in files],
        "archive_size": manifest["archive_size"],
        "volume_size": manifest["volume_size"],
        "blobs": len(manifest["blobs"]),
        "blob_bytes": sum(b["size"] for b in manifest["blobs"]),
        "left_out": manifest.get("left_out") or {"blobs": 0, "bytes": 0},
        "revisions": [
            {"type": r["type"], "repo": r["repo"], "commit": r["commit"], "parent_commit": r["parent_commit"],
             "refs": [x["name"] for x in r["refs"]], "files": len(r["files"]),
             "size": sum(f["size"] for f in r["files"]),
             "kind": r["artifact"]["kind"] if r["artifact"] else None}
            for r in manifest["revisions"]
        ],
    }
    if depot is not None:
        plan = plan_import(depot, manifest)
        new = {(r["type"], r["repo"], r["commit"]) for r in plan.new}
        for r in out["revisions"]:
            r["present"] = (r["type"], r["repo"], r["commit"]) not in new
        out["lacks"] = {
            "revisions": len(plan.new),
            "blobs": len(plan.to_write),
            "bytes": sum(plan.to_write.values()),
            "unavailable": [{"repo": r["repo"], "commit": r["commit"], "path": f["path"],
                             "sha256": f["sha256"]} for r, f in plan.lacking],
        }
    return out


def import_bundle(
    depot: Depot,
    paths: Sequence[Path | str] | None,
    stream: BinaryIO | None = None,
    *,
    progress: Progress = None,
    on_start: Callable[[int | None], None] | None = None,
    move_refs: bool = False,
) -> dict:
    """Verify and register what a bundle holds. Every blob is checked (size, sha256, and the git
    sha1 its files claim) before any revision is published; a refused bundle changes nothing.

    Refs this depot has are moved, and repo fields it has set are replaced by the bundle's, only
    with ``move_refs``; without it a bundle that would move a ref is refused (naming them), and
    fields the receiver has set are kept."""
    try:
        reader, manifest, files = open_bundle(paths, stream, progress)
    except DepotError as e:
        raise type(e)(f"{e}; nothing was imported") from None
    label = reader.label
    try:
        with depot.writing() as lease:
            result = _import(depot, reader, manifest, label, on_start, lease, move_refs)
    finally:
        reader.source.close()
    result["former_names"] = names.apply_bundle_names(depot, manifest["repos"])
    result["files"] = [str(p) for p in files]
    return result


def _import(depot: Depot, reader: _TarReader, manifest: dict, label: str,
            on_start: Callable[[int | None], None] | None, lease: Lease, move_refs: bool) -> dict:
    plan = plan_import(depot, manifest, lease)
    if plan.moving and not move_refs:
        moves = ", ".join(f"{repo} {ref} {old[:12]} -> {new[:12]}"
                          for repo, ref, old, new in plan.moving)
        raise Conflict(f"importing {label} would move {len(plan.moving)} ref(s) this depot has: "
                       f"{moves}; nothing was imported; run it again with --move-refs to move them")
    summary = {
        "bundle_id": manifest["bundle_id"],
        "source_depot_id": manifest["source_depot_id"],
        "revisions": [{"type": r["type"], "repo": r["repo"], "commit": r["commit"],
                       "refs": [x["name"] for x in r["refs"]], "created": r in plan.new}
                      for r in manifest["revisions"]],
        "created": len(plan.new),
        "present": len(plan.present),
        "moved_refs": [{"repo": repo, "ref": ref, "from": old, "to": new}
                       for repo, ref, old, new in plan.moving],
        "new_refs": [{"repo": repo, "ref": ref, "to": new}
                     for repo, ref, old, new in plan.moved_refs if old is None],
        "kept_fields": [] if move_refs else [
            {"type": t, "repo": n, "fields": names} for (t, n), names in plan.differing_fields.items()],
        "blobs_written": 0,
        "bytes_written": 0,
        "blobs_held": len(plan.held),
        "changed": bool(plan.new or plan.moved_refs),
    }
    if not summary["changed"]:
        return summary
    receiver = _Receiver(depot.store, lease)
    try:
        if plan.lacking:
            rev, f = plan.lacking[0]
            raise InvalidInput(
                f"{label} leaves out {len(plan.lacking)} file(s) whose blobs this depot does not hold "
                f"(for example {f['path']} of {rev['repo']}@{rev['commit'][:12]}): it was made with "
                "--have for another depot; create one with --have from this depot's "
                "'modeldepot inventory'")
        claims = _git_sha1_claims(plan.new)
        _check_held(depot, plan, claims, label)
        need = sum(plan.to_write.values())
        free = shutil.disk_usage(depot.settings.home).free
        if need > free:
            raise InvalidInput(f"not enough free space in {depot.settings.home}: importing {label} "
                               f"needs {_fmt_bytes(need)}, {_fmt_bytes(free)} free")
        if on_start:
            on_start(manifest["archive_size"])
        declared = {b["sha256"]: b["size"] for b in manifest["blobs"]}
        while (info := reader.next_member()) is not None:
            m = BLOB_MEMBER_RE.match(info.name)
            if not m or m.group(1) not in declared:
                raise reader.error(f": refusing member {info.name!r}: not declared in {MANIFEST_NAME}")
            sha = m.group(1)
            if info.size != declared[sha]:
                raise reader.error(f": member {info.name} is {info.size} bytes but {MANIFEST_NAME} "
                                   f"declares {declared[sha]}")
            if sha not in plan.to_write:
                reader.skip(info)
                continue
            if depot.store.claim_blob(sha, info.size, lease):  # a concurrent import stored it
                reader.skip(info)
                _check_git_sha1(sha, info.size, {hash_file(depot.store.local_blob(sha)).git_sha1},
                                claims[sha], label)
                continue
            pointer = git_blob_sha1(lfs_pointer(sha, info.size))
            need_git_sha1 = any(not f["lfs"] or f["git_sha1"] != pointer for f in claims[sha])
            digest = receiver.receive(reader, info, sha, need_git_sha1)
            _check_git_sha1(sha, info.size, {digest.git_sha1}, claims[sha], label)
            summary["blobs_written"] += 1
            summary["bytes_written"] += info.size
        missing = [sha for sha in declared if f"blobs/{sha}" not in reader.seen]
        if missing:
            raise reader.error(f"is truncated or a volume is missing: {len(missing)} blob(s) that "
                               f"{MANIFEST_NAME} declares are not in it")
        receiver.finish()
    except DepotError as e:
        receiver.close()
        _discard(depot, receiver.sealed, lease)
        raise type(e)(f"{e}; nothing was imported") from None
    except BaseException:
        receiver.close()
        _discard(depot, receiver.sealed, lease)
        raise
    fields = {(r["type"], r["name"]): r["fields"] for r in manifest["repos"]}
    if not move_refs:  # what the receiver has set stays as it is
        for key, kept in plan.differing_fields.items():
            fields[key] = {k: v for k, v in fields[key].items() if k not in kept}
    try:
        # A concurrent import of the same revision may publish it first: report what this did.
        for row, rev in zip(summary["revisions"], manifest["revisions"], strict=True):
            row["created"] = _publish(depot, manifest, rev, fields[(rev["type"], rev["repo"])])
    except BaseException:
        _discard(depot, receiver.sealed, lease)  # keeps what the revisions published so far use
        raise
    summary["created"] = sum(row["created"] for row in summary["revisions"])
    summary["present"] = len(summary["revisions"]) - summary["created"]
    return summary
