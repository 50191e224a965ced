"""Peer chain validation and SPKI pin checks.

Path building and validation are cryptography's (RFC 5280 with the CA/B
profile, ``cryptography.x509.verification``); homing adds only the bounds
it must enforce before parsing, and the pin check after validation: a
connection is trusted when the chain validates to a pinned private root
*and* some certificate in the validated chain carries a pinned SPKI.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from homing.config import Limits
from homing.errors import ChainError, PinError, PKIError, RevokedError
from homing.pki.keys import spki_pin
from homing.pki.profiles import split_hosts

__all__ = [
    "VerifiedChain",
    "check_not_revoked",
    "issuers_of",
    "load_certificate",
    "load_certificates_pem",
    "verify_client_chain",
    "verify_crl",
    "verify_pins",
    "verify_server_chain",
]


@dataclass(frozen=True)
class VerifiedChain:
    """A chain that validated: leaf first, trust anchor last."""

    chain: tuple[x509.Certificate, ...]
    subjects: tuple[x509.GeneralName, ...]

    @property
    def leaf(self) -> x509.Certificate:
        return self.chain[0]


def load_certificate(data: bytes, limits: Limits | None = None) -> x509.Certificate:
    """Parse one certificate (DER or PEM), refusing oversized input before parsing."""
    limits = limits or Limits()
    if len(data) > limits.max_certificate_bytes:
        raise ChainError(
            f"certificate is {len(data)} bytes; the limit is {limits.max_certificate_bytes}"
        )
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_certificate(data)
        return x509.load_der_x509_certificate(data)
    except ValueError as e:
        raise ChainError(f"certificate cannot be parsed: {e}") from e


def load_certificates_pem(data: bytes, limits: Limits | None = None) -> list[x509.Certificate]:
    limits = limits or Limits()
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError as e:
        raise ChainError(f"certificates cannot be parsed: {e}") from e
    for cert in certs:
        if len(cert.tbs_certificate_bytes) > limits.max_certificate_bytes:
            raise ChainError("a certificate in the bundle is larger than the limit")
    return certs


def _check_counts(intermediates: Sequence[x509.Certificate], limits: Limits) -> None:
    if len(intermediates) > limits.max_intermediates:
        raise ChainError(
            f"peer sent {len(intermediates)} intermediates; the limit is {limits.max_intermediates}"
        )


def verify_server_chain(
    leaf: x509.Certificate,
    intermediates: Sequence[x509.Certificate],
    roots: Sequence[x509.Certificate],
    host: str,
    now: datetime,
    limits: Limits | None = None,
) -> VerifiedChain:
    """Validate a server chain for ``host`` (DNS name or IP literal) at ``now``."""
    limits = limits or Limits()
    _check_counts(intermediates, limits)
    dns, ips = split_hosts([host])
    subject: x509.DNSName | x509.IPAddress
    if dns:
        subject = x509.DNSName(dns[0])
    else:
        import ipaddress

        subject = x509.IPAddress(ipaddress.ip_address(ips[0]))
    verifier = (
        PolicyBuilder()
        .store(Store(list(roots)))
        .time(now)
        .max_chain_depth(limits.max_chain_depth)
        .build_server_verifier(subject)
    )
    try:
        chain = verifier.verify(leaf, list(intermediates))
    except VerificationError as e:
        raise ChainError(f"server chain for {host} does not validate: {e}") from e
    return VerifiedChain(chain=tuple(chain), subjects=(subject,))


def issuers_of(leaf: x509.Certificate, cas: Iterable[x509.Certificate]) -> list[x509.Certificate]:
    """The CA certificates among ``cas`` that can have issued ``leaf``.

    Matched by name and, where the leaf names it, by authority key
    identifier (RFC 5280 §4.2.1.1): a site that rotated its device CA thirty
    times hands the path builder the one generation (under each root) that
    issued this leaf, not all thirty.
    """
    try:
        aki = leaf.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
        wanted = aki.key_identifier
    except x509.ExtensionNotFound:
        wanted = None
    found = []
    for ca in cas:
        if ca.subject != leaf.issuer:
            continue
        if wanted is not None:
            try:
                ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
            except x509.ExtensionNotFound:
                ski = None
            if ski is not None and ski.digest != wanted:
                continue
        found.append(ca)
    return found


def verify_client_chain(
    leaf: x509.Certificate,
    intermediates: Sequence[x509.Certificate],
    roots: Sequence[x509.Certificate],
    now: datetime,
    limits: Limits | None = None,
    *,
    site_cas: Sequence[x509.Certificate] = (),
) -> VerifiedChain:
    """Validate a device (client) chain at ``now``; the SANs name the device.

    ``intermediates`` are what the peer sent: bounded by
    ``Limits.max_intermediates``. ``site_cas`` are the issuing CAs the site
    itself trusts (every device-CA generation, under every root): they are
    the server's own trust store, not the peer's, so no count limits them;
    only those that can have issued the leaf reach the path builder.
    """
    limits = limits or Limits()
    _check_counts(intermediates, limits)
    intermediates = [*intermediates, *issuers_of(leaf, site_cas)]
    verifier = (
        PolicyBuilder()
        .store(Store(list(roots)))
        .time(now)
        .max_chain_depth(limits.max_chain_depth)
        .build_client_verifier()
    )
    try:
        verified = verifier.verify(leaf, list(intermediates))
    except VerificationError as e:
        raise ChainError(f"client chain does not validate: {e}") from e
    return VerifiedChain(chain=tuple(verified.chain), subjects=tuple(verified.subjects or ()))


def verify_pins(chain: VerifiedChain, pins: Iterable[str]) -> str:
    """Return the pin that matched; PinError when no certificate in the chain is pinned.

    RFC 7469 §2.6: the pin check runs over the *validated* chain, never over
    whatever certificates the peer happened to send.
    """
    wanted = set(pins)
    if not wanted:
        raise PinError("no pins configured: refusing to trust an unpinned connection")
    for cert in chain.chain:
        pin = spki_pin(cert)
        if pin in wanted:
            return pin
    raise PinError("no certificate in the validated chain matches a pinned SPKI")


def verify_crl(
    crl_data: bytes, issuer: x509.Certificate, now: datetime
) -> x509.CertificateRevocationList:
    """Parse a CRL, check its signature against ``issuer`` and that it is current."""
    try:
        if crl_data.lstrip().startswith(b"-----BEGIN"):
            crl = x509.load_pem_x509_crl(crl_data)
        else:
            crl = x509.load_der_x509_crl(crl_data)
    except ValueError as e:
        raise PKIError(f"CRL cannot be parsed: {e}") from e
    if crl.issuer != issuer.subject:
        raise PKIError("CRL was not issued by this CA")
    public_key = issuer.public_key()
    try:
        valid = crl.is_signature_valid(public_key)  # type: ignore[arg-type]
    except (TypeError, ValueError) as e:
        raise PKIError("CRL signature cannot be checked") from e
    if not valid:
        raise PKIError("CRL signature does not verify")
    next_update = crl.next_update_utc
    if next_update is not None and next_update < now:
        raise PKIError(f"CRL expired at {next_update.isoformat()}")
    return crl


def check_not_revoked(cert: x509.Certificate, crl: x509.CertificateRevocationList) -> None:
    if crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None:
        raise RevokedError(f"certificate {cert.serial_number:x} is revoked")
