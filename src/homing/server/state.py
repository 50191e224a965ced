"""What one server process holds: keys, CAs, the database, and the TLS context.

Certificates and CAs are reloaded from the data directory when their files
change, so a renewed server certificate or a rotated device CA takes effect
for new handshakes without a restart.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import ssl
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from homing import tls
from homing.errors import ConfigError, KeyStoreError
from homing.pki import Authority
from homing.pki.keystore import KeyStore
from homing.pki.profiles import Profile, device_profile
from homing.server.availability import DatabaseAvailability
from homing.server.config import ServerConfig
from homing.server.rules import DeviceTrust
from homing.server.session_tickets import SessionTickets
from homing.site import Settings
from homing.site.datadir import DISTRUSTED_DEVICE_CAS
from homing.site.ledger import DatabaseLedger
from homing.store import Database

__all__ = ["MetadataVersions", "ServerState"]

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class MetadataVersions:
    root: int
    timestamp: int
    snapshot: int
    targets: int

    def to_json(self) -> dict[str, int]:
        return {
            "root": self.root,
            "timestamp": self.timestamp,
            "snapshot": self.snapshot,
            "targets": self.targets,
        }


def _mtime(path: str | Path) -> int:
    try:
        return os.stat(path).st_mtime_ns
    except FileNotFoundError:
        return 0


# Seconds a clock check's verdict is kept: a storm of time requests costs one query.
CLOCK_CHECK_SECONDS = 10.0


class ServerState:
    def __init__(self, config: ServerConfig, clock: Callable[[], datetime] | None = None) -> None:
        self.config = config
        self.clock = clock or (lambda: datetime.now(UTC))
        self.dd = config.site()
        # Looked at on every check-in: a plain string spares pathlib's work each time.
        self._timestamp_file = os.fspath(self.dd.metadata_dir / "timestamp.json")
        self.settings: Settings = self.dd.settings()
        self.store: KeyStore = self.dd.keystore(self.settings)
        # Python's ssl reads the TLS key from a file: it is always in the file store.
        self.tls_key_path = self.dd.file_keystore(self.settings).path("server-tls")
        self.db: Database = self.dd.database()
        self.executor = ThreadPoolExecutor(
            max_workers=config.executor_threads, thread_name_prefix="homing-db"
        )
        # Every X.509 root the site still accepts, the active one first.
        self.root_cas: list[x509.Certificate] = self.dd.certificates("root-ca.pem")
        self._versions: tuple[int, MetadataVersions] | None = None
        self._rollouts: tuple[float, dict[str, Any]] | None = None
        self._file_marks: dict[str, int] = {}
        self.device_cas: list[x509.Certificate] = []
        # Device CAs whose key was stolen: still known, so their devices are
        # told to recover instead of failing the handshake (homing.server.rules).
        self.distrusted_device_cas: list[x509.Certificate] = []
        # Counts the CA sets this process has held: verification results of an
        # older set are not reused.
        self.trust_epoch = 0
        self._device_ca: x509.Certificate | None = None
        self._device_key: ec.EllipticCurvePrivateKey | None = None
        # A shared site (several hosts on PostgreSQL) is followed per request.
        self.shared = self.db.dialect == "postgresql"
        self._site_generation: int | None = None
        # (monotonic, wall clock, why) of the last clock check (check_clock): why is
        # None, or a doubt.
        self._clock_verdict: tuple[float, datetime, str | None] | None = None
        # Whether the database answered last time (homing.server.availability).
        self.database = DatabaseAvailability()
        self.ssl_context = self._build_tls()
        # Every worker seals session tickets with the day's shared key.
        self.session_tickets = SessionTickets(self.dd.keys_dir)
        self._served_chain = self._read_served_chain()
        self._seal_tickets()
        self._load_device_ca()
        self._record_published_pins()

    def _record_published_pins(self) -> None:
        """The pin policy published now is in this database's history (idempotent).

        Ceremonies record what they publish in the site's database; this also
        covers sites older than the history and a server pointed at another one.
        """
        from homing.store import pin_history
        from homing.trust.pins import PIN_POLICY_TARGET, PinPolicy

        repo = self.dd.repository(self.settings)
        policy_bytes = repo.target_bytes(PIN_POLICY_TARGET)
        pins = PinPolicy.from_bytes(policy_bytes).spki_pins
        with self.db.begin() as conn:
            pin_history.record_policy(
                conn, policy_bytes, pins, self.settings.server_ca_generation, self.clock()
            )

    # -- time and threads -------------------------------------------------

    def now(self) -> datetime:
        return self.clock()

    def check_clock(self) -> None:
        """Refuse to issue or tell the time while this clock is in doubt: before the site's
        last signing or long after it (judged here; the verdict is kept
        ``CLOCK_CHECK_SECONDS``), or away from the database server's clock (the
        supervisor's verdict for this host, homing.operations.clock)."""
        import time

        from homing.operations.clock import recorded_doubt, signing_doubt
        from homing.server.errors import HTTPProblem

        mark, now = time.monotonic(), self.now()
        kept = self._clock_verdict
        # A kept verdict holds while the wall clock moved with the monotonic one: a jump
        # of the wall clock is judged at once, not after the verdict's ten seconds.
        if (
            kept is None
            or mark - kept[0] > CLOCK_CHECK_SECONDS
            or abs((now - kept[1]).total_seconds() - (mark - kept[0])) > 1.0
        ):
            kept = self._clock_verdict = (mark, now, signing_doubt(self.db, now))
        why = kept[2] or recorded_doubt(self.dd.root)
        if why is not None:
            message = f"this server's clock is in doubt: {why}"
            raise HTTPProblem(503, "clock_in_doubt", message, {"Retry-After": "300"})

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run blocking database work off the event loop."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    # -- TLS and CAs ------------------------------------------------------

    def _distrusted_path(self) -> Path:
        return self.dd.pki_path(DISTRUSTED_DEVICE_CAS)

    def _read_distrusted(self) -> list[x509.Certificate]:
        if not self._distrusted_path().exists():
            return []
        return self.dd.certificates(DISTRUSTED_DEVICE_CAS)

    def _client_ca_bundle(self) -> bytes:
        distrusted = self._distrusted_path()
        return (
            self.dd.pki_path("root-ca.pem").read_bytes()
            + self.dd.pki_path("device-cas.pem").read_bytes()
            + (distrusted.read_bytes() if distrusted.exists() else b"")
        )

    @property
    def device_trust(self) -> DeviceTrust:
        """What a presented device certificate is checked against now."""
        return DeviceTrust(
            self.device_cas, self.distrusted_device_cas, self.root_cas, self.device_leaf_profile
        )

    def _build_tls(self) -> ssl.SSLContext:
        context = tls.server_context(
            self.dd.pki_path("server-chain.pem"),
            self.tls_key_path,
            key_password=self.dd.passphrase,
            client_cas=self._client_ca_bundle(),
        )
        self._remember_files()
        return context

    def _read_served_chain(self) -> bytes:
        """The chain file the TLS context was just loaded from (read once per load)."""
        try:
            return self.dd.pki_path("server-chain.pem").read_bytes()
        except OSError:
            return b""  # the reload that follows says what is wrong with the chain

    def _seal_tickets(self) -> None:
        """Session tickets sealed with the key of the day and of the chain served now."""
        self.session_tickets.apply(self.ssl_context, self.now(), self._served_chain)

    def _watched(self) -> dict[str, Path]:
        return {
            "chain": self.dd.pki_path("server-chain.pem"),
            "key": self.tls_key_path,
            "device-cas": self.dd.pki_path("device-cas.pem"),
            "device-ca": self.dd.pki_path("device-ca.pem"),
            "root-cas": self.dd.pki_path("root-ca.pem"),
            "distrusted-device-cas": self._distrusted_path(),
            "settings": self.dd.settings_path,
        }

    def _remember_files(self) -> None:
        self._file_marks = {name: _mtime(path) for name, path in self._watched().items()}

    def reload_if_changed(self) -> bool:
        """Pick up a renewed server certificate or rotated device CA; True if anything changed."""
        self._seal_tickets()
        marks = {name: _mtime(path) for name, path in self._watched().items()}
        if marks == self._file_marks:
            return False
        try:
            # A rotation is taken as one unit, or not at all: the settings name
            # the generation, its key must match the issuing certificate, and
            # the trust bundle must hold that certificate. Only then is the
            # TLS layer taught to trust it, and only after that does issuance
            # switch, so no device holds a certificate the server refuses.
            settings = self.dd.settings()
            root_cas = self.dd.certificates("root-ca.pem")
            device_cas, device_ca, device_key = self._read_device_ca(settings)
            distrusted = self._read_distrusted()
            if marks["chain"] != self._file_marks.get("chain") or marks[
                "key"
            ] != self._file_marks.get("key"):
                # New handshakes use the new chain; open connections keep theirs.
                self.ssl_context.load_cert_chain(
                    self._watched()["chain"], self._watched()["key"], password=self.dd.passphrase
                )
                self._served_chain = self._read_served_chain()
                self._seal_tickets()
            self.ssl_context.load_verify_locations(cadata=self._client_ca_bundle().decode())
            self.settings = settings
            self.root_cas = root_cas
            self.device_cas = device_cas
            self.distrusted_device_cas = distrusted
            self._device_ca, self._device_key = device_ca, device_key
            self.trust_epoch += 1
        except (ssl.SSLError, OSError, ConfigError, KeyStoreError) as e:
            # A half-written rotation: keep serving with what we have, retry later.
            log.warning("reload postponed: %s", e)
            return False
        self._file_marks = marks
        log.info("reloaded server certificate and CAs")
        return True

    def _load_device_ca(self) -> None:
        device_cas, cert, key = self._read_device_ca(self.settings)
        self.device_cas = device_cas
        self.distrusted_device_cas = self._read_distrusted()
        self._device_ca, self._device_key = cert, key

    def _read_device_ca(
        self, settings: Settings
    ) -> tuple[list[x509.Certificate], x509.Certificate, ec.EllipticCurvePrivateKey]:
        """The device CAs as one consistent unit; ConfigError while a rotation is half-written."""
        device_cas = self.dd.certificates("device-cas.pem")
        cert = self.dd.certificate("device-ca.pem")
        key = self.store.load(f"device-ca-g{settings.device_ca_generation}")
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ConfigError("the device CA key must be an ECDSA key")
        if cert.public_key() != key.public_key():
            raise ConfigError("device-ca.pem does not match the active device CA key yet")
        if cert not in device_cas:
            raise ConfigError("device-cas.pem does not hold the active device CA yet")
        return device_cas, cert, key

    @property
    def device_ca(self) -> x509.Certificate:
        """The active device-issuing CA certificate."""
        assert self._device_ca is not None
        return self._device_ca

    @property
    def device_leaf_profile(self) -> Profile:
        """The profile every device certificate is held to, at issuance and when presented."""
        return device_profile(self.settings.validity.device)

    def device_authority(self, ledger: DatabaseLedger) -> Authority:
        assert self._device_ca is not None
        assert self._device_key is not None
        return Authority(self._device_ca, self._device_key, ledger, self.settings.validity)

    # -- trust metadata ---------------------------------------------------

    def metadata_versions(self) -> MetadataVersions:
        """Current versions from the published files, re-read when timestamp.json changes."""
        metadata = self.dd.metadata_dir
        mark = _mtime(self._timestamp_file)
        if self._versions is None or self._versions[0] != mark:
            timestamp = json.loads(Path(self._timestamp_file).read_bytes())["signed"]
            snapshot_version = int(timestamp["meta"]["snapshot.json"]["version"])
            snapshot = json.loads((metadata / f"{snapshot_version}.snapshot.json").read_bytes())
            versions = MetadataVersions(
                root=self.dd.repository(self.settings).root_version(),
                timestamp=int(timestamp["version"]),
                snapshot=snapshot_version,
                targets=int(snapshot["signed"]["meta"]["targets.json"]["version"]),
            )
            self._versions = (mark, versions)
        return self._versions[1]

    def rollouts_by_hardware(self) -> dict[str, Any]:
        """Active rollouts, re-read every second: a new rollout takes effect without a restart."""
        import time

        from homing.store import firmware

        now = time.monotonic()
        if self._rollouts is None or now - self._rollouts[0] > 1.0:
            with self.db.engine.connect() as conn:
                active = [r for r in firmware.list_rollouts(conn) if r.status in ("active", "done")]
            self._rollouts = (now, {r.hardware: r for r in active})
        return self._rollouts[1]

    def forget_rollouts(self) -> None:
        """Re-read active rollouts at the next check-in instead of within a second."""
        self._rollouts = None

    # -- the shared site --------------------------------------------------

    def follow_site(self) -> None:
        """Take a newer publication of a shared site before answering from it.

        Called (off the event loop) for every timestamp request and for any
        file not found, so a device that saw generation N on one replica
        never gets N-1 from this one. One query when nothing changed.
        """
        if not self.shared:
            return
        from sqlalchemy.exc import SQLAlchemyError

        from homing.site import shared

        try:
            with self.db.engine.connect() as conn:
                published = shared.published_generation(conn)
        except SQLAlchemyError as e:
            # The files on disk are the last publication, and they authenticate
            # themselves: serve them rather than fail the device's trust channel.
            self.database.failed(e)
            return
        if published is None or published[1] == self._site_generation:
            return
        shared.pull(self.dd, self.db)
        self._site_generation = published[1]

    def change_site(self, change: Callable[[], T], actor: str) -> T:
        """A change a request makes to the site's files (a revocation re-signs the CRL).

        On a shared site it is made on today's publication, under the
        site-change lock, and published, so every replica serves it (and the
        next signer does not sign from a copy that lacks it).
        """
        from homing.site import shared

        if not self.shared or not shared.is_shared(self.db):
            return change()
        with shared.site_change(self.db):
            shared.pull(self.dd, self.db)
            result = change()
            shared.publish(self.dd, self.now(), actor)
        return result

    def close(self) -> None:
        self.executor.shutdown(wait=True)
        self.db.dispose()
