"""No enumeration: what needs no credential answers an enrolled id and an unknown one alike.

Attack from outside on the real server (SQLite and PostgreSQL): someone
without any credential asks for recovery challenges and sends recoveries
for an active device, a revoked one and an id nobody enrolled. The status,
the error code, the message and the shape of every answer are the same;
only a device that proves its registered key learns its standing. The
answers take roughly the same time (medians of interleaved requests).
"""

from __future__ import annotations

import statistics
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from homing.operations import fleet as operations
from tests.harness import RunningServer, recover_with_key


def _shape(doc: Any) -> Any:
    """The keys and value types of an answer, without its values."""
    if isinstance(doc, dict):
        return {k: _shape(v) for k, v in sorted(doc.items())}
    return type(doc).__name__


def _attempt(server: RunningServer, device_id: str) -> tuple[int, Any, int, dict[str, Any]]:
    """A challenge, then a recovery signed with a key the attacker made."""
    challenge = server.request("POST", "/v1/recover/challenge", {"device_id": device_id})
    status, answer = recover_with_key(server, device_id, ec.generate_private_key(ec.SECP256R1()))
    return challenge.status, _shape(challenge.json()), status, answer


def test_known_revoked_and_unknown_ids_look_alike_without_the_key(
    server: RunningServer, factory: tuple[str, str], tmp_path: Path
) -> None:
    server.enroll("dev-active", factory, tmp_path)
    revoked = server.enroll("dev-revoked", factory, tmp_path)
    operations.revoke_device(
        server.state.dd, server.state.db, "test", datetime.now(UTC), "dev-revoked", "stolen"
    )
    seen = {d: _attempt(server, d) for d in ("dev-active", "dev-revoked", "dev-nobody")}
    first = seen["dev-active"]
    assert first[0] == 200
    assert first[2] == 403
    assert first[3]["error"] == "recovery_refused"
    for device_id, attempt in seen.items():
        assert attempt == first, device_id
    # Only the holder of the registered key learns the device is revoked.
    status, answer = recover_with_key(server, "dev-revoked", revoked.key)
    assert (status, answer["error"]) == (403, "revoked")


def test_challenges_for_known_and_unknown_ids_take_about_as_long(
    server: RunningServer, factory: tuple[str, str], tmp_path: Path
) -> None:
    server.enroll("dev-known", factory, tmp_path)
    took: dict[str, list[float]] = {"dev-known": [], "dev-unknown": []}
    for _ in range(40):  # interleaved, so the machine's load falls on both alike
        for device_id in took:
            started = time.perf_counter()
            answer = server.request("POST", "/v1/recover/challenge", {"device_id": device_id})
            took[device_id].append(time.perf_counter() - started)
            assert answer.status == 200
    known, unknown = (statistics.median(took[d]) for d in ("dev-known", "dev-unknown"))
    # A connection and a handshake each time dwarf the one row written for a known id.
    assert 0.5 < known / unknown < 2.0, (known, unknown)
