"""Online enrollment: the key is made on the device; only the certificate comes back."""

from __future__ import annotations

import base64
import secrets
from datetime import datetime
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from homing.agent.agent import Agent, CycleReport, pkcs7_leaf
from homing.agent.state import DeviceConfig, DeviceState
from homing.errors import ConfigError, TransportError
from homing.pki.keys import generate_tls_key
from homing.pki.profiles import device_uri

__all__ = ["enroll", "new_device_id"]


def new_device_id() -> str:
    return f"dev-{secrets.token_hex(6)}"


def enroll(
    state_dir: Path,
    server: str,
    factory: str,
    root_metadata: bytes,
    now: datetime,
    *,
    device_id: str | None = None,
    hardware: str | None = None,
) -> DeviceState:
    """Create a device state and enroll it over EST ``simpleenroll`` with factory credentials.

    Trust comes from ``root_metadata`` (the root the factory gives every
    device); the EST request goes over a connection pinned with the pin
    policy that root leads to.
    """
    name, sep, secret = factory.partition(":")
    if not sep or not name or not secret:
        raise ConfigError("--factory must be NAME:SECRET")
    device_id = device_id or new_device_id()
    device_uri(device_id)
    key = generate_tls_key()
    state = DeviceState.create(
        state_dir,
        DeviceConfig(
            device_id=device_id, hardware=hardware, released_at=now.isoformat(), server=server
        ),
        key,
        root_metadata,
    )
    agent = Agent(state, server=server)
    policy = agent.refresh_trust(now, CycleReport()).pin_policy
    csr = agent._csr()
    auth = base64.b64encode(f"{name}:{secret}".encode()).decode()
    path = "/.well-known/est/simpleenroll" + (f"?hardware={hardware}" if hardware else "")
    answer = agent.client(policy, now).post(
        path,
        base64.b64encode(csr),
        "application/pkcs10",
        mutual=False,
        headers={"Authorization": f"Basic {auth}"},
    )
    cert = pkcs7_leaf(answer.expect_ok("enrollment").body, "enrollment")
    if cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ) != key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ):
        raise TransportError("the server returned a certificate for another key")
    state.save_certificate([cert])
    return state
