"""Creating a site: the CA hierarchy, keys and signed trust metadata (``homing init``)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from homing.ceremonies._common import (
    _pem,
    _write_offline_key,
)
from homing.config import Expiries, Validity
from homing.errors import CeremonyError
from homing.fsutil import atomic_write
from homing.pki.authority import Authority, make_issuing_ca, make_root_ca
from homing.pki.keys import generate_signing_key, generate_tls_key, spki_pin
from homing.pki.keystore import (
    PASSPHRASE_ENV,
    FileKeyStore,
)
from homing.pki.profiles import server_csr, server_profile, split_hosts
from homing.site import DataDir, Settings
from homing.store import pin_history
from homing.trust.pins import PIN_POLICY_TARGET, PinPolicy
from homing.trust.repository import RoleKeys, TrustRepository
from homing.trust.signing import signer_for, tuf_key

__all__ = ["DEFAULT_HOSTS", "DEFAULT_PORT", "InitSummary", "init"]


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
    passphrase: bytes | None = None,
    holder_passphrases: Sequence[bytes] | None = None,
) -> InitSummary:
    """Create a data directory: the CA hierarchy, every key, and trust metadata v1.

    Without ``ceremony_root_keys`` this is a development repository: every
    key is in ``data/keys``, encrypted only when a ``passphrase`` is given.
    With them, the TUF root keys are written (encrypted, passphrase
    required) to those paths only, and ``threshold`` of them sign each root.
    ``holder_passphrases`` encrypts each root key with its holder's own
    passphrase (none may be the server's); without them the server's is used,
    with a warning.
    """
    if data.exists() and (not data.is_dir() or any(data.iterdir())):
        raise CeremonyError(f"{data} already exists and is not empty")
    hosts = list(hosts)
    if not hosts:
        raise CeremonyError("at least one server host name is required")
    split_hosts(hosts)
    first = f"[{hosts[0]}]" if ":" in hosts[0] else hosts[0]  # an IPv6 literal in brackets
    primary = primary or f"https://{first}:{DEFAULT_PORT}"
    ceremony = bool(ceremony_root_keys)
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
    if holder_passphrases is not None:
        if len(holder_passphrases) != len(ceremony_root_keys):
            raise CeremonyError("give one holder passphrase per root key")
        if any(len(p) < 8 for p in holder_passphrases):
            raise CeremonyError("a key holder's passphrase must be at least 8 characters")
        if passphrase is not None and passphrase in holder_passphrases:
            raise CeremonyError("a key holder's passphrase must not be the server's")
    elif ceremony:
        warnings.append(
            "the root keys are encrypted with the server's passphrase: give each holder "
            "their own (HOMING_HOLDER_PASSPHRASE_1..N, or answer the prompts)"
        )
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
        dd = DataDir(staging, passphrase=passphrase)
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
        with dd.database().begin() as conn:
            pin_history.record_policy(conn, policy.to_bytes(), policy.spki_pins, 1, now)
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
            secrets = holder_passphrases or [passphrase] * len(root_keys)
            for path, key, secret in zip(ceremony_root_keys, root_keys, secrets, strict=True):
                _write_offline_key(path, key, secret)
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
