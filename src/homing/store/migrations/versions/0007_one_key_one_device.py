"""One key, one device: each device's key fingerprint, unique.

Revision ID: 0007
Revises: 0006

A database from before may hold devices that share a key. The earliest
enrolled keeps the fingerprint; the others keep none (they are listed in the
migration's log, and ``homing audit`` reports shared keys) and any new
enrollment with that key is refused.
"""

from __future__ import annotations

import hashlib
import logging

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

log = logging.getLogger("homing.store")


def upgrade() -> None:
    with op.batch_alter_table("devices") as batch:
        batch.add_column(sa.Column("key_sha256", sa.String(64)))
    conn = op.get_bind()
    rows = conn.execute(
        sa.text("SELECT device_id, key_spki FROM devices ORDER BY enrolled_at, device_id")
    ).all()
    holder: dict[str, str] = {}
    for device_id, spki in rows:
        fingerprint = hashlib.sha256(bytes(spki)).hexdigest()
        if fingerprint in holder:
            log.warning(
                "device %s shares its key with %s: enrolled before one key, one device held",
                device_id,
                holder[fingerprint],
            )
            continue
        holder[fingerprint] = device_id
        conn.execute(
            sa.text("UPDATE devices SET key_sha256 = :f WHERE device_id = :d"),
            {"f": fingerprint, "d": device_id},
        )
    op.create_index("ux_devices_key_sha256", "devices", ["key_sha256"], unique=True)


def downgrade() -> None:
    op.drop_index("ux_devices_key_sha256", table_name="devices")
    with op.batch_alter_table("devices") as batch:
        batch.drop_column("key_sha256")
