"""Three replicas on three hosts (network namespaces), one PostgreSQL, HAProxy in front.

Over 200 devices with real mTLS check in continuously through the load
balancer while the signing replica is killed with SIGKILL, then the next
one. Nothing a device was told is lost or goes backwards: every answered
check-in is stored, no device sees the timestamp version decrease (the TUF
client's rollback refusal) or an expired timestamp, the timestamp keeps
being re-signed by whichever replica took over, and a revocation made
from the operator's host is refused by every replica at the next request.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import ssl
import subprocess
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import func, select

from homing import ceremonies
from homing.config import Expiries
from homing.operations import fleet as operations
from homing.operations.provisioning import register_device
from homing.server.signer import current_signer
from homing.site import DataDir, shared
from homing.store import Database
from homing.store.schema import checkins, site_files
from tests.harness import (
    DeviceCredentials,
    HTTPSConnection,
    assert_one_error,
    homing_entry_point,
    postgres_database,
    run_homing,
    save_device,
    system_tool,
    wait_until,
)
from tests.netns import Balancer, Network, haproxy, network

# One bridge and its namespaces at a time: the netns tests share one test worker.
pytestmark = [pytest.mark.xdist_group("netns"), pytest.mark.long]

DEVICES = int(os.environ.get("HOMING_TEST_REPLICA_DEVICES", "220"))
PORT = 8443
# Generous: a bound on a busy two-core machine, not a speed claim.
DEADLINE = 120.0


@dataclass
class Replica:
    name: str
    index: int
    data: Path
    address: str
    argv: list[str]
    log: Path
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(self.argv, stdout=log, stderr=log)

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@dataclass
class Observed:
    """What the devices saw; written by the device loop, read after it stops."""

    answered: Counter[str] = field(default_factory=Counter)
    newest_timestamp: dict[str, int] = field(default_factory=dict)
    rollbacks: list[str] = field(default_factory=list)
    expired: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    unanswered: int = 0

    @property
    def total(self) -> int:
        return sum(self.answered.values())


def _context(root_ca: Path, device: DeviceCredentials | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(root_ca))
    if device is not None:
        context.load_cert_chain(device.cert_file, device.key_file)
    return context


def _replica_context(root_ca: Path, device: DeviceCredentials | None = None) -> ssl.SSLContext:
    """A replica addressed directly by IP: its chain is still verified, its name is its own."""
    context = _context(root_ca, device)
    context.check_hostname = False
    return context


async def _device_loop(
    base: str,
    contexts: dict[str, ssl.SSLContext],
    observed: Observed,
    stop: threading.Event,
) -> None:
    async def one(device_id: str, context: ssl.SSLContext) -> None:
        # A new connection per request: the balancer spreads each device over every replica.
        connector = aiohttp.TCPConnector(ssl=context, force_close=True)
        timeout = aiohttp.ClientTimeout(total=20)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            while not stop.is_set():
                try:
                    async with session.get(f"{base}/tuf/metadata/timestamp.json") as response:
                        if response.status != 200:
                            observed.unanswered += 1
                            continue
                        signed = json.loads(await response.read())["signed"]
                    version = int(signed["version"])
                    if version < observed.newest_timestamp.get(device_id, 0):
                        # What python-tuf refuses: "New timestamp version must be >= ...".
                        observed.rollbacks.append(
                            f"{device_id}: {version} < {observed.newest_timestamp[device_id]}"
                        )
                    observed.newest_timestamp[device_id] = max(
                        version, observed.newest_timestamp.get(device_id, 0)
                    )
                    expires = datetime.fromisoformat(signed["expires"].replace("Z", "+00:00"))
                    if expires <= datetime.now(UTC):
                        observed.expired.append(f"{device_id}: timestamp v{version}")
                    body = {"firmware_version": "1.0", "trust": {"timestamp": version}}
                    async with session.post(f"{base}/v1/device/checkin", json=body) as response:
                        await response.read()
                        if response.status == 200:
                            observed.answered[device_id] += 1
                        elif response.status in (401, 403):
                            observed.refused.append(f"{device_id}: {response.status}")
                        else:
                            observed.unanswered += 1
                except (aiohttp.ClientError, TimeoutError, ssl.SSLError, OSError):
                    observed.unanswered += 1  # the replica died mid-request: try again
                # Paces the fleet (about one check-in per device every two seconds).
                await asyncio.sleep(2.0)

    await asyncio.gather(*(one(d, c) for d, c in contexts.items()))


@contextmanager
def devices_checking_in(
    base: str, contexts: dict[str, ssl.SSLContext], observed: Observed
) -> Iterator[None]:
    stop = threading.Event()
    thread = threading.Thread(
        target=lambda: asyncio.run(_device_loop(base, contexts, observed, stop)), daemon=True
    )
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=60)
        assert not thread.is_alive(), "the device loop did not stop"


def _get(address: str, path: str, context: ssl.SSLContext) -> tuple[int, bytes]:

    conn = HTTPSConnection(address, PORT, context=context, timeout=10)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def _post(
    address: str,
    path: str,
    context: ssl.SSLContext,
    body: object,
    headers: dict[str, str] | None = None,
) -> int:

    conn = HTTPSConnection(address, PORT, context=context, timeout=10)
    try:
        conn.request(
            "POST",
            path,
            body=json.dumps(body),
            headers={"Content-Type": "application/json", **(headers or {})},
        )
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def _healthy(replica: Replica, root_ca: Path) -> bool:
    try:
        return _get(replica.address, "/healthz", _replica_context(root_ca))[0] == 200
    except OSError:
        return False


def _published(db: Database, path: str) -> bytes:
    with db.engine.connect() as conn:
        content = conn.execute(
            select(site_files.c.content).where(site_files.c.path == path)
        ).scalar_one()
    return bytes(content)


def _published_timestamp(db: Database) -> int:
    timestamp = json.loads(_published(db, "repository/metadata/timestamp.json"))
    return int(timestamp["signed"]["version"])


def _enroll(site: DataDir, tmp_path: Path, count: int) -> list[DeviceCredentials]:
    now = datetime.now(UTC)
    made = []
    for i in range(count):
        device_id = f"dev-{i:04d}"
        key = ec.generate_private_key(ec.SECP256R1())
        chain = register_device(site, key, device_id, now, actor="test:replicas")
        made.append(save_device(tmp_path, device_id, key, chain[0]))
    return made


def _join_replicas(
    net: Network, tmp_path: Path, keys: Path, db_url: str, served_db_url: str
) -> list[Replica]:
    """Three replicas joined from this host (``db_url``); each serves from its own
    namespace, reaching PostgreSQL across the bridge (``served_db_url``)."""
    replicas = []
    for i in (1, 2, 3):
        name, data = f"r{i}", tmp_path / f"replica-{i}"
        joined = run_homing(
            "replica", "join", "--data", str(data), "--db", db_url, "--keys", str(keys),
            "--name", name, "--host", f"{name}.homing.test",
        )  # fmt: skip
        assert joined.returncode == 0, joined.stderr
        replicas.append(
            Replica(
                name=name,
                index=i,
                data=data,
                address=net.address(i),
                argv=net.run_in(
                    i,
                    [
                        homing_entry_point(),
                        "serve",
                        "--data",
                        str(data),
                        "--listen",
                        f"{net.address(i)}:{PORT}",
                        "--db",
                        served_db_url,
                        "--maintenance-interval",
                        "1",
                        "--sync-interval",
                        "1",
                        # Devices here check in every two seconds, far above a fleet's
                        # pace; the limit itself is tested in test_admission.
                        "--checkin-limit",
                        "off",
                    ],
                ),
                log=tmp_path / f"replica-{i}.log",
            )
        )
    return replicas


def _logs(replicas: list[Replica]) -> str:
    return "\n".join(f"--- {r.name}\n{r.log.read_text()[-3000:]}" for r in replicas)


@dataclass
class SharedSite:
    """Three replicas in three namespaces serving one site, behind HAProxy."""

    net: Network
    balancer: Balancer
    site_dir: Path
    site: DataDir
    local_url: str
    replicas: list[Replica]

    @property
    def root_ca(self) -> Path:
        return self.site_dir / "pki" / "root-ca.pem"


def three_replicas(stack: ExitStack, tmp_path: Path) -> SharedSite:
    """The operator's host makes the site and its first publication; three replicas join."""
    local_url = stack.enter_context(postgres_database())
    net = stack.enter_context(network(3))
    database = local_url.rsplit("/", 1)[1]
    replicas_planned = [(f"r{i}", net.address(i), PORT) for i in (1, 2, 3)]
    balancer = stack.enter_context(haproxy(net, replicas_planned, tmp_path))
    # The replicas reach PostgreSQL across the bridge, as from other hosts.
    remote_url = f"postgresql://postgres@{net.gateway}:{balancer.pg_port}/{database}"

    # The operator's host: the site, its first publication, the online keys.
    site_dir = tmp_path / "site"
    ceremonies.init(
        site_dir,
        datetime.now(UTC),
        hosts=["homing.test", net.gateway],
        # Re-signed every ~8 s: a test sees several re-signings by each signer.
        expiries=Expiries(timestamp=timedelta(seconds=16)),
    )
    site = DataDir(site_dir, local_url)
    stack.callback(site.close)
    assert shared.publish(site, datetime.now(UTC), "test") == 1
    keys = tmp_path / "online-keys"
    exported = run_homing("keystore", "export-online", "--data", str(site_dir), "--to", str(keys))
    assert exported.returncode == 0, exported.stderr
    assert not any("root" in p.name or "targets" in p.name for p in keys.iterdir())

    replicas = _join_replicas(net, tmp_path, keys, local_url, remote_url)
    for replica in replicas:
        replica.start()
        stack.callback(replica.stop)
    root_ca = site_dir / "pki" / "root-ca.pem"
    wait_until("three healthy replicas", lambda: all(_healthy(r, root_ca) for r in replicas))
    return SharedSite(net, balancer, site_dir, site, local_url, replicas)


def test_three_replicas_lose_two_signers_and_no_device_notices(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HOMING_KEY_PASSPHRASE", raising=False)
    with ExitStack() as stack:
        lab = three_replicas(stack, tmp_path)
        net, balancer, site_dir, site = lab.net, lab.balancer, lab.site_dir, lab.site
        local_url, replicas, root_ca = lab.local_url, lab.replicas, lab.root_ca

        db = site.database()
        devices = _enroll(site, tmp_path, DEVICES)
        contexts = {d.device_id: _context(root_ca, d) for d in devices}
        observed = Observed()
        base = f"https://{net.gateway}:{balancer.lb_port}"
        first_timestamp = _published_timestamp(db)
        takeovers: list[float] = []
        with devices_checking_in(base, contexts, observed):
            try:
                wait_until("every device answered", lambda: len(observed.answered) == DEVICES)
                killed: set[str] = set()
                for _ in range(2):
                    wait_until("a signer", lambda: current_signer(db) not in (None, *killed))
                    signer = current_signer(db)
                    assert signer is not None
                    victim = next(r for r in replicas if r.name == signer)
                    before, answered_before = _published_timestamp(db), observed.total
                    victim.kill()
                    killed.add(signer)
                    takeovers.append(
                        wait_until(
                            "another replica to take over and re-sign the timestamp",
                            lambda before=before: (
                                current_signer(db) not in (None, *killed)  # type: ignore[misc]
                                and _published_timestamp(db) > before
                            ),
                        )
                    )
                    wait_until(
                        "the fleet to keep checking in",
                        lambda n=answered_before: observed.total >= n + DEVICES,  # type: ignore[misc]
                    )
                # The killed hosts come back as followers.
                for replica in replicas:
                    if replica.name in killed:
                        replica.start()
                wait_until("all three back", lambda: all(_healthy(r, root_ca) for r in replicas))
                # And the surviving signer keeps re-signing.
                resigned = _published_timestamp(db)
                wait_until("one more re-signing", lambda: _published_timestamp(db) > resigned)
            except AssertionError as e:
                raise AssertionError(f"{e}\n{_logs(replicas)}") from e
        last_timestamp = _published_timestamp(db)

        # Nothing a device was told went backwards, expired, or was refused.
        assert observed.rollbacks == []
        assert observed.expired == []
        assert observed.refused == []
        # One re-signing by each of the two replicas that took over, one more after.
        assert last_timestamp >= first_timestamp + 3, (first_timestamp, last_timestamp)
        assert all(t < DEADLINE for t in takeovers)
        artifacts = Path("test-artifacts")
        artifacts.mkdir(exist_ok=True)
        (artifacts / "replica-failover.json").write_text(
            json.dumps(
                {
                    "devices": DEVICES,
                    "answered": observed.total,
                    "unanswered_during_kills": observed.unanswered,
                    "takeover_seconds": [round(t, 2) for t in takeovers],
                    "timestamp_versions": [first_timestamp, last_timestamp],
                },
                indent=2,
            )
        )
        # No answered check-in lost: each is a row (a check-in stored whose answer
        # died with its replica is a row the device did not count).
        with db.engine.connect() as conn:
            stored: dict[str, int] = dict(
                conn.execute(
                    select(checkins.c.device_id, func.count()).group_by(checkins.c.device_id)
                ).all()
            )
        short = {
            d: (n, stored.get(d, 0)) for d, n in observed.answered.items() if stored.get(d, 0) < n
        }
        assert short == {}
        assert sum(stored.values()) >= observed.total > DEVICES * 4

        # Every replica serves the same bytes.
        def same_timestamp() -> bool:
            bodies = {
                _get(r.address, "/tuf/metadata/timestamp.json", _replica_context(root_ca))[1]
                for r in replicas
            }
            return len(bodies) == 1

        wait_until("every replica to serve one timestamp", same_timestamp)
        root = {
            _get(r.address, "/tuf/metadata/1.root.json", _replica_context(root_ca))
            for r in replicas
        }
        assert len(root) == 1
        assert next(iter(root))[0] == 200

        # A revocation through one replica's admin API is refused by every replica at
        # once, and the re-signed CRL is published for all of them.
        stolen, honest, later = devices[0], devices[1], devices[2]
        token = operations.add_token(db, "test", datetime.now(UTC), "ops", "operator")
        bearer = {"Authorization": f"Bearer {token}"}
        path = f"/v1/admin/devices/{stolen.device_id}/revoke"
        revoke = _post(replicas[1].address, path, _replica_context(root_ca), {}, bearer)
        assert revoke == 200
        crl = x509.load_pem_x509_crl(_published(db, "pki/device-ca.crl.pem"))
        serial = x509.load_pem_x509_certificate(stolen.cert_pem).serial_number
        assert crl.get_revoked_certificate_by_serial_number(serial) is not None
        # And from the operator's host, through the CLI, likewise.
        revoked = run_homing("revoke", later.device_id, "--data", str(site_dir), "--db", local_url)
        assert revoked.returncode == 0, revoked.stderr
        for replica in replicas:
            assert _post(
                replica.address, "/v1/device/checkin", _replica_context(root_ca, later), {}
            ) in (401, 403)
        for replica in replicas:
            assert _post(
                replica.address, "/v1/device/checkin", _replica_context(root_ca, stolen), {}
            ) in (401, 403)
            assert (
                _post(replica.address, "/v1/device/checkin", _replica_context(root_ca, honest), {})
                == 200
            )

        # A second, foreign site cannot take over this database.
        foreign = tmp_path / "foreign"
        ceremonies.init(foreign, datetime.now(UTC))
        refused = run_homing("site", "publish", "--data", str(foreign), "--db", local_url)
        assert_one_error(refused, "another site")


def test_the_shipped_haproxy_config_is_valid_and_checks_health() -> None:
    config = Path(__file__).parent.parent / "deploy" / "haproxy" / "homing.cfg"
    text_ = config.read_text()
    assert "mode tcp" in text_  # TLS passes through: replicas see device certificates
    assert "GET /readyz" in text_
    result = subprocess.run(
        [system_tool("haproxy"), "-c", "-f", str(config)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr + result.stdout
