"""Trust transitions and re-signing.

Root and online keys, issuing CAs, the server certificate, and the
timestamp, snapshot and targets roles.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from securesystemslib.signer import Signer

from homing.ceremonies._common import (
    OPERATOR,
    _audit,
    _authority,
    _ca_key,
    _online_signers,
    _open,
    _pem,
    _root_signers,
    _signer,
    _write_offline_key,
    firmware_key_name,
    serialized,
)
from homing.ceremonies.issuing_cas import (
    also_certified,
    certify_issuing_ca,
    check_offline_certification,
    install_issuing_ca,
    presented_cross_certifications,
    root_ca_key_name,
    roots_with_keys,
)
from homing.ceremonies.pin_publication import publish_pins, targets_signed_here
from homing.ceremonies.retired_keys import destroy_retired_keys
from homing.ceremonies.retirement import (
    DEFAULT_LIVE_WINDOW,
    check_pin_retirement,
)
from homing.errors import CeremonyError
from homing.fsutil import atomic_write
from homing.pki.authority import make_root_ca
from homing.pki.keys import generate_signing_key, generate_tls_key, spki_pin
from homing.pki.keystore import (
    PASSPHRASE_ENV,
    PrivateKey,
)
from homing.pki.profiles import server_csr, server_profile
from homing.site import DataDir
from homing.site.ticket_secret import replace_secret
from homing.trust.signing import signer_for, tuf_key

__all__ = [
    "refresh_snapshot",
    "refresh_targets",
    "refresh_timestamp",
    "root_ca_key_name",
    "rotate_firmware_key",
    "rotate_issuing_ca",
    "rotate_online_keys",
    "rotate_root",
    "rotate_root_ca",
    "rotate_server_cert",
]


@serialized
def rotate_root(
    data: Path | DataDir,
    now: datetime,
    *,
    sign_with: Sequence[Path] = (),
    new_keys: Sequence[Path] = (),
    threshold: int | None = None,
    actor: str = OPERATOR,
) -> int:
    """Publish root N+1 with fresh root keys; returns the new version.

    Development repositories generate the new keys in the key store. In
    ceremony mode ``sign_with`` names at least a threshold of the current
    root key files and ``new_keys`` the paths the new keys are written to;
    without ``new_keys`` the same keys sign a new version (an expiry renewal).
    """
    dd, settings, store = _open(data)
    repo = dd.repository(settings)
    old_signers = _root_signers(dd, settings, store, sign_with)
    version = repo.root_version() + 1
    passphrase = dd.passphrase
    if settings.mode == "dev" and not new_keys:
        count = len(settings.root_keys)
        keys: list[PrivateKey] = [generate_signing_key() for _ in range(count)]
        new_names = [f"tuf-root-{version}-{i + 1}" for i in range(count)]
        new_signers: list[Signer] = [signer_for(key) for key in keys]
    elif new_keys:
        if settings.mode == "ceremony" and not passphrase:
            raise CeremonyError(f"ceremony mode encrypts every key: set {PASSPHRASE_ENV}")
        keys = [generate_signing_key() for _ in new_keys]
        new_names = [str(p.resolve()) for p in new_keys]
        new_signers = [signer_for(key) for key in keys]
        for path in new_keys:
            if path.exists():
                raise CeremonyError(f"refusing to overwrite an existing key file {path}")
    else:
        keys = []
        new_names = list(settings.root_keys)
        new_signers = old_signers
    new_public = (
        [tuf_key(key.public_key()) for key in keys] if keys else [s.public_key for s in old_signers]
    )
    k = threshold if threshold is not None else settings.root_threshold
    if not keys and len(new_public) < len(settings.root_keys):
        # Renewing with the same keys: keep every key listed, sign with those given.
        current = repo.root().signed
        new_public = [current.get_key(kid) for kid in current.roles["root"].keyids]
    repo.rotate_root(old_signers, new_public, new_signers, k, now)
    if keys:
        if settings.mode == "dev" and not new_keys:
            for name, key in zip(new_names, keys, strict=True):
                store.store(name, key)
        else:
            assert passphrase is not None or settings.mode == "dev"
            for path, key in zip(new_keys, keys, strict=True):
                _write_offline_key(path, key, passphrase or b"")
    settings.root_keys = new_names
    settings.root_threshold = k
    dd.save_settings(settings)
    snapshot, timestamp = _online_signers(store, settings)
    repo.refresh_snapshot(snapshot, timestamp, now)
    _audit(dd, now, actor, "rotate_root", f"root v{version}", {"threshold": k})
    return version


@serialized
def rotate_online_keys(
    data: Path | DataDir, now: datetime, *, sign_with: Sequence[Path] = (), actor: str = OPERATOR
) -> int:
    """Replace the snapshot and timestamp keys (a new root lists them); returns root version."""
    dd, settings, store = _open(data)
    repo = dd.repository(settings)
    signers = _root_signers(dd, settings, store, sign_with)
    g = settings.online_key_generation + 1
    # Made where they will live (a PKCS#11 token, if the site routes them there);
    # nothing uses generation g until the settings below name it.
    snapshot_key = store.generate(f"snapshot-{g}", "signing")
    timestamp_key = store.generate(f"timestamp-{g}", "signing")
    current = repo.root().signed
    root_keys = [current.get_key(kid) for kid in current.roles["root"].keyids]
    root = repo.rotate_root(
        signers,
        root_keys,
        signers,
        settings.root_threshold,
        now,
        role_keys={
            "snapshot": tuf_key(snapshot_key.public_key()),
            "timestamp": tuf_key(timestamp_key.public_key()),
        },
    )
    settings.online_key_generation = g
    dd.save_settings(settings)
    repo.refresh_snapshot(signer_for(snapshot_key), signer_for(timestamp_key), now)
    detail: dict[str, object] = {"generation": g}
    if destroyed := destroy_retired_keys(dd, settings, store):
        detail["destroyed_keys"] = destroyed
    _audit(dd, now, actor, "rotate_online_keys", f"root v{root.signed.version}", detail)
    return root.signed.version


@serialized
def rotate_issuing_ca(
    data: Path | DataDir,
    kind: str,
    now: datetime,
    *,
    actor: str = OPERATOR,
    live_within: timedelta = DEFAULT_LIVE_WINDOW,
    force_reason: str | None = None,
    certified: Sequence[x509.Certificate] | None = None,
    compromised: bool = False,
) -> int:
    """Promote the backup key of the ``kind`` issuing CA; returns the new generation.

    ``compromised`` (device CA only): the old key was stolen. Its
    certificates stop being trusted at once (``pki/distrusted-device-cas.pem``);
    the server answers them ``certificate_distrusted`` and each device gets a
    certificate of the new CA by key-proof recovery, which the thief, holding
    the CA key but no device key, cannot pass.

    ``certified``: the backup's CA certificates, signed at the offline site
    (``homing ceremony sign-ca``) and checked here, instead of signing with a
    root CA key on this machine.

    The backup's SPKI has been pinned since the previous rotation, so a
    device that slept through this one still trusts the new CA. For the
    server CA a new server certificate is issued and the new pins (the new
    active key and a freshly generated backup) are published. Before that,
    the retirement guard refuses when a device seen within ``live_within``
    does not hold the promoted key's pin (``StrandingError``), unless
    ``force_reason`` is given; a forced rotation is audited with it.
    """
    if kind not in ("server", "device"):
        raise CeremonyError(f"unknown issuing CA {kind!r}: use 'server' or 'device'")
    if compromised and kind != "device":
        raise CeremonyError(
            "only a device CA is distrusted after a theft; for the server CA, rotate it "
            "(its pins change; docs/ceremonies.md)"
        )
    dd, settings, store = _open(data)
    attr = f"{kind}_ca_generation"
    g = int(getattr(settings, attr)) + 1
    active_key = _ca_key(store, f"{kind}-ca-g{g}")
    if certified is not None:
        check_offline_certification(dd, kind, active_key, certified, now)
    here = kind == "device" or targets_signed_here(dd, settings, store)
    verdict = None
    if kind == "server":
        # Device CA rotations keep trusting the old CA, so only this one can strand.
        verdict = check_pin_retirement(
            dd,
            spki_pin(active_key.public_key()),
            now,
            live_within=live_within,
            force_reason=force_reason,
        )
    # Certified by the active root and by every older root still valid, so a
    # device that holds only an older root keeps a path to the new CA.
    if certified is None:
        cert, *also = certify_issuing_ca(dd, settings, store, kind, active_key, g, now)
    else:
        cert, *also = certified
    store.generate(f"{kind}-ca-g{g + 1}", "tls")
    old = dd.certificate(f"{kind}-ca.pem")
    atomic_write(dd.pki_path("retired") / f"{kind}-ca-g{g - 1}.pem", _pem(old))
    install_issuing_ca(
        dd,
        kind,
        cert,
        also,
        now,
        distrust=old if compromised else None,
        retiring=old,
        validity=settings.validity,
    )
    # The settings are written last: they are the commit point a running
    # server reloads the rotation by (trust bundle, certificate, then key).
    setattr(settings, attr, g)
    dd.save_settings(settings)
    destroyed = destroy_retired_keys(dd, settings, store)
    if kind == "server":
        if settings.serving == "private":
            rotate_server_cert(dd, now, actor=actor)
        # Deferring is safe for a promotion: devices already pin the promoted
        # key (it was the backup); only the new backup waits for the holders.
        if here:
            publish_pins(dd, settings, store, now)
    detail: dict[str, object] | None = None
    if verdict is not None and (verdict.stranded or verdict.unknown):
        detail = {
            "stranded": list(verdict.stranded),
            "unknown_trust": len(verdict.unknown),
            "live": verdict.live,
        }
        if force_reason is not None and verdict.stranded:
            detail["forced"] = force_reason
    if compromised:
        detail = {**(detail or {}), "distrusted": spki_pin(old)}
    if destroyed:
        detail = {**(detail or {}), "destroyed_keys": destroyed}
    _audit(dd, now, actor, f"rotate_{kind}_ca", f"generation {g}", detail)
    return g


@serialized
def rotate_server_cert(
    data: Path | DataDir, now: datetime, *, actor: str = OPERATOR
) -> x509.Certificate:
    """Issue the server a new key and certificate from the active server CA."""
    dd, settings, store = _open(data)
    if settings.serving == "acme":
        raise CeremonyError(
            "the server serves a certificate from its ACME CA: `homing acme issue` renews it "
            "(`homing acme mode private` goes back to the private CA)"
        )
    authority = _authority(dd, settings, store, "server")
    key = generate_tls_key()
    hosts = dd.server_hosts(settings)
    leaf = authority.issue_csr(
        server_csr(key, hosts), server_profile(hosts, settings.validity), now
    )
    # Key first, then the chain: a crash between leaves the old chain, which
    # a restart detects as not matching the key and re-issues.
    store.store("server-tls", key)
    also = presented_cross_certifications(also_certified(dd, "server", now))
    atomic_write(dd.pki_path("server-chain.pem"), _pem(leaf, authority.certificate, *also))
    _audit(dd, now, actor, "rotate_server_cert", f"serial {leaf.serial_number:x}")
    return leaf


@serialized
def rotate_session_tickets(data: Path | DataDir, now: datetime, *, actor: str = OPERATOR) -> None:
    """A new TLS session-ticket secret: every session sealed with the old one ends as each
    worker takes the new one up (at its next reload check), and devices make one full
    handshake. For a secret that may have leaked, or on the schedule of the online keys."""
    dd, _, _ = _open(data)
    replace_secret(dd.keys_dir)
    _audit(dd, now, actor, "rotate_session_tickets")


@serialized
def refresh_timestamp(
    data: Path | DataDir,
    now: datetime,
    expires_in: timedelta | None = None,
    *,
    actor: str = OPERATOR,
) -> int:
    """Re-sign the timestamp (online key); returns its new version."""
    dd, settings, store = _open(data)
    if expires_in is not None and expires_in <= timedelta(0):
        raise CeremonyError("the timestamp expiry must be positive")
    _, timestamp = _online_signers(store, settings)
    signed = dd.repository(settings).refresh_timestamp(timestamp, now, expires_in).signed
    _audit(dd, now, actor, "refresh_timestamp", f"timestamp v{signed.version}")
    return signed.version


@serialized
def refresh_snapshot(data: Path | DataDir, now: datetime, *, actor: str = OPERATOR) -> int:
    """Re-sign the snapshot (and so the timestamp) with the online keys; returns its version."""
    dd, settings, store = _open(data)
    snapshot, timestamp = _online_signers(store, settings)
    version = dd.repository(settings).refresh_snapshot(snapshot, timestamp, now)
    _audit(dd, now, actor, "refresh_snapshot", f"snapshot v{version}")
    return version


@serialized
def refresh_targets(data: Path | DataDir, now: datetime, *, actor: str = OPERATOR) -> int:
    """Re-sign targets with the current pins before the offline targets metadata expires.

    Targets live two years by default; a fleet whose targets expire fails
    closed, so this belongs in the operator's calendar (the simulator does it
    yearly). Returns the new targets version.
    """
    dd, settings, store = _open(data)
    version = publish_pins(dd, settings, store, now)
    _audit(dd, now, actor, "refresh_targets", f"targets v{version}")
    return version


@serialized
def rotate_firmware_key(data: Path | DataDir, now: datetime, *, actor: str = OPERATOR) -> int:
    """A new firmware release key, delegated by targets in place of the old, which is retired.

    Devices take the new delegation at their next refresh (TUF spec 5.6.6),
    whenever that is: a device asleep through the rotation verifies the new
    key through the targets it walks to. The old key is deleted, so nothing
    it could still sign is accepted. Returns the new key's generation.
    """
    dd, settings, store = _open(data)
    if settings.targets_by_holders:
        raise CeremonyError(
            "the targets key is with its holders: the firmware delegation changes in a "
            "targets ceremony (`homing ceremony propose-targets`)"
        )
    targets_signer = _signer(store, "targets")  # fails here if its media is not mounted
    old = firmware_key_name(settings.firmware_key_generation)
    generation = settings.firmware_key_generation + 1
    name = firmware_key_name(generation)
    if store.exists(name):
        raise CeremonyError(f"key {name!r} exists already: a rotation was interrupted; remove it")
    key = store.generate(name, "signing")
    snapshot, timestamp = _online_signers(store, settings)
    assert isinstance(key, ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey)
    version = dd.repository(settings).rotate_firmware_key(
        tuf_key(key.public_key()), signer_for(key), targets_signer, snapshot, timestamp, now
    )
    settings.firmware_key_generation = generation
    dd.save_settings(settings)
    store.remove(old)
    _audit(
        dd, now, actor, "rotate_firmware_key", name, {"targets_version": version, "retired": old}
    )
    return generation


@serialized
def rotate_root_ca(data: Path | DataDir, now: datetime, *, actor: str = OPERATOR) -> int:
    """A new X.509 root CA beside the old one; returns its generation.

    The active issuing CAs (same keys, so the same pins) are certified by the
    new root too, and the server presents both certifications of its CA: a
    device that holds only the old root still validates the server's chain
    (leaf, issuing CA, old root: the old root's path length allows no root
    cross-certificate below it), and takes the new root from the pin policy,
    published here through TUF. The old root stays in the policy and keeps
    certifying new issuing CAs until it expires.
    """
    dd, settings, store = _open(data)
    g = settings.root_ca_generation + 1
    old_roots = roots_with_keys(dd, settings, store, now)
    here = targets_signed_here(dd, settings, store)
    root_key = store.generate(root_ca_key_name(g), "tls")
    assert isinstance(root_key, ec.EllipticCurvePrivateKey)
    organization = settings.organization
    root = make_root_ca(
        root_key,
        now,
        organization=organization,
        common_name=f"homing root CA {g}",
        validity=settings.validity,
    )
    still_valid = [r for r, _ in old_roots]
    atomic_write(dd.pki_path("root-ca.pem"), _pem(root, *still_valid))
    settings.root_ca_generation = g
    for kind in ("server", "device"):
        generation = int(getattr(settings, f"{kind}_ca_generation"))
        key = _ca_key(store, f"{kind}-ca-g{generation}")
        cert, *also = certify_issuing_ca(dd, settings, store, kind, key, generation, now)
        install_issuing_ca(dd, kind, cert, also, now, validity=settings.validity)
    # The settings last: the commit point a running server reloads by.
    dd.save_settings(settings)
    # Device-CA generations whose last certificate has expired left trust just now.
    destroyed = destroy_retired_keys(dd, settings, store)
    if settings.serving == "private":
        rotate_server_cert(dd, now, actor=actor)
    if here:  # else the new root waits for the targets holders' ceremony
        publish_pins(dd, settings, store, now)
    detail: dict[str, object] = {"roots": len(still_valid) + 1}
    if destroyed:
        detail["destroyed_keys"] = destroyed
    _audit(dd, now, actor, "rotate_root_ca", f"generation {g}", detail)
    return g
