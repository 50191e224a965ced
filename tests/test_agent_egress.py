"""The agent reaches home through a site's egress proxy: Debian's tinyproxy on loopback.

The proxy allows CONNECT only with credentials; the agent reads it from
HTTPS_PROXY (with the credentials in the URL) and NO_PROXY as other tools do.
Through the tunnel the agent's own TLS runs end to end: the check-in over
mutual TLS, pins checked. A proxy that answers TLS itself (another CA's
certificate) is refused as any man in the middle, and the agent says the
proxy is the likely cause.
"""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from homing.agent.agent import Agent
from homing.agent.state import DeviceState
from homing.agent.transport import open_connection
from homing.errors import ChainError, ConfigError
from homing.trust.pins import PinPolicy
from tests import fleet
from tests.harness import RunningServer, free_port, run_homing, system_tool, wait_until
from tests.mitm import foreign_tls_server

sqlite_only = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)

# tinyproxy takes only [-a-z0-9._] in its BasicAuth line.
USER, PASSWORD = "plant-7", "s3cret.pass-word"


@dataclass
class Tinyproxy:
    port: int
    log: Path

    def url(self, user: str = USER, password: str = PASSWORD) -> str:
        from urllib.parse import quote

        return f"http://{quote(user)}:{quote(password, safe='')}@127.0.0.1:{self.port}"

    def connects(self) -> list[str]:
        """The tunnels asked of the proxy (its log's request lines)."""
        return [
            line
            for line in self.log.read_text().splitlines()
            if "Request" in line and ": CONNECT " in line
        ]


@pytest.fixture
def tinyproxy(server: RunningServer, tmp_path: Path) -> Iterator[Tinyproxy]:
    port = free_port()
    log = tmp_path / "tinyproxy.log"
    log.touch()
    conf = tmp_path / "tinyproxy.conf"
    conf.write_text(
        f"Port {port}\nListen 127.0.0.1\nTimeout 60\nAllow 127.0.0.1\n"
        f'LogFile "{log}"\nLogLevel Connect\nMaxClients 20\n'
        f"BasicAuth {USER} {PASSWORD}\n"
        # CONNECT only to the home's port, as a site's proxy allows only what it must.
        f"ConnectPort {server.port}\n"
    )
    process = subprocess.Popen(
        [system_tool("tinyproxy"), "-d", "-c", str(conf)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )

    def listening() -> bool:
        assert process.poll() is None, process.stderr.read() if process.stderr else ""
        try:
            socket.create_connection(("127.0.0.1", port), 1).close()
            return True
        except OSError:
            return False

    wait_until("tinyproxy listening", listening)
    try:
        yield Tinyproxy(port, log)
    finally:
        process.terminate()
        process.wait(30)
        if process.stderr is not None:
            process.stderr.close()


@pytest.fixture
def device(server: RunningServer, tmp_path: Path) -> DeviceState:
    return fleet.device(server, tmp_path, "dev-behind-proxy", "board-a")


@sqlite_only
def test_the_agent_checks_in_through_the_proxy_with_credentials(
    server: RunningServer,
    tinyproxy: Tinyproxy,
    device: DeviceState,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", tinyproxy.url())
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    report = Agent(device, server=fleet.url(server)).run_once()
    assert report.checked_in, report.steps
    # Trust refresh and check-in both went through the tunnel, to the home's port.
    tunnels = tinyproxy.connects()
    assert tunnels, "the agent went around the proxy"
    assert all(f"127.0.0.1:{server.port}" in line for line in tunnels)
    # From outside, the installed agent reads the environment as curl would.
    env = {"HTTPS_PROXY": tinyproxy.url(), "NO_PROXY": ""}
    before = len(tinyproxy.connects())
    ran = run_homing(
        "agent", "run", "--state", str(device.root), "--server", fleet.url(server), "--once",
        env=env,
    )  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    assert len(tinyproxy.connects()) > before


@sqlite_only
def test_no_proxy_goes_direct_and_wrong_credentials_are_said_in_one_line(
    server: RunningServer,
    tinyproxy: Tinyproxy,
    device: DeviceState,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", tinyproxy.url())
    monkeypatch.setenv("NO_PROXY", "localhost,127.0.0.1")
    assert Agent(device, server=fleet.url(server)).run_once().checked_in
    assert tinyproxy.connects() == []
    monkeypatch.delenv("NO_PROXY")
    monkeypatch.setenv("HTTPS_PROXY", tinyproxy.url(password="wrong"))
    report = Agent(device, server=fleet.url(server)).run_once()
    assert not report.checked_in
    assert report.error is not None
    assert "refused a tunnel" in report.error
    assert "401" in report.error or "407" in report.error
    assert "credentials in HTTPS_PROXY" in report.error
    assert "wrong" not in report.error  # the password is never said


def test_a_bad_proxy_setting_is_a_clear_error() -> None:
    from homing.agent.egress import EgressProxy

    with pytest.raises(ConfigError, match="HTTPS_PROXY must be http://"):
        EgressProxy.parse("socks5://127.0.0.1:1080")
    with pytest.raises(ConfigError, match=r"no valid port") as refused:
        EgressProxy.parse("http://user:secret@proxy:notaport")
    assert "secret" not in str(refused.value)
    # Credentials as URLs carry them: percent-encoded, decoded for the proxy.
    import base64

    proxy = EgressProxy.parse("http://plant%207:p%40ss%3Aw@proxy.internal:8080")
    assert (proxy.host, proxy.port) == ("proxy.internal", 8080)
    assert proxy.authorization == "Basic " + base64.b64encode(b"plant 7:p@ss:w").decode()


def _grant_connect(raw: socket.socket) -> None:
    """An egress proxy's side of CONNECT: read the request, say yes."""
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = raw.recv(1024)
        if not chunk:
            break
        head += chunk
    raw.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")


@pytest.fixture
def intercepting_proxy(tmp_path: Path) -> Iterator[tuple[int, list[bytes]]]:
    """A proxy that grants CONNECT and then answers TLS itself, with another CA's
    certificate, recording whatever the device sends it."""
    with foreign_tls_server(tmp_path, greet=_grant_connect) as (port, received):
        yield port, received


@sqlite_only
def test_a_proxy_that_intercepts_tls_is_refused_and_named(
    server: RunningServer,
    device: DeviceState,
    intercepting_proxy: tuple[int, list[bytes]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    port, received = intercepting_proxy
    monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{port}")
    monkeypatch.delenv("NO_PROXY", raising=False)
    report = Agent(device, server=fleet.url(server)).run_once()
    assert not report.checked_in
    # Metadata may be asked for over the unpinned bootstrap channel (it authenticates
    # itself); nothing of the device's own ever reaches the interceptor.
    assert not any(b"/v1/" in data or b"/.well-known/est" in data for data in received)
    policy = PinPolicy.from_bytes((device.root / "pins.json").read_bytes())
    conn = open_connection(fleet.url(server), policy=policy, now=datetime.now(UTC))
    with pytest.raises(ChainError, match="intercepts TLS"):
        conn.connect()


@sqlite_only
def test_the_local_pinned_proxy_for_applications_goes_through_the_egress_proxy(
    server: RunningServer, tinyproxy: Tinyproxy, device: DeviceState, tmp_path: Path
) -> None:
    """An application's traffic home through `homing agent proxy`, every way curl can send
    it, leaves the site through its egress proxy, pinned mutual TLS inside the tunnel."""
    import signal

    from tests.harness import homing_entry_point

    fleet.check_in(server, device)
    port = free_port()
    env = {"PATH": "/usr/bin:/bin", "HTTPS_PROXY": tinyproxy.url(), "NO_PROXY": ""}
    started = subprocess.Popen(
        [homing_entry_point(), "agent", "proxy", "--state", str(device.root), "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
    )
    try:

        def listening() -> bool:
            with socket.socket() as probe:
                return probe.connect_ex(("127.0.0.1", port)) == 0

        wait_until("the app proxy listens", listening)
        home = f"http://127.0.0.1:{server.port}/v1/device/checkin"
        body = '{"firmware_version": "1.0.0"}'
        for how in (
            [f"http://127.0.0.1:{port}/v1/device/checkin"],
            ["--proxytunnel", "--proxy", f"http://127.0.0.1:{port}", home],
        ):
            before = len(tinyproxy.connects())
            done = subprocess.run(
                [system_tool("curl"), "-s", "-w", "\n%{http_code}", "-H",
                 "Content-Type: application/json", "--data-binary", body, *how],
                capture_output=True, text=True, timeout=60, check=False,
            )  # fmt: skip
            assert done.stdout.endswith("\n200"), (how, done.stdout, done.stderr)
            assert "dev-behind-proxy" in done.stdout
            assert len(tinyproxy.connects()) > before, how
    finally:
        started.send_signal(signal.SIGTERM)
        started.communicate(timeout=20)
