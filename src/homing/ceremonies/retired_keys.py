"""Issuing-CA private keys that nothing may use any more are destroyed, not kept online.

Every rotation of an issuing CA promotes the backup key and makes a new one;
the retired generation's key stays in the key store. Over a CA's fifteen
years of yearly rotations that would be fifteen private keys online, each a
key a thief of the store could mint with. What still needs an old key:

- a device-CA generation stays trusted until the last certificate it issued
  has expired (``homing.ceremonies.generations``), and while it is, the
  broker's CRL of its certificates is signed with its key
  (``homing.ceremonies.brokers``): that key stays;
- nothing signs with a retired server CA: the server, the replicas and the
  brokers are certified by the active one, and devices pin only the active
  and backup keys.

So, after a rotation or re-certification, each generation before the active
one whose key no trusted CA certificate carries is removed from the key
store (a file is unlinked, a token object destroyed) and the audit entry
names it. The active and backup generations are never touched.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from cryptography import x509

from homing.pki.keys import spki_pin
from homing.pki.keystore import KeyStore

__all__ = ["destroy_retired_ca_keys"]

log = logging.getLogger(__name__)


def destroy_retired_ca_keys(
    store: KeyStore, kind: str, active: int, trusted: Iterable[x509.Certificate]
) -> list[str]:
    """Remove ``kind``'s CA keys of generations before ``active`` that no certificate in
    ``trusted`` carries; returns the names removed, oldest first."""
    keep = {spki_pin(c) for c in trusted}
    destroyed = []
    for generation in range(1, active):
        name = f"{kind}-ca-g{generation}"
        try:
            if not store.exists(name) or spki_pin(store.load(name).public_key()) in keep:
                continue
            store.remove(name)
        except Exception as e:  # a token error, an unreadable file: never undo the rotation
            # Called after the rotation's commit point: a key that cannot be read or
            # removed is left where it is, said once, and the rotation stands.
            log.warning("retired key %s left in the key store: %s", name, e)
            continue
        destroyed.append(name)
    return destroyed
