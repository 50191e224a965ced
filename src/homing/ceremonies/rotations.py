"""Trust transitions and re-signing.

Root and online keys, issuing CAs, the server certificate, and the
timestamp, snapshot and targets roles.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
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
from homing.ceremonies._public_pins import public_pins
from homing.ceremonies.generations import (
    record_retirement,
    retired_device_cas,
    still_trusted,
)
from homing.ceremonies.retirement import (
    DEFAULT_LIVE_WINDOW,
    check_pin_retirement,
    record_published_pins,
)
from homing.config import Limits
from homing.errors import CeremonyError
from homing.fsutil import atomic_write
from homing.pki.authority import make_issuing_ca, make_root_ca
from homing.pki.keys import generate_signing_key, generate_tls_key, spki_pin
from homing.pki.keystore import (
    PASSPHRASE_ENV,
    KeyStore,
    PrivateKey,
)
from homing.pki.profiles import server_csr, server_profile
from homing.site import DataDir, Settings
from homing.site.datadir import DISTRUSTED_DEVICE_CAS
from homing.trust.pins import PIN_POLICY_TARGET, PinPolicy
from homing.trust.signing import signer_for, tuf_key

__all__ = [
    "pin_policy",
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
    _audit(dd, now, actor, "rotate_online_keys", f"root v{root.signed.version}", {"generation": g})
    return root.signed.version


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
        _check_offline_certification(dd, kind, active_key, certified, now)
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
        cert, *also = _certify_issuing_ca(dd, settings, store, kind, active_key, g, now)
    else:
        cert, *also = certified
    store.generate(f"{kind}-ca-g{g + 1}", "tls")
    old = dd.certificate(f"{kind}-ca.pem")
    atomic_write(dd.pki_path("retired") / f"{kind}-ca-g{g - 1}.pem", _pem(old))
    _install_issuing_ca(
        dd, kind, cert, also, now, distrust=old if compromised else None, retiring=old
    )
    # The settings are written last: they are the commit point a running
    # server reloads the rotation by (trust bundle, certificate, then key).
    setattr(settings, attr, g)
    dd.save_settings(settings)
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
    _audit(dd, now, actor, f"rotate_{kind}_ca", f"generation {g}", detail)
    return g


def _check_offline_certification(
    dd: DataDir,
    kind: str,
    key: ec.EllipticCurvePrivateKey,
    certified: Sequence[x509.Certificate],
    now: datetime,
) -> None:
    """An offline-signed issuing CA: for this key, by a root the site holds, valid, a CA."""
    if not certified:
        raise CeremonyError("the offline site returned no certificate")
    roots = [r for r in dd.certificates("root-ca.pem") if r.not_valid_after_utc > now]
    for cert in certified:
        if cert.public_key() != key.public_key():
            raise CeremonyError("a returned CA certificate is not for the key being promoted")
        issuers = [r for r in roots if r.subject == cert.issuer]
        try:
            if not issuers:
                raise ValueError("unknown issuer")
            cert.verify_directly_issued_by(issuers[0])
        except (ValueError, TypeError, InvalidSignature) as e:
            raise CeremonyError(
                f"a returned CA certificate is not signed by a root of this site: {e}"
            ) from e
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        if not constraints.ca or not cert.not_valid_before_utc <= now < cert.not_valid_after_utc:
            raise CeremonyError("a returned CA certificate is not a CA valid now")
    if certified[0].issuer != roots[0].subject:
        raise CeremonyError("the first certificate must be the active root's")
    expected = {r.subject for r in roots}
    if {c.issuer for c in certified} != expected:
        raise CeremonyError(f"the {kind} CA must be certified by every valid root of this site")


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


def pins_pending(dd: DataDir) -> bool:
    """Whether the published pin policy is behind the site's state (publish it by ceremony)."""
    settings = dd.settings()
    store = dd.keystore(settings)
    published = dd.repository(settings).target_bytes(PIN_POLICY_TARGET)
    return published != pin_policy(dd, settings, store).to_bytes()


def publish_pins(dd: DataDir, settings: Settings, store: KeyStore, now: datetime) -> int:
    if settings.targets_by_holders:
        raise CeremonyError(
            "the targets key is with its holders: publish the pins with "
            "`homing ceremony propose-targets`, have them sign it, then `homing ceremony publish`"
        )
    repo = dd.repository(settings)
    snapshot, timestamp = _online_signers(store, settings)
    policy_bytes = pin_policy(dd, settings, store).to_bytes()
    version = repo.publish_targets(
        {PIN_POLICY_TARGET: policy_bytes},
        _signer(store, "targets"),
        snapshot,
        timestamp,
        now,
    )
    record_published_pins(dd, policy_bytes, settings.server_ca_generation, now)
    return version


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
    also = presented_cross_certifications(_also_certified(dd, "server", now))
    atomic_write(dd.pki_path("server-chain.pem"), _pem(leaf, authority.certificate, *also))
    _audit(dd, now, actor, "rotate_server_cert", f"serial {leaf.serial_number:x}")
    return leaf


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


def root_ca_key_name(generation: int) -> str:
    return "root-ca" if generation == 1 else f"root-ca-g{generation}"


def _roots_with_keys(
    dd: DataDir, settings: Settings, store: KeyStore, now: datetime
) -> list[tuple[x509.Certificate, ec.EllipticCurvePrivateKey]]:
    """Every root still valid, active first, with its key (a root whose key is gone is skipped)."""
    roots = [c for c in dd.certificates("root-ca.pem") if c.not_valid_after_utc > now]
    found = []
    for generation in range(settings.root_ca_generation, 0, -1):
        name = root_ca_key_name(generation)
        # The active root's key must be there (loading it says where it is kept).
        if generation != settings.root_ca_generation and not store.exists(name):
            continue
        key = _ca_key(store, name)
        for root in roots:
            if root.public_key() == key.public_key():
                found.append((root, key))
    if not found or found[0][0] != roots[0]:
        raise CeremonyError("the active root CA's key is not in the key store")
    return found


def _certify_issuing_ca(
    dd: DataDir,
    settings: Settings,
    store: KeyStore,
    kind: str,
    key: ec.EllipticCurvePrivateKey,
    generation: int,
    now: datetime,
) -> list[x509.Certificate]:
    """The issuing CA's certificate under each valid root, the active root's first."""
    return [
        make_issuing_ca(
            kind,
            key.public_key(),
            root,
            root_key,
            now,
            hosts=settings.hosts,
            generation=generation,
            validity=settings.validity,
        )
        for root, root_key in _roots_with_keys(dd, settings, store, now)
    ]


def presented_cross_certifications(
    also: Sequence[x509.Certificate], limits: Limits | None = None
) -> list[x509.Certificate]:
    """The server CA's certifications under older roots that the server presents.

    An agent accepts at most ``Limits.max_intermediates`` certificates beside
    the leaf, so after the active root's certification only the newest older
    roots' fit (``also`` is ordered newest first). A device that holds only a
    root older than those fails the pinned chain, takes the bootstrap channel
    (the metadata authenticates itself), walks to today's pin policy, which
    names the new roots, and comes back pinned.
    """
    limits = limits or Limits()
    return list(also[: max(limits.max_intermediates - 1, 0)])


def _also_path(kind: str) -> str:
    return f"{kind}-ca-also.pem"


def _also_certified(dd: DataDir, kind: str, now: datetime) -> list[x509.Certificate]:
    """The active issuing CA's certificates under older roots, still valid."""
    path = dd.pki_path(_also_path(kind))
    if not path.exists() or not path.read_bytes().strip():
        return []
    return [c for c in dd.certificates(_also_path(kind)) if c.not_valid_after_utc > now]


def _install_issuing_ca(
    dd: DataDir,
    kind: str,
    cert: x509.Certificate,
    also: list[x509.Certificate],
    now: datetime,
    *,
    distrust: x509.Certificate | None = None,
    retiring: x509.Certificate | None = None,
) -> None:
    """Write an issuing CA's certificates: the active root's, and the others beside it.

    ``retiring``: the device CA this one replaces; it stays trusted until
    the last certificate it issued has expired (``homing.ceremonies.generations``).

    ``distrust``: a device CA whose key was stolen; every certificate of its
    key moves from the trusted device CAs to the distrusted ones.
    """
    if also:
        atomic_write(dd.pki_path(_also_path(kind)), _pem(*also))
    else:
        dd.pki_path(_also_path(kind)).unlink(missing_ok=True)
    if kind == "device":
        # Keep trusting the device CAs that are still valid, so devices
        # issued by the old CA keep working until they renew.
        # A certificate of the same key by the same root is superseded by the
        # new one: without this, each root CA rotation would add them again.
        fresh = {(spki_pin(c), c.issuer) for c in (cert, *also)}
        retired = retired_device_cas(dd)
        validity = dd.settings().validity
        still_valid = [
            c
            for c in dd.certificates("device-cas.pem")
            if still_trusted(c, now, validity, retired) and (spki_pin(c), c.issuer) not in fresh
        ]
        if retiring is not None and retiring.public_key() != cert.public_key():
            # Recorded before the trusted set changes: the commit point is the settings.
            keep = {spki_pin(c) for c in still_valid} | {spki_pin(retiring)}
            record_retirement(dd, retiring, now, keep)
        if distrust is not None:
            stolen = [c for c in still_valid if c.public_key() == distrust.public_key()]
            still_valid = [c for c in still_valid if c not in stolen]
            _distrust_device_cas(dd, stolen or [distrust], now)
        atomic_write(dd.pki_path("device-cas.pem"), _pem(cert, *also, *still_valid))
        atomic_write(dd.pki_path("device-ca.pem"), _pem(cert))
    else:
        atomic_write(dd.pki_path("server-ca.pem"), _pem(cert))


def _distrust_device_cas(dd: DataDir, stolen: Sequence[x509.Certificate], now: datetime) -> None:
    """Add device CAs to the distrusted ones (written before the trusted set shrinks).

    An expired one is dropped: every certificate it issued has expired with
    it, and its devices recover as any device with an expired certificate.
    """
    path = dd.pki_path(DISTRUSTED_DEVICE_CAS)
    known = dd.certificates(DISTRUSTED_DEVICE_CAS) if path.exists() else []
    kept = [c for c in known if c.not_valid_after_utc > now]
    atomic_write(path, _pem(*kept, *(c for c in stolen if c not in kept)))


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
    old_roots = _roots_with_keys(dd, settings, store, now)
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
        cert, *also = _certify_issuing_ca(dd, settings, store, kind, key, generation, now)
        _install_issuing_ca(dd, kind, cert, also, now)
    # The settings last: the commit point a running server reloads by.
    dd.save_settings(settings)
    if settings.serving == "private":
        rotate_server_cert(dd, now, actor=actor)
    if here:  # else the new root waits for the targets holders' ceremony
        publish_pins(dd, settings, store, now)
    _audit(dd, now, actor, "rotate_root_ca", f"generation {g}", {"roots": len(still_valid) + 1})
    return g
