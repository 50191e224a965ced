"""The device key on a PKCS#11 token (a secure element, a smartcard, SoftHSM2).

The key is made on the token (sensitive, never extractable) and every use of
it happens there: the CSR of an enrollment, re-enrollment or recovery and
the key proof of a recovery through ``python-pkcs11`` (homing.pki.pkcs11_store,
the binding the site's own token keys use), the mutual TLS handshake through
OpenSSL's pkcs11 engine (homing.agent.token_tls). The state directory keeps
only where the key is: its PKCS#11 URI (RFC 7512) in ``key.pem``, with the
module in the URI's ``module-path`` attribute, e.g.
``pkcs11:token=device;object=homing-device;type=private?module-path=/usr/lib/softhsm/libsofthsm2.so``.
The token's user PIN is never written (homing.agent.token_pin).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, unquote

from cryptography.hazmat.primitives.asymmetric import ec

from homing.agent.token_pin import token_pin
from homing.errors import ConfigError, KeyStoreError
from homing.fsutil import atomic_write
from homing.pki.pkcs11_store import Pkcs11KeyStore, TokenConfig
from homing.pki.profiles import device_csr

__all__ = ["KEY_LABEL", "TokenDeviceKey", "TokenKeyRef"]

# The device key's label on the token: one device, one key.
KEY_LABEL = "homing-device"
URI_PREFIX = "pkcs11:"


@dataclass(frozen=True)
class TokenKeyRef:
    """Which key: the PKCS#11 module, the token's label and the key's label."""

    module: str
    token: str
    label: str = KEY_LABEL

    def uri(self) -> str:
        """The key's PKCS#11 URI without the module (what OpenSSL's engine reads)."""
        return f"{URI_PREFIX}token={_escape(self.token)};object={_escape(self.label)};type=private"

    def full_uri(self) -> str:
        """The URI with the module: all a reader needs to find the key again."""
        return f"{self.uri()}?module-path={_escape(self.module)}"

    @classmethod
    def parse(cls, text: str, where: str) -> TokenKeyRef:
        """The reference in ``text`` (a URI written by :meth:`full_uri`)."""
        text = text.strip()
        if not text.startswith(URI_PREFIX):
            raise ConfigError(f"{where}: not a PKCS#11 URI")
        path, _, query = text[len(URI_PREFIX) :].partition("?")
        fields = _attributes(path, ";", where) | _attributes(query, "&", where)
        try:
            return cls(fields["module-path"], fields["token"], fields["object"])
        except KeyError as e:
            raise ConfigError(f"{where}: the PKCS#11 URI names no {e.args[0]}") from e

    def write(self, path: Path) -> None:
        atomic_write(path, (self.full_uri() + "\n").encode(), mode=0o600)

    @classmethod
    def read(cls, path: Path) -> TokenKeyRef:
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"cannot read the device key's PKCS#11 URI {path}: {e}") from e
        return cls.parse(text, str(path))


def _escape(value: str) -> str:
    return quote(value, safe="/-._~")


def _attributes(part: str, separator: str, where: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    for item in filter(None, part.split(separator)):
        name, sep, value = item.partition("=")
        if not sep or not value:
            raise ConfigError(f"{where}: a PKCS#11 URI attribute without a value: {item!r}")
        fields[name] = unquote(value)
    return fields


class TokenDeviceKey:
    """The device key on the token: signs there, its private half never readable."""

    def __init__(self, ref: TokenKeyRef) -> None:
        self.ref = ref
        store = Pkcs11KeyStore(TokenConfig(ref.module, ref.token, token_pin()))
        key = store.load(ref.label)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        self._key = key

    @classmethod
    def create(cls, ref: TokenKeyRef, path: Path) -> TokenDeviceKey:
        """A new P-256 key made on the token (replacing one of the same label), named at
        ``path``."""
        store = Pkcs11KeyStore(TokenConfig(ref.module, ref.token, token_pin()))
        store.generate(ref.label)
        ref.write(path)
        return cls(ref)

    def public_key(self) -> ec.EllipticCurvePublicKey:
        return self._key.public_key()

    def sign(self, data: bytes, signature_algorithm: ec.ECDSA, /) -> bytes:
        try:
            return self._key.sign(data, signature_algorithm)
        except KeyStoreError:
            raise
        except Exception as e:  # python-pkcs11's own errors
            raise KeyStoreError(f"the token refused to sign: {type(e).__name__}: {e}") from e

    def csr(self, device_id: str) -> bytes:
        return device_csr(self._key, device_id)
