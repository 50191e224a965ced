"""The home server's tables (SQLAlchemy Core), shared by SQLite and PostgreSQL.

Migrations in ``migrations/versions`` create exactly these tables; a test
compares the two so they cannot drift apart.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
)
from sqlalchemy.engine import Dialect

__all__ = [
    "audit_log",
    "blocked_device_ids",
    "certificates",
    "checkins",
    "device_groups",
    "devices",
    "enrollment_manifest",
    "factory_credentials",
    "metadata",
    "operator_tokens",
    "pin_policies",
    "recovery_nonces",
    "releases",
    "rollout_devices",
    "rollouts",
    "site_files",
    "site_publication",
    "ui_sessions",
]


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC in, timezone-aware UTC out, whatever the backend keeps."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if not isinstance(value, datetime) or value.tzinfo is None:
            raise ValueError("only timezone-aware datetimes are stored")
        value = value.astimezone(UTC)
        assert isinstance(value, datetime)
        # SQLite has no time zones: keep naive UTC there.
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


metadata = MetaData()

devices = Table(
    "devices",
    metadata,
    Column("device_id", String(64), primary_key=True),
    Column("status", String(16), nullable=False),  # active | revoked
    Column("hardware", String(64)),
    Column("key_spki", LargeBinary, nullable=False),  # DER SubjectPublicKeyInfo
    Column("enrolled_at", UTCDateTime, nullable=False),
    Column("enrolled_by", String(128), nullable=False),
    Column("last_seen", UTCDateTime),
    Column("firmware_version", String(64)),
    Column("root_version", Integer),
    Column("timestamp_version", Integer),
    Column("targets_version", Integer),
    Column("health", Text),
    Column("revoked_at", UTCDateTime),
    Column("revoke_reason", String(256)),
    # The trust the device last said it holds: the SHA-256 of its pin policy
    # and the pins that matched the server's chain (JSON list).
    Column("pin_policy_sha256", String(64)),
    Column("pins_matched", Text),
    # The last contact the server refused, and why (revoked, expired, ...).
    Column("last_failure_at", UTCDateTime),
    Column("last_failure", String(256)),
    # Check-ins recorded so far; its remainder by the history bound is the
    # slot the next check-in's history row takes (``Limits.checkin_history_per_device``).
    Column("checkin_seq", BigInteger, nullable=False, server_default="0"),
    # SHA-256 (hex) of key_spki: one key, one device (unique). None only for a
    # device that shared its key with an earlier one before this held.
    Column("key_sha256", String(64)),
    # Where it last checked in from, and when its certificate was last seen
    # from two places at once (homing.store.device_contacts.CLONE_WINDOW).
    Column("last_address", String(64)),
    Column("clone_suspected_at", UTCDateTime),
    Index("ux_devices_key_sha256", "key_sha256", unique=True),
)

certificates = Table(
    "certificates",
    metadata,
    Column("serial", String(40), primary_key=True),  # lower-case hex, no leading zeros
    Column("kind", String(16), nullable=False),
    Column("subject_id", String(253), nullable=False),
    Column("issuer_pin", String(44), nullable=False),
    Column("issued_at", UTCDateTime, nullable=False),
    Column("not_after", UTCDateTime, nullable=False),
    Column("revoked_at", UTCDateTime),
    Column("reason", String(256)),
    Index("ix_certificates_subject", "subject_id"),
    Index("ix_certificates_not_after", "not_after"),
)

factory_credentials = Table(
    "factory_credentials",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("secret_hash", String(64), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("disabled_at", UTCDateTime),
    # What the station may still enroll (homing.store.allowlist): at most this
    # many devices in all, and nothing from this time on; None: no bound.
    Column("quota", Integer),
    Column("expires_at", UTCDateTime),
    # A manufacturer CA acting as a station (homing.pki.idevid): devices prove
    # themselves by its IDevIDs, so its secret_hash matches no secret.
    Column("manufacturer_cas", Text),
    Column("manufacturer_crls", Text),
    Column("id_from", String(16)),
)

# Device ids a factory station may enroll (a production run's manifest),
# optionally with the key each must hold (pre-registration). A station with
# a manifest enrolls nothing else, and no station enrolls an id on another's.
enrollment_manifest = Table(
    "enrollment_manifest",
    metadata,
    Column("device_id", String(64), primary_key=True),
    Column("station", String(64), ForeignKey("factory_credentials.name"), nullable=False),
    Column("key_sha256", String(64)),
    Column("added_at", UTCDateTime, nullable=False),
    Index("ix_enrollment_manifest_station", "station"),
)

# Device ids no station may enroll (a unit destroyed or stolen at the factory).
blocked_device_ids = Table(
    "blocked_device_ids",
    metadata,
    Column("device_id", String(64), primary_key=True),
    Column("blocked_at", UTCDateTime, nullable=False),
    Column("reason", String(256)),
)

operator_tokens = Table(
    "operator_tokens",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("token_hash", String(64), nullable=False, unique=True),
    Column("role", String(16), nullable=False),  # read-only | operator
    Column("created_at", UTCDateTime, nullable=False),
    Column("revoked_at", UTCDateTime),
)

checkins = Table(
    "checkins",
    metadata,
    Column(
        "id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    ),
    Column("device_id", String(64), ForeignKey("devices.device_id"), nullable=False),
    Column("at", UTCDateTime, nullable=False),
    Column("firmware_version", String(64)),
    Column("root_version", Integer),
    Column("timestamp_version", Integer),
    Column("targets_version", Integer),
    Column("health", Text),
    # The device's history slot; a new check-in overwrites the oldest slot.
    # (Rows from before the bound have none and leave by age.)
    Column("slot", Integer),
    Index("ix_checkins_device_at", "device_id", "at"),
    Index("ux_checkins_device_slot", "device_id", "slot", unique=True),
)

audit_log = Table(
    "audit_log",
    metadata,
    Column(
        "id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    ),
    Column("at", UTCDateTime, nullable=False),
    Column("actor", String(128), nullable=False),
    Column("action", String(64), nullable=False),
    Column("target", String(256)),
    Column("detail", Text),
)

recovery_nonces = Table(
    "recovery_nonces",
    metadata,
    Column("nonce", String(64), primary_key=True),
    Column("device_id", String(64), nullable=False),
    Column("expires_at", UTCDateTime, nullable=False),
    Column("used_at", UTCDateTime),
)

releases = Table(
    "releases",
    metadata,
    Column("target", String(255), primary_key=True),
    Column("hardware", String(64), nullable=False),
    Column("version", String(64), nullable=False),
    Column("sequence", Integer, nullable=False),
    Column("length", BigInteger, nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("downgrade", Integer, nullable=False),
    Column("notes", Text),
    Column("created_at", UTCDateTime, nullable=False),
    Index("ux_releases_hardware_sequence", "hardware", "sequence", unique=True),
)

rollouts = Table(
    "rollouts",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("target", String(255), ForeignKey("releases.target"), nullable=False),
    Column("hardware", String(64), nullable=False),
    Column("version", String(64), nullable=False),
    Column("stages", String(255), nullable=False),  # JSON list of percentages
    Column("stage_index", Integer, nullable=False),
    Column("stage_started_at", UTCDateTime, nullable=False),
    Column("max_failure_ratio", Float, nullable=False),
    Column("success_ratio", Float, nullable=False),
    Column("soak_seconds", Integer, nullable=False),
    Column("deadline_seconds", Integer, nullable=False),
    Column("status", String(16), nullable=False),  # active | paused | halted | done
    Column("halt_reason", Text),
    Column("created_at", UTCDateTime, nullable=False),
    # Aimed at a named device group instead of stages of the whole class.
    Column("group_name", String(64)),
    # The current stage holds the devices whose bucket is below this (at least its
    # percentage; raised when the stage starts so that it holds at least one device
    # and its share of the class, however small the fleet). NULL: the percentage.
    Column("stage_cutoff", Float),
)

device_groups = Table(
    "device_groups",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("device_id", String(64), ForeignKey("devices.device_id"), primary_key=True),
)

rollout_devices = Table(
    "rollout_devices",
    metadata,
    Column("rollout_id", Integer, ForeignKey("rollouts.id"), primary_key=True),
    Column("device_id", String(64), ForeignKey("devices.device_id"), primary_key=True),
    Column("state", String(16), nullable=False),
    Column("reason", Text),
    Column("version", String(64)),
    Column("updated_at", UTCDateTime, nullable=False),
)

pin_policies = Table(
    "pin_policies",
    metadata,
    # Every pin policy ever published, so a device's reported SHA-256 names
    # the pins it holds (the retirement guard and the fleet view read it).
    Column("sha256", String(64), primary_key=True),
    Column("version", Integer, nullable=False, unique=True),
    Column("pins", Text, nullable=False),  # JSON list, active server-CA pin first
    Column("server_ca_generation", Integer, nullable=False),
    Column("published_at", UTCDateTime, nullable=False),
)

ui_sessions = Table(
    "ui_sessions",
    metadata,
    Column("session_hash", String(64), primary_key=True),  # SHA-256 of the cookie value
    Column("token_name", String(64), ForeignKey("operator_tokens.name"), nullable=False),
    Column("csrf", String(64), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("expires_at", UTCDateTime, nullable=False),
)

site_publication = Table(
    "site_publication",
    metadata,
    # One row: the shared site's current generation. Every replica serves the
    # files of exactly this generation (homing.site.shared).
    Column("id", Integer, primary_key=True),
    Column("site_id", String(64), nullable=False),  # SHA-256 of 1.root.json
    Column("generation", BigInteger, nullable=False),
    Column("published_at", UTCDateTime, nullable=False),
    Column("published_by", String(128), nullable=False),
)

site_files = Table(
    "site_files",
    metadata,
    # The published site, byte for byte: settings, public PKI files, TUF
    # metadata and targets (firmware images included).
    Column("path", String(512), primary_key=True),
    Column("sha256", String(64), nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("generation", BigInteger, nullable=False),
    Column("content", LargeBinary, nullable=False),
)
