"""Downloads answered by this depot's own server, counted per repo in the registry.

What counts follows the Hub's rule (hub-docs, "Models Download Stats"): every GET or HEAD of a
repo's *query files*, not of every file, so that one ``from_pretrained`` of a sharded model is
not counted once per shard. For models those are the top-level ``config.json``,
``config.yaml``, ``hyperparams.yaml`` and ``meta.yaml`` (the Hub's defaults; its per-library
overrides are not reproduced). For datasets the Hub counts ``load_dataset`` calls as it serves
files; the one file every such call reads is the top-level ``README.md``, so that is the query
file here. Only answered requests count (200, 206, 304), not errors.

Counting costs the request path one dict update: ``DownloadCounter`` keeps the counts in memory
and writes them in one transaction per interval (and at shutdown), one UPDATE per repo.
"""

from __future__ import annotations

import threading
from collections import Counter

from sqlalchemy import select, update

from .models import Repo, Revision

MODEL_QUERY_FILES = frozenset({"config.json", "config.yaml", "hyperparams.yaml", "meta.yaml"})
DATASET_QUERY_FILES = frozenset({"README.md"})
FLUSH_INTERVAL_S = 5.0


def counts_as_download(repo_type: str, path: str) -> bool:
    return path in (MODEL_QUERY_FILES if repo_type == "model" else DATASET_QUERY_FILES)


class DownloadCounter:
    """Counts in memory, written to ``repos.served_downloads`` in batches by ``flush``.

    Keyed by the served revision's row id (the file lookup has it at hand), credited to its repo.
    """

    def __init__(self, depot):
        self.depot = depot
        self._pending: Counter[int] = Counter()
        self._lock = threading.Lock()

    def hit(self, repo_type: str, revision_id: int, path: str) -> None:
        if counts_as_download(repo_type, path):
            with self._lock:
                self._pending[revision_id] += 1

    def flush(self) -> int:
        """Write what was counted since the last flush; returns the number of downloads written."""
        with self._lock:
            pending, self._pending = self._pending, Counter()
        if not pending:
            return 0
        by_repo: Counter[int] = Counter()
        try:
            with self.depot.db.session(write=True) as s:
                for rev_id, repo_id in s.execute(
                    select(Revision.id, Revision.repo_id).where(Revision.id.in_(list(pending)))
                ):
                    by_repo[repo_id] += pending[rev_id]
                for repo_id, n in sorted(by_repo.items()):
                    s.execute(update(Repo).where(Repo.id == repo_id)
                              .values(served_downloads=Repo.served_downloads + n))
        except BaseException:
            with self._lock:  # keep them for the next try rather than lose them
                self._pending.update(pending)
            raise
        return sum(by_repo.values())
