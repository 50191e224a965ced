"""The local pinned proxy (``homing agent proxy``) from outside: curl, a client that is not
Python, reaches home through it over a loopback port and a Unix socket, plainly and with
CONNECT; other destinations, oversized requests and a MITM are refused."""

from __future__ import annotations

import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from homing.agent.state import DeviceState
from tests import fleet
from tests.harness import (
    RunningServer,
    assert_one_error,
    free_port,
    homing_entry_point,
    run_homing,
    system_tool,
    wait_until,
)

pytestmark = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)

CHECKIN = '{"firmware_version": "1.0.0"}'


_url = fleet.url


@pytest.fixture
def device(server: RunningServer, tmp_path: Path) -> DeviceState:
    """A device that came home once: its state holds verified trust and a certificate."""
    state = fleet.device(server, tmp_path, "dev-proxy", "board-a")
    fleet.check_in(server, state)
    return state


def _listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture
def proxy(device: DeviceState, tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """The proxy on a loopback port and another on a Unix socket, as the CLI starts them."""
    port, unix = free_port(), tmp_path / "home.sock"
    started = [
        subprocess.Popen(
            [homing_entry_point(), "agent", "proxy", "--state", str(device.root), *where],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for where in (["--port", str(port)], ["--unix", str(unix)])
    ]
    try:
        wait_until("the proxies listen", lambda: _listening(port) and unix.exists())
        yield port, unix
    finally:
        for process in started:
            process.send_signal(signal.SIGTERM)
            process.communicate(timeout=20)


def _curl(*args: str) -> tuple[str, str]:
    """(HTTP status, body) of one curl call."""
    result = subprocess.run(
        [system_tool("curl"), "-s", "-w", "\n%{http_code}", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    body, _, status = result.stdout.rpartition("\n")
    return status, body


def test_curl_reaches_home_through_the_proxy_every_way(
    server: RunningServer, proxy: tuple[int, Path]
) -> None:
    port, unix = proxy
    post = ["-H", "Content-Type: application/json", "--data-binary", CHECKIN]
    home = f"http://127.0.0.1:{server.port}/v1/device/checkin"
    # The proxy as a proxy (absolute URL), as the server itself (a path), over a Unix
    # socket, and as a CONNECT tunnel: each time pinned mutual TLS with the device's
    # certificate on the other side, so home knows the device.
    for how in (
        ["--proxy", f"http://127.0.0.1:{port}", home],
        [f"http://127.0.0.1:{port}/v1/device/checkin"],
        ["--unix-socket", str(unix), "http://localhost/v1/device/checkin"],
        ["--proxytunnel", "--proxy", f"http://127.0.0.1:{port}", home],
    ):
        status, body = _curl(*post, *how)
        assert status == "200", (how, body)
        assert '"device_id": "dev-proxy"' in body or '"device_id":"dev-proxy"' in body


def test_the_proxy_goes_home_only_and_bounds_what_it_takes(
    server: RunningServer, proxy: tuple[int, Path]
) -> None:
    port, _ = proxy
    status, body = _curl("--proxy", f"http://127.0.0.1:{port}", "http://example.org/")
    assert (status, "not a home endpoint" in body) == ("403", True)
    with socket.create_connection(("127.0.0.1", port), timeout=30) as raw:
        raw.sendall(b"CONNECT example.org:443 HTTP/1.1\r\nHost: example.org:443\r\n\r\n")
        answer = raw.recv(200)
    assert answer.startswith(b"HTTP/1.1 403"), answer
    assert b"not a home endpoint" in answer
    with socket.create_connection(("127.0.0.1", port), timeout=30) as raw:
        raw.sendall(b"POST /v1/device/checkin HTTP/1.1\r\nContent-Length: 99999999999\r\n\r\n")
        assert raw.recv(100).startswith(b"HTTP/1.1 413")
    with socket.create_connection(("127.0.0.1", port), timeout=30) as raw:
        raw.sendall(b"GET / HTTP/1.1\r\nX-Junk: " + b"a" * 70_000 + b"\r\n\r\n")
        assert raw.recv(100).startswith(b"HTTP/1.1 431")
    with socket.create_connection(("127.0.0.1", port), timeout=30) as raw:
        raw.sendall(b"nonsense\r\n\r\n")
        assert raw.recv(100).startswith(b"HTTP/1.1 400")


def test_the_proxy_refuses_a_mitm_and_bad_arguments(device: DeviceState, tmp_path: Path) -> None:
    # A device pointed at an address where no home answers gets 502, not a hang.
    port = free_port()
    process = subprocess.Popen(
        [homing_entry_point(), "agent", "proxy", "--state", str(device.root),
         "--port", str(port), "--server", f"https://127.0.0.1:{free_port()}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        wait_until("the proxy listens", lambda: _listening(port))
        status, body = _curl(f"http://127.0.0.1:{port}/v1/device/checkin")
        assert (status, "Bad Gateway" in body) == ("502", True)
    finally:
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=20)
    assert_one_error(
        run_homing("agent", "proxy", "--state", str(device.root)), "--unix PATH or --port N"
    )
