"""Developer tool for the registry schema.

    python -m registry.dbtool revision "what changed"   # autogenerate a migration from models.py
    python -m registry.dbtool schema                    # the migrated schema as SQL (snapshot)
    python -m registry.dbtool check                     # exit 1 if models and migrations drift
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path


def _migrated_engine(path: Path):
    from alembic import command
    from sqlalchemy import create_engine

    from .db import alembic_config

    url = f"sqlite:///{path}"
    engine = create_engine(url)
    with engine.begin() as conn:
        command.upgrade(alembic_config(url, conn), "head")
    return engine


def schema_sql(engine) -> str:
    """Every table and index as SQLite reports it, in a stable order."""
    with engine.connect() as conn:
        rows = conn.exec_driver_sql(
            "SELECT type, name, sql FROM sqlite_master WHERE sql IS NOT NULL "
            "AND name NOT LIKE 'sqlite_%' ORDER BY type DESC, name"
        ).fetchall()
    return "\n".join(f"{sql.strip()};" for _type, _name, sql in rows) + "\n"


def drift(engine) -> list:
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from .models import Base

    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True, "render_as_batch": True})
        return compare_metadata(ctx, Base.metadata)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in {"revision", "schema", "check"}:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        engine = _migrated_engine(Path(tmp) / "schema.db")
        if argv[0] == "schema":
            sys.stdout.write(schema_sql(engine))
            return 0
        diffs = drift(engine)
        if argv[0] == "check":
            for d in diffs:
                print(d)
            return 1 if diffs else 0
        if not diffs:
            print("models and migrations agree; nothing to generate", file=sys.stderr)
            return 1
        from alembic import command

        from .db import alembic_config, head_revision

        message = " ".join(argv[1:]) or "schema change"
        number = int(head_revision()) + 1 if head_revision().isdigit() else None
        url = f"sqlite:///{Path(tmp) / 'schema.db'}"
        command.revision(alembic_config(url), message=message, autogenerate=True,
                         rev_id=f"{number:04d}" if number else None)
        return 0


if __name__ == "__main__":
    sys.exit(main())
