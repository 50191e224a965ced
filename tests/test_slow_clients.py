"""Slow clients from outside: every phase of a connection has a limit, and a worker a budget.

Each attack runs against the real server over real TLS on loopback, with
short limits so the test is quick; it asserts the server closed the
connection no sooner than its limit, said why, and counted it. (The body
phase, 408 ``body_timeout``, is tested in ``test_hostile_bodies``.)
"""

from __future__ import annotations

import logging
import socket
import ssl
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from homing import ceremonies
from homing.server.connections import CONNECTIONS
from homing.server.metrics import METRICS
from tests.harness import Clock, RunningServer, raw_tls, wait_until

LIMIT = 2.0  # seconds, for every phase under test
# The event loop's timers fire on a millisecond clock of their own.
EARLIEST = LIMIT - 0.05


def _server(tmp_path: Path, limit: float, budget: int | None = None) -> RunningServer:
    data = tmp_path / "site"
    ceremonies.init(data, datetime.now(UTC))
    return RunningServer(
        data,
        f"sqlite:///{tmp_path / 'test.db'}",
        Clock(),
        handshake_timeout=limit,
        header_timeout=limit,
        idle_timeout=limit,
        send_timeout=limit,
        max_connections=budget,
    ).start()


@pytest.fixture
def guarded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[RunningServer]:
    """Every phase limited to LIMIT seconds."""
    monkeypatch.delenv("HOMING_KEY_PASSPHRASE", raising=False)
    with _server(tmp_path, LIMIT) as server:
        yield server


@pytest.fixture
def budgeted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[RunningServer]:
    """Six connections at most; phases long enough that none ends while the test holds it."""
    monkeypatch.delenv("HOMING_KEY_PASSPHRASE", raising=False)
    with _server(tmp_path, 600.0, budget=6) as server:
        yield server


def _closed(server: RunningServer, reason: str) -> float:
    registry = server.app[METRICS].registry
    return registry.get_sample_value("homing_connections_closed_total", {"reason": reason}) or 0.0


def _read_until_closed(tls: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    received = b""
    while True:
        try:
            chunk = tls.recv(65536)
        except (ConnectionResetError, ssl.SSLError):
            return received
        if not chunk:
            return received
        received += chunk


GET = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n"


def test_a_request_head_dripped_a_line_at_a_time_is_cut_off(guarded: RunningServer) -> None:
    started = time.monotonic()
    with raw_tls(guarded) as tls:
        tls.sendall(b"GET /healthz HTTP/1.1\r\n")
        tls.settimeout(0.5)
        answer = b""
        # One header line every half second, forever: the head never ends.
        for n in range(1000):
            try:
                tls.sendall(f"X-Drip-{n}: 1\r\n".encode())
                answer = tls.recv(4096)
            except TimeoutError:
                continue
            except (ConnectionResetError, BrokenPipeError, ssl.SSLError):
                break
            break
    elapsed = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 408"), answer[:120]
    assert b"header_timeout" in answer
    assert elapsed >= EARLIEST
    assert _closed(guarded, "header_timeout") == 1


def test_a_connection_that_never_starts_its_handshake_is_closed(guarded: RunningServer) -> None:
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", guarded.port)) as raw:
        raw.settimeout(120)
        assert raw.recv(1) == b""  # the server hung up, having heard nothing
    assert time.monotonic() - started >= EARLIEST
    # And it forgot the connection: a failed handshake holds no place in the budget.
    guard = guarded.app[CONNECTIONS]
    wait_until("the connection forgotten", lambda: guard.open_connections == 0)


def test_an_idle_connection_is_closed_before_and_after_a_request(guarded: RunningServer) -> None:
    # Handshake made, then nothing sent.
    started = time.monotonic()
    with raw_tls(guarded) as tls:
        assert _read_until_closed(tls) == b""
    assert time.monotonic() - started >= EARLIEST
    # One request answered on a kept-alive connection, then silence.
    with raw_tls(guarded) as tls:
        tls.sendall(GET)
        answered_at = time.monotonic()
        received = _read_until_closed(tls)
        assert received.startswith(b"HTTP/1.1 200"), received[:100]
    assert time.monotonic() - answered_at >= EARLIEST
    reasons = {r: _closed(guarded, r) for r in ("idle_timeout", "header_timeout", "send_timeout")}
    assert reasons["idle_timeout"] == 2, reasons


def test_a_client_that_never_reads_its_answers_is_dropped(guarded: RunningServer) -> None:
    """Pipelined requests whose answers are never read: the writes stall, then the cut."""
    context = guarded.client_context()
    raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    raw.connect(("127.0.0.1", guarded.port))
    with context.wrap_socket(raw, server_hostname="localhost") as tls:
        tls.settimeout(120)
        ask = b"GET /openapi.json HTTP/1.1\r\nHost: localhost\r\n\r\n"
        tls.sendall(ask * 400)  # about 20 KiB asked, many MiB of answers
        wait_until("the stalled writer cut", lambda: _closed(guarded, "send_timeout") == 1)
    # The server still answers everyone else.
    assert guarded.request("GET", "/healthz").status == 200


def test_the_budget_reclaims_idle_connections_then_answers_503(
    budgeted: RunningServer, caplog: pytest.LogCaptureFixture
) -> None:
    guarded = budgeted
    caplog.set_level(logging.WARNING, logger="homing.server")
    guard = guarded.app[CONNECTIONS]
    assert guard.budget == 6
    context = guarded.client_context()
    held: list[ssl.SSLSocket] = []
    try:
        # Six kept-alive connections, each answered once and then idle.
        for _ in range(6):
            tls = context.wrap_socket(
                socket.create_connection(("127.0.0.1", guarded.port)), server_hostname="localhost"
            )
            tls.settimeout(120)
            held.append(tls)
            tls.sendall(GET)
            assert tls.recv(4096).startswith(b"HTTP/1.1 200")
        # A seventh gets in: the longest-idle one makes room.
        assert guarded.request("GET", "/healthz").status == 200
        assert _closed(guarded, "reclaimed") >= 1
        assert held[0].recv(4096) == b""
        # Now hold every place with a request head in progress: nothing is idle.
        for tls in held[1:]:
            tls.sendall(b"GET /healthz HTTP/1.1\r\n")
        extra = [
            context.wrap_socket(
                socket.create_connection(("127.0.0.1", guarded.port)), server_hostname="localhost"
            )
        ]
        extra[0].settimeout(120)
        extra[0].sendall(b"GET /healthz HTTP/1.1\r\n")
        held.extend(extra)
        with context.wrap_socket(
            socket.create_connection(("127.0.0.1", guarded.port)), server_hostname="localhost"
        ) as late:
            late.settimeout(120)
            refused = _read_until_closed(late)
        assert refused.startswith(b"HTTP/1.1 503"), refused[:120]
        assert b"Retry-After: 5" in refused
        assert _closed(guarded, "over_budget") >= 1
        reached = [r for r in caplog.records if "connection budget reached" in r.getMessage()]
        assert len(reached) == 1
    finally:
        for tls in held:
            tls.close()
    # The clients let go, places free up, and the server says so once.
    wait_until("places free", lambda: guard.open_connections < 5)
    wait_until(
        "relief logged", lambda: any("below the budget" in r.getMessage() for r in caplog.records)
    )
    assert guarded.request("GET", "/healthz").status == 200


def test_at_its_descriptor_limit_the_real_server_answers_and_says_so(tmp_path: Path) -> None:
    """`homing serve` started with 300 descriptors (its budget: 44 connections) and
    held by 80 request heads that never end: a new client is answered 503 with
    Retry-After, not left without an answer, and the log says so once."""
    import resource
    import subprocess

    from tests.harness import free_port, homing_entry_point

    data = tmp_path / "site"
    ceremonies.init(data, datetime.now(UTC))
    port = free_port()

    def few_descriptors() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (300, 300))

    log = tmp_path / "server.log"
    with log.open("wb") as err:
        process = subprocess.Popen(
            [homing_entry_point(), "serve", "--data", str(data), "--listen", f"127.0.0.1:{port}"],
            stdout=subprocess.DEVNULL,
            stderr=err,
            preexec_fn=few_descriptors,
        )
    held: list[ssl.SSLSocket] = []
    try:
        context = ssl.create_default_context(cafile=str(data / "pki" / "root-ca.pem"))

        def connect() -> ssl.SSLSocket:
            tls = context.wrap_socket(
                socket.create_connection(("127.0.0.1", port), timeout=120),
                server_hostname="localhost",
            )
            tls.settimeout(120)
            return tls

        def listening() -> bool:
            try:
                connect().close()
            except OSError:
                return process.poll() is not None  # it died: stop waiting, fail below
            return True

        wait_until("the server listens", listening)
        assert process.poll() is None, log.read_text()
        answers = []
        for _ in range(80):
            tls = connect()
            held.append(tls)
            tls.sendall(b"GET /healthz HTTP/1.1\r\n")  # a head that never ends
        wait_until("the budget reached", lambda: "connection budget reached" in log.read_text())
        for _ in range(3):
            with connect() as late:
                late.sendall(GET)
                answers.append(_read_until_closed(late))
        for answer in answers:
            assert answer.startswith(b"HTTP/1.1 503"), answer[:120]
            assert b"Retry-After: 5" in answer
        lines = log.read_text()
        assert lines.count("connection budget reached: 44 of 44") == 1, lines[-2000:]
        assert "Traceback" not in lines
    finally:
        for tls in held:
            tls.close()
        process.terminate()
        process.wait(30)


def test_connections_past_the_handshake_bound_are_reset_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Attack: connections that never start their handshake take every slot; the
    next clients are reset at once (not left waiting for a slot: the silent ones
    hold theirs for ten minutes), counted and logged once; when the silent ones
    go, the server takes clients again."""
    monkeypatch.delenv("HOMING_KEY_PASSPHRASE", raising=False)
    caplog.set_level(logging.WARNING, logger="homing.server")
    data = tmp_path / "site"
    ceremonies.init(data, datetime.now(UTC))
    with RunningServer(
        data,
        f"sqlite:///{tmp_path / 'test.db'}",
        Clock(),
        handshake_timeout=600.0,
        max_handshakes=3,
    ).start() as server:
        silent = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(3)]
        try:
            wait_until(
                "the silent ones hold every slot",
                lambda: server.app[CONNECTIONS].open_connections == 3,
            )
            for _ in range(5):
                # A reset, never a timeout (which would be an OSError too, so apart).
                with pytest.raises((ConnectionResetError, ssl.SSLEOFError, ssl.SSLZeroReturnError)):
                    server.request("GET", "/healthz")
            assert _closed(server, "handshakes_full") == 5
            shed = [r for r in caplog.records if "handshakes under way" in r.getMessage()]
            assert len(shed) == 1
            assert server.app[CONNECTIONS].open_connections == 3
        finally:
            for sock in silent:
                sock.close()
        wait_until("the slots free", lambda: server.app[CONNECTIONS].open_connections == 0)
        assert server.request("GET", "/healthz").status == 200
        again = [r for r in caplog.records if "handshakes below their bound" in r.getMessage()]
        assert len(again) == 1
