"""Engine and session factory, SQLite pragmas, and migrate-on-open.

This is the only module that knows about the database engine (SQLite or PostgreSQL); everything
else speaks plain SQLAlchemy so that the same code runs against both. On PostgreSQL the
migrate-on-open runs under an advisory lock (several hosts may start at once); on SQLite under a
file lock next to the database.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from sqlalchemy import create_engine, event, inspect, text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from .config import Settings
from .errors import InvalidInput, SchemaError, Unavailable

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"
# The newest migration. Checked against migrations/ by tests/test_schema.py; knowing it here lets
# an up-to-date depot open without importing Alembic (start-up time of every command).
SCHEMA_HEAD = "0004"
SQLITE_BUSY_TIMEOUT_MS = 30_000

_engines: dict[str, Engine] = {}
_engines_lock = threading.Lock()


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


def _sqlite_begin(conn: Connection) -> None:
    # pysqlite's default deferred BEGIN makes a reader that later writes fail with
    # "database is locked" without waiting; BEGIN IMMEDIATE takes the write lock up front and
    # honours busy_timeout, which is what several processes sharing one depot need.
    conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.info.get("write") else "BEGIN")


def is_sqlite(url: str) -> bool:
    return url.startswith("sqlite")


def is_postgresql(url: str) -> bool:
    return url.startswith("postgresql")


def check_registry_url(url: str) -> None:
    """Refuse a database URL modeldepot does not run on, before connecting to it."""
    if not (is_sqlite(url) or is_postgresql(url)):
        raise InvalidInput(f"unsupported registry URL {url!r}: use sqlite:///PATH or "
                           "postgresql+psycopg://USER@HOST/DB")


# The advisory-lock key of migrate-on-open (any fixed 64-bit number; see registry/locks.py).
MIGRATE_LOCK_NAME = "migrate"


def make_engine(url: str) -> Engine:
    if is_sqlite(url):
        engine = create_engine(
            url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000, "isolation_level": None}
        )
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "begin", _sqlite_begin)
    else:
        engine = create_engine(url, pool_pre_ping=True)
    return engine


def alembic_config(url: str, connection: Connection | None = None):
    """An Alembic config built in code from the package location (works from a wheel)."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(alembic_config("sqlite://"))
    heads = script.get_heads()
    if len(heads) != 1:
        raise SchemaError(f"migrations have {len(heads)} heads; expected exactly one")
    return heads[0]


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def known_revisions() -> set[str]:
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(alembic_config("sqlite://"))
    return {s.revision for s in script.walk_revisions()}


def schema_status(engine: Engine) -> dict:
    current = current_revision(engine)
    head = head_revision()
    return {
        "current": current,
        "head": head,
        "up_to_date": current == head,
        "newer_than_code": current is not None and current not in known_revisions(),
    }


def upgrade(engine: Engine, url: str) -> None:
    from alembic import command

    status = schema_status(engine)
    if status["newer_than_code"]:
        raise SchemaError(
            f"the registry database is at schema {status['current']}, newer than this modeldepot "
            f"knows (head {status['head']}); upgrade modeldepot instead of using this version"
        )
    if status["up_to_date"]:
        return
    with engine.begin() as conn:
        command.upgrade(alembic_config(url, conn), "head")


class Database:
    """The registry database of one depot: an engine plus sessions, migrated on first use."""

    def __init__(self, settings: Settings, migrate: bool = True):
        self.settings = settings
        self.url = settings.database_url
        check_registry_url(self.url)
        if self.url.startswith("sqlite:///"):
            Path(self.url[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
        with _engines_lock:
            engine = _engines.get(self.url)
            if engine is None:
                engine = _engines[self.url] = make_engine(self.url)
        self.engine = engine
        self._sessions = sessionmaker(engine, expire_on_commit=False)
        if migrate:
            self.ensure_schema()

    @property
    def is_postgresql(self) -> bool:
        return is_postgresql(self.url)

    def ensure_schema(self) -> None:
        """Upgrade to head under a lock all hosts share; refuse a database newer than the code."""
        from .locks import lock_for

        if self._stored_version() == SCHEMA_HEAD:
            return
        try:
            status = schema_status(self.engine)
            if status["up_to_date"]:
                return
            with lock_for(self.settings, self)(MIGRATE_LOCK_NAME):
                upgrade(self.engine, self.url)
        except OperationalError as e:  # the server is down, refuses us, or the database is gone
            reason = str(e.orig or e).strip().splitlines()[0]
            raise Unavailable(f"cannot open the registry database "
                              f"{self.engine.url.render_as_string(hide_password=True)}: {reason}"
                              ) from None

    def _stored_version(self) -> str | None:
        try:
            with self.engine.connect() as conn:
                return conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar()
        except Exception:  # no table yet (blank database): let Alembic decide
            return None

    @contextmanager
    def session(self, write: bool = False) -> Iterator[Session]:
        """A session in one transaction; committed on success, rolled back on error."""
        with self.engine.connect() as conn:
            conn.info["write"] = write
            try:
                with Session(bind=conn, expire_on_commit=False) as session:
                    with session.begin():
                        yield session
            finally:
                conn.info["write"] = False

    def after_bulk_insert(self, session: Session, tables) -> None:
        """After rows were inserted with their primary keys given (``db copy``): move
        PostgreSQL's id sequences past them. SQLite picks max(rowid) + 1 by itself."""
        if not self.is_postgresql:
            return
        for table in tables:
            for col in table.primary_key.columns:
                if col.autoincrement is True or (col.autoincrement == "auto"
                                                 and col.type.python_type is int):
                    session.execute(text(
                        f"SELECT setval(pg_get_serial_sequence('{table.name}', '{col.name}'), "
                        f"COALESCE((SELECT MAX({col.name}) FROM {table.name}), 0) + 1, false)"))

    def analyze(self) -> None:
        """Refresh the planner's statistics (after a bulk load; both engines know ANALYZE)."""
        with self.engine.begin() as conn:
            conn.execute(text("ANALYZE"))

    def table_names(self) -> list[str]:
        return inspect(self.engine).get_table_names()

    def dispose(self) -> None:
        with _engines_lock:
            _engines.pop(self.url, None)
        self.engine.dispose()


def dispose_engines(url: str) -> None:
    """Close this process's pooled connections to ``url`` (before dropping a database)."""
    with _engines_lock:
        engine = _engines.pop(url, None)
    if engine is not None:
        engine.dispose()
