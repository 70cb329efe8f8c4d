"""The bounded local read-through cache of blobs on a host whose blobs live in an object store.

The cache is the directory the local backend uses for its blobs (``<home>/blobs/sha256/ab/<sha>``),
so everything that wants a file on disk (``run``, the inference API, the HF-cache view, bundle
writing, sendfile in ``serve``) reads the same kind of path on both backends. Files enter only
through ``Store.adopt`` (hashed and verified before they are linked in), so a cached file is
always a verified copy of its object.

Eviction is least recently used by mtime (``touch`` on every use; atime is unreliable under
``relatime``) down to the size cap. A file that the HF-cache view links to (hardlink count above
one) is pinned: evicting it would free nothing (the view's link keeps the bytes) and would make
the view's size invisible to the cap. So views pin what they show, and the cap bounds what is
cached beyond them; ``rm`` and ``gc`` remove views, which unpins their blobs.
"""

from __future__ import annotations

import os
from pathlib import Path

from .base import SHA256_RE, file_lock


class BlobCache:
    def __init__(self, root: Path, cap_bytes: int, lock_path: Path):
        self.root = root
        self.cap = cap_bytes
        self.lock_path = lock_path

    @staticmethod
    def touch(path: Path) -> None:
        try:
            os.utime(path)
        except OSError:
            pass  # evicted meanwhile, or not ours to touch: recency is a hint

    def entries(self) -> list[tuple[float, int, int, Path]]:
        """(mtime, size, link count, path) of every cached blob."""
        out = []
        if not self.root.is_dir():
            return out
        for sub in self.root.iterdir():
            if not sub.is_dir():
                continue
            for p in sub.iterdir():
                if SHA256_RE.match(p.name):
                    try:
                        st = p.stat()
                    except FileNotFoundError:
                        continue
                    out.append((st.st_mtime, st.st_size, st.st_nlink, p))
        return out

    def usage(self) -> dict:
        entries = self.entries()
        return {"bytes": sum(e[1] for e in entries),
                "pinned_bytes": sum(e[1] for e in entries if e[2] > 1),
                "files": len(entries), "cap": self.cap}

    def evict(self, keep: Path | None = None) -> int:
        """Remove the least recently used unpinned blobs until the cache fits its cap; returns
        the bytes freed. ``keep`` (the file just filled for a reader) is never chosen."""
        with file_lock(self.lock_path):
            entries = self.entries()
            total = sum(e[1] for e in entries)
            freed = 0
            for _mtime, size, nlink, path in sorted(entries, key=lambda e: e[0]):
                if total <= self.cap:
                    break
                if nlink > 1 or path == keep:
                    continue
                path.unlink(missing_ok=True)
                total -= size
                freed += size
            return freed
