"""Operator ceremonies over a data directory: init, rotations, issuance, revocation."""

from homing.ceremonies.ceremonies import (
    BundleSummary,
    InitSummary,
    init,
    issue_certificate,
    pin_policy,
    recovery_bundle,
    refresh_snapshot,
    refresh_targets,
    refresh_timestamp,
    revoke,
    rotate_issuing_ca,
    rotate_online_keys,
    rotate_root,
    rotate_server_cert,
    write_crl,
)

__all__ = [
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
    "rotate_issuing_ca",
    "rotate_online_keys",
    "rotate_root",
    "rotate_server_cert",
    "write_crl",
]
