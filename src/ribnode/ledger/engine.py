"""The ledger's database engine: SQLite (a private file, WAL) or PostgreSQL, from a URL.

Both the ledger (:class:`ribnode.ledger.store.Ledger`) and the migrations' command line
(``python -m ribnode.ledger.migrations``) open their database through :func:`make_engine`.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event

logger = logging.getLogger(__name__)
logger.addHandler(logging.NullHandler())


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    """WAL: readers never block the writer; NORMAL sync is durable across process crashes
    (the spool file itself is fsynced before success goes back)."""
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=15000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _create_private_file(path: Path) -> None:
    """Create the SQLite file (and a missing folder) owner-only, 0600 / 0700, whatever the
    umask: the ledger holds patient identifiers. SQLite gives its -wal and -shm files the mode
    of the database file. An existing file is tightened too."""
    if not path.parent.is_dir():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(path.parent, 0o700)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    os.close(fd)
    try:
        os.chmod(path, 0o600)
    except PermissionError as exc:  # a file of another user: say so, go on
        logger.warning("cannot make the ledger %s private (0600): %s", path, exc)


def make_engine(url: str) -> Engine:
    """An engine for ``url``; for a SQLite file, create its folder and set WAL pragmas."""
    if url.startswith("sqlite"):
        database = url.split("///", 1)[-1] if "///" in url else ""
        if database and database != ":memory:":
            _create_private_file(Path(database))
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 15})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=10)
