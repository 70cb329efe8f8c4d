"""The registry on PostgreSQL: migrations, migrate-on-open from several hosts at once, locks and
writer leases that hold across hosts (two MODELDEPOT_HOME directories sharing one database)."""

from __future__ import annotations

import pytest
from sqlalchemy import create_engine, text

from registry import dbtool
from registry.config import Settings
from registry.db import SCHEMA_HEAD, Database, head_revision, schema_status
from registry.errors import SchemaError


def test_blank_postgresql_upgrades_to_single_head_without_drift(pg_url, tmp_path):
    db = Database(Settings(home=tmp_path / "h", db_url=pg_url))
    status = schema_status(db.engine)
    assert status["current"] == status["head"] == head_revision() == SCHEMA_HEAD
    assert {"repos", "revisions", "refs", "files", "blobs", "artifacts", "events"} <= set(db.table_names())
    assert dbtool.drift(db.engine) == []
    with db.engine.connect() as conn:
        assert conn.dialect.name == "postgresql"
