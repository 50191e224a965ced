"""Key stores: where private keys live, behind one interface.

Every part of homing that signs asks a :class:`KeyStore` for a key by name,
so a PKCS#11 token or a TPM can replace the file store without touching the
authority or the trust repository: such a store returns key objects that
implement cryptography's private-key interfaces and never expose the key.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Protocol, runtime_checkable

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from homing.errors import KeyStoreError
from homing.fsutil import atomic_write, safe_name
from homing.pki.keys import private_key_pem

__all__ = [
    "PASSPHRASE_ENV",
    "FileKeyStore",
    "KeyStore",
    "PrivateKey",
]

log = logging.getLogger(__name__)

PASSPHRASE_ENV = "HOMING_KEY_PASSPHRASE"  # noqa: S105 - the variable name, not a secret

PrivateKey = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


@runtime_checkable
class KeyStore(Protocol):
    """The seam every signer goes through."""

    def load(self, name: str) -> PrivateKey: ...

    def store(self, name: str, key: PrivateKey) -> None: ...

    def exists(self, name: str) -> bool: ...

    def remove(self, name: str) -> None: ...

    def generate(self, name: str, kind: str = "tls") -> PrivateKey:
        """A new key under ``name``: ``tls`` (ECDSA P-256) or ``signing`` (TUF roles)."""
        ...


class FileKeyStore:
    """PKCS#8 PEM files in one directory, encrypted with a passphrase.

    ``unsafe_plaintext=True`` is for development repositories only: keys are
    written unencrypted and a warning is logged every time the store opens.
    """

    def __init__(
        self,
        directory: Path,
        passphrase: bytes | None,
        *,
        unsafe_plaintext: bool = False,
        warn: bool = True,
    ) -> None:
        if not passphrase and not unsafe_plaintext:
            raise KeyStoreError(
                f"a passphrase is required for the key store at {directory}: "
                f"set {PASSPHRASE_ENV} or use a development repository"
            )
        self.directory = directory
        self._passphrase = passphrase or None
        self.unsafe_plaintext = unsafe_plaintext and not passphrase
        if self.unsafe_plaintext and warn:
            log.warning(
                "UNSAFE: key store %s holds UNENCRYPTED private keys (development mode)",
                directory,
            )

    def path(self, name: str) -> Path:
        return self.directory / f"{safe_name(name, 'key name')}.key.pem"

    def exists(self, name: str) -> bool:
        return self.path(name).is_file()

    def store(self, name: str, key: PrivateKey) -> None:
        atomic_write(self.path(name), private_key_pem(key, self._passphrase), mode=0o600)

    def remove(self, name: str) -> None:
        self.path(name).unlink(missing_ok=True)

    def generate(self, name: str, kind: str = "tls") -> PrivateKey:
        from homing.pki.keys import generate_signing_key, generate_tls_key

        if kind not in ("tls", "signing"):
            raise KeyStoreError(f"unknown key kind {kind!r}")
        key: PrivateKey = generate_tls_key() if kind == "tls" else generate_signing_key()
        self.store(name, key)
        return key

    def load(self, name: str) -> PrivateKey:
        path = self.path(name)
        try:
            data = path.read_bytes()
        except OSError as e:
            raise KeyStoreError(f"cannot read key {name!r} at {path}: {e.strerror}") from e
        return load_private_key_pem(data, self._passphrase, str(path))


def load_private_key_pem(data: bytes, passphrase: bytes | None, where: str) -> PrivateKey:
    """Parse a PEM private key, turning every failure into one KeyStoreError."""
    encrypted = b"ENCRYPTED" in data
    if encrypted and not passphrase:
        raise KeyStoreError(f"key at {where} is encrypted: set {PASSPHRASE_ENV}")
    try:
        key = serialization.load_pem_private_key(data, passphrase if encrypted else None)
    except (ValueError, TypeError) as e:
        reason = "wrong passphrase or damaged file" if encrypted else "not a PEM private key"
        raise KeyStoreError(f"cannot load key at {where}: {reason}") from e
    if not isinstance(key, ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey):
        raise KeyStoreError(f"key at {where} is of an unsupported type {type(key).__name__}")
    return key
