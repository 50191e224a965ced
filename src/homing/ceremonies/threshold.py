"""Sign-then-combine ceremonies over files: keygen, propose, sign, publish.

The shell around ``homing.trust.proposal``. A key holder's commands
(``holder_keygen``, ``sign``) touch only the holder's own key files and a
proposal file: they need no data directory, no database and not the
server's passphrase. The operator's commands (``propose_*``, ``publish``)
need the data directory and the online keys only.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from tuf.api.metadata import Metadata, Role, Root, Snapshot, TargetFile, Targets, Timestamp

from homing.ceremonies._common import (
    OPERATOR,
    _audit,
    _online_signers,
    _open,
    _read_offline_key,
    _write_offline_key,
    serialized,
)
from homing.ceremonies.retired_keys import destroy_retired_keys
from homing.errors import CeremonyError
from homing.fsutil import atomic_write
from homing.pki.keys import generate_signing_key, public_key_pem
from homing.site import DataDir
from homing.trust.pins import PIN_POLICY_TARGET
from homing.trust.proposal import DetachedSignature, Proposal, combine, sign_proposal
from homing.trust.signing import signer_for, tuf_key

__all__ = [
    "holder_keygen",
    "propose_root",
    "propose_targets",
    "publish",
    "sign",
]


def holder_keygen(out: Path, public_out: Path, passphrase: bytes) -> str:
    """A key holder's new signing key, encrypted with their own passphrase; returns its keyid."""
    if len(passphrase) < 8:
        raise CeremonyError("a key holder's passphrase must be at least 8 characters")
    if public_out.exists():
        raise CeremonyError(f"refusing to overwrite {public_out}")
    key = generate_signing_key()
    _write_offline_key(out, key, passphrase)
    atomic_write(public_out, public_key_pem(key.public_key()))
    return str(tuf_key(key.public_key()).keyid)


def _public_key(pem: bytes, where: str) -> ed25519.Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(pem)
    except ValueError as e:
        raise CeremonyError(f"{where} is not a PEM public key") from e
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise CeremonyError(f"{where} is not an Ed25519 key (`homing ceremony keygen` makes one)")
    return key


def propose_root(
    data: Path | DataDir,
    now: datetime,
    *,
    new_keys: Sequence[tuple[str, bytes]] = (),
    threshold: int | None = None,
    targets_keys: Sequence[tuple[str, bytes]] = (),
    targets_threshold: int | None = None,
    new_online_keys: bool = False,
) -> Proposal:
    """Root N+1: the given holders' public keys (``(where, PEM)``) and threshold.

    Without new keys the same keys renew the root's expiry. ``targets_keys``
    hands the targets role (which signs the pin policy) to key holders too,
    so the server's key store no longer holds a key that can publish pins.
    ``new_online_keys`` makes the next snapshot and timestamp keys here (in
    the server's store or token; nothing uses them until the root naming
    them is published) and names them in the proposal.
    """
    dd, settings, store = _open(data)
    repo = dd.repository(settings)
    current = repo.root()
    proposed = _next_version(current, now + settings.expiries.root)
    if new_keys:
        _hand_role(proposed.signed, Root.type, new_keys)
    role = proposed.signed.roles[Root.type]
    _set_threshold(role, threshold if threshold is not None else role.threshold, "root")
    if targets_keys:
        _hand_role(proposed.signed, Targets.type, targets_keys)
        targets = proposed.signed.roles[Targets.type]
        _set_threshold(targets, targets_threshold or 1, "targets")
    if new_online_keys:
        g = settings.online_key_generation + 1
        for role_name in (Snapshot.type, Timestamp.type):
            key = store.generate(f"{role_name}-{g}", "signing")
            for keyid in list(proposed.signed.roles[role_name].keyids):
                proposed.signed.revoke_key(keyid, role_name)
            proposed.signed.add_key(tuf_key(key.public_key()), role_name)
    return Proposal(Root.type, current, proposed)


def _names_new_online_keys(proposal: Proposal) -> bool:
    old, new = proposal.current.signed, proposal.proposed.signed
    return any(old.roles[r].keyids != new.roles[r].keyids for r in (Snapshot.type, Timestamp.type))


def _next_version(current: Metadata[Any], expires: datetime) -> Metadata[Any]:
    """A copy of ``current`` as the next version, unsigned."""
    proposed = Metadata.from_bytes(current.to_bytes())
    proposed.signatures.clear()
    proposed.signed.version += 1
    proposed.signed.expires = expires
    return proposed


def _hand_role(root: Root, role: str, holders: Sequence[tuple[str, bytes]]) -> None:
    """Replace ``role``'s keys by the holders' public keys (``(where, PEM)``)."""
    keys = [tuf_key(_public_key(pem, where)) for where, pem in holders]
    if len({k.keyid for k in keys}) != len(keys):
        raise CeremonyError("the same public key is given twice")
    for keyid in list(root.roles[role].keyids):
        root.revoke_key(keyid, role)
    for key in keys:
        root.add_key(key, role)


def _set_threshold(role: Role, threshold: int, name: str) -> None:
    count = len(role.keyids)
    if not 1 <= threshold <= count:
        raise CeremonyError(f"the {name} threshold must be between 1 and the {count} {name} keys")
    role.threshold = threshold


def propose_targets(data: Path | DataDir, now: datetime) -> Proposal:
    """Targets N+1 carrying the pin policy the site's state implies (or a re-signing)."""
    from homing.ceremonies.pin_publication import trust_targets

    dd, settings, store = _open(data)
    repo = dd.repository(settings)
    current = repo.targets()
    proposed = _next_version(current, now + settings.expiries.targets)
    files = trust_targets(dd, settings, store)
    for name, content in files.items():
        proposed.signed.targets[name] = TargetFile.from_data(name, content, ["sha256"])
    return Proposal(Targets.type, current, proposed, files)


def sign(proposal: Proposal, keys: Sequence[Path], passphrase: bytes | None) -> DetachedSignature:
    """A holder signs with their own key files (one passphrase: their own)."""
    if not keys:
        raise CeremonyError("name the key file(s) to sign with")
    return sign_proposal(proposal, [signer_for(_read_offline_key(p, passphrase)) for p in keys])


@serialized
def publish(
    data: Path | DataDir,
    now: datetime,
    proposal: Proposal,
    signatures: Sequence[DetachedSignature],
    *,
    actor: str = OPERATOR,
) -> int:
    """Verify the threshold with python-tuf and publish; returns the new version."""
    dd, settings, store = _open(data)
    repo = dd.repository(settings)
    md = combine(proposal, signatures, repo.root())
    if proposal.role == Root.type and _names_new_online_keys(proposal):
        # The proposal names the next generation made by propose_root: check it is ours.
        g = settings.online_key_generation + 1
        for role_name in (Snapshot.type, Timestamp.type):
            name = f"{role_name}-{g}"
            mine = tuf_key(store.load(name).public_key()).keyid if store.exists(name) else None
            if md.signed.roles[role_name].keyids != [mine]:
                raise CeremonyError(
                    f"the proposal's {role_name} key is not this site's {name}: prepare a new one"
                )
        settings.online_key_generation = g
    snapshot, timestamp = _online_signers(store, settings)
    destroyed: list[str] = []
    if proposal.role == Root.type:
        repo.import_root(md)
        role = md.signed.roles[Root.type]
        settings.root_keys = sorted(role.keyids)
        settings.root_threshold = role.threshold
        before = set(proposal.current.signed.roles[Targets.type].keyids)
        if set(md.signed.roles[Targets.type].keyids) != before:
            settings.targets_by_holders = True
        dd.save_settings(settings)
        repo.refresh_snapshot(snapshot, timestamp, now)
        # The keys this root replaced sign nothing again (homing.ceremonies.retired_keys).
        destroyed = destroy_retired_keys(dd, settings, store)
    else:
        from homing.ceremonies.retirement import record_published_pins

        repo.import_targets(md, proposal.files, snapshot, timestamp, now)
        if PIN_POLICY_TARGET in proposal.files:
            record_published_pins(
                dd, proposal.files[PIN_POLICY_TARGET], settings.server_ca_generation, now
            )
    version = int(md.signed.version)
    detail: dict[str, object] = {"signatures": sorted(md.signatures), "sha256": proposal.digest}
    if destroyed:
        detail["destroyed_keys"] = destroyed
    _audit(dd, now, actor, f"publish_{proposal.role}", f"{proposal.role} v{version}", detail)
    return version
