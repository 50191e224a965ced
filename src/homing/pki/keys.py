"""Key generation, PEM encoding and SPKI pins (RFC 7469)."""

from __future__ import annotations

import base64
import hashlib

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
    PublicKeyTypes,
)

__all__ = [
    "generate_signing_key",
    "generate_tls_key",
    "private_key_pem",
    "public_key_pem",
    "spki_der",
    "spki_pin",
]


def generate_tls_key() -> ec.EllipticCurvePrivateKey:
    """ECDSA P-256: the curve the widest range of device TLS stacks supports."""
    return ec.generate_private_key(ec.SECP256R1())


def generate_signing_key() -> ed25519.Ed25519PrivateKey:
    """Ed25519 for TUF metadata keys: they never touch a TLS stack."""
    return ed25519.Ed25519PrivateKey.generate()


def spki_der(subject: x509.Certificate | PublicKeyTypes) -> bytes:
    """The DER SubjectPublicKeyInfo: how the server records and compares a device's key."""
    public_key = subject.public_key() if isinstance(subject, x509.Certificate) else subject
    return public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def spki_pin(subject: x509.Certificate | PublicKeyTypes) -> str:
    """Return the RFC 7469 §2.4 pin: base64(SHA-256(DER SubjectPublicKeyInfo))."""
    return base64.b64encode(hashlib.sha256(spki_der(subject)).digest()).decode("ascii")


def private_key_pem(
    key: CertificateIssuerPrivateKeyTypes | ed25519.Ed25519PrivateKey,
    passphrase: bytes | None,
) -> bytes:
    """PKCS#8 PEM, encrypted with the best scheme cryptography offers when a passphrase is set."""
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase)
        if passphrase
        else serialization.NoEncryption()
    )
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )


def public_key_pem(key: PublicKeyTypes) -> bytes:
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
