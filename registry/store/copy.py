"""Copy blobs from one store to another (the blob half of moving a depot, e.g. local -> S3)."""

from __future__ import annotations

from typing import Callable, Iterable


def copy_blobs(src, dst, shas: Iterable[str | tuple[str, int]],
               progress: Callable[[str, int, bool], None] | None = None) -> dict:
    """Copy every blob in ``shas`` (sha256, or (sha256, size)) from ``src`` to ``dst``.

    Resumable: a blob the destination already holds (with the right size) is skipped. Every
    copied blob is re-hashed on the way in (``dst.ingest_file`` verifies it against its sha256
    before it is visible there). ``progress(sha, size, copied)`` is called after each blob.
    """
    copied = skipped = nbytes = 0
    for item in shas:
        sha, size = item if isinstance(item, tuple) else (item, None)
        if dst.has_blob(sha, size):
            skipped += 1
            if progress:
                progress(sha, size or 0, False)
            continue
        path = src.local_blob(sha)
        digest = dst.ingest_file(path, label=f"blob {sha}", expect_sha256=sha)
        copied += 1
        nbytes += digest.size
        if progress:
            progress(sha, digest.size, True)
    return {"copied": copied, "skipped": skipped, "bytes": nbytes}
