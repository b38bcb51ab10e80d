"""job lease: the worker holding a running job and until when

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-21 02:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("worker", sa.String(length=255), nullable=True))
        batch_op.add_column(sa.Column("lease_until", sa.DateTime(), nullable=True))
        batch_op.create_index(batch_op.f("ix_jobs_lease_until"), ["lease_until"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_jobs_lease_until"))
        batch_op.drop_column("lease_until")
        batch_op.drop_column("worker")
