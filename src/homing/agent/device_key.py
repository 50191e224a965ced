"""The device's own key, in a file or held by a TPM 2.0, and the three things done with it.

The agent uses its key for mutual TLS (handed to the TLS stack as a file
path), for the CSR of a re-enrollment or a recovery, and for the key proof
of a recovery. With ``key_store = "file"`` the key is a PKCS#8 file in the
state directory and ``cryptography`` signs. With ``key_store = "tpm2"`` the
key is made inside the TPM and never leaves it: the state directory keeps
only the TPM's wrapped blob (``-----BEGIN TSS2 PRIVATE KEY-----``), which
only that TPM can use. With ``key_store = "pkcs11"`` the key is made on a
token and ``key.pem`` holds its PKCS#11 URI (homing.agent.token_key). OpenSSL's
``tpm2`` provider (Debian's tpm2-openssl)
signs with it: the ``openssl`` command for the CSR and the proof, and the
agent's TLS stack when ``OPENSSL_CONF`` activates the provider
(``deploy/openssl-tpm2.cnf``, set by the agent's unit). The TPM is reached
as the provider finds it: the kernel's resource manager ``/dev/tpmrm0`` by
default, or ``TPM2OPENSSL_TCTI``.
"""

from __future__ import annotations

import shutil
import ssl
import subprocess
import tempfile
from pathlib import Path
from typing import Protocol

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from homing.agent.token_key import URI_PREFIX, TokenDeviceKey, TokenKeyRef
from homing.errors import ConfigError, KeyStoreError
from homing.fsutil import atomic_write
from homing.pki.keys import generate_tls_key
from homing.pki.keystore import load_private_key_pem
from homing.pki.profiles import device_csr, device_uri

__all__ = [
    "KEY_STORES",
    "DeviceKey",
    "SoftwareKey",
    "TpmKey",
    "create_key",
    "load_identity",
    "load_key",
]

KEY_STORES = ("file", "tpm2", "pkcs11")

# The provider signs with the key it holds; OpenSSL 3.0 picks a signature
# implementation by property, not by key, so the TPM's is preferred (and
# nothing else of the TPM's: deploy/openssl-tpm2.cnf says the same).
PROVIDER_ARGS = ("-provider", "tpm2", "-provider", "default", "-propquery", "?tpm2.signature")
# Making the key: the TPM's key generation.
_MAKE_IN_TPM = ("-provider", "tpm2", "-provider", "default", "-propquery", "?provider=tpm2")


class DeviceKey(Protocol):
    """What the agent does with its key, wherever the key is."""

    def public_key(self) -> ec.EllipticCurvePublicKey: ...

    def sign(self, data: bytes, signature_algorithm: ec.ECDSA, /) -> bytes: ...

    def csr(self, device_id: str) -> bytes:
        """The DER CSR: this key, named by the device's URI and nothing else."""
        ...


class SoftwareKey:
    """An ECDSA key in a file of the state directory, used through ``cryptography``."""

    def __init__(self, key: ec.EllipticCurvePrivateKey) -> None:
        self.private = key

    def public_key(self) -> ec.EllipticCurvePublicKey:
        return self.private.public_key()

    def sign(self, data: bytes, signature_algorithm: ec.ECDSA, /) -> bytes:
        return self.private.sign(data, signature_algorithm)

    def csr(self, device_id: str) -> bytes:
        return device_csr(self.private, device_id)


class TpmKey:
    """A P-256 key inside a TPM 2.0; ``path`` is its wrapped blob, useless elsewhere."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._public: ec.EllipticCurvePublicKey | None = None

    def public_key(self) -> ec.EllipticCurvePublicKey:
        if self._public is None:
            pem = _openssl("pkey", "-in", str(self.path), "-pubout", what="read the TPM key")
            key = serialization.load_pem_public_key(pem)
            if not isinstance(key, ec.EllipticCurvePublicKey):
                raise KeyStoreError(f"{self.path}: the TPM key is not an ECDSA key")
            self._public = key
        return self._public

    def sign(self, data: bytes, signature_algorithm: ec.ECDSA, /) -> bytes:
        if not isinstance(signature_algorithm.algorithm, hashes.SHA256):
            raise KeyStoreError("the TPM key signs with ECDSA over SHA-256 only")
        with tempfile.NamedTemporaryFile() as message:
            message.write(data)
            message.flush()
            return _openssl(
                "pkeyutl",
                "-sign",
                "-inkey",
                str(self.path),
                "-rawin",
                "-digest",
                "sha256",
                "-in",
                message.name,
                what="sign with the TPM key",
            )

    def csr(self, device_id: str) -> bytes:
        der = _openssl(
            "req",
            "-new",
            "-key",
            str(self.path),
            "-subj",
            "/",
            "-addext",
            f"subjectAltName=URI:{device_uri(device_id)}",
            "-outform",
            "DER",
            what="make a CSR with the TPM key",
        )
        der = _ecdsa_algorithm_without_parameters(der)
        try:
            request = x509.load_der_x509_csr(der)
        except ValueError as e:
            raise KeyStoreError(f"the TPM made a CSR that cannot be read: {e}") from e
        if request.public_key() != self.public_key() or not request.is_signature_valid:
            raise KeyStoreError("the TPM made a CSR that does not verify with its own key")
        return der


# ecdsa-with-SHA256 (1.2.840.10045.4.3.2) as RFC 5758 3.2 says: no parameters.
_ECDSA_SHA256 = bytes.fromhex("300a06082a8648ce3d040302")
_ECDSA_SHA256_WITH_NULL = bytes.fromhex("300c06082a8648ce3d0403020500")


def _ecdsa_algorithm_without_parameters(der: bytes) -> bytes:
    """The CSR with its signature algorithm written as RFC 5758 says.

    Debian's tpm2-openssl (1.1) writes ecdsa-with-SHA256 with a NULL
    parameter, which strict DER readers (``cryptography``, so the home
    server) refuse. The field is outside what is signed, so rewriting it
    leaves the signature as it was; the caller checks that it verifies.
    """
    tag, body = der[0], _der_body(der)
    if tag != 0x30:
        raise KeyStoreError("the TPM made a CSR that is not a DER sequence")
    tbs_end = len(_der_header(body)) + len(_der_body(body))
    tbs, rest = body[:tbs_end], body[tbs_end:]
    if not rest.startswith(_ECDSA_SHA256_WITH_NULL):
        return der
    rewritten = tbs + _ECDSA_SHA256 + rest[len(_ECDSA_SHA256_WITH_NULL) :]
    return b"\x30" + _der_length(len(rewritten)) + rewritten


def _der_header(element: bytes) -> bytes:
    """The tag and length octets that start ``element``."""
    if len(element) < 2:
        raise KeyStoreError("the TPM made a truncated CSR")
    first = element[1]
    if first < 0x80:
        return element[:2]
    return element[: 2 + (first & 0x7F)]


def _der_body(element: bytes) -> bytes:
    header = _der_header(element)
    size = header[1] if header[1] < 0x80 else int.from_bytes(header[2:], "big")
    body = element[len(header) : len(header) + size]
    if len(body) != size:
        raise KeyStoreError("the TPM made a truncated CSR")
    return body


def _der_length(size: int) -> bytes:
    if size < 0x80:
        return bytes([size])
    octets = size.to_bytes((size.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(octets)]) + octets


def create_key(store: str, path: Path, token: TokenKeyRef | None = None) -> DeviceKey:
    """A new device key at ``path``: generated here, inside the TPM, or on ``token``."""
    if store == "pkcs11":
        if token is None:
            raise ConfigError(
                "a key on a PKCS#11 token needs the token: --pkcs11-module and --pkcs11-token"
            )
        return TokenDeviceKey.create(token, path)
    if store == "file":
        key = generate_tls_key()
        atomic_write(
            path,
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
            mode=0o600,
        )
        return SoftwareKey(key)
    if store == "tpm2":
        blob = _openssl(
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "group:P-256",
            what="make a key in the TPM",
            provider=_MAKE_IN_TPM,
        )
        if not blob.startswith(b"-----BEGIN TSS2 PRIVATE KEY-----"):
            raise KeyStoreError("the tpm2 provider did not make a TPM-held key")
        atomic_write(path, blob, mode=0o600)
        return TpmKey(path)
    raise ConfigError(f"key_store must be one of {', '.join(KEY_STORES)}, not {store!r}")


def load_key(store: str, path: Path) -> DeviceKey:
    """The device key the state directory names, for ``store``."""
    if store == "pkcs11":
        return TokenDeviceKey(TokenKeyRef.read(path))
    if store == "tpm2":
        if not path.exists():
            raise ConfigError(f"cannot read the device key: {path} does not exist")
        return TpmKey(path)
    if store != "file":
        raise ConfigError(f"key_store must be one of {', '.join(KEY_STORES)}, not {store!r}")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"cannot read the device key: {e.strerror}") from e
    key = load_private_key_pem(data, None, str(path))
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ConfigError("the device key must be an ECDSA key")
    return SoftwareKey(key)


def load_identity(context: ssl.SSLContext, cert_file: Path, key_file: Path) -> None:
    """Give ``context`` the device certificate and its key, wherever the key is kept."""
    if _starts_with(key_file, URI_PREFIX.encode()):
        from homing.agent.token_tls import use_token_key

        use_token_key(context, cert_file, TokenKeyRef.read(key_file))
        return
    try:
        context.load_cert_chain(cert_file, key_file)
    except (ssl.SSLError, OSError) as e:
        if _starts_with(key_file, b"-----BEGIN TSS2 PRIVATE KEY-----"):
            raise ConfigError(
                f"the device key {key_file} is held by the TPM, and this process's OpenSSL "
                "cannot use it: start the agent with OPENSSL_CONF naming a configuration "
                "that activates the tpm2 provider (deploy/openssl-tpm2.cnf; docs/agent.md)"
            ) from e
        raise ConfigError(f"cannot load the device certificate {cert_file}: {e}") from e


def _starts_with(key_file: Path, marker: bytes) -> bool:
    """Whether ``key_file`` begins with ``marker``: a TPM's wrapped blob, a token's URI."""
    try:
        with open(key_file, "rb") as f:
            return f.read(len(marker)) == marker
    except OSError:
        return False


def _openssl(
    command: str, *args: str, what: str, provider: tuple[str, ...] = PROVIDER_ARGS
) -> bytes:
    """Run ``openssl COMMAND`` with the TPM's provider; its output, or one clear error."""
    openssl = shutil.which("openssl")
    if openssl is None:
        raise KeyStoreError(f"cannot {what}: the openssl command is not installed")
    try:
        done = subprocess.run(  # noqa: S603 (fixed arguments and homing's own paths)
            [openssl, command, *provider, *args],
            capture_output=True,
            timeout=60,
            check=False,
        )
    except subprocess.TimeoutExpired as e:
        raise KeyStoreError(f"cannot {what}: the TPM did not answer within 60 s") from e
    if done.returncode != 0:
        lines = [line for line in done.stderr.decode(errors="replace").splitlines() if line]
        reason = lines[-1] if lines else f"openssl exited {done.returncode}"
        raise KeyStoreError(f"cannot {what}: {reason}")
    return done.stdout
