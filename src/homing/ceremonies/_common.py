"""What every ceremony shares: keys from the store, the audit line, PEM output."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Concatenate, ParamSpec, TypeVar

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from securesystemslib.signer import Signer

from homing.errors import CeremonyError, KeyStoreError
from homing.fsutil import atomic_write
from homing.pki.authority import Authority
from homing.pki.keys import private_key_pem
from homing.pki.keystore import (
    KeyStore,
    PrivateKey,
    load_private_key_pem,
)
from homing.site import DataDir, Settings
from homing.site.lock import ceremony_lock
from homing.trust.signing import signer_for

__all__ = ["OPERATOR", "serialized"]

P = ParamSpec("P")
T = TypeVar("T")


# The actor a ceremony is audited under when the caller names none.
OPERATOR = "operator"


# -- key helpers ----------------------------------------------------------


def _ca_key(store: KeyStore, name: str) -> ec.EllipticCurvePrivateKey:
    key = store.load(name)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise KeyStoreError(f"key {name!r} must be an ECDSA key")
    return key


def firmware_key_name(generation: int) -> str:
    """The firmware release key of a generation: "firmware", then "firmware-gN"."""
    return "firmware" if generation == 1 else f"firmware-g{generation}"


def _signer(store: KeyStore, name: str) -> Signer:
    return signer_for(store.load(name))


def _write_offline_key(path: Path, key: PrivateKey, passphrase: bytes) -> None:
    if path.exists():
        raise CeremonyError(f"refusing to overwrite an existing key file {path}")
    atomic_write(path, private_key_pem(key, passphrase), mode=0o600)


def _read_offline_key(path: Path, passphrase: bytes | None) -> PrivateKey:
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
            return [signer_for(_read_offline_key(p, dd.passphrase)) for p in sign_with]
        return [_signer(store, name) for name in settings.root_keys]
    if len(sign_with) < settings.root_threshold:
        raise CeremonyError(
            f"this ceremony needs {settings.root_threshold} of the root keys: "
            f"pass them with --sign-with (got {len(sign_with)})"
        )
    return [signer_for(_read_offline_key(p, dd.passphrase)) for p in sign_with]


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


def _open(data: Path | DataDir) -> tuple[DataDir, Settings, KeyStore]:
    """Ceremonies take a path, or a DataDir bound to a particular database."""
    dd = data if isinstance(data, DataDir) else DataDir(data)
    settings = dd.settings()
    return dd, settings, dd.keystore(settings)


def _online_signers(store: KeyStore, settings: Settings) -> tuple[Signer, Signer]:
    g = settings.online_key_generation
    return _signer(store, f"snapshot-{g}"), _signer(store, f"timestamp-{g}")


def _authority(dd: DataDir, settings: Settings, store: KeyStore, kind: str) -> Authority:
    g = int(getattr(settings, f"{kind}_ca_generation"))
    return Authority(
        dd.certificate(f"{kind}-ca.pem"),
        _ca_key(store, f"{kind}-ca-g{g}"),
        dd.ledger(),
        settings.validity,
    )


def serialized(
    ceremony: Callable[Concatenate[Path | DataDir, P], T],
) -> Callable[Concatenate[Path | DataDir, P], T]:
    """Run a ceremony under its site's ceremony lock, from its first read to its last write.

    Two ceremonies at once would each sign from what they read and the later
    would undo the earlier (``homing.site.lock``); this makes the second
    start from what the first wrote.
    """

    @functools.wraps(ceremony)
    def locked(data: Path | DataDir, /, *args: P.args, **kwargs: P.kwargs) -> T:
        root = data.root if isinstance(data, DataDir) else Path(data)
        with ceremony_lock(root, ceremony.__name__):
            return ceremony(data, *args, **kwargs)

    return locked
