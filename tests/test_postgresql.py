"""The registry on PostgreSQL: migrations, migrate-on-open from several hosts at once, locks and
writer leases that hold across hosts (two MODELDEPOT_HOME directories sharing one database)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from pg import hosts
from registry import dbtool, faults
from registry.config import Settings
from registry.db import SCHEMA_HEAD, Database, head_revision, schema_status
from registry.depot import Depot
from registry.errors import SchemaError
from registry.importer import import_dir

ROOT = Path(__file__).resolve().parent.parent


def test_blank_postgresql_upgrades_to_single_head_without_drift(pg_url, tmp_path):
    db = Database(Settings(home=tmp_path / "h", db_url=pg_url))
    status = schema_status(db.engine)
    assert status["current"] == status["head"] == head_revision() == SCHEMA_HEAD
    assert {"repos", "revisions", "refs", "files", "blobs", "artifacts", "events"} <= set(db.table_names())
    assert dbtool.drift(db.engine) == []
    with db.engine.connect() as conn:
        assert conn.dialect.name == "postgresql"


def test_postgresql_newer_than_code_is_refused(pg_url, tmp_path, cli, monkeypatch):
    Database(Settings(home=tmp_path / "h", db_url=pg_url))
    engine = create_engine(pg_url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    engine.dispose()
    with pytest.raises(SchemaError, match="newer than this modeldepot knows"):
        Database(Settings(home=tmp_path / "h2", db_url=pg_url))
    monkeypatch.setenv("MODELDEPOT_DB_URL", pg_url)
    r = cli("list")
    assert (r.exit_code, r.output) == (1, (
        "Error: the registry database is at schema 9999, newer than this modeldepot knows "
        f"(head {SCHEMA_HEAD}); upgrade modeldepot instead of using this version\n"))


def test_hosts_starting_at_once_on_a_blank_database_migrate_once(pg_url, tmp_path):
    """Four processes with four homes (four hosts) open one blank database at the same moment:
    the advisory lock lets one migrate; the others wait and find the schema at head."""
    env = dict(os.environ, MODELDEPOT_DB_URL=pg_url)
    procs = [subprocess.Popen([sys.executable, "-m", "cli", "--home", tmp_path / f"host{i}",
                               "list", "--json"], cwd=ROOT, env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for i in range(4)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [(p.returncode, out, err) for p, (out, err) in zip(procs, outs)] == [(0, "[]\n", "")] * 4
    engine = create_engine(pg_url)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all() == [SCHEMA_HEAD]
    engine.dispose()


def test_a_lock_held_on_one_host_blocks_the_other(pg_url, tmp_path):
    a, b = (Depot(s) for s in hosts(pg_url, tmp_path))
    got = threading.Event()

    def take_on_b():
        with b.blobs_lock():
            got.set()

    with a.blobs_lock():
        t = threading.Thread(target=take_on_b)
        t.start()
        assert not got.wait(1.0)  # host B waits while host A holds it
    assert got.wait(30)
    t.join()


def test_gc_on_one_host_keeps_what_a_writer_on_the_other_holds(pg_url, tmp_path, models):
    """Host B's import is inside its window (blobs stored in the shared store, nothing
    published) when host A runs gc: A must see B's lease and delete nothing of it."""
    sa, sb = hosts(pg_url, tmp_path)
    b = Depot(sb)
    for window in ("publish:start", "publish:after-snapshot"):
        runs: list = []
        with faults.hook(window, lambda: runs.append(Depot(sa).gc())):
            import_dir(b, models.get("classifier"), f"org/clf-{window.split(':')[1]}")
        assert len(runs) == 1 and runs[0]["blobs"] == 0, runs
        report = b.verify()
        assert report["problems"] == [] and report["ok"]


def test_a_dead_writers_advisory_lease_protects_nothing(pg_url, tmp_path, models):
    """kill -9 inside the window: the server drops the writer's locks with its connection, so
    gc on another host removes what it had stored."""
    sa, sb = hosts(pg_url, tmp_path)
    env = dict(os.environ, MODELDEPOT_DB_URL=pg_url, MODELDEPOT_FAILPOINT="publish:start")
    r = subprocess.run([sys.executable, "-m", "cli", "--home", sb.home, "import",
                        models.get("classifier"), "--repo", "org/clf"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 137, r.stderr
    stored = list(sb.blobs_dir.glob("*/*"))
    assert len(stored) == 7
    gc = Depot(sa).gc()
    assert gc["blobs"] == 7
    assert list(sb.blobs_dir.glob("*/*")) == []


def test_an_unreachable_registry_is_one_line(cli, monkeypatch):
    from pg import _free_port

    url = f"postgresql+psycopg://modeldepot@127.0.0.1:{_free_port()}/none"
    monkeypatch.setenv("MODELDEPOT_DB_URL", url)
    r = cli("list")
    assert r.exit_code == 1
    assert r.output.startswith(f"Error: cannot open the registry database {url}: connection failed")
    assert r.output.count("\n") == 1 and "Connection refused" in r.output
