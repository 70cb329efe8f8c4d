"""The access audit: who read what, with bytes sent, and every refusal.

The server appends records to an in-memory list (no I/O on the request path) and a background
task writes them in one multi-row INSERT every ``flush_s`` seconds, or sooner when many are
waiting; the last ones are written when the server stops. Separate from the HTTP request log:
this is the registry's record of access, queried with ``modeldepot log --access``.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timezone

from sqlalchemy import insert, select

from ..errors import InvalidInput
from ..models import AccessRecord, utcnow
from ..units import iso_z
from .tokens import DURATION_RE, parse_duration

log = logging.getLogger("modeldepot.audit")

FLUSH_AT = 500  # records waiting that wake the writer early
MAX_PENDING = 100_000  # beyond this (database stuck), the oldest records are dropped and counted
COLUMNS = ("at", "token", "client", "method", "kind", "repo_type", "repo", "commit", "path",
           "status", "bytes_sent", "outcome", "reason")


class AuditWriter:
    def __init__(self, depot, flush_s: float = 0.5):
        self.depot = depot
        self.flush_s = flush_s
        self._pending: list[dict] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self.dropped = 0

    def add(self, record: dict) -> None:
        record.setdefault("at", utcnow())
        self._pending.append(record)
        if len(self._pending) > MAX_PENDING:
            del self._pending[: len(self._pending) - MAX_PENDING]
            self.dropped += 1
        if len(self._pending) >= FLUSH_AT:
            self._wake.set()

    def _write(self, batch: list[dict]) -> None:
        rows = [{c: r.get(c) for c in COLUMNS} for r in batch]
        for row in rows:
            row["bytes_sent"] = row["bytes_sent"] or 0
            for key, size in (("path", 1000), ("repo", 200), ("reason", 200), ("client", 64)):
                if row[key] is not None:
                    row[key] = str(row[key])[:size]
        with self.depot.db.session(write=True) as s:
            s.execute(insert(AccessRecord), rows)

    async def flush(self) -> None:
        if not self._pending:
            return
        batch, self._pending = self._pending, []
        try:
            await asyncio.to_thread(self._write, batch)
        except Exception:
            # keep them for the next round (the database may be busy); never fail a request
            log.exception("writing %d access records failed; will retry", len(batch))
            self._pending[:0] = batch

    async def _run(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), self.flush_s)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()
            await self.flush()

    async def start(self, _app=None) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self, _app=None) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        await self.flush()


def _since(text: str) -> datetime:
    """``--since``: a duration back from now (``2h``, ``7d``) or an ISO date/time (UTC)."""
    if DURATION_RE.match(text.strip().lower()):
        return utcnow() - parse_duration(text)
    try:
        value = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise InvalidInput(f"invalid --since {text!r}: use a duration like 2h or 7d, or a date "
                           "like 2026-12-01 or 2026-12-01T08:00:00Z") from None
    if value.tzinfo is not None:
        value = value.astimezone(timezone.utc).replace(tzinfo=None)
    return value


def records(depot, repo: str | None = None, token: str | None = None, since: str | None = None,
            limit: int | None = None) -> list[dict]:
    """Access records, oldest first (the newest ``limit`` when a limit is given)."""
    q = select(AccessRecord)
    if repo:
        if repo.startswith("datasets/"):
            q = q.where(AccessRecord.repo_type == "dataset", AccessRecord.repo == repo[9:])
        else:
            q = q.where(AccessRecord.repo == repo)
    if token:
        q = q.where(AccessRecord.token.is_(None) if token == "anonymous"
                    else AccessRecord.token == token)
    if since:
        q = q.where(AccessRecord.at >= _since(since))
    q = q.order_by(AccessRecord.id.desc())
    if limit is not None:
        q = q.limit(limit)
    with depot.db.session() as s:
        rows = list(s.scalars(q))
    rows.reverse()
    return [{
        "at": iso_z(r.at), "token": r.token or "anonymous", "client": r.client,
        "method": r.method, "kind": r.kind, "repo_type": r.repo_type, "repo": r.repo,
        "commit": r.commit, "path": r.path, "status": r.status, "bytes": r.bytes_sent,
        "outcome": r.outcome, "reason": r.reason,
    } for r in rows]
