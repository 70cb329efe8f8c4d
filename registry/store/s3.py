"""The S3 backend: blobs in an S3-compatible object store (AWS S3, MinIO, Ceph RGW).

``MODELDEPOT_BLOB_URL=s3://bucket/prefix``; the endpoint, region and credentials come from the
standard AWS variables (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
``AWS_DEFAULT_REGION``, profiles...), read by boto3 itself. Objects are named as the local layout
names files: ``<prefix>/blobs/sha256/ab/<sha256>``.

Nothing half-written is ever visible under a final key: a blob is hashed and verified in the
host's ``tmp/`` first (``Store.adopt``), then uploaded; a single PUT is atomic, and a multipart
upload (large files) is invisible until it is completed; boto3's transfer manager aborts it when
a part fails. Re-uploading a key is harmless (same key, same bytes), so two replicas storing the
same blob at once both succeed.

Each host keeps the HF-cache view and a bounded read-through cache of blobs
(registry/store/cache.py) in its home: views are built where a revision is published and on
demand elsewhere (``ensure_view``).
"""

from __future__ import annotations

import hashlib
from functools import cached_property
from pathlib import Path
from typing import Iterable, Iterator
from urllib.parse import urlparse

from ..config import Settings
from ..errors import IntegrityError, InvalidInput, Unavailable
from .base import CHUNK, SHA256_RE, hash_file
from .cache import BlobCache
from .local import Store

MULTIPART_THRESHOLD = 64 * 1024 * 1024


def parse_blob_url(url: str) -> tuple[str, str]:
    u = urlparse(url)
    if u.scheme != "s3" or not u.netloc:
        raise InvalidInput(f"MODELDEPOT_BLOB_URL must look like s3://bucket/prefix, not {url!r}")
    prefix = u.path.strip("/")
    return u.netloc, (prefix + "/" if prefix else "")


class S3Store(Store):
    backend = "s3"

    def __init__(self, settings: Settings):
        super().__init__(settings)
        self.bucket, self.prefix = parse_blob_url(settings.blob_url)
        self.cache = BlobCache(self.blobs, settings.blob_cache_bytes,
                               self.locks / "blob-cache.lock")

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}".rstrip("/")

    @cached_property
    def client(self):
        import boto3
        from botocore.config import Config

        # Checksums only where S3 requires them: S3-compatible stores differ in what trailing
        # checksums they accept, and we verify sha256 ourselves.
        config = Config(retries={"max_attempts": 3, "mode": "standard"},
                        connect_timeout=10, read_timeout=60,
                        request_checksum_calculation="when_required",
                        response_checksum_validation="when_required")
        return boto3.session.Session().client("s3", config=config)

    def key(self, sha256: str) -> str:
        if not SHA256_RE.match(sha256):
            raise InvalidInput(f"not a sha256: {sha256!r}")
        return f"{self.prefix}blobs/sha256/{sha256[:2]}/{sha256}"

    def _unavailable(self, what: str, e: Exception) -> Unavailable:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        hint = ("nothing was registered, run the command again" if what.startswith("upload")
                else "try again")
        return Unavailable(f"object store {self.url}: {what} failed ({reason}); {hint}")

    def _object_size(self, sha256: str) -> int | None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            head = self.client.head_object(Bucket=self.bucket, Key=self.key(sha256))
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise self._unavailable(f"looking up blob {sha256[:12]}", e) from None
        except BotoCoreError as e:
            raise self._unavailable(f"looking up blob {sha256[:12]}", e) from None
        return int(head["ContentLength"])

    # -- blobs -------------------------------------------------------------------------------

    def has_blob(self, sha256: str, size: int | None = None) -> bool:
        # The bucket is the truth: a cached copy may outlive an object another host's gc removed.
        got = self._object_size(sha256)
        return got is not None and (size is None or got == size)

    def _link_into_place(self, tmp: Path, final: Path) -> None:
        """Called by ``adopt`` once ``tmp`` is verified: upload it, then keep it in the cache."""
        sha256 = final.name
        size = tmp.stat().st_size
        if self._object_size(sha256) != size:
            self._upload(tmp, sha256)
        super()._link_into_place(tmp, final)
        self.cache.evict(keep=final)

    def _upload(self, path: Path, sha256: str) -> None:
        from boto3.exceptions import S3UploadFailedError
        from boto3.s3.transfer import TransferConfig
        from botocore.exceptions import BotoCoreError, ClientError

        config = TransferConfig(multipart_threshold=MULTIPART_THRESHOLD,
                                multipart_chunksize=MULTIPART_THRESHOLD, use_threads=True)
        try:
            self.client.upload_file(str(path), self.bucket, self.key(sha256), Config=config)
        except (S3UploadFailedError, BotoCoreError, ClientError) as e:
            raise self._unavailable(f"upload of blob {sha256[:12]}", e) from None

    def local_blob(self, sha256: str) -> Path:
        """The cached copy, filled from the bucket (and verified) when absent."""
        path = self.blob_path(sha256)
        if path.exists():
            self.cache.touch(path)
            return path
        from botocore.exceptions import BotoCoreError, ClientError

        tmp = self.tmp_path(f"fill-{sha256[:16]}")
        try:
            try:
                self.client.download_file(self.bucket, self.key(sha256), str(tmp))
            except ClientError as e:
                if e.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                    raise IntegrityError(f"blob {sha256} is missing from the object store "
                                         f"{self.url}; run 'modeldepot verify'") from None
                raise self._unavailable(f"download of blob {sha256[:12]}", e) from None
            except BotoCoreError as e:
                raise self._unavailable(f"download of blob {sha256[:12]}", e) from None
            # Verified on fill: only bytes whose sha256 matches their name enter the cache.
            if hash_file(tmp).sha256 != sha256:
                raise IntegrityError(f"blob {sha256} in the object store {self.url} is corrupt; "
                                     "run 'modeldepot verify'")
            Store._link_into_place(self, tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        self.cache.evict(keep=path)
        return path

    def check_blob(self, sha256: str) -> str | None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            obj = self.client.get_object(Bucket=self.bucket, Key=self.key(sha256))
            h = hashlib.sha256()
            for chunk in obj["Body"].iter_chunks(CHUNK):
                h.update(chunk)
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return "missing"
            raise self._unavailable(f"reading blob {sha256[:12]}", e) from None
        except BotoCoreError as e:
            raise self._unavailable(f"reading blob {sha256[:12]}", e) from None
        return None if h.hexdigest() == sha256 else "corrupt"

    def iter_blob_sizes(self) -> Iterator[tuple[str, int]]:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=f"{self.prefix}blobs/sha256/")
            for page in pages:
                for obj in page.get("Contents", []):
                    name = obj["Key"].rsplit("/", 1)[-1]
                    if SHA256_RE.match(name):
                        yield name, int(obj["Size"])
        except (BotoCoreError, ClientError) as e:
            raise self._unavailable("listing blobs", e) from None

    def iter_blobs(self):
        raise NotImplementedError("S3Store has no blob paths; use iter_blob_sizes")

    def remove_blob(self, sha256: str) -> int:
        from botocore.exceptions import BotoCoreError, ClientError

        size = self._object_size(sha256)
        if size is not None:
            try:
                self.client.delete_object(Bucket=self.bucket, Key=self.key(sha256))
            except (BotoCoreError, ClientError) as e:
                raise self._unavailable(f"deleting blob {sha256[:12]}", e) from None
        cached = self.blob_path(sha256)
        cached.unlink(missing_ok=True)
        return size or 0

    def presigned_url(self, sha256: str) -> str:
        return self.client.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": self.key(sha256)},
            ExpiresIn=self.settings.presign_seconds)

    def open_range(self, sha256: str, start: int, end: int):
        """A streaming body of bytes ``start..end`` (inclusive) of the object."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            obj = self.client.get_object(Bucket=self.bucket, Key=self.key(sha256),
                                         Range=f"bytes={start}-{end}")
        except (BotoCoreError, ClientError) as e:
            raise self._unavailable(f"download of blob {sha256[:12]}", e) from None
        return obj["Body"]

    # -- the HF-cache view of this host ------------------------------------------------------

    def publish_snapshot(self, repo_type: str, name: str, commit: str,
                         files: Iterable[tuple[str, str, str, bool]]) -> Path:
        files = list(files)
        for _path, sha256, _git, _lfs in files:
            self.local_blob(sha256)  # a blob another host stored is not cached here yet
        return super().publish_snapshot(repo_type, name, commit, files)

    def has_view(self, repo_type: str, name: str, commit: str) -> bool:
        return (self.repo_dir(repo_type, name) / "snapshots" / commit).is_dir()
