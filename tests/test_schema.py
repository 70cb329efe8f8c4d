"""The registry schema: migrations agree with the models, one head, a checked-in snapshot,
self-upgrade on first use, and refusal of a database newer than the code."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from registry import dbtool
from registry.db import SCHEMA_HEAD, Database, head_revision, schema_status
from registry.errors import SchemaError

SNAPSHOT = Path(__file__).parent / "schema.sql"
REGENERATE = ".venv/bin/python -m registry.dbtool schema > tests/schema.sql"


def test_single_head():
    assert head_revision() == "0003"
    # the fast path of Database.ensure_schema relies on this constant
    assert head_revision() == SCHEMA_HEAD


def test_blank_database_upgrades_without_drift(tmp_path):
    engine = dbtool._migrated_engine(tmp_path / "blank.db")
    assert dbtool.drift(engine) == []


def test_schema_snapshot_matches(tmp_path):
    engine = dbtool._migrated_engine(tmp_path / "snap.db")
    current = dbtool.schema_sql(engine)
    assert current == SNAPSHOT.read_text(), (
        "the migrated schema differs from tests/schema.sql; if the change is intended, "
        f"regenerate the snapshot with: {REGENERATE}"
    )


def test_depot_upgrades_itself_on_first_use(settings):
    db = Database(settings)
    status = schema_status(db.engine)
    assert status["current"] == status["head"] == "0003"
    assert {"repos", "revisions", "refs", "files", "blobs", "artifacts", "events"} <= set(db.table_names())
    with db.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000


def test_database_newer_than_code_is_refused(settings, cli):
    Database(settings)
    engine = create_engine(settings.database_url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    engine.dispose()
    Database(settings, migrate=False).dispose()
    with pytest.raises(SchemaError, match="newer than this modeldepot knows"):
        Database(settings)
    r = cli("list")
    assert r.exit_code == 1
    assert r.output == (
        "Error: the registry database is at schema 9999, newer than this modeldepot knows "
        "(head 0003); upgrade modeldepot instead of using this version\n"
    )


def test_db_commands(cli):
    r = cli("db", "status", "--json")
    assert r.exit_code == 0
    import json

    status = json.loads(r.output)
    assert status["current"] is None and status["head"] == "0003"
    r = cli("db", "upgrade")
    assert r.output == "schema at 0003 (was empty)\n"
    r = cli("db", "upgrade")
    assert r.output == "schema at 0003\n"
    r = cli("db", "status")
    assert "schema: 0003 (head 0003): up to date" in r.output


def test_migrations_ship_in_the_installed_package(tmp_path):
    """A wheel (not the checkout) must carry migrations/ and migrate a fresh depot."""
    root = Path(__file__).resolve().parent.parent
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(wheels), str(root)],
        check=True, capture_output=True,
    )
    (wheel,) = wheels.glob("modeldepot-*.whl")
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target),
         str(wheel)],
        check=True, capture_output=True,
    )
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]);"
        "import registry, migrations;"
        "assert registry.__file__.startswith(sys.argv[1]), registry.__file__;"
        "assert migrations.__file__.startswith(sys.argv[1]), migrations.__file__;"
        "from registry.config import Settings; from registry.depot import Depot;"
        "d = Depot(Settings.from_env(home=sys.argv[2]));"
        "from registry.db import schema_status; print(schema_status(d.db.engine)['current'])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(target), str(tmp_path / "home")],
        check=True, capture_output=True, text=True, cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )
    assert out.stdout.strip() == "0003"
