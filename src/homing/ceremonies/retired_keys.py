"""Private keys that nothing may use any more are destroyed, not kept online.

Every rotation of an issuing CA promotes the backup key and makes a new one,
and every rotation of the online keys makes new timestamp and snapshot keys;
the retired generation's key stayed in the key store. Over fifteen years of
yearly rotations that would be fifteen private keys of each kind online,
each a key a thief of the store could use. What still needs an old key:

- a device-CA generation stays trusted until the last certificate it issued
  has expired (``homing.ceremonies.generations``), and while it is, the
  broker's CRL of its certificates is signed with its key
  (``homing.ceremonies.brokers``): that key stays;
- nothing signs with a retired server CA: the server, the replicas and the
  brokers are certified by the active one, and devices pin only the active
  and backup keys;
- nothing signs with retired timestamp and snapshot keys: the root version
  that replaced them is what every device reads first (TUF walks the root
  chain before it reads a timestamp).

So, after a rotation, each older generation whose key nothing trusted
carries is removed from the key store (a file is unlinked, a token object
destroyed) and the audit entry names it. The active generation, and an
issuing CA's backup, are never touched.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable

from cryptography import x509

from homing.pki.keys import spki_pin
from homing.pki.keystore import KeyStore
from homing.site import DataDir, Settings

__all__ = ["destroy_retired_keys", "is_generation_key"]

log = logging.getLogger(__name__)

# The online roles whose keys ``rotate online-keys`` replaces.
_ONLINE = ("snapshot", "timestamp")
# A key of one generation, which a later rotation retires: an issuing CA's or an online role's.
_GENERATION_KEY = re.compile(r"(device|server)-ca-g[0-9]+|(snapshot|timestamp)-[0-9]+")


def is_generation_key(name: str) -> bool:
    """Whether ``name`` is a key some rotation retires (so a copy of it may go stale)."""
    return _GENERATION_KEY.fullmatch(name) is not None


def destroy_retired_keys(dd: DataDir, settings: Settings, store: KeyStore) -> list[str]:
    """Remove every key the site's settings and trust no longer use; returns their names.

    Called after a rotation's commit point (and by a replica importing keys): the
    issuing CAs' generations before the active one that no trusted CA certificate
    carries, and the online keys of generations before the current one.
    """
    return (
        _retired_ca_keys(
            store, "device", settings.device_ca_generation, dd.certificates("device-cas.pem")
        )
        + _retired_ca_keys(
            store, "server", settings.server_ca_generation, dd.certificates("server-ca.pem")
        )
        + _destroy(
            store,
            [f"{r}-{g}" for g in range(1, settings.online_key_generation) for r in _ONLINE],
            lambda _name: True,
        )
    )


def _retired_ca_keys(
    store: KeyStore, kind: str, active: int, trusted: Iterable[x509.Certificate]
) -> list[str]:
    keep = {spki_pin(c) for c in trusted}
    return _destroy(
        store,
        [f"{kind}-ca-g{generation}" for generation in range(1, active)],
        lambda name: spki_pin(store.load(name).public_key()) not in keep,
    )


def _destroy(store: KeyStore, names: list[str], retired: Callable[[str], bool]) -> list[str]:
    destroyed = []
    for name in names:
        try:
            if not store.exists(name) or not retired(name):
                continue
            store.remove(name)
        except Exception as e:  # a token error, an unreadable file: never undo the rotation
            # Called after the rotation's commit point: a key that cannot be read or
            # removed is left where it is, said once, and the rotation stands.
            log.warning("retired key %s left in the key store: %s", name, e)
            continue
        destroyed.append(name)
    return destroyed
