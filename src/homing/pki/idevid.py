"""Factory identities: a manufacturer's CA vouches for a device (IEEE 802.1AR IDevID).

A device leaves the factory holding a certificate from its manufacturer's CA
(its IDevID) and the key for it. When it enrolls, that certificate is its
credential: no secret sits on the factory line. The operator imports the
manufacturer's CA certificates (the issuing CAs and their roots) and, where
the manufacturer publishes one, its CRLs. An IDevID is accepted when
cryptography's path builder takes it to one of those roots at the server's
time and no held CRL lists a certificate of its chain.

IDevIDs are made by many tools with many extension habits (no SAN, no
extended key usage, key usages for a TPM), so the leaf's extensions are not
held to the web PKI's rules; the CA certificates are. The device's id comes
from one field the operator names per manufacturer, never a guess between
several.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from cryptography.x509.oid import NameOID
from cryptography.x509.verification import (
    ClientVerifier,
    ExtensionPolicy,
    PolicyBuilder,
    Store,
    VerificationError,
)

from homing.errors import ChainError, ConfigError, PolicyError, RevokedError
from homing.pki.profiles import DEVICE_URI_PREFIX, device_id_from_uri, device_uri
from homing.pki.validate import issuers_of

__all__ = [
    "ID_SOURCES",
    "FactoryIdentity",
    "Manufacturer",
    "check_crls",
    "device_id_of",
    "parse_ca_bundle",
    "parse_crls",
    "verify_idevid",
]

# Where the device id is read from an IDevID: 802.1AR puts the device's serial
# number in the subject's serialNumber attribute; homing's own URI SAN; or a CN.
ID_SOURCES = ("serial-number", "uri", "common-name")

# A manufacturer's chain is short: IDevID, an issuing CA, a root.
_MAX_DEPTH = 4


@dataclass(frozen=True)
class Manufacturer:
    """One imported manufacturer CA, as the factory station it acts as."""

    name: str
    cas: tuple[x509.Certificate, ...]
    crls: tuple[x509.CertificateRevocationList, ...]
    id_from: str

    @classmethod
    def from_pem(cls, name: str, cas_pem: str, crls_pem: str | None, id_from: str) -> Manufacturer:
        """As the database keeps it (checked at import)."""
        return cls(
            name=name,
            cas=tuple(parse_ca_bundle(cas_pem.encode())),
            crls=tuple(parse_crls(crls_pem.encode()) if crls_pem else ()),
            id_from=id_from,
        )

    @property
    def roots(self) -> list[x509.Certificate]:
        """Self-signed CAs are the anchors; a bundle of issuing CAs only anchors at them."""
        roots = [ca for ca in self.cas if ca.subject == ca.issuer]
        return roots or list(self.cas)


@dataclass(frozen=True)
class FactoryIdentity:
    """An IDevID that validated: who vouched, for which device, with which certificate."""

    station: str
    device_id: str
    certificate: x509.Certificate

    @property
    def audit_detail(self) -> dict[str, str]:
        cert = self.certificate
        return {
            "idevid_serial": format(cert.serial_number, "x"),
            "idevid_issuer": cert.issuer.rfc4514_string(),
        }


def parse_ca_bundle(pem: bytes) -> list[x509.Certificate]:
    """The CA certificates of a manufacturer's PEM bundle; ConfigError if any is not a CA."""
    try:
        certs = x509.load_pem_x509_certificates(pem)
    except ValueError as e:
        raise ConfigError(f"the manufacturer CA file holds no PEM certificate: {e}") from e
    for cert in certs:
        try:
            constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        except x509.ExtensionNotFound:
            constraints = None
        if constraints is None or not constraints.ca:
            raise ConfigError(
                f"{cert.subject.rfc4514_string()} is not a CA certificate "
                "(import the manufacturer's CAs, not a device's IDevID)"
            )
    return certs


def parse_crls(pem: bytes) -> list[x509.CertificateRevocationList]:
    """Every CRL of a PEM (or one DER) file."""
    text = pem.decode("ascii", "replace")
    marker = "-----BEGIN X509 CRL-----"
    try:
        if marker not in text:
            return [x509.load_der_x509_crl(pem)]
        blocks = [marker + part for part in text.split(marker)[1:]]
        return [x509.load_pem_x509_crl(block.encode()) for block in blocks]
    except ValueError as e:
        raise ConfigError(f"the CRL file cannot be read: {e}") from e


def check_crls(
    crls: Sequence[x509.CertificateRevocationList],
    cas: Sequence[x509.Certificate],
    now: datetime,
) -> None:
    """Each CRL is signed by one of the manufacturer's CAs and still current."""
    for crl in crls:
        issuer = next((ca for ca in cas if _signed_by(crl, ca)), None)
        if issuer is None:
            raise ConfigError(
                f"the CRL of {crl.issuer.rfc4514_string()} is not signed by a CA of this "
                "manufacturer"
            )
        if crl.next_update_utc is not None and crl.next_update_utc < now:
            raise ConfigError(
                f"the CRL of {crl.issuer.rfc4514_string()} expired at "
                f"{crl.next_update_utc.isoformat()}: fetch the manufacturer's current one"
            )


def _signed_by(crl: x509.CertificateRevocationList, ca: x509.Certificate) -> bool:
    if crl.issuer != ca.subject:
        return False
    try:
        return crl.is_signature_valid(ca.public_key())  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False


def device_id_of(cert: x509.Certificate, id_from: str) -> str:
    """The device id an IDevID names in the field ``id_from``; PolicyError if it names none."""
    if id_from == "uri":
        try:
            sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound:
            sans = x509.SubjectAlternativeName([])
        uris = [
            u
            for u in sans.get_values_for_type(x509.UniformResourceIdentifier)
            if u.startswith(DEVICE_URI_PREFIX)
        ]
        if len(uris) != 1:
            raise PolicyError(f"the IDevID must carry exactly one URI SAN {DEVICE_URI_PREFIX}<id>")
        return device_id_from_uri(uris[0])
    oid = NameOID.SERIAL_NUMBER if id_from == "serial-number" else NameOID.COMMON_NAME
    values = cert.subject.get_attributes_for_oid(oid)
    if len(values) != 1:
        raise PolicyError(f"the IDevID's subject must carry exactly one {id_from} attribute")
    device_id = str(values[0].value)
    device_uri(device_id)  # the same rules as every device id
    return device_id


def _verifier(manufacturer: Manufacturer, now: datetime) -> ClientVerifier:
    return (
        PolicyBuilder()
        .store(Store(manufacturer.roots))
        .time(now)
        .max_chain_depth(_MAX_DEPTH)
        .extension_policies(
            ca_policy=ExtensionPolicy.webpki_defaults_ca(),
            ee_policy=ExtensionPolicy.permit_all(),
        )
        .build_client_verifier()
    )


def verify_idevid(
    leaf: x509.Certificate, manufacturers: Sequence[Manufacturer], now: datetime
) -> FactoryIdentity:
    """The factory identity ``leaf`` proves at ``now``.

    ChainError when no imported manufacturer issued it or its chain does not
    validate (expired included); RevokedError when a held CRL lists it or a
    CA above it; ConfigError when a CRL that would decide is out of date
    (fail closed); PolicyError when it names no device id.
    """
    for manufacturer in manufacturers:
        if not issuers_of(leaf, manufacturer.cas):
            continue
        intermediates = [ca for ca in manufacturer.cas if ca.subject != ca.issuer]
        verifier = _verifier(manufacturer, now)
        try:
            verified = verifier.verify(leaf, intermediates)
        except VerificationError as e:
            raise ChainError(f"the IDevID does not validate: {e}") from e
        _check_revocation(list(verified.chain), manufacturer, now)
        return FactoryIdentity(manufacturer.name, device_id_of(leaf, manufacturer.id_from), leaf)
    raise ChainError("the IDevID was not issued by an imported manufacturer CA")


def _check_revocation(
    chain: list[x509.Certificate], manufacturer: Manufacturer, now: datetime
) -> None:
    """Each certificate below the anchor against its issuer's CRL, where one is held."""
    for cert, issuer in itertools.pairwise(chain):
        for crl in manufacturer.crls:
            if not _signed_by(crl, issuer):
                continue
            if crl.next_update_utc is not None and crl.next_update_utc < now:
                raise ConfigError(
                    f"manufacturer {manufacturer.name!r}: the CRL of "
                    f"{issuer.subject.rfc4514_string()} expired at "
                    f"{crl.next_update_utc.isoformat()}; import a current one"
                )
            if crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None:
                raise RevokedError(
                    f"the manufacturer revoked {'the IDevID' if cert is chain[0] else 'its CA'} "
                    f"(serial {cert.serial_number:x})"
                )
