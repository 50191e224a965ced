"""A hostile home server: real TLS with the real pinned certificate, answers that attack.

The device's pins match (a compromised or buggy replica, a proxy that
mangles answers), so only the agent's own care stands between the answer
and the device. Every attack must end the cycle with a homing error in the
report: no exception escapes ``run_once``, the device's state is unchanged,
and memory stays bounded.
"""

from __future__ import annotations

import ssl
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from homing import ceremonies
from homing.agent.agent import Agent
from homing.agent.decide import CycleReport
from homing.agent.fetcher import HTTPSFetcher
from homing.agent.state import DeviceState
from homing.config import Limits
from homing.operations.provisioning import provision
from homing.site import DataDir

MiB = 1024 * 1024
# An answer behaviour writes the whole HTTP response to the socket itself.
Behaviour = Callable[[BaseHTTPRequestHandler], None]


def _answer(status: int, body: bytes, headers: dict[str, str] | None = None) -> Behaviour:
    def write(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(status)
        for key, value in {"Content-Length": str(len(body)), **(headers or {})}.items():
            handler.send_header(key, value)
        handler.end_headers()
        handler.wfile.write(body)

    return write


def _huge(handler: BaseHTTPRequestHandler, status: int = 200) -> None:
    handler.send_response(status)
    handler.send_header("Content-Length", str(64 * MiB))
    handler.end_headers()
    block = b"0" * MiB
    try:
        for _ in range(64):
            handler.wfile.write(block)
    except OSError:
        pass  # the device hung up, as it should


def _truncated(handler: BaseHTTPRequestHandler) -> None:
    handler.send_response(200)
    handler.send_header("Content-Length", "1000")
    handler.end_headers()
    handler.wfile.write(b'{"server_time": "2026-')
    handler.close_connection = True


def _endless_headers(handler: BaseHTTPRequestHandler) -> None:
    handler.wfile.write(b"HTTP/1.1 200 OK\r\n")
    try:
        for i in range(100_000):
            handler.wfile.write(f"X-Filler-{i}: {'a' * 64}\r\n".encode())
    except OSError:
        pass  # the device hung up, as it should


def _slow_drip(handler: BaseHTTPRequestHandler) -> None:
    handler.send_response(200)
    handler.send_header("Content-Length", "100000")
    handler.end_headers()
    try:
        for _ in range(100_000):
            handler.wfile.write(b" ")
            handler.wfile.flush()
            time.sleep(0.05)  # the attacker's pace, not the test's
    except OSError:
        pass  # the device hung up, as it should


def _header_drip(handler: BaseHTTPRequestHandler) -> None:
    """Headers one byte at a time, each just inside the per-read timeout."""
    handler.wfile.write(b"HTTP/1.1 200 OK\r\n")
    try:
        for byte in b"X-Slow: " + b"a" * 100_000:
            handler.wfile.write(bytes([byte]))
            handler.wfile.flush()
            time.sleep(0.05)  # the attacker's pace, not the test's
    except OSError:
        pass  # the device hung up, as it should


ATTACKS: dict[str, Behaviour] = {
    "not JSON": _answer(200, b"<html>surprise</html>"),
    "JSON array": _answer(200, b"[1, 2, 3]"),
    "wrong types": _answer(200, b'{"server_time": 5, "update": "now"}'),
    "bad update": _answer(
        200, b'{"server_time": "2026-12-03T00:00:00+00:00", "update": {"rollout": "x"}}'
    ),
    "deep nesting": _answer(200, b"[" * 100_000 + b"]" * 100_000),
    "truncated body": _truncated,
    "64 MiB body": _huge,
    "endless headers": _endless_headers,
    "slow drip": _slow_drip,
    "slow header drip": _header_drip,
    "redirect elsewhere": _answer(302, b"", {"Location": "https://elsewhere.example/"}),
    "server error": _answer(500, b'{"error": "internal", "message": "boom"}'),
}


class _Hostile(ThreadingHTTPServer):
    daemon_threads = True
    repository: Path
    behaviour: Behaviour
    metadata_behaviour: Behaviour | None = None


class _Handler(BaseHTTPRequestHandler):
    server: _Hostile

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: the test reads the agent's report, not this server's log."""

    def do_GET(self) -> None:
        name = self.path.removeprefix("/tuf/")
        path = self.server.repository / name
        if self.server.metadata_behaviour is not None and not path.is_file():
            self.server.metadata_behaviour(self)
            return
        if ".." in name or not path.is_file():
            _answer(404, b"not found")(self)
            return
        _answer(200, path.read_bytes())(self)

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        self.rfile.read(length)
        self.server.behaviour(self)


@pytest.fixture
def hostile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[_Hostile, DeviceState]]:
    monkeypatch.delenv("HOMING_KEY_PASSPHRASE", raising=False)
    data = tmp_path / "data"
    ceremonies.init(data, datetime.now(UTC))
    dd = DataDir(data)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(
        data / "pki" / "server-chain.pem", dd.keystore(dd.settings()).path("server-tls")
    )
    server = _Hostile(("127.0.0.1", 0), _Handler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    server.repository = data / "repository"
    server.behaviour = _answer(500, b"")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"https://127.0.0.1:{server.server_address[1]}"
    state = provision(dd, tmp_path / "device", datetime.now(UTC), device_id="dev-h", server=url)
    dd.close()
    try:
        yield server, state
    finally:
        server.shutdown()
        server.server_close()


def _files(state: DeviceState) -> dict[str, bytes]:
    """Everything the device keeps, but the report of its last run and the TLS sessions
    saved for the next (a cache of handshakes with the pinned home, nothing it trusts)."""
    return {
        str(p.relative_to(state.root)): p.read_bytes()
        for p in sorted(state.root.rglob("*"))
        if p.is_file() and p not in (state.last_run_path, state.sessions_path)
    }


LIMITS = replace(Limits(), request_deadline_seconds=1.0, read_timeout_seconds=1.0)


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_a_hostile_check_in_answer_ends_the_cycle_cleanly(
    hostile: tuple[_Hostile, DeviceState], attack: str
) -> None:
    server, state = hostile
    agent = Agent(state, limits=LIMITS)
    # The genuine metadata first, so the only thing the cycle meets is the attack.
    agent.refresh_trust(agent.now(), CycleReport())
    before = _files(state)
    server.behaviour = ATTACKS[attack]
    tracemalloc.start()
    try:
        report = agent.run_once()  # must not raise
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert not report.checked_in
    assert report.error, report
    assert peak < 8 * MiB, f"{attack}: peak {peak / MiB:.1f} MiB"
    assert _files(state) == before


def test_a_64_mib_refusal_on_the_bootstrap_channel_is_not_read(
    hostile: tuple[_Hostile, DeviceState],
) -> None:
    """Unpinned, anyone may answer: a metadata 404 with a huge body costs the device nothing."""
    server, _ = hostile
    server.metadata_behaviour = lambda handler: _huge(handler, 404)
    fetcher = HTTPSFetcher(None, datetime.now(UTC), limits=LIMITS)
    url = f"https://127.0.0.1:{server.server_address[1]}/tuf/metadata/2.root.json"
    tracemalloc.start()
    try:
        with pytest.raises(Exception, match="HTTP 404") as refused:
            b"".join(fetcher.fetch(url))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        fetcher.close()
    assert type(refused.value).__name__ == "DownloadHTTPError"  # python-tuf's "no newer root"
    assert peak < 8 * MiB, f"peak {peak / MiB:.1f} MiB"
