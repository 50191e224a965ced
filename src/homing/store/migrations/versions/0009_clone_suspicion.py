"""A device's last address, and when its certificate was seen from two places at once.

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from homing.store.schema import UTCDateTime

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("devices") as batch:
        batch.add_column(sa.Column("last_address", sa.String(64)))
        batch.add_column(sa.Column("clone_suspected_at", UTCDateTime))


def downgrade() -> None:
    with op.batch_alter_table("devices") as batch:
        batch.drop_column("clone_suspected_at")
        batch.drop_column("last_address")
