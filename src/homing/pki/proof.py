"""Key-proof for recovery: a device signs a fresh server nonce with its registered key.

The signed message binds a context string, the nonce and the exact CSR the
device submits, so a proof cannot be replayed for another request or reused
in another protocol. The signature is plain ECDSA with SHA-256 from
cryptography (or the TPM that holds the device key, through OpenSSL's
provider); homing defines only what is signed.
"""

from __future__ import annotations

from typing import Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from homing.errors import AuthError

__all__ = ["proof_message", "sign_recovery_proof", "verify_recovery_proof"]

_CONTEXT = b"homing-recovery-v1\x00"


def proof_message(nonce: str, csr_der: bytes) -> bytes:
    return _CONTEXT + nonce.encode("ascii") + b"\x00" + csr_der


class ProofSigner(Protocol):
    """An ECDSA key that signs: a ``cryptography`` key, or one a TPM holds."""

    def sign(self, data: bytes, signature_algorithm: ec.ECDSA, /) -> bytes: ...


def sign_recovery_proof(key: ProofSigner, nonce: str, csr_der: bytes) -> bytes:
    return key.sign(proof_message(nonce, csr_der), ec.ECDSA(hashes.SHA256()))


def verify_recovery_proof(spki_der: bytes, nonce: str, csr_der: bytes, signature: bytes) -> None:
    """Raise AuthError unless ``signature`` was made by the key in ``spki_der``."""
    try:
        public_key = serialization.load_der_public_key(spki_der)
    except ValueError as e:
        raise AuthError("the registered device key cannot be loaded") from e
    if not isinstance(public_key, ec.EllipticCurvePublicKey):
        raise AuthError("the registered device key is not an ECDSA key")
    try:
        public_key.verify(signature, proof_message(nonce, csr_der), ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError) as e:
        raise AuthError("the recovery proof does not verify with the registered key") from e
