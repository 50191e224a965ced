"""Certificates by hand: issuance from a CSR, revocation (one meaning on every path), CRLs."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from homing.ceremonies._common import (
    OPERATOR,
    _audit,
    _authority,
    _open,
    serialized,
)
from homing.errors import CeremonyError
from homing.fsutil import atomic_write
from homing.pki.profiles import device_profile, device_uri, server_profile
from homing.site import DataDir
from homing.store.revocation import Selection

__all__ = ["issue_certificate", "revoke", "revoke_batch", "write_crl"]


@serialized
def issue_certificate(
    data: Path | DataDir,
    csr: bytes,
    kind: str,
    now: datetime,
    *,
    device_id: str | None = None,
    actor: str = OPERATOR,
) -> list[x509.Certificate]:
    """Issue a certificate from a CSR under the ``kind`` profile; returns leaf + issuer."""
    if kind not in ("server", "device"):
        raise CeremonyError(f"unknown profile {kind!r}: use 'server' or 'device'")
    dd, settings, store = _open(data)
    authority = _authority(dd, settings, store, kind)
    profile = (
        server_profile(settings.hosts, settings.validity)
        if kind == "server"
        else device_profile(settings.validity.device)
    )
    leaf = authority.issue_csr(csr, profile, now, device_id=device_id)
    _audit(
        dd,
        now,
        actor,
        f"issue_{kind}_certificate",
        device_id,
        {"serial": f"{leaf.serial_number:x}"},
    )
    return [leaf, authority.certificate]


@serialized
def revoke(
    data: Path | DataDir,
    now: datetime,
    *,
    device_id: str | None = None,
    serial: int | None = None,
    reason: str = "unspecified",
    actor: str = OPERATOR,
) -> int:
    """Revoke by device id or serial and re-sign the CRLs; returns how many were revoked.

    Every path that revokes (``homing revoke``, ``homing pki revoke``, the
    admin API) comes here, so a revocation means one thing: see
    ``homing.store.devices.revoke``.
    """
    from homing.store import audit
    from homing.store import devices as device_store

    if device_id is not None:
        device_uri(device_id)  # refuse malformed ids with a clear reason
    dd, _, _ = _open(data)
    with dd.database().begin() as conn:
        count, revoked_device = device_store.revoke(
            conn, now, reason, device_id=device_id, serial=serial
        )
        audit.audit(
            conn,
            now,
            actor,
            "revoke_device" if revoked_device else "revoke_certificate",
            revoked_device or f"serial {serial:x}",
            {"reason": reason, "certificates": count},
        )
    for kind in ("server", "device"):
        write_crl(dd, kind, now)
    return count


def revoke_batch(
    data: Path | DataDir,
    now: datetime,
    selection: Selection,
    *,
    reason: str = "unspecified",
    actor: str = OPERATOR,
    dry_run: bool = False,
    expect: int | None = None,
) -> tuple[list[str], int]:
    """Revoke every active device the selection names, in one transaction, then re-sign
    the device CRL once; returns (the devices revoked, certificates revoked).

    ``dry_run``: only say which devices it would take. ``expect``: the count
    a preview showed; if the selection takes another number now, nothing is
    revoked. One audit entry keeps the selection as it was given and what it
    took.
    """
    from homing.errors import ConflictError, NotFoundError
    from homing.store import audit, revocation

    dd, _, _ = _open(data)
    with dd.database().begin() as conn:
        chosen = revocation.select_devices(conn, selection)
        if dry_run:
            return chosen, 0  # a preview that takes nobody says so (0), it is not an error
        if not chosen:
            raise NotFoundError(f"no active device matches {selection.to_json()}")
        if expect is not None and len(chosen) != expect:
            raise ConflictError(
                f"the selection takes {len(chosen)} devices now, not the {expect} previewed: "
                "preview it again"
            )
        revoked, certificates = revocation.revoke_devices(conn, chosen, now, reason)
        audit.audit(
            conn,
            now,
            actor,
            "revoke_batch",
            f"{revoked} devices",
            {
                "selection": selection.to_json(),
                "reason": reason,
                "devices": revoked,
                "certificates": certificates,
            },
        )
    write_crl(dd, "device", now)
    return chosen, certificates


@serialized
def write_crl(data: Path | DataDir, kind: str, now: datetime) -> Path:
    dd, settings, store = _open(data)
    authority = _authority(dd, settings, store, kind)
    crl = authority.crl(now)
    path = dd.pki_path(f"{kind}-ca.crl.pem")
    atomic_write(path, crl.public_bytes(serialization.Encoding.PEM))
    return path
