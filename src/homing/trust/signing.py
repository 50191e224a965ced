"""Bridges from cryptography keys to python-tuf signers and public keys."""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from securesystemslib.signer import CryptoSigner, Signer, SSlibKey

__all__ = ["signer_for", "tuf_key"]


def tuf_key(public_key: ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey) -> SSlibKey:
    """The TUF public key (keyid = hash of its canonical form) for ``public_key``."""
    return SSlibKey.from_crypto(public_key)


def signer_for(private_key: ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey) -> Signer:
    """The TUF signer for a key; a key on a PKCS#11 token brings its own (HSMSigner)."""
    own = getattr(private_key, "tuf_signer", None)
    if callable(own):
        signer = own()
        assert isinstance(signer, Signer)
        return signer
    return CryptoSigner(private_key, tuf_key(private_key.public_key()))
