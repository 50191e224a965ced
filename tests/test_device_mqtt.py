"""A device application publishes over MQTT to a real mosquitto broker with homing's trust.

The broker is named in signed metadata (homing.trust.services) and learnt by
the agent; the application reads the broker's URL and the device's files from
the agent's export; the broker's certificate, CA file and CRL file come from
``homing broker export``, run again after each change as its timer would.
Through a server-CA rotation, a device-CA rotation and a revocation, the
application keeps working with no change on the device, or, revoked, is
refused by the broker.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import stat
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from cryptography import x509

from homing import ceremonies
from homing.agent.agent import Agent
from homing.agent.state import DeviceState
from homing.operations.clock import confirm_clock
from tests import fleet
from tests.harness import (
    RunningServer,
    assert_one_error,
    free_port,
    run_homing,
    system_tool,
    wait_until,
)

pytestmark = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)

TOPIC = "plant/line-1/telemetry"


DOC = Path(__file__).resolve().parent.parent / "docs" / "device-apps.md"


def _doc_block(step: str) -> str:
    """The first code block after ``step`` in docs/device-apps.md's MQTT section."""
    text = DOC.read_text()
    after = text[text.index("## MQTT") :]
    after = after[after.index(step) :]
    start = after.index("```")
    start = after.index("\n", start) + 1
    return after[start : after.index("```", start)]


def _config(broker_dir: Path, port: int) -> str:
    """The broker's configuration of docs/device-apps.md, on a test port and directory."""
    conf = _doc_block("**3. The broker's configuration**")
    assert "listener 8883\n" in conf
    assert "/etc/mosquitto/homing/" in conf
    conf = conf.replace("listener 8883", f"listener {port} 127.0.0.1")
    conf = conf.replace("/etc/mosquitto/homing/", f"{broker_dir}/")
    # The test runs as root in a private directory: the broker keeps root's rights.
    return conf + "persistence false\nuser root\nlog_dest stderr\n"


class Broker:
    """A real mosquitto; ``reload`` is what the export's hook does (SIGHUP)."""

    def __init__(self, broker_dir: Path, tmp_path: Path, port: int) -> None:
        self.port = port
        self.conf = tmp_path / "mosquitto.conf"
        self.conf.write_text(_config(broker_dir, self.port))
        self.log_path = tmp_path / "mosquitto.log"
        self.log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [system_tool("mosquitto"), "-c", str(self.conf)], stdout=self.log, stderr=self.log
        )
        wait_until("the broker listens", self._listens)

    def _listens(self) -> bool:
        assert self.process.poll() is None, "mosquitto exited"
        with socket.socket() as probe:
            return probe.connect_ex(("127.0.0.1", self.port)) == 0

    def reload(self) -> None:
        """What ``systemctl reload mosquitto`` does: it re-reads certificates and CRLs."""
        before = self.log_path.read_bytes().count(b"Reloading config")
        self.process.send_signal(signal.SIGHUP)
        # mosquitto is one thread: a connection after this line meets the reloaded files.
        wait_until(
            "the broker reloaded",
            lambda: self.log_path.read_bytes().count(b"Reloading config") > before,
        )

    def presented(self) -> x509.Certificate:
        """The certificate the broker presents now."""
        pem = ssl.get_server_certificate(("127.0.0.1", self.port), timeout=30)
        return x509.load_pem_x509_certificate(pem.encode())

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(30)
        self.log.close()


class Application:
    """The product's application: mosquitto_pub and mosquitto_sub with the agent's export."""

    def __init__(self, exported: Path) -> None:
        self.current = exported / "current"

    def _args(self) -> list[str]:
        pins = json.loads((self.current / "pins.json").read_text())
        broker = urlsplit(pins["mqtt"][0])
        key = (self.current / "key").read_text().strip().removeprefix("file:")
        return [
            "-h", str(broker.hostname), "-p", str(broker.port),
            "--cafile", str(self.current / "ca-bundle.pem"),
            "--cert", str(self.current / "cert.pem"), "--key", key, "-t", TOPIC,
        ]  # fmt: skip

    def publish(self, message: str) -> subprocess.CompletedProcess[str]:
        """The doc's lines for the device's application, run as written (its directory
        and topic as the test's, and -r so that a subscriber gets the last message)."""
        script = _doc_block("**4. The device's application**")
        script = script.replace("/run/homing-trust/current", str(self.current))
        script = script.replace("plant/line-1/telemetry", TOPIC).replace("-q 1", "-q 1 -r")
        return subprocess.run(
            ["sh", "-ec", script], env={**os.environ, "READING": message},
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip

    def receive(self) -> str:
        """The retained message on the topic (what the last publish left)."""
        done = subprocess.run(
            [system_tool("mosquitto_sub"), *self._args(), "-C", "1", "-W", "30"],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()


def _export_broker(server: RunningServer, broker_dir: Path, marker: Path) -> str:
    done = run_homing(
        "broker", "export", "--data", str(server.data), "--db", server.config.db_url,
        "--host", "127.0.0.1", "--dir", str(broker_dir),
        "--hook", f"sh -c 'echo {{trust_dir}} >> {marker}'",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return " ".join(done.stdout.split())  # as one line, however the console wrapped it


def _device(server: RunningServer, tmp_path: Path, name: str) -> tuple[Agent, Application]:
    state: DeviceState = fleet.device(server, tmp_path, name, "board-a")
    exported = tmp_path / f"{name}-trust"
    done = run_homing("agent", "export", "--state", str(state.root), "--dir", str(exported))
    assert done.returncode == 0, done.stderr
    agent = Agent(state, server=fleet.url(server), firmware_version="1.0.0")
    assert agent.run_once().checked_in
    return agent, Application(exported)


@pytest.fixture
def brokers() -> Iterator[list[Broker]]:
    """The brokers a test starts, stopped at its end whatever happened."""
    started: list[Broker] = []
    yield started
    for running in started:
        if running.process.poll() is None:
            running.stop()


def test_an_mqtt_application_follows_rotations_and_a_revoked_device_is_refused(
    server: RunningServer, tmp_path: Path, brokers: list[Broker]
) -> None:
    dd, broker_dir = server.state.dd, tmp_path / "broker"
    marker = tmp_path / "broker-reloads"
    port = free_port()
    url = f"mqtts://127.0.0.1:{port}"
    named = run_homing("broker", "set", url, "--data", str(server.data),
                       "--db", server.config.db_url)  # fmt: skip
    assert named.returncode == 0, named.stderr
    assert "published to devices" in named.stdout
    server.settle()
    sensor, sensor_app = _device(server, tmp_path, "sensor-1")
    other, other_app = _device(server, tmp_path, "sensor-2")
    pins = json.loads((sensor_app.current / "pins.json").read_text())
    assert pins["mqtt"] == [url]  # learnt from signed metadata, not configured on the device

    assert "updated" in _export_broker(server, broker_dir, marker)
    current = broker_dir / "current"
    assert stat.S_IMODE((current / "server-key.pem").stat().st_mode) == 0o600
    assert marker.read_text().splitlines() == [str(current)]
    assert "is current" in _export_broker(server, broker_dir, marker)  # a timer's idle run
    assert len(marker.read_text().splitlines()) == 1
    mqtt = Broker(broker_dir, tmp_path, port)
    brokers.append(mqtt)

    assert sensor_app.publish("reading 1").returncode == 0
    assert other_app.receive() == "reading 1"

    # The server CA rotates: the broker gets a certificate of the new CA; devices change nothing.
    first_chain = (current / "server-chain.pem").read_bytes()
    ceremonies.rotate_issuing_ca(dd, "server", datetime.now(UTC))
    server.settle()
    assert "updated" in _export_broker(server, broker_dir, marker)
    chain = x509.load_pem_x509_certificates((current / "server-chain.pem").read_bytes())
    assert chain[0].issuer == dd.certificate("server-ca.pem").subject
    assert (current / "server-chain.pem").read_bytes() != first_chain
    mqtt.reload()
    assert mqtt.presented() == chain[0]
    assert sensor.run_once().checked_in
    assert sensor_app.publish("reading 2").returncode == 0
    assert other_app.receive() == "reading 2"

    # The device CA rotates: devices of the old CA and of the new one are both accepted.
    ceremonies.rotate_issuing_ca(dd, "device", datetime.now(UTC))
    server.settle()
    assert "CRLs of 2 device CAs" in _export_broker(server, broker_dir, marker)
    mqtt.reload()
    assert sensor.run_once().checked_in
    assert other.run_once().checked_in
    assert sensor_app.publish("reading 3").returncode == 0
    assert other_app.receive() == "reading 3"

    # A device is revoked: the broker refuses it at the next export; the other carries on.
    ceremonies.revoke(dd, datetime.now(UTC), device_id="sensor-1", reason="stolen")
    assert "updated" in _export_broker(server, broker_dir, marker)
    mqtt.reload()
    refused = sensor_app.publish("reading 4")
    assert refused.returncode != 0
    # The broker writes its refusal when it is done with the connection, which may be
    # after the client has given up: wait for the line itself.
    wait_until(
        "the broker logs the refusal",
        lambda: b"certificate verify failed" in mqtt.log_path.read_bytes(),
    )
    assert other_app.publish("reading 5").returncode == 0
    assert other_app.receive() == "reading 5"
    assert len(marker.read_text().splitlines()) == 4


def test_broker_commands_refuse_bad_input(server: RunningServer, tmp_path: Path) -> None:
    site = ["--data", str(server.data), "--db", server.config.db_url]
    assert_one_error(run_homing("broker", "set", "mqtts://elsewhere.example:8883", *site),
                     "not one of the site's hosts")  # fmt: skip
    assert_one_error(run_homing("broker", "set", "mqtt://127.0.0.1:1883", *site),
                     "must be mqtts://host:port")  # fmt: skip
    assert run_homing("broker", "set", *site).returncode == 2
    assert_one_error(
        run_homing("broker", "export", "--host", "elsewhere.example", "--dir",
                   str(tmp_path / "b"), *site),
        "not one of the site's hosts",
    )  # fmt: skip
    assert_one_error(
        run_homing("broker", "export", "--host", "127.0.0.1", "--dir", str(tmp_path / "b"),
                   "--hook", "sh -c 'unterminated", *site),
        "cannot be parsed",
    )  # fmt: skip
    assert not (tmp_path / "b").exists()
    # A clock the home does not believe (before its last signing) signs nothing.
    confirm_clock(server.state.db, "cli:ops", datetime.now(UTC) + timedelta(days=365), "test")
    assert_one_error(
        run_homing("broker", "export", "--host", "127.0.0.1", "--dir", str(tmp_path / "b"),
                   *site),
        "signing nothing: the clock reads",
    )  # fmt: skip
    assert not (tmp_path / "b").exists()
    cleared = run_homing("broker", "set", "--none", *site)
    assert cleared.returncode == 0, cleared.stderr
    assert "no broker published" in cleared.stdout


def test_a_broker_directory_stays_one_set_through_many_rotations_and_revocations(
    server: RunningServer, tmp_path: Path
) -> None:
    """Run by a timer for years: twelve server-CA rotations and twelve revocations later,
    the broker's directory holds one set, its CRL names every revoked device, and its
    certificate is the newest CA's."""
    from homing.ceremonies.brokers import export_broker
    from homing.operations.provisioning import provision

    dd, broker_dir = server.state.dd, tmp_path / "broker"
    revoked: list[int] = []
    for round_ in range(12):
        now = datetime.now(UTC)
        state = provision(dd, tmp_path / f"d{round_}", now, device_id=f"gone-{round_}",
                          hardware="board-a")  # fmt: skip
        cert = state.certificate()
        assert cert is not None
        revoked.append(cert.serial_number)
        ceremonies.revoke(dd, now, device_id=f"gone-{round_}", reason="retired")
        ceremonies.rotate_issuing_ca(dd, "server", now, force_reason="test: many rotations")
        assert export_broker(dd, "127.0.0.1", broker_dir, now).changed
    assert sorted(p.name for p in broker_dir.iterdir() if p.name.startswith("trust-")) == [
        os.readlink(broker_dir / "current")
    ]
    listed = {
        entry.serial_number
        for part in (broker_dir / "current" / "crl.pem").read_bytes().split(b"-----BEGIN")[1:]
        for entry in x509.load_pem_x509_crl(b"-----BEGIN" + part)
    }
    assert set(revoked) <= listed
    chain = x509.load_pem_x509_certificates(
        (broker_dir / "current" / "server-chain.pem").read_bytes()
    )
    assert chain[0].issuer == dd.certificate("server-ca.pem").subject


def test_a_tampered_services_document_is_refused_and_nothing_changes(
    server: RunningServer, tmp_path: Path
) -> None:
    """The broker list is a signed target: bytes changed on the server (a broker of the
    attacker's) fail python-tuf's hash check, and the device keeps what it verified."""
    url = f"mqtts://127.0.0.1:{free_port()}"
    named = run_homing("broker", "set", url, "--data", str(server.data),
                       "--db", server.config.db_url)  # fmt: skip
    assert named.returncode == 0, named.stderr
    server.settle()
    agent, _ = _device(server, tmp_path, "dev-t")
    held = (agent.state.root / "services.json").read_bytes()
    assert url.encode() in held
    moved = f"mqtts://127.0.0.1:{free_port()}"
    again = run_homing("broker", "set", moved, "--data", str(server.data),
                       "--db", server.config.db_url)  # fmt: skip
    assert again.returncode == 0, again.stderr
    stored = next(
        p for p in (server.data / "repository" / "targets").glob("*services.json")
        if moved.encode() in p.read_bytes()
    )  # fmt: skip
    # Same length, other bytes: only the signed hash can tell.
    stored.write_bytes(stored.read_bytes().replace(b"127.0.0.1", b"127.6.6.6"))
    server.settle()
    report = agent.run_once()
    assert not report.checked_in
    assert "hash" in (report.error or "").lower(), report.error
    assert (agent.state.root / "services.json").read_bytes() == held
