"""The pin policy a site's state implies, and its publication as TUF targets.

What devices are told to trust (the site's roots and the server CA's active
and backup keys, or the public roots and the server's keys under ACME) is
derived from the data directory at each publication, never edited by hand;
the services document (the site's MQTT brokers) travels beside it.
"""

from __future__ import annotations

from datetime import datetime

from cryptography import x509

from homing.ceremonies._common import _online_signers, _signer
from homing.ceremonies._public_pins import public_pins
from homing.ceremonies.retirement import record_published_pins
from homing.errors import CeremonyError
from homing.pki.keys import spki_pin
from homing.pki.keystore import KeyStore
from homing.site import DataDir, Settings
from homing.trust.pins import PIN_POLICY_TARGET, PinPolicy
from homing.trust.services import SERVICES_TARGET, Services
from homing.trust.signing import tuf_key

__all__ = ["pin_policy", "pins_pending", "publish_pins", "targets_signed_here", "trust_targets"]


def pin_policy(dd: DataDir, settings: Settings, store: KeyStore) -> PinPolicy:
    """The pin policy the data directory's current state implies.

    Private: the site's root, and the server CA's active and backup keys.
    Public (ACME): the public roots devices accept, and the server's own
    active and backup keys (a public CA can change its intermediates at any
    time; our keys change only when we promote the backup). Mixed: both,
    so a fleet migrates either way without a device cut off.
    """
    roots: list[x509.Certificate] = []
    pins: list[str] = []
    if settings.server_tls_mode in ("private", "mixed"):
        server_ca = dd.certificate("server-ca.pem")
        backup = store.load(f"server-ca-g{settings.server_ca_generation + 1}")
        roots += dd.certificates("root-ca.pem")
        pins += [spki_pin(server_ca), spki_pin(backup.public_key())]
    if settings.server_tls_mode in ("mixed", "public"):
        public_roots, key_pins = public_pins(dd, settings, store)
        roots += public_roots
        pins += key_pins
    return PinPolicy(
        root_cas=tuple(roots),
        spki_pins=tuple(pins),
        hosts=tuple(settings.hosts),
        primary=settings.primary,
        mirrors=tuple(settings.mirrors),
    )


def targets_signed_here(dd: DataDir, settings: Settings, store: KeyStore) -> bool:
    """Whether this site signs targets itself (else its holders do, by ceremony).

    Asking loads the key, so a key kept offline without its media mounted
    fails here, before a ceremony changes anything.
    """
    if settings.targets_by_holders:
        return False
    key = store.load("targets")
    listed = dd.repository(settings).root().signed.roles["targets"].keyids
    return tuf_key(key.public_key()).keyid in listed


def trust_targets(dd: DataDir, settings: Settings, store: KeyStore) -> dict[str, bytes]:
    """The top-level targets the site's state implies: the pin policy, and the services
    document once the site names a broker (or named one before: then it is emptied)."""
    files = {PIN_POLICY_TARGET: pin_policy(dd, settings, store).to_bytes()}
    if settings.mqtt_brokers or SERVICES_TARGET in dd.repository(settings).targets().signed.targets:
        files[SERVICES_TARGET] = Services(tuple(settings.mqtt_brokers)).to_bytes()
    return files


def pins_pending(dd: DataDir) -> bool:
    """Whether the published pin policy is behind the site's state (publish it by ceremony)."""
    settings = dd.settings()
    store = dd.keystore(settings)
    repo = dd.repository(settings)
    published = repo.targets().signed.targets
    for name, data in trust_targets(dd, settings, store).items():
        if name not in published or repo.target_bytes(name) != data:
            return True
    return False


def publish_pins(dd: DataDir, settings: Settings, store: KeyStore, now: datetime) -> int:
    if settings.targets_by_holders:
        raise CeremonyError(
            "the targets key is with its holders: publish the pins with "
            "`homing ceremony propose-targets`, have them sign it, then `homing ceremony publish`"
        )
    repo = dd.repository(settings)
    snapshot, timestamp = _online_signers(store, settings)
    files = trust_targets(dd, settings, store)
    policy_bytes = files[PIN_POLICY_TARGET]
    version = repo.publish_targets(
        files,
        _signer(store, "targets"),
        snapshot,
        timestamp,
        now,
    )
    record_published_pins(dd, policy_bytes, settings.server_ca_generation, now)
    return version
