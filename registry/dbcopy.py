"""Moving a depot between registries: ``modeldepot db copy --to URL`` (SQLite <-> PostgreSQL).

Two halves, in this order, so the target never references a blob it does not have:

1. ``copy_blobs(src, dst)``: every blob the source registry lists, into the target's store
   (verified on the way, held by a writer lease until the registry half has run). Today both
   depots use the local store and, sharing one home, this is a no-op check; the blob-store
   package (S3) plugs its copy in here.
2. ``copy_registry(src, dst)``: every table's rows, parents before children, primary keys kept
   (so foreign keys hold without remapping), rows already in the target skipped: an interrupted
   copy is resumed by running it again.

Then the copy is verified: per-table row counts and the inventory (every blob, every revision)
equal on both sides. Writers should be stopped during a copy; a re-run copies what they added.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from sqlalchemy import Table, func, insert, select

from .depot import Depot
from .errors import Conflict, IntegrityError, InvalidInput
from .faults import failpoint
from .models import Base, Blob

BATCH = 1000


@dataclass
class CopyReport:
    source: str
    target: str
    copied: dict[str, int] = field(default_factory=dict)   # rows inserted now, per table
    rows: dict[str, int] = field(default_factory=dict)     # rows on both sides after the copy
    blobs_copied: int = 0

    def to_json(self) -> dict:
        return {"source": self.source, "target": self.target, "copied": self.copied,
                "rows": self.rows, "blobs_copied": self.blobs_copied, "verified": True}


def tables() -> list[Table]:
    """Every registry table, parents before children (the order inserts must follow)."""
    return list(Base.metadata.sorted_tables)


def copy_blobs(src: Depot, dst: Depot, lease=None) -> int:
    """Every blob the source registry lists into the target's store; how many were copied.

    Works between any two blob stores (registry/store: local directory, S3): the bytes are read
    through the source's local file (its read-through cache on S3) and ingested, verified, by
    the target. ``lease`` (the target's) keeps them from ``gc`` until registered.
    """
    with src.db.session() as s:
        wanted = list(s.execute(select(Blob.sha256, Blob.size).order_by(Blob.sha256)))
    copied = 0
    for sha, size in wanted:
        if lease is not None:
            lease.hold_blobs([sha])
        if dst.store.has_blob(sha, size):
            continue
        if not src.store.has_blob(sha, size):
            raise IntegrityError(f"blob {sha} is missing from the source store; run 'modeldepot "
                                 "verify' on the source first")
        path = src.store.local_blob(sha)  # on S3: fetched into this host's cache, verified
        got = dst.store.ingest_file(path, label=f"copy-{sha[:12]}", lease=lease)
        if got.sha256 != sha:
            raise IntegrityError(f"blob {sha} in the source store hashes to {got.sha256}; run "
                                 "'modeldepot verify' on the source first")
        copied += 1
    return copied


def copy_registry(src: Depot, dst: Depot, progress: Callable[[str, int], None] | None = None
                  ) -> dict[str, int]:
    """Rows of every table from ``src`` to ``dst`` that ``dst`` does not have yet (by primary
    key), one transaction per table (what a re-run resumes from); rows inserted per table."""
    copied: dict[str, int] = {}
    with src.db.engine.connect() as sconn:
        for table in tables():
            with dst.db.session(write=True) as ds:
                copied[table.name] = _copy_table(sconn, ds, table)
                ds.flush()
                dst.db.after_bulk_insert(ds, [table])
            failpoint(f"dbcopy:after-{table.name}")
            if progress:
                progress(table.name, copied[table.name])
    return copied


def _copy_table(sconn, ds, table: Table) -> int:
    pk = list(table.primary_key.columns)
    have = {tuple(r) for r in ds.execute(select(*pk))}
    n = 0
    batch: list[dict] = []
    for row in sconn.execute(select(table).order_by(*pk)).mappings():
        if tuple(row[c.name] for c in pk) in have:
            continue
        batch.append(dict(row))
        if len(batch) >= BATCH:
            ds.execute(insert(table), batch)
            n, batch = n + len(batch), []
    if batch:
        ds.execute(insert(table), batch)
        n += len(batch)
    return n


def row_counts(depot: Depot) -> dict[str, int]:
    with depot.db.session() as s:
        return {t.name: s.scalar(select(func.count()).select_from(t)) for t in tables()}


def _comparable(inventory: dict) -> dict:
    return {k: v for k, v in inventory.items() if k != "depot_id"}


def copy_depot(src: Depot, dst: Depot, progress=None) -> CopyReport:
    """Blobs, then registry; then verify that both sides hold the same (resumable: re-run)."""
    if src.db.url == dst.db.url:
        raise InvalidInput("the target registry is the source registry; nothing to copy")
    report = CopyReport(src.db.engine.url.render_as_string(hide_password=True),
                        dst.db.engine.url.render_as_string(hide_password=True))
    with dst.writing() as lease:
        report.blobs_copied = copy_blobs(src, dst, lease)
        report.copied = copy_registry(src, dst, progress)
    dst.db.analyze()  # a bulk load leaves PostgreSQL without statistics until autovacuum runs
    src_rows, dst_rows = row_counts(src), row_counts(dst)
    if src_rows != dst_rows:
        extra = {t: (src_rows[t], dst_rows[t]) for t in src_rows if src_rows[t] != dst_rows[t]}
        detail = ", ".join(f"{t} {a} vs {b}" for t, (a, b) in extra.items())
        raise Conflict(f"the target registry already held other rows (source vs target: "
                       f"{detail}); copy into an empty database")
    if _comparable(src.inventory()) != _comparable(dst.inventory()):
        raise Conflict("the target registry's inventory differs from the source's after the "
                       "copy; copy into an empty database")
    report.rows = dst_rows
    return report
