"""The device's state directory: every write atomic, every read validated.

Layout::

    STATE/device.json      identity and settings (device id, hardware class,
                           release time, optional server override)
    STATE/key.pem          the device key (PKCS#8), or with key_store "tpm2" the
                           TPM's wrapped blob of a key that never leaves it, or
                           with "pkcs11" the PKCS#11 URI of a key on a token
    STATE/cert.pem         the device certificate and its issuing CA
    STATE/factory-root.json  the root metadata the device left the factory with
    STATE/trust/           python-tuf's trusted metadata (newest verified root,
                           timestamp, snapshot, targets) and the pin policy target
    STATE/time-floor       the newest time the device has evidence for
    STATE/last-run.json    what the last cycle did, for `homing agent status`
    STATE/tls-sessions.json  TLS sessions home for the next cycle to resume (0600;
                           only with key_store "file": homing.agent.resumption)

A power cut at any instant leaves every file either old or new
(``homing.fsutil.atomic_write``); the agent starts from either.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from homing.agent.device_key import DeviceKey, SoftwareKey, create_key, load_key
from homing.agent.token_key import TokenKeyRef
from homing.errors import ConfigError, KeyStoreError
from homing.fsutil import atomic_write

__all__ = ["DeviceConfig", "DeviceState"]

SCHEMA = "homing.device/1"


@dataclass
class DeviceConfig:
    device_id: str
    hardware: str | None
    released_at: str
    server: str | None = None
    # Firmware updates: a command that must exit 0 after a new slot boots, and
    # an optional system installer (e.g. "rauc install {path}").
    health_command: str | None = None
    install_command: str | None = None
    # With install_command, the system updater's own steps (homing.agent.installer):
    # boot the new slot, mark it good, mark it bad.
    boot_command: str | None = None
    commit_command: str | None = None
    rollback_command: str | None = None
    # Optional: download at most this many KiB/s; install only in these local
    # hours, "START-END" (e.g. "2-5", wrapping past midnight as "22-4").
    bandwidth_kib_s: int | None = None
    maintenance_window: str | None = None
    # Optional: keep the current trust in this directory for applications that
    # do their own TLS, and run this command when it changes (homing.agent.exports).
    export_dir: str | None = None
    export_hook: str | None = None
    # Where the device key is: "file" (key.pem, PKCS#8), "tpm2" (key.pem is the
    # TPM's wrapped blob; the key never leaves the TPM: homing.agent.device_key) or
    # "pkcs11" (key.pem is the key's PKCS#11 URI: homing.agent.token_key).
    key_store: str = "file"

    def to_json(self) -> bytes:
        return json.dumps({"schema": SCHEMA, **asdict(self)}, indent=2).encode() + b"\n"


class DeviceState:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.config_path = root / "device.json"
        self.key_path = root / "key.pem"
        self.cert_path = root / "cert.pem"
        self.factory_root_path = root / "factory-root.json"
        self.trust_dir = root / "trust"
        self.floor_path = root / "time-floor"
        self.last_run_path = root / "last-run.json"
        self.sessions_path = root / "tls-sessions.json"

    # -- creation -----------------------------------------------------------

    @classmethod
    def create(
        cls,
        root: Path,
        config: DeviceConfig,
        key: ec.EllipticCurvePrivateKey | None,
        factory_root: bytes,
        token: TokenKeyRef | None = None,
    ) -> DeviceState:
        """A new device state; ``key`` None: a new key made where ``config.key_store`` says."""
        if root.exists() and any(root.iterdir()):
            raise ConfigError(f"{root} already holds a device state")
        state = cls(root)
        root.mkdir(parents=True, exist_ok=True)
        if key is None:
            create_key(config.key_store, state.key_path, token)
        elif config.key_store != "file":
            raise ConfigError("a key made off the device can only be kept in a file")
        else:
            atomic_write(
                state.key_path,
                key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                ),
                mode=0o600,
            )
        atomic_write(state.factory_root_path, factory_root)
        state.trust_dir.mkdir(exist_ok=True)
        atomic_write(state.config_path, config.to_json())
        return state

    # -- reading ------------------------------------------------------------

    def config(self) -> DeviceConfig:
        try:
            doc: dict[str, Any] = json.loads(self.config_path.read_bytes())
        except FileNotFoundError as e:
            raise ConfigError(f"no device state in {self.root}") from e
        except ValueError as e:
            raise ConfigError(f"{self.config_path} is damaged") from e
        if doc.pop("schema", None) != SCHEMA:
            raise ConfigError(f"{self.config_path} is not a homing device file")
        try:
            return DeviceConfig(**doc)
        except TypeError as e:
            raise ConfigError(f"{self.config_path}: {e}") from e

    def save_config(self, config: DeviceConfig) -> None:
        atomic_write(self.config_path, config.to_json())

    def device_key(self) -> DeviceKey:
        """The device key, wherever it is kept (homing.agent.device_key)."""
        return load_key(self.config().key_store, self.key_path)

    def key(self) -> ec.EllipticCurvePrivateKey:
        """The device key itself, for a key kept in a file (a TPM never gives it out)."""
        key = self.device_key()
        if not isinstance(key, SoftwareKey):
            raise KeyStoreError(
                f"the device key is held by its {self.config().key_store} store and cannot be "
                "read out"
            )
        return key.private

    def certificate(self) -> x509.Certificate | None:
        try:
            certs = x509.load_pem_x509_certificates(self.cert_path.read_bytes())
        except FileNotFoundError:
            return None
        except ValueError as e:
            raise ConfigError(f"{self.cert_path} is damaged") from e
        return certs[0] if certs else None

    def factory_root(self) -> bytes:
        return self.factory_root_path.read_bytes()

    def time_floor(self) -> datetime | None:
        try:
            text = self.floor_path.read_text().strip()
            return datetime.fromisoformat(text).astimezone(UTC)
        except (FileNotFoundError, ValueError):
            return None

    def last_run(self) -> dict[str, Any]:
        try:
            doc = json.loads(self.last_run_path.read_bytes())
            return doc if isinstance(doc, dict) else {}
        except (FileNotFoundError, ValueError):
            return {}

    # -- writing --------------------------------------------------------------

    def save_certificate(self, chain: list[x509.Certificate]) -> None:
        pem = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in chain)
        atomic_write(self.cert_path, pem)

    def raise_time_floor(self, when: datetime) -> None:
        current = self.time_floor()
        if current is None or when > current:
            atomic_write(self.floor_path, when.astimezone(UTC).isoformat().encode() + b"\n")

    def save_last_run(self, report: dict[str, Any]) -> None:
        atomic_write(self.last_run_path, json.dumps(report, indent=2, default=str).encode() + b"\n")
