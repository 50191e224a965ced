"""Enrollment allow-lists: a station's manifest, quota and expiry; blocked ids.

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from homing.store.schema import UTCDateTime

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("factory_credentials") as batch:
        batch.add_column(sa.Column("quota", sa.Integer))
        batch.add_column(sa.Column("expires_at", UTCDateTime))
    op.create_table(
        "enrollment_manifest",
        sa.Column("device_id", sa.String(64), primary_key=True),
        sa.Column(
            "station",
            sa.String(64),
            sa.ForeignKey("factory_credentials.name"),
            nullable=False,
        ),
        sa.Column("key_sha256", sa.String(64)),
        sa.Column("added_at", UTCDateTime, nullable=False),
    )
    op.create_index("ix_enrollment_manifest_station", "enrollment_manifest", ["station"])
    op.create_table(
        "blocked_device_ids",
        sa.Column("device_id", sa.String(64), primary_key=True),
        sa.Column("blocked_at", UTCDateTime, nullable=False),
        sa.Column("reason", sa.String(256)),
    )


def downgrade() -> None:
    op.drop_table("blocked_device_ids")
    op.drop_index("ix_enrollment_manifest_station", table_name="enrollment_manifest")
    op.drop_table("enrollment_manifest")
    with op.batch_alter_table("factory_credentials") as batch:
        batch.drop_column("expires_at")
        batch.drop_column("quota")
