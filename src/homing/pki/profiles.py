"""Issuance profiles: what a CSR must look like to be signed.

The CA never copies names or extensions from a CSR. The profile decides
the subject, the SANs it accepts, the key types, the EKU and the lifetime;
the CSR only proposes a public key and names that the profile checks.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from datetime import timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, ExtensionOID

from homing.config import Limits, Validity
from homing.errors import PolicyError

__all__ = [
    "DEVICE_URI_PREFIX",
    "ApprovedRequest",
    "Profile",
    "approve_csr",
    "check_public_key",
    "check_signature_hash",
    "device_csr",
    "device_id_from_uri",
    "device_profile",
    "device_uri",
    "server_csr",
    "server_profile",
    "verify_leaf",
]

DEVICE_URI_PREFIX = "urn:homing:device:"
_DEVICE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def device_uri(device_id: str) -> str:
    if not _DEVICE_ID.fullmatch(device_id):
        raise PolicyError(
            f"invalid device id {device_id!r}: use 1-64 of A-Z a-z 0-9 . _ -, "
            "starting with a letter or digit"
        )
    return DEVICE_URI_PREFIX + device_id


def device_csr(key: ec.EllipticCurvePrivateKey, device_id: str) -> bytes:
    """The DER CSR a device sends: its key, named by its device URI and nothing else."""
    from cryptography.hazmat.primitives import hashes, serialization

    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(device_uri(device_id))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.DER)


def device_id_from_uri(uri: str) -> str:
    if not uri.startswith(DEVICE_URI_PREFIX):
        raise PolicyError(f"URI SAN {uri!r} is not a homing device name")
    device_id = uri[len(DEVICE_URI_PREFIX) :]
    device_uri(device_id)  # validates
    return device_id


@dataclass(frozen=True)
class Profile:
    """A certificate profile; ``kind`` is ``server`` or ``device``."""

    kind: str
    validity: timedelta
    curves: frozenset[str] = frozenset({"secp256r1"})
    # None refuses RSA keys entirely; device TLS stacks handle P-256 best.
    min_rsa_bits: int | None = None
    # Server profile: the only DNS names and IP addresses a certificate may carry.
    dns_names: frozenset[str] = field(default_factory=frozenset)
    ip_addresses: frozenset[str] = field(default_factory=frozenset)

    @property
    def eku(self) -> x509.ObjectIdentifier:
        if self.kind == "server":
            return ExtendedKeyUsageOID.SERVER_AUTH
        return ExtendedKeyUsageOID.CLIENT_AUTH


def server_csr(key: ec.EllipticCurvePrivateKey, hosts: list[str] | tuple[str, ...]) -> bytes:
    """The DER CSR for a server key, naming the server's hosts."""
    from cryptography.hazmat.primitives import hashes, serialization

    dns, ips = split_hosts(list(hosts))
    names: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
    names += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.DER)


def server_profile(hosts: list[str] | tuple[str, ...], validity: Validity | None = None) -> Profile:
    dns, ips = split_hosts(hosts)
    return Profile(
        kind="server",
        validity=(validity or Validity()).server,
        dns_names=frozenset(dns),
        ip_addresses=frozenset(ips),
    )


def device_profile(validity: timedelta | None = None) -> Profile:
    return Profile(kind="device", validity=validity or Validity().device)


def split_hosts(hosts: list[str] | tuple[str, ...]) -> tuple[list[str], list[str]]:
    """Split host names into DNS names and IP literals, refusing anything else."""
    dns: list[str] = []
    ips: list[str] = []
    for host in hosts:
        try:
            ips.append(str(ipaddress.ip_address(host)))
            continue
        except ValueError:
            pass
        label = r"(?!-)[a-z0-9-]{1,63}(?<!-)"
        if not re.fullmatch(rf"{label}(\.{label})*", host.lower()) or len(host) > 253:
            raise PolicyError(f"invalid host name {host!r}")
        dns.append(host.lower())
    return dns, ips


@dataclass(frozen=True)
class ApprovedRequest:
    """A CSR that passed its profile: the only thing the authority signs."""

    profile: Profile
    public_key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey
    subject_id: str
    san: tuple[x509.GeneralName, ...]


def approve_csr(
    csr_data: bytes,
    profile: Profile,
    *,
    device_id: str | None = None,
    limits: Limits | None = None,
) -> ApprovedRequest:
    """Check a CSR (PEM or DER) against ``profile`` and return what may be signed.

    Raises PolicyError naming the first rule the CSR breaks.
    """
    limits = limits or Limits()
    if len(csr_data) > limits.max_csr_bytes:
        raise PolicyError(f"CSR is {len(csr_data)} bytes; the limit is {limits.max_csr_bytes}")
    csr = _parse_csr(csr_data)
    # The algorithm is judged before the signature, so a weak hash is named as
    # such and never reported as a failed proof of possession.
    try:
        algorithm = csr.signature_hash_algorithm
    except Exception as e:  # an unknown signature algorithm OID raises here
        raise PolicyError("CSR signature algorithm is not supported") from e
    check_signature_hash(algorithm, "CSR")
    # RFC 2986 §3: the signature proves the requester holds the private key.
    try:
        valid_signature = csr.is_signature_valid
    except Exception as e:  # an unsupported signature algorithm raises here
        raise PolicyError("CSR signature cannot be checked") from e
    if not valid_signature:
        raise PolicyError("CSR signature does not verify: proof of possession failed")
    try:
        requested_key = csr.public_key()
    except ValueError as e:
        raise PolicyError(f"CSR public key is not supported: {e}") from e
    public_key = check_public_key(requested_key, profile)
    sans = _requested_sans(csr)
    if profile.kind == "device":
        subject_id, san = _device_names(sans, device_id)
    else:
        subject_id, san = _server_names(sans, profile)
    return ApprovedRequest(profile=profile, public_key=public_key, subject_id=subject_id, san=san)


def _parse_csr(data: bytes) -> x509.CertificateSigningRequest:
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_csr(data)
        return x509.load_der_x509_csr(data)
    except ValueError as e:
        form = "PEM" if data.lstrip().startswith(b"-----BEGIN") else "DER"
        raise PolicyError(
            f"the CSR cannot be parsed: it is not a PKCS#10 request in {form} "
            "(make one with `openssl req -new` or the device's key tool)"
        ) from e


# Ed25519 and Ed448 sign without a separate hash; homing keys never use them.
_ALLOWED_HASHES = frozenset({"sha256", "sha384", "sha512"})


def check_signature_hash(algorithm: hashes.HashAlgorithm | None, what: str) -> None:
    """Refuse SHA-1 and other weak or unknown hashes (CA/B Forum BR §7.1.3.2).

    No hash at all means an Ed25519/Ed448 signature: the key rule names that.
    """
    if algorithm is None:
        return
    name = algorithm.name
    if name not in _ALLOWED_HASHES:
        raise PolicyError(
            f"{what} is signed with {name.upper()}, which is not accepted: use SHA-256 or stronger"
        )


def verify_leaf(cert: x509.Certificate, profile: Profile) -> None:
    """The profile's key and signature rules, applied to a certificate someone presents.

    Issuance applies them to the CSR; every path that accepts a certificate
    (the TLS layer and a trusted proxy alike) applies them again here, so a
    certificate from another issuer under the same CA, or from before a
    policy change, is held to today's profile. Raises PolicyError.
    """
    try:
        algorithm = cert.signature_hash_algorithm
    except Exception as e:
        raise PolicyError("certificate signature algorithm is not supported") from e
    check_signature_hash(algorithm, "the certificate")
    try:
        key = cert.public_key()
    except ValueError as e:
        raise PolicyError(f"certificate public key is not supported: {e}") from e
    check_public_key(key, profile)


def check_public_key(key: object, profile: Profile) -> ec.EllipticCurvePublicKey | rsa.RSAPublicKey:
    """The key types and sizes a profile allows; PolicyError naming the rule otherwise."""
    if isinstance(key, ec.EllipticCurvePublicKey):
        if key.curve.name not in profile.curves:
            raise PolicyError(
                f"key curve {key.curve.name} is not allowed for {profile.kind} "
                f"certificates (allowed: {', '.join(sorted(profile.curves))})"
            )
        return key
    if isinstance(key, rsa.RSAPublicKey):
        if profile.min_rsa_bits is None:
            raise PolicyError(f"RSA keys are not allowed for {profile.kind} certificates")
        if key.key_size < profile.min_rsa_bits:
            raise PolicyError(
                f"RSA key of {key.key_size} bits is below the minimum of {profile.min_rsa_bits}"
            )
        return key
    kind = "Ed25519" if isinstance(key, ed25519.Ed25519PublicKey) else type(key).__name__
    raise PolicyError(f"key type {kind} is not allowed for {profile.kind} certificates")


def _requested_sans(csr: x509.CertificateSigningRequest) -> list[x509.GeneralName]:
    try:
        ext = csr.extensions.get_extension_for_oid(ExtensionOID.SUBJECT_ALTERNATIVE_NAME)
    except x509.ExtensionNotFound:
        return []
    except ValueError as e:
        raise PolicyError(f"CSR extensions cannot be parsed: {e}") from e
    assert isinstance(ext.value, x509.SubjectAlternativeName)
    return list(ext.value)


def _device_names(
    sans: list[x509.GeneralName], device_id: str | None
) -> tuple[str, tuple[x509.GeneralName, ...]]:
    uris = [n for n in sans if isinstance(n, x509.UniformResourceIdentifier)]
    others = [n for n in sans if not isinstance(n, x509.UniformResourceIdentifier)]
    if others:
        raise PolicyError("a device CSR may only name the device by a URI SAN")
    if len(uris) > 1:
        raise PolicyError("a device CSR must carry exactly one device URI SAN")
    if uris:
        requested = device_id_from_uri(uris[0].value)
        if device_id is not None and requested != device_id:
            raise PolicyError(
                f"CSR names device {requested!r} but the request is for {device_id!r}"
            )
        device_id = requested
    if device_id is None:
        raise PolicyError(f"a device CSR must carry a URI SAN {DEVICE_URI_PREFIX}<id>")
    return device_id, (x509.UniformResourceIdentifier(device_uri(device_id)),)


def _server_names(
    sans: list[x509.GeneralName], profile: Profile
) -> tuple[str, tuple[x509.GeneralName, ...]]:
    if not sans:
        raise PolicyError("a server CSR must name its host names in the SAN extension")
    out: list[x509.GeneralName] = []
    for name in sans:
        if isinstance(name, x509.DNSName):
            if name.value.lower() not in profile.dns_names:
                raise PolicyError(f"DNS name {name.value!r} is not a configured server host")
            out.append(x509.DNSName(name.value.lower()))
        elif isinstance(name, x509.IPAddress):
            if str(name.value) not in profile.ip_addresses:
                raise PolicyError(f"IP address {name.value} is not a configured server host")
            out.append(name)
        else:
            raise PolicyError(f"a server certificate may not carry {type(name).__name__} names")
    first = out[0]
    return str(first.value), tuple(out)
