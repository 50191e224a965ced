"""The home server's rules about a device's requests, without I/O.

Each rule takes plain values (a certificate, the CAs the site trusts, a
database row, ``now``) and returns what the server decides: a verified
identity, or the ``HTTPProblem`` that refuses the request. The request
handlers (``homing.server.auth``, ``homing.server.recovery``) apply them
to what TLS and the database give them; the fleet simulator's home applies
the very same rules to its simulated devices, so every refusal a simulated
device meets is one the real server would make.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import NamedTuple

from cryptography import x509

from homing.errors import AuthError, ChainError, PolicyError
from homing.pki.keys import spki_der
from homing.pki.profiles import (
    ApprovedRequest,
    Profile,
    approve_csr,
    device_id_from_uri,
    verify_leaf,
)
from homing.pki.proof import verify_recovery_proof
from homing.pki.validate import verify_client_chain
from homing.server.errors import HTTPProblem
from homing.store import device_contacts as contacts
from homing.store import devices as device_store

__all__ = [
    "DeviceTrust",
    "VerifiedDevice",
    "approve_recovery",
    "recovery_problem",
    "refusal_problem",
    "standing_problem",
    "verify_device_certificate",
]


@dataclass(frozen=True)
class DeviceTrust:
    """What a device certificate is checked against.

    ``distrusted``: device CAs whose key was stolen (``homing rotate
    device-ca --compromised``). A certificate they issued proves nothing any
    more, but the device behind it may be genuine: it is answered
    ``certificate_distrusted`` so the agent recovers by key proof, which a
    thief holding only the CA key cannot pass.
    """

    trusted: Sequence[x509.Certificate]
    distrusted: Sequence[x509.Certificate]
    roots: Sequence[x509.Certificate]
    profile: Profile


class VerifiedDevice(NamedTuple):
    """What the server needs of a verified device certificate: its device, key, serial
    and dates. Not the certificate itself: each server process keeps these for tens of
    thousands of devices (homing.server.auth), so a device that comes back on a new
    connection is not validated again."""

    device_id: str
    key_spki: bytes
    serial: int
    not_valid_before: datetime
    not_valid_after: datetime

    @property
    def presented(self) -> device_store.Presented:
        """Serial and key, the two things a device's standing is checked by."""
        return device_store.Presented(self.serial, self.key_spki)


def _chains(
    cert: x509.Certificate, cas: Sequence[x509.Certificate], trust: DeviceTrust, when: datetime
) -> bool:
    try:
        verify_client_chain(cert, (), trust.roots, when, site_cas=cas)
    except ChainError:
        return False
    return True


def verify_device_certificate(
    cert: x509.Certificate, trust: DeviceTrust, now: datetime
) -> VerifiedDevice:
    """The device a client certificate speaks for, or the problem that refuses it.

    An expired certificate is still checked to be ours (at its last valid
    instant) before the answer points the device to recovery; so is one of a
    distrusted CA.
    """
    expired = now > cert.not_valid_after_utc
    when = cert.not_valid_after_utc if expired else now
    try:
        chain = verify_client_chain(cert, (), trust.roots, when, site_cas=trust.trusted)
    except ChainError as e:
        if trust.distrusted and _chains(cert, trust.distrusted, trust, when):
            raise HTTPProblem(
                401,
                "certificate_distrusted",
                "the client certificate's issuing CA is no longer trusted: "
                "recover it with POST /v1/recover",
            ) from e
        raise HTTPProblem(401, "bad_client_certificate", str(e)) from e
    try:
        # The same leaf profile as issuance, on the TLS path and the proxy path.
        verify_leaf(cert, trust.profile)
    except PolicyError as e:
        raise HTTPProblem(401, "bad_client_certificate", str(e)) from e
    if expired:
        raise HTTPProblem(
            401,
            "certificate_expired",
            "the client certificate has expired: recover it with POST /v1/recover",
        )
    uris = [n.value for n in chain.subjects if isinstance(n, x509.UniformResourceIdentifier)]
    if len(uris) != 1:
        raise HTTPProblem(401, "bad_client_certificate", "certificate names no single device")
    try:
        device_id = device_id_from_uri(uris[0])
    except PolicyError as e:
        raise HTTPProblem(401, "bad_client_certificate", str(e)) from e
    return VerifiedDevice(
        device_id,
        spki_der(cert),
        cert.serial_number,
        cert.not_valid_before_utc,
        cert.not_valid_after_utc,
    )


def refusal_problem(reason: str) -> HTTPProblem:
    """The answer to a certificate the database refuses (``contacts.refusal``).

    A certificate with no record here (the site was restored from a backup
    taken before it was issued) is answered ``certificate_unknown``: the
    agent recovers by key proof, which a thief holding a CA key but no
    device key cannot pass, and the device has a recorded certificate again.
    """
    if reason == contacts.UNKNOWN_CERTIFICATE:
        return HTTPProblem(
            401,
            "certificate_unknown",
            f"{reason} (issued after the backup it was restored from?): "
            "recover it with POST /v1/recover",
        )
    status, code = (403, "revoked") if "revoked" in reason else (403, "forbidden")
    return HTTPProblem(status, code, reason)


def standing_problem(
    standing: contacts.Standing | None, device: VerifiedDevice
) -> HTTPProblem | None:
    """Whether a verified device may act now: enrolled, not revoked, its registered key."""
    reason = contacts.refusal(standing, device.presented, device.device_id)
    return None if reason is None else refusal_problem(reason)


def recovery_problem(
    row: device_store.DeviceRow | None,
    device_id: str,
    max_offline: timedelta | None,
    now: datetime,
) -> HTTPProblem | None:
    """Whether a device may recover: known, active, and not silent beyond the policy."""
    if row is None:
        return HTTPProblem(404, "unknown_device", f"no device {device_id!r}")
    if row.status != "active":
        return HTTPProblem(403, "revoked", "device is revoked and cannot recover")
    if max_offline is not None:
        last = row.last_seen or row.enrolled_at
        if now - last > max_offline:
            return HTTPProblem(
                403,
                "offline_too_long",
                "device was offline longer than the recovery policy allows",
            )
    return None


def approve_recovery(
    registered_key: bytes,
    device_id: str,
    nonce: str,
    csr_der: bytes,
    signature: bytes,
    profile: Profile,
) -> ApprovedRequest:
    """A recovery request proven by the registered key; the problem (or PolicyError) if not."""
    try:
        verify_recovery_proof(registered_key, nonce, csr_der, signature)
    except AuthError as e:
        raise HTTPProblem(403, "bad_proof", str(e)) from e
    approved = approve_csr(csr_der, profile, device_id=device_id)
    if spki_der(approved.public_key) != registered_key:
        raise PolicyError("recovery keeps the registered key: the CSR holds another")
    return approved
