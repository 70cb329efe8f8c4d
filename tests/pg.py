"""A throwaway PostgreSQL for the test session, and a fresh database per test.

``MODELDEPOT_TEST_PG_URL`` (a server URL, e.g. ``postgresql+psycopg://u:p@127.0.0.1:5432/postgres``)
points the tests at an existing server; otherwise one cluster is started from the Debian package
(``/usr/lib/postgresql/15/bin``) in a temp dir on a free loopback port. PostgreSQL refuses to run
as root, so under root the cluster belongs to the ``postgres`` system user. In CI (``CI=true``) a
missing server fails the tests that need it; elsewhere they are skipped with the reason.
"""

from __future__ import annotations

import atexit
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path

import pytest

PG_BIN = Path(os.environ.get("MODELDEPOT_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))
BACKENDS = ("sqlite", "postgresql")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_owner(user: str | None) -> list[str]:
    return ["runuser", "-u", user, "--"] if user else []


class PgCluster:
    """A running server and how to make databases on it."""

    def __init__(self, server_url: str, stop=None):
        self.server_url = server_url  # points at the maintenance database
        self._stop = stop
        self._template: str | None = None

    def url_for(self, dbname: str) -> str:
        base, _, _ = self.server_url.rpartition("/")
        return f"{base}/{dbname}"

    def _admin(self):
        from sqlalchemy import create_engine
        from sqlalchemy.pool import NullPool

        return create_engine(self.server_url, isolation_level="AUTOCOMMIT", poolclass=NullPool)

    def create_database(self) -> str:
        """A fresh, empty database; its URL."""
        from sqlalchemy import text

        name = f"md_{uuid.uuid4().hex[:16]}"
        engine = self._admin()
        try:
            with engine.connect() as conn:
                conn.execute(text(f'CREATE DATABASE "{name}" TEMPLATE template0'))
        finally:
            engine.dispose()
        return self.url_for(name)

    def drop_database(self, url: str) -> None:
        from sqlalchemy import text

        from registry import db as dbmod

        dbmod.dispose_engines(url)
        name = url.rpartition("/")[2]
        engine = self._admin()
        try:
            with engine.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        finally:
            engine.dispose()

    def stop(self) -> None:
        if self._stop:
            self._stop()


def _start_cluster(tmp: Path) -> PgCluster:
    user = None
    if os.geteuid() == 0:
        user = "postgres"
        pwd.getpwnam(user)  # KeyError when the package's user is missing
    data = tmp / "data"
    data.mkdir(parents=True)
    if user:
        shutil.chown(tmp, user)
        shutil.chown(data, user)
    subprocess.run(
        [*_as_owner(user), str(PG_BIN / "initdb"), "-D", str(data), "-U", "modeldepot",
         "--auth=trust", "-E", "UTF8", "--locale=C.UTF-8"],
        check=True, capture_output=True, text=True,
    )
    port = _free_port()
    log = tmp / "server.log"
    if user:
        log.touch()
        shutil.chown(log, user)
    opts = (f"-c listen_addresses=127.0.0.1 -p {port} -c fsync=off -c synchronous_commit=off "
            f"-c full_page_writes=off -c unix_socket_directories={tmp} -c max_connections=200")
    subprocess.run(
        [*_as_owner(user), str(PG_BIN / "pg_ctl"), "-D", str(data), "-l", str(log), "-w",
         "-t", "60", "-o", opts, "start"],
        check=True, capture_output=True, text=True,
    )

    def stop() -> None:
        subprocess.run([*_as_owner(user), str(PG_BIN / "pg_ctl"), "-D", str(data), "-m",
                        "immediate", "-w", "stop"], capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)

    return PgCluster(f"postgresql+psycopg://modeldepot@127.0.0.1:{port}/postgres", stop)


_cluster: PgCluster | None = None
_failure: str | None = None


def cluster() -> PgCluster:
    """The session's server, started on first use; fails (CI) or skips (elsewhere) when none."""
    global _cluster, _failure
    if _cluster is None and _failure is None:
        given = os.environ.get("MODELDEPOT_TEST_PG_URL")
        try:
            if given:
                _cluster = PgCluster(given)
            elif not (PG_BIN / "initdb").exists():
                _failure = f"PostgreSQL is not installed ({PG_BIN / 'initdb'} missing)"
            else:
                _cluster = _start_cluster(Path(tempfile.mkdtemp(prefix="md-pg-")))
                atexit.register(shutdown)  # also when the session ends without its fixtures
        except (subprocess.CalledProcessError, KeyError, OSError) as e:
            detail = getattr(e, "stderr", "") or str(e)
            _failure = f"could not start PostgreSQL: {detail.strip()}"
    if _cluster is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{_failure} (CI=true: a missing PostgreSQL is a failure)")
        pytest.skip(_failure)
    return _cluster


def shutdown() -> None:
    global _cluster
    if _cluster is not None:
        _cluster.stop()
        _cluster = None


@pytest.fixture
def pg_url():
    """A fresh, empty PostgreSQL database for one test (dropped afterwards)."""
    c = cluster()
    url = c.create_database()
    yield url
    c.drop_database(url)


@pytest.fixture(params=BACKENDS)
def backend(request, monkeypatch) -> str:
    """Run a test once per registry backend; on "postgresql" MODELDEPOT_DB_URL points at a fresh
    database (the ``settings``/``depot``/``cli`` fixtures and subprocesses read it)."""
    if request.param == "postgresql":
        url = request.getfixturevalue("pg_url")
        monkeypatch.setenv("MODELDEPOT_DB_URL", url)
    return request.param


def hosts(pg_url: str, root: Path, n: int = 2):
    """Settings of ``n`` "hosts": their own MODELDEPOT_HOME each, one PostgreSQL registry, and
    one blob directory (host 0's, linked from the others: a shared blob store stand-in)."""
    from registry.config import Settings

    out = []
    for i in range(n):
        s = Settings.from_env(home=root / f"host{i}", db_url=pg_url)
        if i:
            s.blobs_dir.parent.parent.mkdir(parents=True, exist_ok=True)
            s.blobs_dir.parent.symlink_to(out[0].blobs_dir.parent, target_is_directory=True)
        else:
            s.blobs_dir.mkdir(parents=True, exist_ok=True)
        out.append(s)
    return out
