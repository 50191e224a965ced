"""Ceremonies: the operator's trust transitions, as plain functions.

Each takes a data directory and an explicit ``now`` and either completes or
raises before the new state is published: certificates and metadata are
written first and the timestamp (what devices look at) last, and ``init``
builds its directory beside the target and renames it into place.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from securesystemslib.signer import Signer

from homing.config import Expiries, Validity
from homing.errors import CeremonyError, KeyStoreError
from homing.fsutil import atomic_write
from homing.pki.authority import Authority, make_issuing_ca, make_root_ca
from homing.pki.keys import generate_signing_key, generate_tls_key, private_key_pem, spki_pin
from homing.pki.keystore import (
    PASSPHRASE_ENV,
    FileKeyStore,
    KeyStore,
    PrivateKey,
    load_private_key_pem,
    passphrase_from_env,
)
from homing.pki.profiles import device_profile, device_uri, server_csr, server_profile, split_hosts
from homing.site import DataDir, Settings
from homing.trust.pins import PIN_POLICY_TARGET, PinPolicy
from homing.trust.repository import RoleKeys, TrustRepository
from homing.trust.signing import signer_for, tuf_key

# The actor a ceremony is audited under when the caller names none.
OPERATOR = "operator"

__all__ = [
    "InitSummary",
    "init",
    "issue_certificate",
    "pin_policy",
    "refresh_snapshot",
    "refresh_timestamp",
    "revoke",
    "rotate_issuing_ca",
    "rotate_online_keys",
    "rotate_root",
    "rotate_server_cert",
    "write_crl",
]

DEFAULT_HOSTS = ("localhost", "127.0.0.1")
DEFAULT_PORT = 8443


@dataclass(frozen=True)
class InitSummary:
    """What ``init`` made, for the operator to read and check."""

    data_dir: Path
    mode: str
    encrypted: bool
    root_threshold: int
    root_key_locations: tuple[str, ...]
    root_ca_pin: str
    server_ca_pin: str
    server_ca_backup_pin: str
    device_ca_pin: str
    hosts: tuple[str, ...]
    primary: str
    metadata_dir: Path
    root_version: int
    warnings: tuple[str, ...] = field(default=())


# -- key helpers ----------------------------------------------------------


def _ca_key(store: KeyStore, name: str) -> ec.EllipticCurvePrivateKey:
    key = store.load(name)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise KeyStoreError(f"key {name!r} must be an ECDSA key")
    return key


def _signer(store: KeyStore, name: str) -> Signer:
    return signer_for(store.load(name))


def _write_offline_key(path: Path, key: PrivateKey, passphrase: bytes) -> None:
    if path.exists():
        raise CeremonyError(f"refusing to overwrite an existing key file {path}")
    atomic_write(path, private_key_pem(key, passphrase), mode=0o600)


def _read_offline_key(path: Path) -> PrivateKey:
    passphrase = passphrase_from_env()
    try:
        data = path.read_bytes()
    except OSError as e:
        raise KeyStoreError(f"cannot read root key {path}: {e.strerror}") from e
    return load_private_key_pem(data, passphrase, str(path))


def _root_signers(
    dd: DataDir, settings: Settings, store: KeyStore, sign_with: Sequence[Path]
) -> list[Signer]:
    if settings.mode == "dev":
        if sign_with:
            return [signer_for(_read_offline_key(p)) for p in sign_with]
        return [_signer(store, name) for name in settings.root_keys]
    if len(sign_with) < settings.root_threshold:
        raise CeremonyError(
            f"this ceremony needs {settings.root_threshold} of the root keys: "
            f"pass them with --sign-with (got {len(sign_with)})"
        )
    return [signer_for(_read_offline_key(p)) for p in sign_with]


def _audit(
    dd: DataDir,
    now: datetime,
    actor: str,
    action: str,
    subject: str | None = None,
    detail: dict[str, object] | None = None,
) -> None:
    """Every ceremony leaves a line in the audit log of the data directory's database."""
    from homing.store import audit

    with dd.database().begin() as conn:
        audit.audit(conn, now, actor, action, subject, detail)


def _pem(*certs: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


# -- init ------------------------------------------------------------------


def init(
    data: Path,
    now: datetime,
    *,
    hosts: Sequence[str] = DEFAULT_HOSTS,
    primary: str | None = None,
    mirrors: Sequence[str] = (),
    ceremony_root_keys: Sequence[Path] = (),
    threshold: int | None = None,
    organization: str = "homing",
    expiries: Expiries | None = None,
    validity: Validity | None = None,
) -> InitSummary:
    """Create a data directory: the CA hierarchy, every key, and trust metadata v1.

    Without ``ceremony_root_keys`` this is a development repository: every
    key is in ``data/keys``, encrypted only when HOMING_KEY_PASSPHRASE is set.
    With them, the TUF root keys are written (encrypted, passphrase
    required) to those paths only, and ``threshold`` of them sign each root.
    """
    if data.exists() and (not data.is_dir() or any(data.iterdir())):
        raise CeremonyError(f"{data} already exists and is not empty")
    hosts = list(hosts)
    if not hosts:
        raise CeremonyError("at least one server host name is required")
    split_hosts(hosts)
    primary = primary or f"https://{hosts[0]}:{DEFAULT_PORT}"
    ceremony = bool(ceremony_root_keys)
    passphrase = passphrase_from_env()
    warnings: list[str] = []
    if ceremony and not passphrase:
        raise CeremonyError(f"ceremony mode encrypts every key: set {PASSPHRASE_ENV}")
    if not passphrase:
        warnings.append(
            "UNSAFE development repository: private keys are stored UNENCRYPTED in "
            f"{data / 'keys'}; set {PASSPHRASE_ENV} to encrypt them"
        )
    n_root = len(ceremony_root_keys) if ceremony else 1
    k = threshold if threshold is not None else (n_root // 2 + 1)
    if not 1 <= k <= n_root:
        raise CeremonyError(f"threshold {k} must be between 1 and the {n_root} root keys")
    if len({p.resolve() for p in ceremony_root_keys}) != len(ceremony_root_keys):
        raise CeremonyError("each root key needs its own path")
    for path in ceremony_root_keys:
        if path.exists():
            raise CeremonyError(f"refusing to overwrite an existing key file {path}")
        if data.resolve() in path.resolve().parents:
            raise CeremonyError(f"root key {path} must not live inside the data directory")

    validity = validity or Validity()
    expiries = expiries or Expiries()
    data.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{data.name}.init-", dir=data.parent))
    try:
        dd = DataDir(staging)
        # The summary warns about plaintext keys once, naming the final path.
        store = FileKeyStore(dd.keys_dir, passphrase, unsafe_plaintext=not passphrase, warn=False)
        root_keys = [generate_signing_key() for _ in range(n_root)]
        if ceremony:
            root_key_names = [str(p.resolve()) for p in ceremony_root_keys]
        else:
            root_key_names = ["tuf-root-1-1"]
            store.store(root_key_names[0], root_keys[0])
        names = {
            "root-ca": generate_tls_key(),
            "server-ca-g1": generate_tls_key(),
            "server-ca-g2": generate_tls_key(),
            "device-ca-g1": generate_tls_key(),
            "device-ca-g2": generate_tls_key(),
            "server-tls": generate_tls_key(),
        }
        signing = {
            "targets": generate_signing_key(),
            "firmware": generate_signing_key(),
            "snapshot-1": generate_signing_key(),
            "timestamp-1": generate_signing_key(),
        }
        for name, tls_key in names.items():
            store.store(name, tls_key)
        for name, signing_key in signing.items():
            store.store(name, signing_key)

        root_ca = make_root_ca(names["root-ca"], now, organization=organization, validity=validity)
        server_ca = make_issuing_ca(
            "server",
            names["server-ca-g1"].public_key(),
            root_ca,
            names["root-ca"],
            now,
            hosts=hosts,
            validity=validity,
        )
        device_ca = make_issuing_ca(
            "device",
            names["device-ca-g1"].public_key(),
            root_ca,
            names["root-ca"],
            now,
            validity=validity,
        )
        ledger_dd = dd.ledger()
        authority = Authority(server_ca, names["server-ca-g1"], ledger_dd, validity)
        leaf = authority.issue_csr(
            server_csr(names["server-tls"], hosts), server_profile(hosts, validity), now
        )
        atomic_write(dd.pki_path("root-ca.pem"), _pem(root_ca))
        atomic_write(dd.pki_path("server-ca.pem"), _pem(server_ca))
        atomic_write(dd.pki_path("device-ca.pem"), _pem(device_ca))
        atomic_write(dd.pki_path("device-cas.pem"), _pem(device_ca))
        atomic_write(dd.pki_path("server-chain.pem"), _pem(leaf, server_ca))

        policy = PinPolicy(
            root_cas=(root_ca,),
            spki_pins=(spki_pin(server_ca), spki_pin(names["server-ca-g2"].public_key())),
            hosts=tuple(hosts),
            primary=primary,
            mirrors=tuple(mirrors),
        )
        policy = PinPolicy.from_bytes(policy.to_bytes())  # validates endpoints
        role_keys = RoleKeys(
            root=[tuf_key(k.public_key()) for k in root_keys],
            root_threshold=k,
            targets=tuf_key(signing["targets"].public_key()),
            firmware=tuf_key(signing["firmware"].public_key()),
            snapshot=tuf_key(signing["snapshot-1"].public_key()),
            timestamp=tuf_key(signing["timestamp-1"].public_key()),
        )
        TrustRepository.create(
            dd.repository_dir,
            role_keys,
            [signer_for(key) for key in root_keys],
            signer_for(signing["targets"]),
            signer_for(signing["firmware"]),
            signer_for(signing["snapshot-1"]),
            signer_for(signing["timestamp-1"]),
            now,
            initial_targets={PIN_POLICY_TARGET: policy.to_bytes()},
            expiries=expiries,
        )
        settings = Settings(
            mode="ceremony" if ceremony else "dev",
            encrypted=bool(passphrase),
            organization=organization,
            hosts=hosts,
            primary=primary,
            mirrors=list(mirrors),
            root_keys=root_key_names,
            root_threshold=k,
            expiry_days={
                key: value.total_seconds() / 86400 for key, value in vars(expiries).items()
            },
            server_validity_days=validity.server.total_seconds() / 86400,
            device_validity_days=validity.device.total_seconds() / 86400,
        )
        dd.save_settings(settings)
        dd.close()
        # Root keys go to removable media last, once everything else worked.
        if ceremony:
            assert passphrase is not None
            for path, key in zip(ceremony_root_keys, root_keys, strict=True):
                _write_offline_key(path, key, passphrase)
        if data.exists():
            data.rmdir()
        os.replace(staging, data)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return InitSummary(
        data_dir=data,
        mode=settings.mode,
        encrypted=settings.encrypted,
        root_threshold=k,
        root_key_locations=tuple(
            root_key_names if ceremony else [str(data / "keys" / "tuf-root-1-1.key.pem")]
        ),
        root_ca_pin=spki_pin(root_ca),
        server_ca_pin=policy.spki_pins[0],
        server_ca_backup_pin=policy.spki_pins[1],
        device_ca_pin=spki_pin(device_ca),
        hosts=tuple(hosts),
        primary=primary,
        metadata_dir=data / "repository" / "metadata",
        root_version=1,
        warnings=tuple(warnings),
    )


# -- rotations -------------------------------------------------------------


def _open(data: Path | DataDir) -> tuple[DataDir, Settings, FileKeyStore]:
    """Ceremonies take a path, or a DataDir bound to a particular database."""
    dd = data if isinstance(data, DataDir) else DataDir(data)
    settings = dd.settings()
    return dd, settings, dd.keystore(settings)


def _online_signers(store: KeyStore, settings: Settings) -> tuple[Signer, Signer]:
    g = settings.online_key_generation
    return _signer(store, f"snapshot-{g}"), _signer(store, f"timestamp-{g}")


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
    passphrase = passphrase_from_env()
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


def rotate_online_keys(
    data: Path | DataDir, now: datetime, *, sign_with: Sequence[Path] = (), actor: str = OPERATOR
) -> int:
    """Replace the snapshot and timestamp keys (a new root lists them); returns root version."""
    dd, settings, store = _open(data)
    repo = dd.repository(settings)
    signers = _root_signers(dd, settings, store, sign_with)
    g = settings.online_key_generation + 1
    snapshot_key = generate_signing_key()
    timestamp_key = generate_signing_key()
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
    store.store(f"snapshot-{g}", snapshot_key)
    store.store(f"timestamp-{g}", timestamp_key)
    settings.online_key_generation = g
    dd.save_settings(settings)
    repo.refresh_snapshot(signer_for(snapshot_key), signer_for(timestamp_key), now)
    _audit(dd, now, actor, "rotate_online_keys", f"root v{root.signed.version}", {"generation": g})
    return root.signed.version


def pin_policy(dd: DataDir, settings: Settings, store: KeyStore) -> PinPolicy:
    """The pin policy the data directory's current state implies."""
    server_ca = dd.certificate("server-ca.pem")
    backup = store.load(f"server-ca-g{settings.server_ca_generation + 1}")
    return PinPolicy(
        root_cas=(dd.certificate("root-ca.pem"),),
        spki_pins=(spki_pin(server_ca), spki_pin(backup.public_key())),
        hosts=tuple(settings.hosts),
        primary=settings.primary,
        mirrors=tuple(settings.mirrors),
    )


def rotate_issuing_ca(
    data: Path | DataDir, kind: str, now: datetime, *, actor: str = OPERATOR
) -> int:
    """Promote the backup key of the ``kind`` issuing CA; returns the new generation.

    The backup's SPKI has been pinned since the previous rotation, so a
    device that slept through this one still trusts the new CA. For the
    server CA a new server certificate is issued and the new pins (the new
    active key and a freshly generated backup) are published.
    """
    if kind not in ("server", "device"):
        raise CeremonyError(f"unknown issuing CA {kind!r}: use 'server' or 'device'")
    dd, settings, store = _open(data)
    attr = f"{kind}_ca_generation"
    g = int(getattr(settings, attr)) + 1
    root_ca = dd.certificate("root-ca.pem")
    root_key = _ca_key(store, "root-ca")
    active_key = _ca_key(store, f"{kind}-ca-g{g}")
    cert = make_issuing_ca(
        kind,
        active_key.public_key(),
        root_ca,
        root_key,
        now,
        hosts=settings.hosts,
        generation=g,
        validity=settings.validity,
    )
    store.store(f"{kind}-ca-g{g + 1}", generate_tls_key())
    old = dd.certificate(f"{kind}-ca.pem")
    atomic_write(dd.pki_path("retired") / f"{kind}-ca-g{g - 1}.pem", _pem(old))
    if kind == "device":
        # Keep trusting the device CAs that are still valid, so devices
        # issued by the old CA keep working until they renew.
        still_valid = [c for c in dd.certificates("device-cas.pem") if c.not_valid_after_utc > now]
        atomic_write(dd.pki_path("device-cas.pem"), _pem(cert, *still_valid))
        atomic_write(dd.pki_path("device-ca.pem"), _pem(cert))
    else:
        atomic_write(dd.pki_path("server-ca.pem"), _pem(cert))
    # The settings are written last: they are the commit point a running
    # server reloads the rotation by (trust bundle, certificate, then key).
    setattr(settings, attr, g)
    dd.save_settings(settings)
    if kind == "server":
        rotate_server_cert(dd, now, actor=actor)
        _publish_pins(dd, settings, store, now)
    _audit(dd, now, actor, f"rotate_{kind}_ca", f"generation {g}")
    return g


def _publish_pins(dd: DataDir, settings: Settings, store: KeyStore, now: datetime) -> int:
    repo = dd.repository(settings)
    snapshot, timestamp = _online_signers(store, settings)
    return repo.publish_targets(
        {PIN_POLICY_TARGET: pin_policy(dd, settings, store).to_bytes()},
        _signer(store, "targets"),
        snapshot,
        timestamp,
        now,
    )


def rotate_server_cert(
    data: Path | DataDir, now: datetime, *, actor: str = OPERATOR
) -> x509.Certificate:
    """Issue the server a new key and certificate from the active server CA."""
    dd, settings, store = _open(data)
    authority = _authority(dd, settings, store, "server")
    key = generate_tls_key()
    leaf = authority.issue_csr(
        server_csr(key, settings.hosts), server_profile(settings.hosts, settings.validity), now
    )
    # Key first, then the chain: a crash between leaves the old chain, which
    # a restart detects as not matching the key and re-issues.
    store.store("server-tls", key)
    atomic_write(dd.pki_path("server-chain.pem"), _pem(leaf, authority.certificate))
    _audit(dd, now, actor, "rotate_server_cert", f"serial {leaf.serial_number:x}")
    return leaf


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


# -- issuance and revocation ----------------------------------------------


def _authority(dd: DataDir, settings: Settings, store: KeyStore, kind: str) -> Authority:
    g = int(getattr(settings, f"{kind}_ca_generation"))
    return Authority(
        dd.certificate(f"{kind}-ca.pem"),
        _ca_key(store, f"{kind}-ca-g{g}"),
        dd.ledger(),
        settings.validity,
    )


def issue_certificate(
    data: Path | DataDir,
    csr: bytes,
    kind: str,
    now: datetime,
    *,
    device_id: str | None = None,
    actor: str = OPERATOR,
) -> list[x509.Certificate]:
    """Issue a certificate from a CSR under the ``kind`` profile; returns leaf + issuer."""
    if kind not in ("server", "device"):
        raise CeremonyError(f"unknown profile {kind!r}: use 'server' or 'device'")
    dd, settings, store = _open(data)
    authority = _authority(dd, settings, store, kind)
    profile = (
        server_profile(settings.hosts, settings.validity)
        if kind == "server"
        else device_profile(settings.validity.device)
    )
    leaf = authority.issue_csr(csr, profile, now, device_id=device_id)
    _audit(
        dd,
        now,
        actor,
        f"issue_{kind}_certificate",
        device_id,
        {"serial": f"{leaf.serial_number:x}"},
    )
    return [leaf, authority.certificate]


def revoke(
    data: Path | DataDir,
    now: datetime,
    *,
    device_id: str | None = None,
    serial: int | None = None,
    reason: str = "unspecified",
    actor: str = OPERATOR,
) -> int:
    """Revoke by device id or serial and re-sign the CRLs; returns how many were revoked.

    Every path that revokes (``homing revoke``, ``homing pki revoke``, the
    admin API) comes here, so a revocation means one thing: see
    ``homing.store.devices.revoke``.
    """
    from homing.store import audit
    from homing.store import devices as device_store

    if device_id is not None:
        device_uri(device_id)  # refuse malformed ids with a clear reason
    dd, _, _ = _open(data)
    with dd.database().begin() as conn:
        count, revoked_device = device_store.revoke(
            conn, now, reason, device_id=device_id, serial=serial
        )
        audit.audit(
            conn,
            now,
            actor,
            "revoke_device" if revoked_device else "revoke_certificate",
            revoked_device or f"serial {serial:x}",
            {"reason": reason, "certificates": count},
        )
    for kind in ("server", "device"):
        write_crl(dd, kind, now)
    return count


def write_crl(data: Path | DataDir, kind: str, now: datetime) -> Path:
    dd, settings, store = _open(data)
    authority = _authority(dd, settings, store, kind)
    crl = authority.crl(now)
    path = dd.pki_path(f"{kind}-ca.crl.pem")
    atomic_write(path, crl.public_bytes(serialization.Encoding.PEM))
    return path


def refresh_snapshot(data: Path | DataDir, now: datetime, *, actor: str = OPERATOR) -> int:
    """Re-sign the snapshot (and so the timestamp) with the online keys; returns its version."""
    dd, settings, store = _open(data)
    snapshot, timestamp = _online_signers(store, settings)
    version = dd.repository(settings).refresh_snapshot(snapshot, timestamp, now)
    _audit(dd, now, actor, "refresh_snapshot", f"snapshot v{version}")
    return version


def refresh_targets(data: Path | DataDir, now: datetime, *, actor: str = OPERATOR) -> int:
    """Re-sign targets with the current pins before the offline targets metadata expires.

    Targets live two years by default; a fleet whose targets expire fails
    closed, so this belongs in the operator's calendar (the simulator does it
    yearly). Returns the new targets version.
    """
    dd, settings, store = _open(data)
    version = _publish_pins(dd, settings, store, now)
    _audit(dd, now, actor, "refresh_targets", f"targets v{version}")
    return version


@dataclass(frozen=True)
class BundleSummary:
    files: int
    valid_until: datetime


def recovery_bundle(
    data: Path | DataDir,
    out: Path,
    now: datetime,
    *,
    images: Sequence[str] = (),
    valid_for: timedelta | None = None,
    actor: str = OPERATOR,
) -> BundleSummary:
    """Write an offline recovery bundle valid for ``valid_for`` (default: the config's).

    The bundle carries its own snapshot and timestamp signed for that long
    (``TrustRepository.sign_bundle_state``): a device reached by hand weeks
    later still accepts it, and after ``valid_until`` it is refused as expired.
    """
    from homing.trust.bundle import write_bundle

    dd, settings, store = _open(data)
    valid_for = valid_for if valid_for is not None else settings.expiries.recovery_bundle
    if valid_for <= timedelta(0):
        raise CeremonyError("a recovery bundle's validity must be positive")
    valid_until = now + valid_for
    repo = dd.repository(settings)
    snapshot_signer, timestamp_signer = _online_signers(store, settings)
    snapshot, timestamp = repo.sign_bundle_state(
        snapshot_signer, timestamp_signer, now, valid_until
    )
    files = write_bundle(
        dd.repository_dir,
        out,
        list(images),
        metadata={
            f"{snapshot.signed.version}.snapshot.json": repo.serialize(snapshot),
            "timestamp.json": repo.serialize(timestamp),
        },
        valid_until=valid_until,
    )
    _audit(
        dd,
        now,
        actor,
        "recovery_bundle",
        str(out),
        {"valid_until": valid_until.isoformat(), "images": list(images)},
    )
    return BundleSummary(files, valid_until)
