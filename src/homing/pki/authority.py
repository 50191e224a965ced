"""Certificate authorities: the offline root, the issuing CAs, and issuance.

The hierarchy is root CA -> {server-issuing CA, device-issuing CA} -> leaves.
Issuing CAs carry ``pathLen=0`` and name constraints, so even a stolen
issuing key cannot mint a certificate for another host (server CA) or for
any DNS name or IP address at all (device CA).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from homing.config import Validity
from homing.errors import PKIError, PolicyError
from homing.pki.keys import spki_pin
from homing.pki.ledger import IssuedRecord, Ledger
from homing.pki.profiles import (
    ApprovedRequest,
    Profile,
    approve_csr,
    device_uri,
    split_hosts,
)

__all__ = [
    "DEVICE_CA_DNS_SUBTREE",
    "Authority",
    "make_issuing_ca",
    "make_root_ca",
]

# The device CA may only name DNS hosts under this reserved (RFC 6761 .invalid)
# subtree, which means: none that resolve.
DEVICE_CA_DNS_SUBTREE = "devices.homing.invalid"
_SERIAL_ATTEMPTS = 8


def _name(common_name: str, organization: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _ca_key_usage() -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=False,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=True,
        crl_sign=True,
        encipher_only=False,
        decipher_only=False,
    )


def make_root_ca(
    key: ec.EllipticCurvePrivateKey,
    now: datetime,
    *,
    organization: str = "homing",
    common_name: str = "homing root CA",
    validity: Validity | None = None,
) -> x509.Certificate:
    """Self-sign the offline root CA (pathLen 1: it only signs issuing CAs)."""
    validity = validity or Validity()
    name = _name(common_name, organization)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - validity.backdate)
        .not_valid_after(now + validity.root_ca)
        .add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
        .add_extension(_ca_key_usage(), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )


def make_issuing_ca(
    kind: str,
    public_key: ec.EllipticCurvePublicKey,
    root_cert: x509.Certificate,
    root_key: ec.EllipticCurvePrivateKey,
    now: datetime,
    *,
    hosts: list[str] | tuple[str, ...] = (),
    generation: int = 1,
    validity: Validity | None = None,
) -> x509.Certificate:
    """Sign an issuing CA for ``kind`` ("server" or "device") under the root.

    RFC 5280 §4.2.1.10: the server CA is constrained to the configured hosts;
    the device CA is denied every IP address and every real DNS name.
    """
    validity = validity or Validity()
    if kind == "server":
        dns, ips = split_hosts(hosts)
        if not dns and not ips:
            raise PKIError("a server-issuing CA needs at least one host name")
        permitted: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
        permitted += [x509.IPAddress(ipaddress.ip_network(ip)) for ip in ips]
        constraints = x509.NameConstraints(permitted_subtrees=permitted, excluded_subtrees=None)
        eku = ExtendedKeyUsageOID.SERVER_AUTH
    elif kind == "device":
        constraints = x509.NameConstraints(
            permitted_subtrees=[x509.DNSName(DEVICE_CA_DNS_SUBTREE)],
            excluded_subtrees=[
                x509.IPAddress(ipaddress.ip_network("0.0.0.0/0")),
                x509.IPAddress(ipaddress.ip_network("::/0")),
            ],
        )
        eku = ExtendedKeyUsageOID.CLIENT_AUTH
    else:
        raise PKIError(f"unknown issuing CA kind {kind!r}")
    organization = root_cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    org = str(organization[0].value) if organization else "homing"
    not_after = min(now + validity.issuing_ca, root_cert.not_valid_after_utc)
    return (
        x509.CertificateBuilder()
        .subject_name(_name(f"homing {kind}-issuing CA {generation}", org))
        .issuer_name(root_cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - validity.backdate)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_ca_key_usage(), critical=True)
        .add_extension(constraints, critical=True)
        .add_extension(x509.ExtendedKeyUsage([eku]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(root_key.public_key()),
            critical=False,
        )
        .sign(root_key, hashes.SHA256())
    )


@dataclass
class Authority:
    """An issuing CA that signs approved requests and keeps the record."""

    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey
    ledger: Ledger
    validity: Validity = field(default_factory=Validity)

    def __post_init__(self) -> None:
        self.pin = spki_pin(self.certificate)
        self._aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key())

    def issue_csr(
        self,
        csr_data: bytes,
        profile: Profile,
        now: datetime,
        *,
        device_id: str | None = None,
    ) -> x509.Certificate:
        """Approve a CSR under ``profile`` and sign it; PolicyError says why not."""
        return self.issue(approve_csr(csr_data, profile, device_id=device_id), now)

    def issue(self, request: ApprovedRequest, now: datetime) -> x509.Certificate:
        profile = request.profile
        not_before = now - self.validity.backdate
        # A leaf never outlives its issuer: RFC 5280 path validation would
        # reject it at the end anyway, and an honest expiry helps renewal.
        not_after = min(now + profile.validity, self.certificate.not_valid_after_utc)
        if not_after <= now:
            raise PKIError("the issuing CA has expired; rotate it before issuing")
        serial = self._fresh_serial()
        subject = self._subject(request)
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.certificate.subject)
            .public_key(request.public_key)
            .serial_number(serial)
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage([profile.eku]), critical=False)
            # RFC 5280 §4.2.1.6: SAN is critical when the subject is empty, else not.
            .add_extension(
                x509.SubjectAlternativeName(list(request.san)), critical=not list(subject)
            )
            .add_extension(self._aki, critical=False)
        )
        certificate = builder.sign(self.key, hashes.SHA256())
        self.ledger.record(
            IssuedRecord(
                serial=serial,
                kind=profile.kind,
                subject_id=request.subject_id,
                issuer_pin=self.pin,
                not_after=not_after,
            )
        )
        return certificate

    def _subject(self, request: ApprovedRequest) -> x509.Name:
        """CN = the subject id; none for a server named only by IP address: OpenSSL checks
        a CN that looks like a host name against the CA's DNS name constraints, so
        ``CN=127.0.0.1`` under a CA constrained to DNS names fails every OpenSSL client
        (curl, mosquitto), though its IP SAN is permitted."""
        if request.profile.kind == "server":
            try:
                ipaddress.ip_address(request.subject_id)
            except ValueError:
                pass
            else:
                return x509.Name([])
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, request.subject_id[:64])])

    def _fresh_serial(self) -> int:
        # RFC 5280 §4.1.2.2 and CA/B BR 7.1: at least 64 bits of CSPRNG output;
        # random_serial_number gives 159 bits, i.e. 20 octets with a positive sign.
        for _ in range(_SERIAL_ATTEMPTS):
            serial = x509.random_serial_number()
            if not self.ledger.contains(serial):
                return serial
        raise PKIError("could not draw an unused serial number")  # pragma: no cover

    def revoke_serial(self, serial: int, now: datetime, reason: str = "unspecified") -> None:
        entry = self.ledger.get(serial)
        if entry is None or entry.issuer_pin != self.pin:
            raise PKIError(f"serial {serial:x} was not issued by this CA")
        self.ledger.revoke(serial, now, reason)

    def revoke_device(self, device_id: str, now: datetime, reason: str = "unspecified") -> int:
        """Revoke every certificate ever issued to ``device_id``; returns the count."""
        device_uri(device_id)  # refuse malformed ids with a clear reason
        entries = [e for e in self.ledger.by_subject(device_id) if e.kind == "device"]
        if not entries:
            raise PolicyError(f"no certificate was issued to device {device_id!r}")
        for entry in entries:
            self.ledger.revoke(entry.serial, now, reason)
        return len(entries)

    def crl(
        self, now: datetime, next_update: timedelta = timedelta(days=7)
    ) -> x509.CertificateRevocationList:
        """Sign a CRL of this CA's revoked certificates (RFC 5280 §5)."""
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.certificate.subject)
            .last_update(now)
            .next_update(now + next_update)
            .add_extension(x509.CRLNumber(int(now.timestamp() * 1000)), critical=False)
            .add_extension(self._aki, critical=False)
        )
        for entry in self.ledger.revoked(self.pin):
            assert entry.revoked_at is not None
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder()
                .serial_number(entry.serial)
                .revocation_date(entry.revoked_at)
                .build()
            )
        return builder.sign(self.key, hashes.SHA256())
