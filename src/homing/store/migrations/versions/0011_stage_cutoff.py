"""A rollout stage's membership cutoff, so a small fleet's stage holds at least one device.

Revision ID: 0011
Revises: 0010
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("rollouts") as batch:
        batch.add_column(sa.Column("stage_cutoff", sa.Float))


def downgrade() -> None:
    with op.batch_alter_table("rollouts") as batch:
        batch.drop_column("stage_cutoff")
