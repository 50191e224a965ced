"""Initial schema: devices, certificates, credentials, check-ins, audit, recovery.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from homing.store.schema import UTCDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer, "sqlite")


def upgrade() -> None:
    op.create_table(
        "devices",
        sa.Column("device_id", sa.String(64), primary_key=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("hardware", sa.String(64)),
        sa.Column("key_spki", sa.LargeBinary, nullable=False),
        sa.Column("enrolled_at", UTCDateTime, nullable=False),
        sa.Column("enrolled_by", sa.String(128), nullable=False),
        sa.Column("last_seen", UTCDateTime),
        sa.Column("firmware_version", sa.String(64)),
        sa.Column("root_version", sa.Integer),
        sa.Column("timestamp_version", sa.Integer),
        sa.Column("targets_version", sa.Integer),
        sa.Column("health", sa.Text),
        sa.Column("revoked_at", UTCDateTime),
        sa.Column("revoke_reason", sa.String(256)),
    )
    op.create_table(
        "certificates",
        sa.Column("serial", sa.String(40), primary_key=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("subject_id", sa.String(253), nullable=False),
        sa.Column("issuer_pin", sa.String(44), nullable=False),
        sa.Column("issued_at", UTCDateTime, nullable=False),
        sa.Column("not_after", UTCDateTime, nullable=False),
        sa.Column("revoked_at", UTCDateTime),
        sa.Column("reason", sa.String(256)),
    )
    op.create_index("ix_certificates_subject", "certificates", ["subject_id"])
    op.create_index("ix_certificates_not_after", "certificates", ["not_after"])
    op.create_table(
        "factory_credentials",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("secret_hash", sa.String(64), nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("disabled_at", UTCDateTime),
    )
    op.create_table(
        "operator_tokens",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("revoked_at", UTCDateTime),
    )
    op.create_table(
        "checkins",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("device_id", sa.String(64), sa.ForeignKey("devices.device_id"), nullable=False),
        sa.Column("at", UTCDateTime, nullable=False),
        sa.Column("firmware_version", sa.String(64)),
        sa.Column("root_version", sa.Integer),
        sa.Column("timestamp_version", sa.Integer),
        sa.Column("targets_version", sa.Integer),
        sa.Column("health", sa.Text),
    )
    op.create_index("ix_checkins_device_at", "checkins", ["device_id", "at"])
    op.create_table(
        "audit_log",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("at", UTCDateTime, nullable=False),
        sa.Column("actor", sa.String(128), nullable=False),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("target", sa.String(256)),
        sa.Column("detail", sa.Text),
    )
    op.create_table(
        "recovery_nonces",
        sa.Column("nonce", sa.String(64), primary_key=True),
        sa.Column("device_id", sa.String(64), nullable=False),
        sa.Column("expires_at", UTCDateTime, nullable=False),
        sa.Column("used_at", UTCDateTime),
    )


def downgrade() -> None:
    for table in (
        "recovery_nonces",
        "audit_log",
        "checkins",
        "operator_tokens",
        "factory_credentials",
        "certificates",
        "devices",
    ):
        op.drop_table(table)
