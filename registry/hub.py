"""Talking to an upstream Hub (huggingface.co, a mirror, another depot): search, info, pull.

Everything goes through ``huggingface_hub`` (its ``HfApi`` for metadata, its HTTP session,
back-off and error mapping for downloads). A token is passed explicitly to the one endpoint being
talked to; with no token we pass ``token=False`` so that huggingface_hub never adds an implicit
one (from ``HF_TOKEN`` or its token file) meant for another host.

``pull`` resolves the revision to a commit first and downloads only ``/resolve/<commit>/...``,
so files cannot come from two commits. Each file is verified before it enters the store: sha256
for LFS files, the git blob sha1 for the others, and the size always. Partial downloads live in
``tmp/pull-<hash>.incomplete`` across runs and are continued with a Range request.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import os
import re
import threading
import time
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator
from urllib.parse import quote

from . import __version__
from .depot import Depot, FileRecord, PublishResult
from .errors import (
    Conflict,
    DepotError,
    IntegrityError,
    InvalidInput,
    OfflineError,
    RepoNotFound,
    RevisionNotFound,
    Unauthorized,
    UpstreamError,
)
from .cacheview import is_short_id_of, write_short_refs
from .importer import is_lfs
from .models import File
from .naming import is_commit, is_hub_ref, validate_ref_name, validate_repo_id, validate_repo_type
from .store import CHUNK, Digest, Hasher, check_relpath, git_blob_sha1, hash_file, lfs_pointer
from .units import human_size, iso_z

SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
SHA1_RE = re.compile(r"^[0-9a-f]{40}$")
SORTS = ("downloads", "likes", "lastModified", "createdAt")
DOWNLOAD_WORKERS = 8
# A dropped connection is retried from where it stopped for as long as each try makes progress;
# this many tries in a row without a new byte end the pull (a re-run resumes).
MAX_STALLED_TRIES = 3
# huggingface_hub retries a refused connection with back-off (23 s by default); a pull with many
# files should fail fast instead when the endpoint is down.
HTTP_RETRIES = dict(max_retries=2, base_wait_time=0.25, max_wait_time=1.0)


# -- the client and its errors -----------------------------------------------------------------


def _api(endpoint: str, token: str | None):
    from huggingface_hub import HfApi

    return HfApi(endpoint=endpoint, token=token or False, library_name="modeldepot",
                 library_version=__version__)


def _repo_label(repo_type: str, name: str) -> str:
    return name if repo_type == "model" else f"{repo_type}s/{name}"


def upstream_error(exc: Exception, *, endpoint: str, repo_type: str = "model",
                   name: str | None = None, revision: str | None = None,
                   what: str | None = None) -> DepotError:
    """One clear domain error for whatever huggingface_hub / requests raised."""
    import requests
    from huggingface_hub import errors as hf

    label = _repo_label(repo_type, name) if name else endpoint
    what = what or label
    status = getattr(getattr(exc, "response", None), "status_code", None)
    if isinstance(exc, DepotError):
        return exc
    if isinstance(exc, hf.OfflineModeIsEnabled):
        return OfflineError(f"cannot reach {endpoint}: offline mode is on (HF_HUB_OFFLINE)")
    if isinstance(exc, hf.GatedRepoError):
        return Unauthorized(
            f"{label} is gated on {endpoint}: accept its conditions on the Hub, then pass a "
            "token that has access (--token or HF_TOKEN)"
        )
    if isinstance(exc, hf.RevisionNotFoundError):
        return RevisionNotFound(
            f"revision {revision or 'main'!r} of {label} does not exist on {endpoint}; "
            f"see 'modeldepot info {name}' for its branches and tags"
        )
    if isinstance(exc, hf.EntryNotFoundError):
        return UpstreamError(f"{endpoint} has no file {what} (HTTP 404)")
    if status in (401, 403):
        return Unauthorized(
            f"{endpoint} refused access to {label} (HTTP {status}): pass a token that has "
            "access (--token or HF_TOKEN)"
        )
    if isinstance(exc, hf.RepositoryNotFoundError) or (status == 404 and what == label):
        other = "dataset" if repo_type == "model" else "model"
        return RepoNotFound(
            f"{label} was not found on {endpoint} (if it is private, pass a token with "
            f"--token or HF_TOKEN; if it is a {other}, add --type {other}); check the repo id "
            "with 'modeldepot search'"
        )
    if isinstance(exc, (requests.ConnectionError, requests.Timeout)):
        reason = "connection refused" if "refused" in str(exc).lower() else type(exc).__name__
        return UpstreamError(
            f"cannot reach {endpoint} ({reason}); check --endpoint / MODELDEPOT_ENDPOINT and "
            "that the server is up"
        )
    if status is not None:
        return UpstreamError(f"{endpoint} answered HTTP {status} for {what}")
    return UpstreamError(f"talking to {endpoint} failed for {what}: {exc}")


def _call(fn: Callable, *args, context: dict, **kwargs):
    """Call huggingface_hub; what the endpoint did wrong becomes one domain error."""
    try:
        return fn(*args, **kwargs)
    except OSError as e:  # requests' and huggingface_hub's errors are OSErrors
        raise upstream_error(e, **context) from e
    except (ValueError, KeyError, TypeError) as e:
        raise UpstreamError(
            f"{context['endpoint']} gave an answer modeldepot cannot read ({type(e).__name__}: "
            f"{str(e)[:200]}); is it a Hugging Face Hub endpoint?"
        ) from e


# -- JSON-able metadata ------------------------------------------------------------------------


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return iso_z(value)
    if hasattr(value, "to_dict") and callable(value.to_dict):
        return _jsonable(value.to_dict())
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _jsonable(dataclasses.asdict(value))
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def _naive_utc(dt: datetime | None) -> datetime | None:
    if dt is None:
        return None
    return dt.astimezone(timezone.utc).replace(tzinfo=None) if dt.tzinfo else dt


def _license(info) -> str | None:
    card = getattr(info, "card_data", None)
    lic = card.get("license") if card is not None else None
    if isinstance(lic, str):
        return lic
    for tag in getattr(info, "tags", None) or []:
        if tag.startswith("license:"):
            return tag.split(":", 1)[1]
    return None


def _summary(info, repo_type: str) -> dict:
    """The search/info view of a ModelInfo or DatasetInfo."""
    return {
        "id": info.id,
        "type": repo_type,
        "author": info.author or (info.id.split("/")[0] if "/" in info.id else None),
        "sha": info.sha,
        "pipeline_tag": getattr(info, "pipeline_tag", None),
        "library_name": getattr(info, "library_name", None),
        "license": _license(info),
        "tags": list(info.tags or []),
        "gated": info.gated or False,
        "private": bool(info.private),
        "downloads": info.downloads,
        "likes": info.likes,
        "last_modified": iso_z(info.last_modified),
        "created_at": iso_z(info.created_at),
    }


# -- search and info ---------------------------------------------------------------------------


def _check_online(offline: bool, endpoint: str) -> None:
    if offline:
        raise OfflineError(
            f"the depot is offline (MODELDEPOT_OFFLINE); not contacting {endpoint}"
        )


def search(
    *,
    endpoint: str,
    token: str | None = None,
    repo_type: str = "model",
    search: str | None = None,
    author: str | None = None,
    task: str | None = None,
    library: str | None = None,
    tags: Iterable[str] = (),
    sort: str | None = None,
    limit: int | None = 20,
    offline: bool = False,
) -> list[dict]:
    """The Hub's model (or dataset) search, with the filters users know from the website."""
    validate_repo_type(repo_type)
    _check_online(offline, endpoint)
    if sort is not None and sort not in SORTS:
        raise InvalidInput(f"unknown sort {sort!r}: use one of {', '.join(SORTS)}")
    if limit is not None and limit < 0:
        raise InvalidInput("--limit must be >= 0")
    api = _api(endpoint, token)
    common = dict(search=search or None, author=author or None, sort=sort,
                  direction=-1 if sort else None, limit=limit, full=True)
    filters = list(tags)
    if repo_type == "model":
        call = lambda: api.list_models(pipeline_tag=task or None, library=library or None,  # noqa: E731
                                       filter=filters or None, **common)
    else:
        filters += [f"task_categories:{task}"] if task else []
        filters += [f"library:{library}"] if library else []
        call = lambda: api.list_datasets(filter=filters or None, **common)  # noqa: E731
    context = {"endpoint": endpoint, "what": f"{repo_type} search"}
    return _call(lambda: [_summary(i, repo_type) for i in call()], context=context)


@dataclass
class UpstreamFile:
    """A file of an upstream commit and what upstream told us to check it against."""

    path: str
    size: int | None = None
    sha256: str | None = None  # the LFS oid (sha256 of the content)
    git_sha1: str | None = None  # the git blob sha1 of the content (non-LFS files)
    lfs: bool | None = None  # None: upstream did not say
    origin: str = "info"  # where the hashes came from: info, tree, head, none

    @property
    def complete(self) -> bool:
        return self.size is not None and self.lfs is not None and bool(
            self.sha256 if self.lfs else self.git_sha1
        )

    def to_json(self) -> dict:
        return {"path": self.path, "size": self.size, "lfs": self.lfs, "sha256": self.sha256,
                "git_sha1": self.git_sha1, "origin": self.origin}


def _from_sibling(s) -> UpstreamFile:
    f = UpstreamFile(s.rfilename, size=s.size)
    if s.lfs is not None:
        f.lfs, f.sha256 = True, s.lfs.sha256
        f.size = s.lfs.size if f.size is None else f.size
    elif s.blob_id and s.size is not None:
        # Without an ``lfs`` entry but with sizes, upstream said "regular file".
        f.lfs, f.git_sha1 = False, s.blob_id
    return f


def _merge(f: UpstreamFile, other: UpstreamFile, origin: str) -> None:
    if f.size is None:
        f.size = other.size
    if f.lfs is None and other.lfs is not None:
        f.lfs = other.lfs
    f.sha256 = f.sha256 or other.sha256
    if f.lfs is False:
        f.git_sha1 = f.git_sha1 or other.git_sha1
    f.origin = origin


def _tree_files(api, name: str, repo_type: str, commit: str, context: dict) -> dict[str, UpstreamFile]:
    from huggingface_hub.hf_api import RepoFile

    entries = _call(lambda: list(api.list_repo_tree(name, recursive=True, revision=commit,
                                                    repo_type=repo_type)), context=context)
    out = {}
    for e in entries:
        if isinstance(e, RepoFile):
            t = UpstreamFile(e.path, size=e.size, origin="tree")
            if e.lfs is not None:
                t.lfs, t.sha256, t.size = True, e.lfs.sha256, e.lfs.size
            elif e.blob_id:
                t.lfs, t.git_sha1 = False, e.blob_id
            out[e.path] = t
    return out


def _fill_from_head(f: UpstreamFile, url: str, token: str | None, endpoint: str) -> None:
    """The last resort: the HEAD ETag (sha256 for LFS files, git sha1 otherwise) and size."""
    from huggingface_hub import get_hf_file_metadata

    meta = get_hf_file_metadata(url, token=token or False, library_name="modeldepot",
                                library_version=__version__, endpoint=endpoint)
    etag = (meta.etag or "").lower()
    other = UpstreamFile(f.path, size=meta.size)
    if SHA256_RE.match(etag):
        other.lfs, other.sha256 = True, etag
    elif SHA1_RE.match(etag):
        other.lfs, other.git_sha1 = False, etag
    _merge(f, other, "head")


def _file_list(api, info, name: str, repo_type: str, commit: str, context: dict) -> list[UpstreamFile]:
    files = [_from_sibling(s) for s in (info.siblings or [])]
    if files and all(f.complete for f in files):
        return files
    # Repo info may omit sizes and hashes (or the whole list); the tree API carries them.
    try:
        tree = _tree_files(api, name, repo_type, commit, context)
    except (UpstreamError, RepoNotFound, RevisionNotFound):
        if not files:
            raise
        return files
    if not files:
        return list(tree.values())
    for f in files:
        if not f.complete and f.path in tree:
            _merge(f, tree[f.path], "tree")
    return files


def _resolve_url(endpoint: str, repo_type: str, name: str, commit: str, path: str) -> str:
    prefix = "" if repo_type == "model" else f"{repo_type}s/"
    return f"{endpoint}/{prefix}{name}/resolve/{commit}/{quote(path)}"


def _repo_info(api, repo_type: str, name: str, revision: str | None, context: dict,
               timeout: float | None = None):
    info = _call(api.repo_info, name, repo_type=repo_type, revision=revision,
                 files_metadata=True, timeout=timeout, context=context)
    if not is_commit(getattr(info, "sha", None)):
        raise UpstreamError(
            f"{context['endpoint']} gave no commit id for {_repo_label(repo_type, name)}"
            f"@{revision or 'main'}; cannot pull a revision that is not pinned to a commit"
        )
    return info


def _upstream_refs(api, repo_type: str, name: str, context: dict) -> dict[str, dict[str, str]]:
    refs = _call(api.list_repo_refs, name, repo_type=repo_type, context=context)
    return {  # name -> commit
        "branches": {r.name: r.target_commit for r in refs.branches},
        "tags": {r.name: r.target_commit for r in refs.tags},
    }


def info(
    name: str,
    revision: str | None = None,
    *,
    endpoint: str,
    token: str | None = None,
    repo_type: str = "model",
    offline: bool = False,
) -> dict:
    """A repo's metadata and file list (sizes, LFS hashes, git blob ids) from ``endpoint``."""
    validate_repo_type(repo_type)
    validate_repo_id(name)
    _check_online(offline, endpoint)
    context = {"endpoint": endpoint, "repo_type": repo_type, "name": name, "revision": revision}
    api = _api(endpoint, token)
    upstream = _repo_info(api, repo_type, name, revision, context)
    files = _file_list(api, upstream, name, repo_type, upstream.sha, context)
    try:
        refs = _upstream_refs(api, repo_type, name, context)
    except (UpstreamError, RepoNotFound):
        refs = None
    out = _summary(upstream, repo_type)
    out.update(
        endpoint=endpoint,
        revision=revision or "main",
        card_data=_jsonable(getattr(upstream, "card_data", None)),
        refs=refs,
        size=sum(f.size or 0 for f in files),
        files=[f.to_json() for f in files],
    )
    return out


# -- pull --------------------------------------------------------------------------------------


@dataclass
class PullResult(PublishResult):
    """What ``pull`` published, plus what it had to transfer to get there."""

    endpoint: str = ""
    downloaded_bytes: int = 0
    downloaded_files: int = 0
    reused_files: int = 0
    unverified: list[str] = field(default_factory=list)
    # the id asked for, when the upstream redirected it to ``repo`` (recorded as its name)
    former_name: str | None = None


class _Progress:
    """Whole-job progress, fed from the download threads.

    ``progress`` may be a plain callable taking a byte count (``tqdm.update``), or an object
    with ``start(total_bytes, total_files)``, ``update(nbytes)`` and ``file_done(path)``.
    """

    def __init__(self, progress):
        self._p = progress
        self._lock = threading.Lock()
        self.bytes = 0
        self.files = 0

    def start(self, total_bytes: int, total_files: int) -> None:
        if self._p is not None and hasattr(self._p, "start"):
            self._p.start(total_bytes, total_files)

    def update(self, n: int) -> None:
        with self._lock:
            self.bytes += n
            if self._p is not None:
                (self._p.update if hasattr(self._p, "update") else self._p)(n)

    def file_done(self, path: str) -> None:
        with self._lock:
            self.files += 1
            if self._p is not None and hasattr(self._p, "file_done"):
                self._p.file_done(path)


class _Truncated(Exception):
    """The server ended a response before the promised bytes arrived."""


class _Cancelled(Exception):
    """Another download of the same pull failed."""


class _Puller:
    """Verified, resumable downloads of one commit's files into the store.

    ``listener`` (the proxy's streaming fetch) is told ``opened(tmp, have)`` when the partial file
    is locked and holds ``have`` valid-looking bytes (again with 0 if the server ignored our
    Range), and ``written(n)`` when the partial file holds ``n`` bytes on disk and
    ``due(n)`` said it wants to hear, so readers can tail it while it grows; nothing is ever
    registered from it before it verified.
    """

    def __init__(self, depot: Depot, repo_type: str, name: str, commit: str, endpoint: str,
                 token: str | None, progress: _Progress, lease=None, listener=None):
        from huggingface_hub.utils import build_hf_headers

        self.depot, self.store = depot, depot.store
        self.repo_type, self.name, self.commit = repo_type, name, commit
        self.endpoint = endpoint
        self.progress = progress
        self.lease = lease
        self.headers = build_hf_headers(token=token or False, library_name="modeldepot",
                                        library_version=__version__)
        # Downloads must not be transparently decompressed: sizes and hashes are of the bytes.
        self.headers["Accept-Encoding"] = "identity"
        # Set when one download fails: the others stop at their next chunk (keeping their
        # partial files for a re-run) instead of finishing first.
        self.cancelled = threading.Event()
        self.listener = listener

    def url(self, path: str) -> str:
        return _resolve_url(self.endpoint, self.repo_type, self.name, self.commit, path)

    def temp_name(self, f: UpstreamFile) -> Path:
        key = f.sha256 or f.git_sha1 or hashlib.sha1(
            f"{self.endpoint}\0{self.repo_type}\0{self.name}\0{self.commit}\0{f.path}".encode()
        ).hexdigest()
        return self.store.tmp / f"pull-{key}.incomplete"

    def download(self, f: UpstreamFile) -> Digest:
        """Fetch ``f`` into the store (resuming a partial file), verified; its digest."""
        self.store.tmp.mkdir(parents=True, exist_ok=True)
        tmp = self.temp_name(f)
        # The partial file's flock keeps this home's pulls of one file apart; on a shared
        # registry the blob lock also keeps other hosts' pulls of it apart (fetched once).
        with self.depot.lock_blob(f.sha256), _exclusive(tmp):
            try:
                return self._download_locked(f, tmp)
            finally:
                if tmp.exists() and tmp.stat().st_size == 0:
                    tmp.unlink()  # nothing to resume from

    def _download_locked(self, f: UpstreamFile, tmp: Path) -> Digest:
        import requests
        import urllib3

        if f.sha256 and self.store.claim_blob(f.sha256, f.size, self.lease):
            self.progress.file_done(f.path)
            return self.known_digest(f)  # another pull fetched it while we waited
        hasher = _hasher_for(f)
        if f.size is not None and tmp.stat().st_size > f.size:
            os.truncate(tmp, 0)
        if hasher is not None:
            _hash_into(tmp, hasher)
        if self.listener is not None:
            self.listener.opened(tmp, tmp.stat().st_size)
        stalled = 0
        while True:
            before = tmp.stat().st_size
            try:
                hasher = self._fetch(f, tmp, before, hasher)
                break
            except (requests.ConnectionError, requests.Timeout, _Truncated,
                    requests.exceptions.ChunkedEncodingError,
                    urllib3.exceptions.HTTPError) as e:
                after = tmp.stat().st_size
                stalled = 0 if after > before else stalled + 1
                if stalled >= MAX_STALLED_TRIES:
                    err = upstream_error(e, endpoint=self.endpoint, what=f.path)
                    raise UpstreamError(
                        f"downloading {f.path} from {self.endpoint} failed after "
                        f"{human_size(after, unknown='?')} of {human_size(f.size, unknown='?')}: "
                        f"{err}. Nothing was registered; run the same pull again to resume"
                    ) from e
                time.sleep(min(0.25 * 2 ** stalled, 2.0))
            except requests.RequestException as e:
                raise upstream_error(e, endpoint=self.endpoint, repo_type=self.repo_type,
                                     name=self.name, what=f.path) from e
        digest = hasher.digest() if hasher is not None else hash_file(tmp)
        label = f"{_repo_label(self.repo_type, self.name)}@{self.commit[:12]}: {f.path}"
        try:
            got = self.store.adopt(tmp, digest=digest, size=f.size, label=label,
                                   sha256=f.sha256, lease=self.lease,
                                   git_sha1=f.git_sha1 if f.lfs is False else None)
        except IntegrityError as e:
            raise IntegrityError(
                f"{e}; the file from {self.endpoint} was discarded and nothing was registered"
            ) from None
        self.progress.file_done(f.path)
        return got

    def _fetch(self, f: UpstreamFile, tmp: Path, have: int, hasher) -> Hasher | _LfsHasher | None:
        from huggingface_hub import constants
        from huggingface_hub.utils import hf_raise_for_status, http_backoff

        if f.size is not None and have == f.size:
            return hasher
        headers = dict(self.headers)
        if have:
            headers["Range"] = f"bytes={have}-"
        r = http_backoff("GET", self.url(f.path), headers=headers, stream=True,
                         timeout=constants.HF_HUB_DOWNLOAD_TIMEOUT, **HTTP_RETRIES)
        with r:
            hf_raise_for_status(r)
            mode = "ab"
            if have and r.status_code != 206:
                # The server ignored our Range: start over, hashing from the first byte.
                mode, have = "wb", 0
                hasher = _hasher_for(f)
                if self.listener is not None:
                    self.listener.opened(tmp, 0)
            got = have
            listener = self.listener
            # Leaving the block, also by an exception, flushes every byte received to the file,
            # where a resume picks up. (Copying chunks into a buffer of our own first cost a
            # quarter of the wall time on 2 cores.)
            with open(tmp, mode) as out:
                # read1 hands over what has arrived: a read of a fixed size would lose what
                # it had buffered when the connection drops, and the resume could not start
                # at the last byte received.
                while chunk := r.raw.read1(CHUNK, decode_content=False):
                    if self.cancelled.is_set():
                        raise _Cancelled()
                    out.write(chunk)
                    if hasher is not None:
                        hasher.update(chunk)
                    self.progress.update(len(chunk))
                    got += len(chunk)
                    if listener is not None and listener.due(got):
                        out.flush()  # what readers tail must be on disk, not in our buffer
                        listener.written(got)
        if f.size is not None and got < f.size:
            raise _Truncated(f"{f.path}: got {got} of {f.size} bytes")
        return hasher

    def known_digest(self, f: UpstreamFile) -> Digest:
        return known_digest(self.store, f)


def known_digest(store, f: UpstreamFile) -> Digest:
    """The digest of a blob already in the store, without reading it when we can."""
    if f.lfs and f.size is not None:
        return Digest(f.sha256, git_blob_sha1(lfs_pointer(f.sha256, f.size)), f.size)
    if f.lfs is False and f.git_sha1 and f.size is not None:
        return Digest(f.sha256, f.git_sha1, f.size)  # matched by git sha1 in the registry
    return hash_file(store.local_blob(f.sha256))


def fetch_file(depot: Depot, repo_type: str, name: str, commit: str, f: UpstreamFile, *,
               endpoint: str, token: str | None = None, listener=None, progress=None,
               lease=None) -> FileRecord:
    """Fetch one file of ``name@commit`` into the store, verified exactly as ``pull`` does
    (the same resumable download), and return its record; nothing is registered here. The
    blob is announced through ``lease`` (``Depot.writing()``) so ``gc`` keeps it until the
    caller publishes it."""
    puller = _Puller(depot, repo_type, name, commit, endpoint.rstrip("/"), token,
                     _Progress(progress), lease, listener)
    if f.sha256 and depot.store.claim_blob(f.sha256, f.size, lease):
        return _record(f, known_digest(depot.store, f))
    return _record(f, puller.download(f))


@contextmanager
def _exclusive(path: Path) -> Iterator[None]:
    """An flock on ``path`` itself (created if missing), held across processes.

    The partial file is its own lock, so no lock files pile up; whoever finishes removes it, and
    a waiter that then wakes up on the removed inode starts over on the path.
    """
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                if os.fstat(fd).st_ino == os.stat(path).st_ino:
                    break
            except FileNotFoundError:
                pass
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
    try:
        yield
    finally:
        os.close(fd)


class _LfsHasher:
    """sha256 only, for LFS files: their git sha1 is that of the LFS pointer (what upstream
    reports as the file's oid), so hashing the content a second time buys nothing."""

    def __init__(self, size: int):
        self.size, self.seen = size, 0
        self._sha256 = hashlib.sha256()

    def update(self, chunk) -> None:
        self._sha256.update(chunk)
        self.seen += len(chunk)

    def digest(self) -> Digest:
        if self.seen != self.size:
            raise IntegrityError(f"expected {self.size} bytes, read {self.seen}")
        sha256 = self._sha256.hexdigest()
        return Digest(sha256, git_blob_sha1(lfs_pointer(sha256, self.size)), self.size)


def _hasher_for(f: UpstreamFile):
    if f.size is None:
        return None  # hashed from the file once its size is known
    return _LfsHasher(f.size) if f.lfs else Hasher(f.size)


def _hash_into(path: Path, hasher) -> None:
    with open(path, "rb", buffering=0) as f:
        while chunk := f.read(CHUNK):
            hasher.update(chunk)


def _existing_by_git_sha1(depot: Depot, files: list[UpstreamFile]) -> dict[str, str]:
    """sha256 of content we already hold, for files upstream names only by git sha1."""
    from sqlalchemy import select

    wanted = {f.git_sha1: f.size for f in files if f.git_sha1 and not f.sha256}
    found: dict[str, str] = {}
    if not wanted:
        return found
    keys = list(wanted)
    with depot.db.session() as s:
        for i in range(0, len(keys), 500):
            for git_sha1, sha256, size in s.execute(
                select(File.git_sha1, File.sha256, File.size).where(File.git_sha1.in_(keys[i:i + 500]))
            ):
                if size == wanted[git_sha1] and depot.store.has_blob(sha256, size):
                    found[git_sha1] = sha256
    return found


def _repo_fields(upstream, repo_type: str, endpoint: str, refs: dict | None) -> dict:
    card = _jsonable(getattr(upstream, "card_data", None))
    meta: dict[str, Any] = {
        "upstream": {"endpoint": endpoint, "sha": upstream.sha, "disabled": upstream.disabled,
                     "downloads_all_time": getattr(upstream, "downloads_all_time", None),
                     "trending_score": getattr(upstream, "trending_score", None)},
        "refs": refs,
    }
    if repo_type == "model":
        meta.update(
            config=_jsonable(upstream.config),
            transformersInfo=_jsonable(upstream.transformers_info),
            safetensors=_jsonable(upstream.safetensors),
            mask_token=upstream.mask_token,
            widgetData=_jsonable(upstream.widget_data),
            model_index=_jsonable(upstream.model_index),
            spaces=_jsonable(upstream.spaces),
        )
        if isinstance(upstream.config, dict):
            meta["architectures"] = upstream.config.get("architectures") or []
    else:
        meta["paperswithcode_id"] = getattr(upstream, "paperswithcode_id", None)
        description = getattr(upstream, "description", None)
        if description:
            meta["description"] = description
    return {
        "pipeline_tag": getattr(upstream, "pipeline_tag", None),
        "library_name": getattr(upstream, "library_name", None),
        "license": _license(upstream),
        "tags": list(upstream.tags or []),
        "gated": upstream.gated if isinstance(upstream.gated, str) else None,
        "private": bool(upstream.private),
        "card_data": card or None,
        "downloads": upstream.downloads,
        "likes": upstream.likes,
        "upstream_last_modified": _naive_utc(upstream.last_modified),
        "upstream_created_at": _naive_utc(upstream.created_at),
        "source": endpoint,
        "meta": {k: v for k, v in meta.items() if v is not None},
    }


def _refs_to_record(requested: str | None, commit: str,
                    refs: dict[str, dict[str, str]] | None) -> list[tuple[str, str]]:
    out: dict[str, str] = {}
    if refs is not None:
        for kind, group in (("branch", "branches"), ("tag", "tags")):
            for ref, target in sorted(refs[group].items()):
                if target == commit:
                    out[ref] = kind
    if (requested is not None and not is_commit(requested) and requested not in out
            and not is_short_id_of(requested, commit)):  # a short id is not a branch
        out[requested] = "tag" if refs and requested in refs["tags"] else "branch"
    valid = []
    for ref, kind in out.items():
        if is_hub_ref(ref):
            continue
        try:
            validate_ref_name(ref)
        except InvalidInput:
            continue
        valid.append((ref, kind))
    return valid


def pull(
    depot: Depot,
    repo_type: str,
    name: str,
    revision: str | None = None,
    *,
    endpoint: str,
    token: str | None = None,
    include: list[str] | None = None,
    exclude: list[str] | None = None,
    progress=None,
) -> PullResult:
    """Mirror ``name@revision`` from ``endpoint`` into ``depot``.

    Resolves the revision to a commit, downloads (8 at a time) only the files whose content
    the depot lacks, verifies each one, and publishes the revision with the upstream metadata.
    Nothing becomes visible unless every file arrived and verified.
    """
    with depot.writing() as lease:  # what it stores, gc leaves alone until it has published
        return _pull(depot, repo_type, name, revision, endpoint=endpoint, token=token,
                     include=include, exclude=exclude, progress=progress, lease=lease)


def _pull(depot: Depot, repo_type: str, name: str, revision: str | None, *, endpoint: str,
          token: str | None, include: list[str] | None, exclude: list[str] | None, progress,
          lease) -> PullResult:
    validate_repo_type(repo_type)
    validate_repo_id(name)
    if revision is not None and (not revision or len(revision) > 200 or "\0" in revision):
        raise InvalidInput(f"invalid revision {revision!r}")
    endpoint = endpoint.rstrip("/")
    _check_online(depot.settings.offline, endpoint)
    from huggingface_hub.utils import filter_repo_objects

    context = {"endpoint": endpoint, "repo_type": repo_type, "name": name, "revision": revision}
    api = _api(endpoint, token)
    upstream = _repo_info(api, repo_type, name, revision, context)
    asked_for = name
    name = _canonical_id(upstream, name)  # an upstream redirect of a renamed / legacy id
    context["name"] = name
    commit = upstream.sha
    files = _file_list(api, upstream, name, repo_type, commit, context)
    total_listed = len(files)
    files = list(filter_repo_objects(files, allow_patterns=include or None,
                                     ignore_patterns=exclude or None, key=lambda f: f.path))
    if not files:
        raise InvalidInput(
            f"no file of {_repo_label(repo_type, name)}@{commit[:12]} matches "
            "--include/--exclude; see 'modeldepot info' for its files"
        )
    for f in files:  # before a byte is downloaded
        check_relpath(f.path)
    progress_ = _Progress(progress)
    puller = _Puller(depot, repo_type, name, commit, endpoint, token, progress_, lease)
    for f in files:
        if not f.complete:
            _call(_fill_from_head, f, puller.url(f.path), token, endpoint,
                  context={**context, "what": f.path})
    try:
        refs = _upstream_refs(api, repo_type, name, context)
    except (UpstreamError, RepoNotFound):
        refs = None  # a mirror without /refs: record the requested name only
    _check_extends(depot, repo_type, name, commit, files)

    # What the depot already holds is not downloaded again.
    by_git = _existing_by_git_sha1(depot, files)
    records: dict[str, FileRecord] = {}
    todo: list[UpstreamFile] = []
    unverified: list[str] = []
    for f in files:
        if f.git_sha1 in by_git and f.lfs is False:
            f.sha256 = by_git[f.git_sha1]
        if f.sha256 and depot.store.claim_blob(f.sha256, f.size, lease):
            records[f.path] = _record(f, puller.known_digest(f))
        else:
            todo.append(f)
    progress_.start(sum(f.size or 0 for f in todo), len(files))
    for f in files:
        if f.path in records:
            progress_.file_done(f.path)

    if todo:
        pool = ThreadPoolExecutor(max_workers=min(DOWNLOAD_WORKERS, len(todo)))
        futures = {pool.submit(puller.download, f): f for f in todo}
        try:
            done, _pending = wait(futures, return_when=FIRST_EXCEPTION)
            failed = [fut.exception() for fut in done if fut.exception() is not None]
            failed = [e for e in failed if not isinstance(e, _Cancelled)]
            if failed:
                raise failed[0]
            for fut, f in futures.items():
                records[f.path] = _record(f, fut.result())
        except BaseException:
            puller.cancelled.set()
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
    for f in files:
        if records[f.path].verification == "computed":
            unverified.append(f.path)

    fields = _repo_fields(upstream, repo_type, endpoint, refs)
    partial = len(files) < total_listed
    revision_meta: dict[str, Any] = {
        "upstream": {"endpoint": endpoint, "requested": revision, "pulled_at": iso_z(datetime.now(timezone.utc))},
        "lfs_classification": "upstream" if all(f.lfs is not None for f in files) else "partly guessed",
    }
    if partial:
        revision_meta.update(partial=True, include=include or [], exclude=exclude or [],
                             upstream_files=total_listed)
    if unverified:
        revision_meta["unverified"] = unverified
    params = getattr(getattr(upstream, "safetensors", None), "parameters", None)
    if isinstance(params, dict) and params:
        revision_meta["parameters"] = params
        revision_meta["parameter_count"] = sum(params.values())
    ordered = [records[f.path] for f in sorted(files, key=lambda f: f.path)]
    result = depot.publish(
        repo_type=repo_type,
        name=name,
        commit=commit,
        files=ordered,
        source="pull",
        refs=_refs_to_record(revision if revision or refs else "main", commit, refs),
        repo_fields=fields,
        revision_meta=revision_meta,
        event_details={"endpoint": endpoint, "downloaded_bytes": progress_.bytes,
                       "downloaded_files": len(todo)},
    )
    if not result.created:
        # The same commit again: the upstream figures (downloads, likes) still move.
        refresh_upstream_stats(depot, repo_type, name, fields)
    former_name = None
    if asked_for != name:
        try:
            depot.add_repo_name(repo_type, name, asked_for, source="redirect")
            former_name = asked_for
        except Conflict:
            pass  # ``asked_for`` is a repo of its own here: it keeps its own answers
    if is_short_id_of(revision, commit):
        with depot.repo_lock(repo_type, name):
            write_short_refs(depot, repo_type, name, extra=(revision,))
    return PullResult(
        **dataclasses.asdict(result),
        endpoint=endpoint,
        downloaded_bytes=progress_.bytes,
        downloaded_files=len(todo),
        reused_files=len(files) - len(todo),
        unverified=unverified,
        former_name=former_name,
    )


def _canonical_id(upstream, asked_for: str) -> str:
    """The id the upstream answered with: the Hub redirects a renamed repo's old id (and the
    legacy ids such as ``gpt2``) to the current one, and huggingface_hub follows."""
    current = getattr(upstream, "id", None)
    if not isinstance(current, str) or current == asked_for:
        return asked_for
    try:
        return validate_repo_id(current)
    except InvalidInput:
        return asked_for


def refresh_upstream_stats(depot: Depot, repo_type: str, name: str, fields: dict) -> None:
    """Record the upstream's current download and like counts for a repo already held."""
    from sqlalchemy import select

    from .models import Repo

    with depot.db.session(write=True) as s:
        repo = s.scalar(select(Repo).where(Repo.type == repo_type, Repo.name == name))
        if repo is not None:
            for key in ("downloads", "likes"):
                if fields.get(key) is not None:
                    setattr(repo, key, fields[key])


def _check_extends(depot: Depot, repo_type: str, name: str, commit: str,
                   files: list[UpstreamFile]) -> None:
    """A commit already registered keeps its file list; refuse to silently drop new files."""
    from sqlalchemy import select

    from .models import Repo, Revision

    with depot.db.session() as s:
        held = set(s.scalars(
            select(File.path).join(Revision).join(Repo).where(
                Repo.type == repo_type, Repo.name == name, Revision.commit == commit,
                Revision.complete.is_(True), Revision.partial.is_(False))
        ))
    if not held:
        return
    missing = sorted({f.path for f in files} - held)
    if missing:
        label = _repo_label(repo_type, name)
        raise Conflict(
            f"{label}@{commit[:12]} is already in the depot with {len(held)} files (an earlier "
            f"--include/--exclude pull), without {', '.join(missing[:3])}"
            f"{', ...' if len(missing) > 3 else ''}; run 'modeldepot rm {name}@{commit[:12]}'"
            f"{' --type ' + repo_type if repo_type != 'model' else ''} and pull again"
        )


def _record(f: UpstreamFile, d: Digest) -> FileRecord:
    verified = bool(f.sha256) or (f.lfs is False and bool(f.git_sha1))
    lfs = f.lfs if f.lfs is not None else is_lfs(f.path, d.size)
    return FileRecord.from_digest(f.path, d, lfs, "verified" if verified else "computed")

