"""A device application talks home through homing's trust (homing.apps), against a real
server: it keeps working through rotations of the server certificate, the server CA, the TUF
root and the X.509 root CA with one long-lived context, and refuses a MITM and any other
destination."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import os
import ssl
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from homing import ceremonies
from homing.agent.agent import Agent
from homing.agent.state import DeviceState
from homing.apps import Home
from homing.errors import ChainError, ConfigError
from tests import fleet
from tests.harness import RunningServer
from tests.mitm import foreign_tls_server

pytestmark = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)

CHECKIN = json.dumps({"firmware_version": "1.0.0"}).encode()
JSON = {"Content-Type": "application/json"}


_url = fleet.url


@pytest.fixture
def device(server: RunningServer, tmp_path: Path) -> DeviceState:
    """A device that came home once: its state holds verified trust and a certificate."""
    state = fleet.device(server, tmp_path, "dev-app", "board-a")
    fleet.check_in(server, state)
    return state


def _with_http_client(context: ssl.SSLContext, server: RunningServer) -> int:
    conn = http.client.HTTPSConnection("127.0.0.1", server.port, context=context, timeout=30)
    try:
        conn.request("POST", "/v1/device/checkin", CHECKIN, JSON)
        return conn.getresponse().status
    finally:
        conn.close()


def _with_urllib(context: ssl.SSLContext, server: RunningServer) -> int:
    request = urllib.request.Request(
        f"{_url(server)}/v1/device/checkin", CHECKIN, JSON, method="POST"
    )
    with urllib.request.urlopen(request, context=context, timeout=30) as answer:
        return int(answer.status)


def _with_asyncio(context: ssl.SSLContext, server: RunningServer) -> bytes:
    async def talk() -> bytes:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", server.port, ssl=context, server_hostname="127.0.0.1"
        )
        writer.write(
            b"POST /v1/device/checkin HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
            % (len(CHECKIN), CHECKIN)
        )
        status = await reader.readline()
        await reader.read()
        writer.close()
        with contextlib.suppress(ssl.SSLError, ConnectionError):
            await writer.wait_closed()  # the server may have closed first
        return status

    return asyncio.run(talk())


def test_an_application_keeps_talking_home_through_every_rotation(
    server: RunningServer, device: DeviceState
) -> None:
    home = Home(device.root)
    context = home.ssl_context()  # made once, used across every rotation
    dd = server.state.dd
    agent = Agent(device, server=_url(server), firmware_version="1.0.0")

    def calls() -> None:
        answer = home.request("POST", "/v1/device/checkin", CHECKIN, JSON)
        assert answer.status == 200, answer.body
        assert json.loads(answer.body)["device_id"] == "dev-app"
        assert _with_http_client(context, server) == 200
        assert _with_urllib(context, server) == 200
        assert _with_asyncio(context, server).startswith(b"HTTP/1.1 200")

    calls()
    for rotate in (
        lambda now: ceremonies.rotate_server_cert(dd, now),
        lambda now: ceremonies.rotate_issuing_ca(dd, "server", now),
        lambda now: ceremonies.rotate_root(dd, now),
        lambda now: ceremonies.rotate_root_ca(dd, now),
    ):
        rotate(datetime.now(UTC))
        server.settle()
        assert agent.run_once().checked_in  # the agent follows; the application does nothing
        calls()
    assert (
        home.policy.root_cas[0]
        != x509.load_pem_x509_certificate((dd.root / "pki" / "root-ca.pem").read_bytes())
        or len(home.policy.root_cas) >= 2
    )


@pytest.fixture
def mitm(tmp_path: Path) -> Iterator[tuple[int, list[bytes]]]:
    """A TLS server with another CA's certificate that records whatever reaches it."""
    with foreign_tls_server(tmp_path) as (port, received):
        yield port, received


def test_a_mitm_with_another_cas_certificate_gets_nothing(
    device: DeviceState, mitm: tuple[int, list[bytes]]
) -> None:
    port, received = mitm
    url = f"https://127.0.0.1:{port}"
    home = Home(device.root, server=url)
    with pytest.raises(ChainError, match="does not validate"):
        home.request("POST", "/v1/device/checkin", CHECKIN, JSON)
    context = home.ssl_context()
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=30)
    with pytest.raises(ssl.SSLCertVerificationError, match="homing pinned check failed"):
        conn.request("POST", "/v1/device/checkin", CHECKIN, JSON)
    conn.close()
    assert received == []  # not one request byte reached it


def test_only_home_endpoints_are_destinations(device: DeviceState) -> None:
    home = Home(device.root)
    with pytest.raises(ConfigError, match="is not a home endpoint"):
        home.request("GET", "/", endpoint="https://example.org")
    with pytest.raises(ConfigError, match="must start with '/'"):
        home.request("GET", "v1/x")
    with pytest.raises(ConfigError, match="no verified pin policy"):
        _ = Home(device.root.parent / "nowhere").policy


def test_exported_trust_serves_curl_through_rotations_and_runs_the_hook(
    server: RunningServer, device: DeviceState, tmp_path: Path
) -> None:
    """An application that is not Python (curl) reaches home with the exported files, and
    keeps reaching it after the server CA and the X.509 root rotate: the agent re-exports,
    swapping the whole set at once, and runs the hook only when something changed."""
    from tests.harness import assert_one_error, run_homing, system_tool

    exported, marker = tmp_path / "trust", tmp_path / "reloads"
    hook = f"sh -c 'echo {{trust_dir}} >> {marker}'"
    done = run_homing("agent", "export", "--state", str(device.root), "--dir", str(exported),
                      "--hook", hook)  # fmt: skip
    assert done.returncode == 0, done.stderr
    current = exported / "current"
    assert sorted(p.name for p in current.iterdir()) == [
        "ca-bundle.pem", "cert.pem", "key", "pins.json",
    ]  # fmt: skip
    assert marker.read_text().splitlines() == [str(current)]
    pins = json.loads((current / "pins.json").read_text())
    assert pins["spki_sha256"] == list(Home(device.root).policy.spki_pins)

    def curl() -> str:
        key = (current / "key").read_text().strip().removeprefix("file:")
        result = subprocess.run(
            [
                system_tool("curl"), "-s", "-o", "/dev/null", "-w", "%{http_code}",
                "--cacert", str(current / "ca-bundle.pem"), "--cert", str(current / "cert.pem"),
                "--key", key, "-H", "Content-Type: application/json", "--data-binary",
                CHECKIN.decode(), f"{_url(server)}/v1/device/checkin",
            ],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        return result.stdout

    assert curl() == "200"
    agent = Agent(device, server=_url(server), firmware_version="1.0.0")
    assert agent.run_once().checked_in
    assert len(marker.read_text().splitlines()) == 1  # nothing changed: no reload
    first = os.readlink(current)
    dd = server.state.dd
    ceremonies.rotate_issuing_ca(dd, "server", datetime.now(UTC))
    ceremonies.rotate_root_ca(dd, datetime.now(UTC))
    server.settle()
    assert agent.run_once().checked_in
    assert os.readlink(current) != first
    assert len(marker.read_text().splitlines()) == 2
    assert (
        dd.certificates("root-ca.pem")[0].public_bytes(serialization.Encoding.PEM)
        in (current / "ca-bundle.pem").read_bytes()
    )
    assert curl() == "200"
    assert not (exported / first).exists()  # the old set is gone once swapped out
    # Bad input: neither a directory nor --off.
    assert_one_error(run_homing("agent", "export", "--state", str(device.root)), "--off")
    off = run_homing("agent", "export", "--state", str(device.root), "--off")
    assert off.returncode == 0, off.stderr
    assert device.config().export_dir is None


def test_the_python_example_of_the_docs_runs_as_written(
    server: RunningServer, device: DeviceState
) -> None:
    """docs/device-apps.md's Python block, run with this device's state and server."""
    doc = (Path(__file__).resolve().parent.parent / "docs" / "device-apps.md").read_text()
    start = doc.index("```python\n") + len("```python\n")
    block = doc[start : doc.index("```", start)]
    block = block.replace("/var/lib/homing-agent", str(device.root))
    block = block.replace('"home.example.com", 443', f'"127.0.0.1", {server.port}')
    ran = subprocess.run(
        [sys.executable, "-c", block + "\nconn.request('GET', '/healthz')\n"
         "print(conn.getresponse().status)\n"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.split() == ["200", "200"]  # the check-in, then the context's request
