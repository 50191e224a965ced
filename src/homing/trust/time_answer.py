"""Trusted time from home: the time and the device's nonce, signed by a key its root names.

A device whose clock is in doubt (behind its time floor, past every expiry
it holds, or jumped) asks its home for the time with a fresh random nonce.
The home answers with a DSSE envelope (the in-toto signing envelope; its
pre-authentication encoding binds the payload type, so a time answer can
never pass for TUF metadata or the reverse) whose payload is the nonce and
the home's time, signed by the site's online timestamp key. The device
checks the signature against the timestamp role of the root it trusts
(threshold included) and the nonce against the one it sent: a replayed or
forged answer fails. It does not judge the key by its own clock, which is
the thing in doubt. docs/adr/0009-trusted-time.md says why each rule.
"""

from __future__ import annotations

import hmac
import json
import re
import secrets
from datetime import datetime

from securesystemslib.dsse import Envelope
from securesystemslib.exceptions import VerificationError
from securesystemslib.signer import Signer
from tuf.api.metadata import Root, Timestamp

from homing.errors import MetadataError

__all__ = [
    "MAX_ANSWER_BYTES",
    "PAYLOAD_TYPE",
    "new_nonce",
    "sign_time",
    "valid_nonce",
    "verify_time",
]

PAYLOAD_TYPE = "application/vnd.homing.time+json"
MAX_ANSWER_BYTES = 4096
_NONCE = re.compile(r"[0-9a-f]{64}")


def new_nonce() -> str:
    """256 random bits, hex: what a device sends and expects back."""
    return secrets.token_hex(32)


def valid_nonce(nonce: str) -> bool:
    return bool(_NONCE.fullmatch(nonce))


def sign_time(signer: Signer, nonce: str, now: datetime) -> dict[str, object]:
    """The envelope a home answers with: ``nonce`` and ``now``, signed."""
    if not valid_nonce(nonce):
        raise MetadataError("the nonce must be 64 lowercase hex digits")
    payload = json.dumps({"nonce": nonce, "time": now.isoformat()}, sort_keys=True).encode()
    envelope = Envelope(payload, PAYLOAD_TYPE, {})
    envelope.sign(signer)
    return envelope.to_dict()


def verify_time(answer: bytes, nonce: str, root: Root, floor: datetime | None = None) -> datetime:
    """The time ``answer`` carries, if the trusted ``root``'s timestamp keys signed it for
    ``nonce`` and it is not below ``floor``; MetadataError otherwise."""
    if len(answer) > MAX_ANSWER_BYTES:
        raise MetadataError(f"the time answer is larger than {MAX_ANSWER_BYTES} bytes")
    try:
        envelope = Envelope.from_dict(json.loads(answer))
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as e:
        raise MetadataError(f"the time answer cannot be read: {e}") from e
    if envelope.payload_type != PAYLOAD_TYPE:
        raise MetadataError(f"the time answer's payload type is {envelope.payload_type!r}")
    role = root.roles[Timestamp.type]
    keys = [root.keys[keyid] for keyid in role.keyids if keyid in root.keys]
    try:
        envelope.verify(keys, role.threshold)
    except (VerificationError, ValueError) as e:
        raise MetadataError(
            f"the time answer is not signed by the timestamp keys of root v{root.version}: {e}"
        ) from e
    try:
        doc = json.loads(envelope.payload)
        sent_back = str(doc["nonce"])
        when = datetime.fromisoformat(str(doc["time"]))
    except (ValueError, KeyError, TypeError) as e:
        raise MetadataError(f"the time answer's payload cannot be read: {e}") from e
    if not hmac.compare_digest(sent_back.encode(), nonce.encode()):
        raise MetadataError("the time answer is for another request (its nonce differs)")
    if when.tzinfo is None:
        raise MetadataError("the time answer's time has no zone")
    if floor is not None and when < floor:
        raise MetadataError(
            f"the time answer ({when.isoformat()}) is below this device's time floor "
            f"({floor.isoformat()})"
        )
    return when
