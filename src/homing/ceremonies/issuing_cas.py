"""Issuing-CA certificates: which roots certify them, which are trusted, which are presented.

An issuing CA (server or device) is certified by every valid X.509 root, so
a device holding any of them keeps a path; the server presents only as many
of those certifications as an agent accepts. Device CAs stay trusted after
a rotation until the last certificate they issued has expired
(``homing.ceremonies.generations``), and a stolen one moves to the
distrusted set. Shared by the issuing-CA and root-CA rotations.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec

from homing.ceremonies._common import _ca_key, _pem
from homing.ceremonies.generations import (
    record_retirement,
    retired_device_cas,
    still_trusted,
)
from homing.config import Limits, Validity
from homing.errors import CeremonyError
from homing.fsutil import atomic_write
from homing.pki.authority import make_issuing_ca
from homing.pki.keys import spki_pin
from homing.pki.keystore import KeyStore
from homing.site import DataDir, Settings
from homing.site.datadir import DISTRUSTED_DEVICE_CAS

__all__ = [
    "also_certified",
    "certify_issuing_ca",
    "check_offline_certification",
    "install_issuing_ca",
    "presented_cross_certifications",
    "root_ca_key_name",
    "roots_with_keys",
]


def check_offline_certification(
    dd: DataDir,
    kind: str,
    key: ec.EllipticCurvePrivateKey,
    certified: Sequence[x509.Certificate],
    now: datetime,
) -> None:
    """An offline-signed issuing CA: for this key, by a root the site holds, valid, a CA."""
    if not certified:
        raise CeremonyError("the offline site returned no certificate")
    roots = [r for r in dd.certificates("root-ca.pem") if r.not_valid_after_utc > now]
    for cert in certified:
        if cert.public_key() != key.public_key():
            raise CeremonyError("a returned CA certificate is not for the key being promoted")
        issuers = [r for r in roots if r.subject == cert.issuer]
        try:
            if not issuers:
                raise ValueError("unknown issuer")
            cert.verify_directly_issued_by(issuers[0])
        except (ValueError, TypeError, InvalidSignature) as e:
            raise CeremonyError(
                f"a returned CA certificate is not signed by a root of this site: {e}"
            ) from e
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        if not constraints.ca or not cert.not_valid_before_utc <= now < cert.not_valid_after_utc:
            raise CeremonyError("a returned CA certificate is not a CA valid now")
    if certified[0].issuer != roots[0].subject:
        raise CeremonyError("the first certificate must be the active root's")
    expected = {r.subject for r in roots}
    if {c.issuer for c in certified} != expected:
        raise CeremonyError(f"the {kind} CA must be certified by every valid root of this site")


def root_ca_key_name(generation: int) -> str:
    return "root-ca" if generation == 1 else f"root-ca-g{generation}"


def roots_with_keys(
    dd: DataDir, settings: Settings, store: KeyStore, now: datetime
) -> list[tuple[x509.Certificate, ec.EllipticCurvePrivateKey]]:
    """Every root still valid, active first, with its key (a root whose key is gone is skipped)."""
    roots = [c for c in dd.certificates("root-ca.pem") if c.not_valid_after_utc > now]
    found = []
    for generation in range(settings.root_ca_generation, 0, -1):
        name = root_ca_key_name(generation)
        # The active root's key must be there (loading it says where it is kept).
        if generation != settings.root_ca_generation and not store.exists(name):
            continue
        key = _ca_key(store, name)
        for root in roots:
            if root.public_key() == key.public_key():
                found.append((root, key))
    if not found or found[0][0] != roots[0]:
        raise CeremonyError("the active root CA's key is not in the key store")
    return found


def certify_issuing_ca(
    dd: DataDir,
    settings: Settings,
    store: KeyStore,
    kind: str,
    key: ec.EllipticCurvePrivateKey,
    generation: int,
    now: datetime,
) -> list[x509.Certificate]:
    """The issuing CA's certificate under each valid root, the active root's first."""
    return [
        make_issuing_ca(
            kind,
            key.public_key(),
            root,
            root_key,
            now,
            hosts=settings.hosts,
            generation=generation,
            validity=settings.validity,
        )
        for root, root_key in roots_with_keys(dd, settings, store, now)
    ]


def presented_cross_certifications(
    also: Sequence[x509.Certificate], limits: Limits | None = None
) -> list[x509.Certificate]:
    """The server CA's certifications under older roots that the server presents.

    An agent accepts at most ``Limits.max_intermediates`` certificates beside
    the leaf, so after the active root's certification only the newest older
    roots' fit (``also`` is ordered newest first). A device that holds only a
    root older than those fails the pinned chain, takes the bootstrap channel
    (the metadata authenticates itself), walks to today's pin policy, which
    names the new roots, and comes back pinned.
    """
    limits = limits or Limits()
    return list(also[: max(limits.max_intermediates - 1, 0)])


def _also_path(kind: str) -> str:
    return f"{kind}-ca-also.pem"


def also_certified(dd: DataDir, kind: str, now: datetime) -> list[x509.Certificate]:
    """The active issuing CA's certificates under older roots, still valid."""
    path = dd.pki_path(_also_path(kind))
    if not path.exists() or not path.read_bytes().strip():
        return []
    return [c for c in dd.certificates(_also_path(kind)) if c.not_valid_after_utc > now]


def install_issuing_ca(
    dd: DataDir,
    kind: str,
    cert: x509.Certificate,
    also: list[x509.Certificate],
    now: datetime,
    *,
    distrust: x509.Certificate | None = None,
    retiring: x509.Certificate | None = None,
    validity: Validity | None = None,
) -> None:
    """Write an issuing CA's certificates: the active root's, and the others beside it.

    ``retiring``: the device CA this one replaces; it stays trusted until
    the last certificate it issued has expired (``homing.ceremonies.generations``).

    ``distrust``: a device CA whose key was stolen; every certificate of its
    key moves from the trusted device CAs to the distrusted ones.
    """
    if also:
        atomic_write(dd.pki_path(_also_path(kind)), _pem(*also))
    else:
        dd.pki_path(_also_path(kind)).unlink(missing_ok=True)
    if kind == "device":
        # Keep trusting the device CAs that are still valid, so devices
        # issued by the old CA keep working until they renew.
        # A certificate of the same key by the same root is superseded by the
        # new one: without this, each root CA rotation would add them again.
        fresh = {(spki_pin(c), c.issuer) for c in (cert, *also)}
        retired = retired_device_cas(dd)
        validity = validity or dd.settings().validity
        still_valid = [
            c
            for c in dd.certificates("device-cas.pem")
            if still_trusted(c, now, validity, retired) and (spki_pin(c), c.issuer) not in fresh
        ]
        if retiring is not None and retiring.public_key() != cert.public_key():
            # Recorded before the trusted set changes: the commit point is the settings.
            keep = {spki_pin(c) for c in still_valid} | {spki_pin(retiring)}
            record_retirement(dd, retiring, now, keep)
        if distrust is not None:
            stolen = [c for c in still_valid if c.public_key() == distrust.public_key()]
            still_valid = [c for c in still_valid if c not in stolen]
            _distrust_device_cas(dd, stolen or [distrust], now)
        atomic_write(dd.pki_path("device-cas.pem"), _pem(cert, *also, *still_valid))
        atomic_write(dd.pki_path("device-ca.pem"), _pem(cert))
    else:
        atomic_write(dd.pki_path("server-ca.pem"), _pem(cert))


def _distrust_device_cas(dd: DataDir, stolen: Sequence[x509.Certificate], now: datetime) -> None:
    """Add device CAs to the distrusted ones (written before the trusted set shrinks).

    An expired one is dropped: every certificate it issued has expired with
    it, and its devices recover as any device with an expired certificate.
    """
    path = dd.pki_path(DISTRUSTED_DEVICE_CAS)
    known = dd.certificates(DISTRUSTED_DEVICE_CAS) if path.exists() else []
    kept = [c for c in known if c.not_valid_after_utc > now]
    atomic_write(path, _pem(*kept, *(c for c in stolen if c not in kept)))
