"""Manufacturer CAs as factory stations: their CA certificates, CRLs and id field.

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("factory_credentials") as batch:
        batch.add_column(sa.Column("manufacturer_cas", sa.Text))
        batch.add_column(sa.Column("manufacturer_crls", sa.Text))
        batch.add_column(sa.Column("id_from", sa.String(16)))


def downgrade() -> None:
    with op.batch_alter_table("factory_credentials") as batch:
        batch.drop_column("id_from")
        batch.drop_column("manufacturer_crls")
        batch.drop_column("manufacturer_cas")
