"""Which keys must never sit on the server, and the key store that knows it.

Offline keys: the X.509 root CA (``root-ca``, ``root-ca-gN``), the TUF root
keys (``tuf-root-*``), the targets key (it signs the pin policy) and the
firmware release key. Whoever takes a server holding them can publish new
pins or mint CAs, and the k-of-n root stops nothing. ``homing keys
move-offline`` takes them to removable media under a key holder's own
passphrase; from then on a ceremony that needs one reads it from the media
the operator mounts (``HOMING_OFFLINE_KEYS``), and the server refuses to
start while any is back in its store.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

from homing.errors import KeyStoreError
from homing.pki.keystore import FileKeyStore, KeyStore, PrivateKey

__all__ = ["OFFLINE_KEY_PATTERNS", "OfflineAwareKeyStore", "is_offline_key", "offline_keys_in"]

OFFLINE_KEY_PATTERNS = (
    "root-ca",
    "root-ca-g*",
    "tuf-root-*",
    "targets",
    "firmware",
    "firmware-g*",
)


def is_offline_key(name: str) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in OFFLINE_KEY_PATTERNS)


def offline_keys_in(store: FileKeyStore) -> list[str]:
    """The offline keys present in a file store (by their file names)."""
    if not store.directory.is_dir():
        return []
    names = (p.name.removesuffix(".key.pem") for p in store.directory.glob("*.key.pem"))
    return sorted(n for n in names if is_offline_key(n))


@dataclass
class OfflineAwareKeyStore:
    """Online keys from the site's store; offline ones only from mounted media.

    Used once a site has moved its offline keys out (``Settings.offline_custody``).
    ``media`` is None on the server: asking for an offline key is then a clear
    refusal naming the key and how to bring it, never a silent fallback.
    """

    online: KeyStore
    media: FileKeyStore | None

    def _for(self, name: str) -> KeyStore:
        if not is_offline_key(name):
            return self.online
        if self.media is None:
            raise KeyStoreError(
                f"key {name!r} is kept offline: mount its media and set HOMING_OFFLINE_KEYS "
                "to the directory (with the holder's HOMING_HOLDER_PASSPHRASE)"
            )
        return self.media

    def load(self, name: str) -> PrivateKey:
        return self._for(name).load(name)

    def store(self, name: str, key: PrivateKey) -> None:
        self._for(name).store(name, key)

    def generate(self, name: str, kind: str = "tls") -> PrivateKey:
        return self._for(name).generate(name, kind)

    def exists(self, name: str) -> bool:
        if is_offline_key(name) and self.media is None:
            return False
        return self._for(name).exists(name)

    def remove(self, name: str) -> None:
        self._for(name).remove(name)
