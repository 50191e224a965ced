"""Operator ceremonies over a data directory: init, rotations, issuance, revocation."""

from homing.ceremonies.bundles import BundleSummary, recovery_bundle
from homing.ceremonies.creation import DEFAULT_HOSTS, InitSummary, init
from homing.ceremonies.issuance import issue_certificate, revoke, revoke_batch, write_crl
from homing.ceremonies.pin_publication import pin_policy
from homing.ceremonies.rotations import (
    refresh_snapshot,
    refresh_targets,
    refresh_timestamp,
    rotate_firmware_key,
    rotate_issuing_ca,
    rotate_online_keys,
    rotate_root,
    rotate_root_ca,
    rotate_server_cert,
    rotate_session_tickets,
)

__all__ = [
    "DEFAULT_HOSTS",
    "BundleSummary",
    "InitSummary",
    "init",
    "issue_certificate",
    "pin_policy",
    "recovery_bundle",
    "refresh_snapshot",
    "refresh_targets",
    "refresh_timestamp",
    "revoke",
    "revoke_batch",
    "rotate_firmware_key",
    "rotate_issuing_ca",
    "rotate_online_keys",
    "rotate_root",
    "rotate_root_ca",
    "rotate_server_cert",
    "rotate_session_tickets",
    "write_crl",
]
