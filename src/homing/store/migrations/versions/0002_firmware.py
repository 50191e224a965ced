"""Firmware releases and rollouts.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from homing.store.schema import UTCDateTime

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "releases",
        sa.Column("target", sa.String(255), primary_key=True),
        sa.Column("hardware", sa.String(64), nullable=False),
        sa.Column("version", sa.String(64), nullable=False),
        sa.Column("sequence", sa.Integer, nullable=False),
        sa.Column("length", sa.BigInteger, nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("downgrade", sa.Integer, nullable=False),
        sa.Column("notes", sa.Text),
        sa.Column("created_at", UTCDateTime, nullable=False),
    )
    op.create_index(
        "ux_releases_hardware_sequence", "releases", ["hardware", "sequence"], unique=True
    )
    op.create_table(
        "rollouts",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("target", sa.String(255), sa.ForeignKey("releases.target"), nullable=False),
        sa.Column("hardware", sa.String(64), nullable=False),
        sa.Column("version", sa.String(64), nullable=False),
        sa.Column("stages", sa.String(255), nullable=False),
        sa.Column("stage_index", sa.Integer, nullable=False),
        sa.Column("stage_started_at", UTCDateTime, nullable=False),
        sa.Column("max_failure_ratio", sa.Float, nullable=False),
        sa.Column("success_ratio", sa.Float, nullable=False),
        sa.Column("soak_seconds", sa.Integer, nullable=False),
        sa.Column("deadline_seconds", sa.Integer, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("halt_reason", sa.Text),
        sa.Column("created_at", UTCDateTime, nullable=False),
    )
    op.create_table(
        "rollout_devices",
        sa.Column("rollout_id", sa.Integer, sa.ForeignKey("rollouts.id"), primary_key=True),
        sa.Column("device_id", sa.String(64), sa.ForeignKey("devices.device_id"), primary_key=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text),
        sa.Column("version", sa.String(64)),
        sa.Column("updated_at", UTCDateTime, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("rollout_devices")
    op.drop_table("rollouts")
    op.drop_index("ux_releases_hardware_sequence", "releases")
    op.drop_table("releases")
