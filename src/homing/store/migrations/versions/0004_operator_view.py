"""The operator's view: the trust devices report, pin policy history, web sessions.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from homing.store.schema import UTCDateTime

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("devices") as batch:
        batch.add_column(sa.Column("pin_policy_sha256", sa.String(64)))
        batch.add_column(sa.Column("pins_matched", sa.Text))
        batch.add_column(sa.Column("last_failure_at", UTCDateTime))
        batch.add_column(sa.Column("last_failure", sa.String(256)))
    op.create_table(
        "pin_policies",
        sa.Column("sha256", sa.String(64), primary_key=True),
        sa.Column("version", sa.Integer, nullable=False, unique=True),
        sa.Column("pins", sa.Text, nullable=False),
        sa.Column("server_ca_generation", sa.Integer, nullable=False),
        sa.Column("published_at", UTCDateTime, nullable=False),
    )
    op.create_table(
        "ui_sessions",
        sa.Column("session_hash", sa.String(64), primary_key=True),
        sa.Column(
            "token_name", sa.String(64), sa.ForeignKey("operator_tokens.name"), nullable=False
        ),
        sa.Column("csrf", sa.String(64), nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("expires_at", UTCDateTime, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("ui_sessions")
    op.drop_table("pin_policies")
    with op.batch_alter_table("devices") as batch:
        for name in ("last_failure", "last_failure_at", "pins_matched", "pin_policy_sha256"):
            batch.drop_column(name)
