"""Alembic environment: migrate the engine handed in by ``ribnode.ledger.migrations.upgrade``."""

from __future__ import annotations

from alembic import context
from sqlalchemy import text

from ribnode.ledger.schema import Base

engine = context.config.attributes["engine"]

# Any constant: PostgreSQL advisory lock that serialises concurrent migrations of one database.
MIGRATION_LOCK = 0x7269626E  # "ribn"

with engine.begin() as connection:
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()
