"""Sign-then-combine ceremonies: a proposal, detached signatures, and the threshold check.

The way k-of-n keys stay k-of-n in practice: no one machine ever holds a
threshold of them. The operator prepares a *proposal* (the next root or
targets metadata, unsigned, with the current one beside it); each key holder,
on their own machine and with their own passphrase, reads in words what it
changes and signs it, producing a *detached signature* file; the operator
publishes once enough signatures are in. Publishing verifies every
signature over the proposal's exact bytes, then the threshold with
python-tuf's own ``verify_delegate`` (TUF spec §5.3.4 for root: a threshold of
the old root's keys and of the new root's), and refuses anything short.

Everything here takes bytes and returns verified objects or raises
``CeremonyError``; files and keys are the shell's (``homing.ceremonies.threshold``).
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from securesystemslib.signer import Signature, Signer
from tuf.api.exceptions import UnsignedMetadataError
from tuf.api.metadata import Metadata, Root, Targets

from homing.errors import CeremonyError, MetadataError
from homing.trust.pins import PIN_POLICY_TARGET, PinPolicy

__all__ = [
    "DetachedSignature",
    "Proposal",
    "combine",
    "describe",
    "sign_proposal",
]

PROPOSAL_SCHEMA = "homing.proposal/1"
SIGNATURE_SCHEMA = "homing.signature/1"
_ROLES = (Root.type, Targets.type)
MAX_FILE_BYTES = 1 << 20


def _canonical(md: Metadata[Any]) -> bytes:
    """The bytes a signature covers: canonical JSON of ``signed`` (what python-tuf signs)."""
    from securesystemslib.formats import encode_canonical

    encoded = encode_canonical(md.signed.to_dict())
    assert encoded is not None  # None only when an output function is given
    return encoded.encode()


def _load_json(data: bytes, what: str) -> dict[str, Any]:
    if len(data) > MAX_FILE_BYTES:
        raise CeremonyError(f"the {what} is larger than {MAX_FILE_BYTES} bytes")
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, ValueError) as e:
        raise CeremonyError(f"the {what} is not JSON: {e}") from e
    if not isinstance(doc, dict):
        raise CeremonyError(f"the {what} must be a JSON object")
    return doc


@dataclass(frozen=True)
class Proposal:
    """The next version of ``role``, unsigned, beside the version it replaces."""

    role: str
    current: Metadata[Any]
    proposed: Metadata[Any]
    # For targets: the files the new version names, so holders read the pins.
    files: Mapping[str, bytes] = field(default_factory=dict)

    @property
    def digest(self) -> str:
        """SHA-256 of the bytes every holder signs."""
        return hashlib.sha256(_canonical(self.proposed)).hexdigest()

    def to_bytes(self) -> bytes:
        doc = {
            "schema": PROPOSAL_SCHEMA,
            "role": self.role,
            "current": self.current.to_dict(),
            "proposed": self.proposed.to_dict(),
            "files": {k: base64.b64encode(v).decode() for k, v in self.files.items()},
        }
        return json.dumps(doc, indent=2, sort_keys=True).encode() + b"\n"

    @classmethod
    def from_bytes(cls, data: bytes) -> Proposal:
        doc = _load_json(data, "proposal")
        if doc.get("schema") != PROPOSAL_SCHEMA or set(doc) != {
            "schema",
            "role",
            "current",
            "proposed",
            "files",
        }:
            raise CeremonyError(f"not a homing proposal ({PROPOSAL_SCHEMA})")
        role = doc["role"]
        if role not in _ROLES:
            raise CeremonyError(f"a proposal is for root or targets, not {role!r}")
        try:
            current = Metadata.from_dict(dict(doc["current"]))
            proposed = Metadata.from_dict(dict(doc["proposed"]))
            files = {str(k): base64.b64decode(v, validate=True) for k, v in doc["files"].items()}
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise CeremonyError(f"the proposal's metadata cannot be read: {e}") from e
        for md in (current, proposed):
            if md.signed.type != role:
                raise CeremonyError(f"the proposal mixes {md.signed.type} into a {role} proposal")
        if proposed.signed.version != current.signed.version + 1:
            raise CeremonyError(
                f"the proposal must be version {current.signed.version + 1}, "
                f"not {proposed.signed.version}"
            )
        if proposed.signatures:
            raise CeremonyError("a proposal carries no signatures; they travel as separate files")
        return cls(role, current, proposed, files)


@dataclass(frozen=True)
class DetachedSignature:
    """One holder's signatures over one proposal, as a file that travels alone."""

    role: str
    version: int
    digest: str
    signatures: tuple[Signature, ...]

    def to_bytes(self) -> bytes:
        doc = {
            "schema": SIGNATURE_SCHEMA,
            "role": self.role,
            "version": self.version,
            "signed_sha256": self.digest,
            "signatures": [s.to_dict() for s in self.signatures],
        }
        return json.dumps(doc, indent=2, sort_keys=True).encode() + b"\n"

    @classmethod
    def from_bytes(cls, data: bytes) -> DetachedSignature:
        doc = _load_json(data, "signature file")
        if doc.get("schema") != SIGNATURE_SCHEMA:
            raise CeremonyError(f"not a homing signature file ({SIGNATURE_SCHEMA})")
        try:
            sigs = tuple(Signature.from_dict(dict(s)) for s in doc["signatures"])
            return cls(str(doc["role"]), int(doc["version"]), str(doc["signed_sha256"]), sigs)
        except (KeyError, TypeError, ValueError) as e:
            raise CeremonyError(f"the signature file cannot be read: {e}") from e


def sign_proposal(proposal: Proposal, signers: Sequence[Signer]) -> DetachedSignature:
    """A holder's signatures over the proposal's exact bytes."""
    if not signers:
        raise CeremonyError("sign with at least one key")
    md = Metadata.from_dict(proposal.proposed.to_dict())
    signatures = tuple(md.sign(s, append=True) for s in signers)
    return DetachedSignature(
        proposal.role, proposal.proposed.signed.version, proposal.digest, signatures
    )


def _delegator_keys(proposal: Proposal) -> set[str]:
    """Keys whose signatures count: the current and proposed root's (root), or root's targets."""
    if proposal.role == Root.type:
        return set(proposal.current.signed.roles[Root.type].keyids) | set(
            proposal.proposed.signed.roles[Root.type].keyids
        )
    return set()


def combine(
    proposal: Proposal,
    signed_by: Sequence[DetachedSignature],
    root: Metadata[Root],
) -> Metadata[Any]:
    """The proposal with its signatures, verified; ``CeremonyError`` saying what is short.

    ``root`` is the trusted root now published: the delegator of targets,
    and for a root proposal the version the proposal must follow.
    """
    p = proposal
    if p.role == Root.type and p.current.to_dict() != root.to_dict():
        raise CeremonyError(
            f"the proposal follows root v{p.current.signed.version}, but root "
            f"v{root.signed.version} is published: prepare a new proposal"
        )
    md = Metadata.from_dict(p.proposed.to_dict())
    body = _canonical(md)
    keys = _signing_keys(p, root)
    for detached in signed_by:
        if (detached.role, detached.version) != (p.role, md.signed.version):
            raise CeremonyError(
                f"a signature file is for {detached.role} v{detached.version}, "
                f"not this {p.role} v{md.signed.version}"
            )
        if detached.digest != p.digest:
            raise CeremonyError(
                "a signature file was made over different bytes (another proposal): "
                f"{detached.digest[:16]}... is not {p.digest[:16]}..."
            )
        for sig in detached.signatures:
            key = keys.get(sig.keyid)
            if key is None:
                raise CeremonyError(f"key {sig.keyid[:16]}... may not sign {p.role}")
            try:
                key.verify_signature(sig, body)
            except Exception as e:  # securesystemslib raises its own error types
                raise CeremonyError(
                    f"the signature by key {sig.keyid[:16]}... does not verify over this "
                    "proposal: it was made over different bytes"
                ) from e
            md.signatures[sig.keyid] = sig
    # TUF spec §5.3.4 (root: old threshold and new), §5.6 (targets: root's threshold).
    checks: list[tuple[Metadata[Any], str]] = (
        [(p.current, f"root v{p.current.signed.version}"), (md, f"root v{md.signed.version}")]
        if p.role == Root.type
        else [(root, f"root v{root.signed.version}")]
    )
    for delegator, name in checks:
        try:
            delegator.verify_delegate(p.role, md)
        except UnsignedMetadataError as e:
            role = delegator.signed.roles[p.role]
            have = len(set(md.signatures) & set(role.keyids))
            raise CeremonyError(
                f"{p.role} v{md.signed.version} needs {role.threshold} signatures by the "
                f"{p.role} keys of {name}; it has {have}: collect more before publishing"
            ) from e
    return md


def _signing_keys(proposal: Proposal, root: Metadata[Root]) -> dict[str, Any]:
    if proposal.role == Root.type:
        keys = dict(proposal.current.signed.keys)
        keys.update(proposal.proposed.signed.keys)
        return {k: keys[k] for k in _delegator_keys(proposal)}
    return {k: root.signed.keys[k] for k in root.signed.roles[Targets.type].keyids}


def _key_list(keyids: Sequence[str] | set[str]) -> str:
    return ", ".join(k[:16] for k in sorted(keyids)) or "none"


def describe(proposal: Proposal) -> list[str]:
    """What the proposal changes, in words a key holder reads before signing."""
    p, lines = proposal, []
    old, new = p.current.signed, p.proposed.signed
    lines.append(f"{p.role} version {old.version} -> {new.version}")
    lines.append(f"expires {old.expires.isoformat()} -> {new.expires.isoformat()}")
    if p.role == Root.type:
        for role in sorted(new.roles):
            before = set(old.roles[role].keyids) if role in old.roles else set()
            after = set(new.roles[role].keyids)
            change = []
            if after - before:
                change.append(f"adds {_key_list(after - before)}")
            if before - after:
                change.append(f"removes {_key_list(before - after)}")
            threshold = ""
            if role in old.roles and old.roles[role].threshold != new.roles[role].threshold:
                threshold = (
                    f"; threshold {old.roles[role].threshold} -> {new.roles[role].threshold}"
                )
            verdict = "; ".join(change) if change else "keys unchanged"
            lines.append(
                f"{role}: {verdict}{threshold} ({new.roles[role].threshold} of {len(after)})"
            )
        return lines
    lines.extend(_describe_pins(p))
    return lines


def _describe_pins(p: Proposal) -> list[str]:
    new_info = p.proposed.signed.targets.get(PIN_POLICY_TARGET)
    if new_info is None:
        return ["the pin policy is removed: devices could not connect"]
    if PIN_POLICY_TARGET not in p.files:
        raise CeremonyError("a targets proposal must carry the pin policy it names")
    data = p.files[PIN_POLICY_TARGET]
    if hashlib.sha256(data).hexdigest() != new_info.hashes.get("sha256"):
        raise CeremonyError("the pin policy carried does not match the one the proposal names")
    try:
        policy = PinPolicy.from_bytes(data)
    except MetadataError as e:
        raise CeremonyError(f"the proposed pin policy is invalid: {e}") from e
    lines = [
        f"pins: {', '.join(policy.spki_pins)}",
        f"root CAs: {', '.join(c.subject.rfc4514_string() for c in policy.root_cas)}",
        f"hosts: {', '.join(policy.hosts)}; primary {policy.primary}"
        + (f"; mirrors {', '.join(policy.mirrors)}" if policy.mirrors else ""),
    ]
    old_info = p.current.signed.targets.get(PIN_POLICY_TARGET)
    if old_info is not None and old_info.hashes == new_info.hashes:
        lines.append("the pin policy is unchanged (a re-signing)")
    return lines
