"""Online enrollment: the key is made on the device; only the certificate comes back."""

from __future__ import annotations

import base64
import secrets
from datetime import datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from homing.agent.agent import Agent, CycleReport, pkcs7_leaf
from homing.agent.client import HomeClient
from homing.agent.state import DeviceConfig, DeviceState
from homing.errors import ConfigError, PolicyError, TransportError
from homing.pki.idevid import device_id_of
from homing.pki.keys import generate_tls_key
from homing.pki.profiles import device_uri

__all__ = ["enroll", "idevid_device_id", "new_device_id"]


def new_device_id() -> str:
    return f"dev-{secrets.token_hex(6)}"


def idevid_device_id(idevid_cert: Path) -> str:
    """The device id an IDevID names: its homing URI SAN, else serialNumber, else CN.

    The server reads the id by its own rule for the manufacturer and refuses
    a request for another; ``--id`` settles any doubt.
    """
    try:
        cert = x509.load_pem_x509_certificate(idevid_cert.read_bytes())
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot read the IDevID {idevid_cert}: {e}") from e
    for source in ("uri", "serial-number", "common-name"):
        try:
            return device_id_of(cert, source)
        except PolicyError:
            continue
    raise ConfigError(f"the IDevID {idevid_cert} names no device id: pass --id")


def enroll(
    state_dir: Path,
    server: str,
    factory: str | None,
    root_metadata: bytes,
    now: datetime,
    *,
    device_id: str | None = None,
    hardware: str | None = None,
    idevid: tuple[Path, Path] | None = None,
) -> DeviceState:
    """Create a device state and enroll it over EST ``simpleenroll``.

    The device proves itself by its manufacturer certificate (``idevid``:
    certificate and key files, presented as the TLS client certificate) or,
    where it has none, by the factory station's ``NAME:SECRET``. Trust comes
    from ``root_metadata`` (the root the factory gives every device); the
    EST request goes over a connection pinned with the pin policy that root
    leads to.
    """
    if (factory is None) == (idevid is None):
        raise ConfigError("enroll with a manufacturer certificate or a factory secret: one")
    headers: dict[str, str] = {}
    if factory is not None:
        name, sep, secret = factory.partition(":")
        if not sep or not name or not secret:
            raise ConfigError("--factory must be NAME:SECRET")
        auth = base64.b64encode(f"{name}:{secret}".encode()).decode()
        headers["Authorization"] = f"Basic {auth}"
    if idevid is not None:
        device_id = device_id or idevid_device_id(idevid[0])
        if not idevid[1].is_file():
            raise ConfigError(f"cannot read the IDevID key {idevid[1]}")
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
    client = agent.client(policy, now)
    if idevid is not None:
        client = HomeClient(
            client.url, policy=policy, now=now, client_cert=idevid, limits=agent.limits
        )
    csr = agent._csr()
    path = "/.well-known/est/simpleenroll" + (f"?hardware={hardware}" if hardware else "")
    answer = client.post(
        path,
        base64.b64encode(csr),
        "application/pkcs10",
        mutual=idevid is not None,
        headers=headers,
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
