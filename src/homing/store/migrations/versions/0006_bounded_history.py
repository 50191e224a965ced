"""A bounded check-in history per device: a ring of slots, newest over oldest.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("devices") as batch:
        batch.add_column(
            sa.Column("checkin_seq", sa.BigInteger, nullable=False, server_default="0")
        )
    with op.batch_alter_table("checkins") as batch:
        batch.add_column(sa.Column("slot", sa.Integer))
    op.create_index("ux_checkins_device_slot", "checkins", ["device_id", "slot"], unique=True)


def downgrade() -> None:
    op.drop_index("ux_checkins_device_slot", table_name="checkins")
    with op.batch_alter_table("checkins") as batch:
        batch.drop_column("slot")
    with op.batch_alter_table("devices") as batch:
        batch.drop_column("checkin_seq")
