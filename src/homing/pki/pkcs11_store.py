"""Keys on a PKCS#11 token (an HSM, a smartcard, SoftHSM2), behind the ``KeyStore`` seam.

Keys are made on the token and never leave it (sensitive, not extractable).
One binding serves both sides: ``python-pkcs11``, the one securesystemslib's
``HSMSigner`` signs TUF metadata with. For X.509 (CA certificates, device
certificates, CRLs) a token key is a ``cryptography`` ``EllipticCurvePrivateKey``
whose ``sign`` runs ``CKM_ECDSA`` on the token; ``cryptography``'s builders
call exactly that method, so the whole issuance path is unchanged.

Only ECDSA P-256 lives here: TUF roles on a token use
``ecdsa-sha2-nistp256`` (what ``HSMSigner`` supports), and Python's ``ssl``
cannot use a token key, so the server's TLS key stays in the file store.
``LayeredKeyStore`` routes each key name to the token or the files by the
site's patterns.
"""

from __future__ import annotations

import fnmatch
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, utils

from homing.errors import KeyStoreError
from homing.pki.keystore import FileKeyStore, KeyStore, PrivateKey

__all__ = ["LayeredKeyStore", "Pkcs11KeyStore", "TokenConfig", "TokenKey", "token_key_id"]

_CURVE = "secp256r1"


def token_key_id(name: str) -> int:
    """The CKA_ID of a key: a number from its name (HSMSigner looks keys up by it)."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "big") or 1


@dataclass(frozen=True)
class TokenConfig:
    """Which token: the PKCS#11 module, the token's label, and the user PIN (from the edge)."""

    module: str
    token: str
    pin: str


class TokenKey(ec.EllipticCurvePrivateKey):
    """A P-256 private key that signs on the token; its private half cannot be read."""

    def __init__(self, store: Pkcs11KeyStore, name: str, public: ec.EllipticCurvePublicKey):
        self._store = store
        self.name = name
        self.key_id = token_key_id(name)
        self._public = public

    @property
    def config(self) -> TokenConfig:
        return self._store.config

    @property
    def curve(self) -> ec.EllipticCurve:
        return ec.SECP256R1()

    @property
    def key_size(self) -> int:
        return 256

    def public_key(self) -> ec.EllipticCurvePublicKey:
        return self._public

    def sign(
        self,
        data: bytes | bytearray | memoryview,
        signature_algorithm: ec.EllipticCurveSignatureAlgorithm,
    ) -> bytes:
        algorithm = signature_algorithm.algorithm
        if isinstance(algorithm, utils.Prehashed):
            digest = bytes(data)
        else:
            h = hashes.Hash(algorithm)
            h.update(data)
            digest = h.finalize()
        raw = self._store._sign(self.name, digest)
        half = len(raw) // 2
        r, s = int.from_bytes(raw[:half], "big"), int.from_bytes(raw[half:], "big")
        return utils.encode_dss_signature(r, s)

    def tuf_signer(self) -> Any:
        """securesystemslib's HSMSigner for this key (TUF metadata signed on the token)."""
        from securesystemslib.signer import HSMSigner, SSlibKey

        pin = self.config.pin
        return HSMSigner(
            self.key_id, SSlibKey.from_crypto(self._public), lambda _secret: pin, self.config.token
        )

    def _refuse(self, *_: Any) -> NoReturn:
        raise KeyStoreError(f"key {self.name!r} lives on the token and cannot be exported")

    def exchange(self, *args: Any) -> bytes:
        self._refuse()

    def private_numbers(self) -> ec.EllipticCurvePrivateNumbers:
        self._refuse()

    def private_bytes(self, *args: Any) -> bytes:
        self._refuse()

    def __copy__(self) -> TokenKey:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> TokenKey:
        return self


class Pkcs11KeyStore:
    """Keys on one token, found by label (the key's name)."""

    def __init__(self, config: TokenConfig) -> None:
        self.config = config
        self._lib = self.initialise(config.module, config.token)
        try:
            self._token = self._lib.get_token(token_label=config.token)
        except Exception as e:  # python-pkcs11 raises its own types
            raise KeyStoreError(
                f"cannot open PKCS#11 token {config.token!r} with {config.module}: "
                f"{type(e).__name__}: {e}"
            ) from e

    @staticmethod
    def initialise(module: str, token: str | None = None) -> Any:
        """The module, initialised for this process (python-pkcs11 keeps one per process)."""
        try:
            import pkcs11

            return pkcs11.lib(module)
        except Exception as e:  # python-pkcs11 raises its own types, and OSError
            what = f"PKCS#11 token {token!r}" if token else "the PKCS#11 module"
            raise KeyStoreError(f"cannot open {what} with {module}: {type(e).__name__}: {e}") from e

    def _session(self, rw: bool = False) -> Any:
        from pkcs11.exceptions import UserAlreadyLoggedIn

        try:
            return self._token.open(user_pin=self.config.pin, rw=rw)
        except UserAlreadyLoggedIn:
            # A PKCS#11 login belongs to the process, not the session: OpenSSL's
            # pkcs11 engine in this process (a device's TLS key) logged in already.
            return self._token.open(rw=rw)
        except Exception as e:
            raise KeyStoreError(
                f"cannot log in to PKCS#11 token {self.config.token!r}: {type(e).__name__}"
            ) from e

    def _find(self, session: Any, name: str, public: bool) -> Any:
        from pkcs11 import KeyType, ObjectClass
        from pkcs11.exceptions import NoSuchKey

        kind = ObjectClass.PUBLIC_KEY if public else ObjectClass.PRIVATE_KEY
        try:
            return session.get_key(kind, KeyType.EC, label=name)
        except NoSuchKey as e:
            raise KeyStoreError(f"no key {name!r} on token {self.config.token!r}") from e

    def exists(self, name: str) -> bool:
        with self._session() as session:
            try:
                self._find(session, name, public=True)
            except KeyStoreError:
                return False
        return True

    def load(self, name: str) -> PrivateKey:
        from pkcs11.util.ec import encode_ec_public_key

        with self._session() as session:
            self._find(session, name, public=False)
            public = self._find(session, name, public=True)
            der = encode_ec_public_key(public)
        key = serialization.load_der_public_key(der)
        assert isinstance(key, ec.EllipticCurvePublicKey)
        return TokenKey(self, name, key)

    def generate(self, name: str, kind: str = "tls") -> PrivateKey:
        """A new P-256 key pair made on the token (``kind`` is ignored: one type here)."""
        from pkcs11 import Attribute, KeyType
        from pkcs11.util import biginteger
        from pkcs11.util.ec import encode_named_curve_parameters

        self.remove(name)
        with self._session(rw=True) as session:
            params = session.create_domain_parameters(
                KeyType.EC,
                {Attribute.EC_PARAMS: encode_named_curve_parameters(_CURVE)},
                local=True,
            )
            params.generate_keypair(
                store=True,
                label=name,
                id=biginteger(token_key_id(name)),
                private_template={Attribute.SENSITIVE: True, Attribute.EXTRACTABLE: False},
            )
        return self.load(name)

    def store(self, name: str, key: PrivateKey) -> None:
        raise KeyStoreError(
            f"key {name!r} would be made outside the token: token keys are generated on it"
        )

    def remove(self, name: str) -> None:
        from pkcs11 import Attribute, KeyType, ObjectClass

        with self._session(rw=True) as session:
            for kind in (ObjectClass.PRIVATE_KEY, ObjectClass.PUBLIC_KEY):
                query = {
                    Attribute.CLASS: kind,
                    Attribute.KEY_TYPE: KeyType.EC,
                    Attribute.LABEL: name,
                }
                for obj in list(session.get_objects(query)):
                    obj.destroy()

    def _sign(self, name: str, digest: bytes) -> bytes:
        from pkcs11 import Mechanism

        with self._session() as session:
            key = self._find(session, name, public=False)
            try:
                return bytes(key.sign(digest, mechanism=Mechanism.ECDSA))
            except Exception as e:
                raise KeyStoreError(f"the token refused to sign with {name!r}: {e}") from e


class LayeredKeyStore:
    """New keys whose names match ``patterns`` are made on the token; the rest in files.

    A key is read from wherever it is: keys made before the token was set up
    stay in the file store until a rotation replaces them with token keys.
    """

    def __init__(self, files: FileKeyStore, token: Pkcs11KeyStore, patterns: Sequence[str]) -> None:
        self.files = files
        self.token = token
        self.patterns = tuple(patterns)

    def on_token(self, name: str) -> bool:
        return any(fnmatch.fnmatchcase(name, p) for p in self.patterns)

    def _holder(self, name: str) -> KeyStore:
        if self.on_token(name) and self.token.exists(name):
            return self.token
        return self.files

    def load(self, name: str) -> PrivateKey:
        return self._holder(name).load(name)

    def store(self, name: str, key: PrivateKey) -> None:
        (self.token if self.on_token(name) else self.files).store(name, key)

    def generate(self, name: str, kind: str = "tls") -> PrivateKey:
        if self.on_token(name):
            self.files.remove(name)
            return self.token.generate(name, kind)
        return self.files.generate(name, kind)

    def exists(self, name: str) -> bool:
        return self._holder(name).exists(name)

    def remove(self, name: str) -> None:
        if self.on_token(name):
            self.token.remove(name)
        self.files.remove(name)
