"""Alembic migrations of the ledger schema, run programmatically (no alembic.ini needed).

``upgrade(engine)`` brings the database behind an engine to the newest revision; the ledger
(``ribnode.ledger.store``) calls it with its engine when it opens. The migrations never import
the ledger: they are handed the engine. To add a revision after changing ``ribnode.ledger.schema``::

    .venv/bin/python -m ribnode.ledger.migrations revision "what changed"
"""

from __future__ import annotations

import fcntl
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# Alembic's INFO chatter ("setup plugin ...", "Context impl ...") is noise at every start.
if logging.getLogger("alembic").level == logging.NOTSET:
    logging.getLogger("alembic").setLevel(logging.WARNING)

from alembic import command  # noqa: E402
from alembic.config import Config  # noqa: E402
from sqlalchemy import Engine  # noqa: E402

HERE = Path(__file__).resolve().parent


def alembic_config(engine: Engine | None = None) -> Config:
    """An Alembic config pointing at this folder (and at ``engine`` when given)."""
    config = Config()
    config.set_main_option("script_location", str(HERE))
    if engine is not None:
        config.attributes["engine"] = engine
    return config


@contextmanager
def _sqlite_file_lock(engine: Engine) -> Iterator[None]:
    """Serialise migrations of one SQLite file across processes (``ribnode serve`` and
    ``ribnode worker`` often start together on a fresh ledger). PostgreSQL uses an advisory
    lock inside the migration transaction instead (env.py)."""
    database = engine.url.database
    if engine.dialect.name != "sqlite" or not database or database == ":memory:":
        yield
        return
    with open(f"{database}.migrate-lock", "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Upgrade the ledger behind ``engine`` to ``revision`` (safe when several processes start
    at once: the second waits, then finds the schema current)."""
    with _sqlite_file_lock(engine):
        command.upgrade(alembic_config(engine), revision)


def _main(argv: list[str]) -> int:
    """``python -m ribnode.ledger.migrations revision MESSAGE [URL]``: autogenerate a revision."""
    from ribnode.ledger.engine import make_engine

    if len(argv) < 2 or argv[0] != "revision":
        print("usage: python -m ribnode.ledger.migrations revision MESSAGE [URL]")
        return 2
    url = argv[2] if len(argv) > 2 else "sqlite:///var/alembic-autogen.sqlite"
    engine = make_engine(url)
    upgrade(engine)
    command.revision(alembic_config(engine), message=argv[1], autogenerate=True)
    return 0
