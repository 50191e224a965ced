"""Offline provisioning at the factory station: key, certificate, state directory.

The station holds the data directory (device-issuing CA key and the
database); the device leaves with its key, its certificate, the newest root
metadata and the home server endpoints, and the server knows it at once.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from homing import ceremonies
from homing.agent.enroll import new_device_id
from homing.agent.state import DeviceConfig, DeviceState
from homing.pki.keys import generate_tls_key, spki_der
from homing.pki.profiles import device_csr, device_uri
from homing.site import DataDir
from homing.store import audit
from homing.store import devices as device_store
from homing.trust.pins import PIN_POLICY_TARGET

__all__ = ["provision", "register_device"]


def register_device(
    data: DataDir,
    key: ec.EllipticCurvePrivateKey,
    device_id: str,
    now: datetime,
    *,
    hardware: str | None = None,
    actor: str = "factory:provision",
) -> list[x509.Certificate]:
    """Issue ``key`` a device certificate and enroll the device with it; returns the chain.

    Refuses (ConflictError) a device id that is enrolled already, and
    (KeyTaken) a key registered to another device, before anything is issued.
    """
    device_uri(device_id)
    db = data.database()
    spki = spki_der(key.public_key())
    # A read: the enrollment below checks again in the transaction that writes.
    with db.engine.connect() as conn:
        device_store.require_new(conn, device_id, spki)
    chain = ceremonies.issue_certificate(
        data, device_csr(key, device_id), "device", now, device_id=device_id
    )
    with db.begin() as conn:
        device_store.enroll_device(conn, device_id, spki, now, actor.split(":")[-1], hardware)
        audit.audit(
            conn, now, actor, "enroll", device_id, {"serial": format(chain[0].serial_number, "x")}
        )
    return chain


def provision(
    data: DataDir,
    out: Path,
    now: datetime,
    *,
    device_id: str | None = None,
    hardware: str | None = None,
    server: str | None = None,
) -> DeviceState:
    """A device made at the factory: its key, its certificate, its state directory."""
    device_id = device_id or new_device_id()
    key = generate_tls_key()
    settings = data.settings()
    repo = data.repository(settings)
    newest_root = (data.metadata_dir / f"{repo.root_version()}.root.json").read_bytes()
    chain = register_device(data, key, device_id, now, hardware=hardware)
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
    return state
