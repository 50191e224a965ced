"""Offline provisioning at the factory station: key, certificate, state directory.

The station holds the data directory (device-issuing CA key and the
database); the device leaves with its key, its certificate, the newest root
metadata and the home server endpoints, and the server knows it at once.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from homing import ceremonies
from homing.agent.enroll import new_device_id
from homing.agent.state import DeviceConfig, DeviceState
from homing.pki.keys import generate_tls_key
from homing.pki.profiles import device_csr, device_uri
from homing.site import DataDir
from homing.store import audit
from homing.store import devices as device_store
from homing.trust.pins import PIN_POLICY_TARGET

__all__ = ["provision"]


def provision(
    data: DataDir,
    out: Path,
    now: datetime,
    *,
    device_id: str | None = None,
    hardware: str | None = None,
    server: str | None = None,
) -> DeviceState:
    device_id = device_id or new_device_id()
    device_uri(device_id)
    key = generate_tls_key()
    csr = device_csr(key, device_id)
    settings = data.settings()
    repo = data.repository(settings)
    newest_root = (data.metadata_dir / f"{repo.root_version()}.root.json").read_bytes()
    db = data.database()
    with db.begin() as conn:
        if device_store.device(conn, device_id) is not None:
            from homing.errors import ConflictError

            raise ConflictError(f"device {device_id!r} is already enrolled")
    chain = ceremonies.issue_certificate(data, csr, "device", now, device_id=device_id)
    spki = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    state = DeviceState.create(
        out,
        DeviceConfig(
            device_id=device_id, hardware=hardware, released_at=now.isoformat(), server=server
        ),
        key,
        newest_root,
    )
    state.save_certificate(chain)
    # The pin policy as published now, so the first connection can be pinned.
    from homing.fsutil import atomic_write

    atomic_write(out / "pins.json", repo.target_bytes(PIN_POLICY_TARGET))
    with db.begin() as conn:
        device_store.enroll_device(conn, device_id, spki, now, "provision", hardware)
        audit.audit(
            conn,
            now,
            "factory:provision",
            "enroll",
            device_id,
            {"serial": format(chain[0].serial_number, "x")},
        )
    return state
