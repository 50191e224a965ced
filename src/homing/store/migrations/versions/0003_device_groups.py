"""Named device groups, and rollouts aimed at one.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "device_groups",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("device_id", sa.String(64), sa.ForeignKey("devices.device_id"), primary_key=True),
    )
    with op.batch_alter_table("rollouts") as batch:
        batch.add_column(sa.Column("group_name", sa.String(64)))


def downgrade() -> None:
    with op.batch_alter_table("rollouts") as batch:
        batch.drop_column("group_name")
    op.drop_table("device_groups")
