"""Online enrollment: the key is made on the device; only the certificate comes back."""

from __future__ import annotations

import base64
import os
import secrets
import shutil
from datetime import datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from homing.agent.agent import Agent, CycleReport
from homing.agent.certificate_steps import pkcs7_leaf
from homing.agent.client import HomeClient
from homing.agent.device_key import KEY_STORES
from homing.agent.state import DeviceConfig, DeviceState
from homing.agent.token_key import TokenKeyRef
from homing.errors import ConfigError, PolicyError, TransportError
from homing.pki.idevid import device_id_of
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
    key_store: str = "file",
    token: TokenKeyRef | None = None,
) -> DeviceState:
    """Create a device state and enroll it over EST ``simpleenroll``.

    The device proves itself by its manufacturer certificate (``idevid``:
    certificate and key files, presented as the TLS client certificate) or,
    where it has none, by the factory station's ``NAME:SECRET``. Trust comes
    from ``root_metadata`` (the root the factory gives every device); the
    EST request goes over a connection pinned with the pin policy that root
    leads to. ``key_store``: where the new key is made and kept, ``file``,
    ``tpm2`` or ``pkcs11`` on ``token`` (homing.agent.device_key).
    """
    if key_store not in KEY_STORES:
        raise ConfigError(f"--key-store must be one of {', '.join(KEY_STORES)}, not {key_store!r}")
    if (key_store == "pkcs11") != (token is not None):
        raise ConfigError(
            "--pkcs11-module and --pkcs11-token name the token of --key-store pkcs11, and only it"
        )
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
    _check_root(root_metadata)
    if state_dir.exists() and any(state_dir.iterdir()):
        raise ConfigError(
            f"{state_dir} already holds a device state: this device is enrolled (to enroll "
            "it again as a new device, move that directory away first)"
        )
    # Built aside and moved into place whole once enrolled: a failed enrollment (a wrong
    # secret, the server unreachable) leaves nothing behind, and the retry starts clean.
    staging = state_dir.parent / f".{state_dir.name}.enrolling"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        _enroll_into(
            staging,
            server,
            headers,
            root_metadata,
            now,
            device_id,
            hardware,
            idevid,
            key_store,
            token,
        )
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if state_dir.exists():
        state_dir.rmdir()  # empty: checked above
    os.replace(staging, state_dir)
    parent = os.open(state_dir.parent, os.O_RDONLY)
    try:
        os.fsync(parent)  # the rename itself survives a power cut
    finally:
        os.close(parent)
    return DeviceState(state_dir)


def _check_root(root_metadata: bytes) -> None:
    """The factory's root must be TUF root metadata (``1.root.json``), said plainly if not."""
    from tuf.api.metadata import Metadata, Root

    try:
        md = Metadata[Root].from_bytes(root_metadata)
        valid = isinstance(md.signed, Root)
    except Exception:
        valid = False
    if not valid:
        raise ConfigError(
            "--root must be the site's TUF root metadata (DATA/repository/metadata/1.root.json), "
            "not a certificate or another file"
        )


def _enroll_into(
    state_dir: Path,
    server: str,
    headers: dict[str, str],
    root_metadata: bytes,
    now: datetime,
    device_id: str,
    hardware: str | None,
    idevid: tuple[Path, Path] | None,
    key_store: str,
    token: TokenKeyRef | None,
) -> None:
    state = DeviceState.create(
        state_dir,
        DeviceConfig(
            device_id=device_id,
            hardware=hardware,
            released_at=now.isoformat(),
            server=server,
            key_store=key_store,
        ),
        None,  # made here, where key_store says: the key never leaves the device
        root_metadata,
        token,
    )
    key = state.device_key()
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
