"""Blob storage: one interface (registry/store/base.py), one module per backend.

``open_store(settings)`` picks the backend from ``MODELDEPOT_BLOB_URL``: unset means the local
directory under the depot home (registry/store/local.py, the layout it always had); ``s3://bucket/prefix``
means an S3-compatible object store (registry/store/s3.py) with a bounded local read-through cache
(registry/store/cache.py). ``copy_blobs`` (registry/store/copy.py) moves blobs between two stores.
"""

from __future__ import annotations

from ..config import Settings
from .base import (
    CHUNK,
    SHA1_RE,
    SHA256_RE,
    Digest,
    Hasher,
    check_relpath,
    etag_for,
    file_lock,
    git_blob_sha1,
    hash_file,
    in_git_dir,
    lfs_pointer,
    repo_folder_name,
)
from .copy import copy_blobs
from .local import Store


def open_store(settings: Settings) -> Store:
    if settings.blob_url:
        from .s3 import S3Store

        return S3Store(settings)
    return Store(settings)


__all__ = [
    "CHUNK", "SHA1_RE", "SHA256_RE", "Digest", "Hasher", "Store", "check_relpath", "copy_blobs",
    "etag_for", "file_lock", "git_blob_sha1", "hash_file", "in_git_dir", "lfs_pointer",
    "open_store", "repo_folder_name",
]
