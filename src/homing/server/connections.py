"""Every connection's phases bounded in time, and a budget of connections per worker.

A connection needs no certificate to be opened, so what it may hold is
bounded before anything else: the TLS handshake (``handshake_timeout``, by
the event loop), a request head (``header_timeout`` from its first byte),
the body (``body_timeout``, by ``homing.server.inputs.read_body``), the wait
for the next request on a kept-alive connection (``idle_timeout``), and a
client that stops reading its answers (``send_timeout``: the connection's
writes stay paused that long). Each worker holds at most
``max_connections``; at the budget it first closes its longest-idle
kept-alive connections, and only when none is idle answers a new one 503
with Retry-After. Reaching the budget is logged once (and once when
relieved), and every close is counted by reason in
``homing_connections_closed``.

The guard wraps the protocol of each accepted connection, so it sees bytes
arrive and writes pause without reaching into the HTTP server; the
application tells it when a request starts and ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import resource
import socket
import ssl
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from aiohttp import web
from prometheus_client import Counter, Gauge

from homing.server.metrics import Metrics

__all__ = ["CONNECTIONS", "ConnectionGuard", "ConnectionLimits", "GuardedSite", "default_budget"]

log = logging.getLogger("homing.server")

# Descriptors kept for everything but client connections: the database,
# the data directory's files, logs, the supervisor's pipes.
_RESERVED_DESCRIPTORS = 256


def _problem(status: str, code: str, message: str, retry_after: int | None = None) -> bytes:
    """A whole HTTP/1.1 answer in homing's problem shape, for a connection about to close."""
    body = json.dumps({"error": code, "message": message}).encode()
    retry = f"Retry-After: {retry_after}\r\n" if retry_after is not None else ""
    head = (
        f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n{retry}"
        f"Connection: close\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def default_budget() -> int:
    """Connections one worker may hold: its descriptor limit, raised to the hard
    limit, less a reserve, so an accept never fails for want of a descriptor."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        wanted = 1 << 20 if hard == resource.RLIM_INFINITY else hard
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
        except (ValueError, OSError):
            pass
    return max(16, soft - _RESERVED_DESCRIPTORS)


@dataclass(frozen=True)
class ConnectionLimits:
    handshake_timeout: float = 10.0
    header_timeout: float = 15.0
    idle_timeout: float = 30.0
    send_timeout: float = 30.0
    max_connections: int | None = None  # None: from the descriptor limit
    # TLS handshakes one worker runs at once; a connection past them is reset.
    max_handshakes: int = 64
    retry_after: int = 5

    @property
    def http_keepalive(self) -> float:
        """The HTTP server's own idle close, set later than the guard's so the guard
        acts first (it tells a slow head apart from silence); a backstop only."""
        return self.idle_timeout + self.header_timeout + 5.0


@dataclass
class _Connection:
    accepted: float
    transport: asyncio.Transport | None = None
    head_since: float | None = None  # bytes of a request head came, no request began
    idle_since: float | None = None  # nothing in flight and no head pending
    in_flight: int = 0
    paused_since: float | None = None  # the peer is not reading what it was sent


class _GuardedProtocol(asyncio.Protocol):
    """The HTTP server's protocol, with what the guard needs to know on the way."""

    def __init__(self, guard: ConnectionGuard, inner: asyncio.Protocol) -> None:
        self.guard = guard
        self.inner = inner
        self.record = _Connection(accepted=guard.clock())

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TLS transport is not an asyncio.Transport subclass, though it is one.
        transport = cast(asyncio.Transport, transport)
        self.record.transport = transport
        self.record.idle_since = self.guard.clock()
        self.guard._transports[transport] = self.record
        self.inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        record = self.record
        if not record.in_flight and record.head_since is None:
            record.head_since = self.guard.clock()
            record.idle_since = None
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()

    def pause_writing(self) -> None:
        self.record.paused_since = self.guard.clock()
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.record.paused_since = None
        self.inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self.guard._forget(self)
        self.inner.connection_lost(exc)


class _Refused(asyncio.Protocol):
    """A connection past the budget: told to come back later, then closed."""

    def __init__(self, guard: ConnectionGuard) -> None:
        self.guard = guard

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)
        transport.write(
            _problem(
                "503 Service Unavailable",
                "busy",
                "the server holds all the connections it can; retry later",
                self.guard.limits.retry_after,
            )
        )
        transport.close()


class ConnectionGuard:
    def __init__(
        self,
        limits: ConnectionLimits,
        metrics: Metrics,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limits = limits
        self.budget = limits.max_connections or default_budget()
        self.clock = clock
        self._open: set[_GuardedProtocol] = set()
        self._transports: dict[asyncio.Transport, _Connection] = {}
        self._at_budget = False
        self._closed: Counter = metrics.connections_closed
        self._gauge: Gauge = metrics.connections_open

    # -- the server's side -------------------------------------------------

    def wrap(self, inner: Callable[[], asyncio.Protocol]) -> Callable[[], asyncio.Protocol]:
        """A protocol factory for ``loop.create_server``: each connection guarded."""

        def factory() -> asyncio.Protocol:
            if len(self._open) >= self.budget and not self._reclaim_idle():
                self._budget_reached()
                self._closed.labels("over_budget").inc()
                return _Refused(self)
            protocol = _GuardedProtocol(self, inner())
            self._open.add(protocol)
            self._gauge.set(len(self._open))
            return protocol

        return factory

    def request_started(self, transport: Any) -> None:
        record = self._transports.get(transport)
        if record is not None:
            record.in_flight += 1
            record.head_since = record.idle_since = None

    def request_finished(self, transport: Any) -> None:
        record = self._transports.get(transport)
        if record is None:
            return
        record.in_flight = max(0, record.in_flight - 1)
        if not record.in_flight:
            # Bytes that came meanwhile were its body, or a pipelined head the
            # server takes up at once; either way the idle limit bounds the wait.
            record.idle_since = self.clock()

    def never_connected(self, protocol: asyncio.Protocol) -> None:
        """Forget a connection whose TLS handshake failed (no ``connection_lost`` follows)."""
        if isinstance(protocol, _GuardedProtocol) and protocol.record.transport is None:
            self._forget(protocol)

    @property
    def open_connections(self) -> int:
        return len(self._open)

    # -- the watch -----------------------------------------------------------

    def sweep(self) -> dict[str, int]:
        """Close every connection past a phase's limit; how many, by reason."""
        now = self.clock()
        limits = self.limits
        closed: dict[str, int] = {}
        for protocol in list(self._open):
            record = protocol.record
            transport = record.transport
            if transport is None or transport.is_closing():
                continue
            reason = None
            if record.paused_since is not None and now - record.paused_since > limits.send_timeout:
                reason = "send_timeout"
            elif record.head_since is not None and now - record.head_since > limits.header_timeout:
                reason = "header_timeout"
            elif (
                record.in_flight == 0
                and record.idle_since is not None
                and now - record.idle_since > limits.idle_timeout
            ):
                reason = "idle_timeout"
            if reason is None:
                continue
            # Counted before the close, so whoever sees the close sees the count.
            closed[reason] = closed.get(reason, 0) + 1
            self._closed.labels(reason).inc()
            if reason == "send_timeout":
                transport.abort()  # what it would not read is dropped
            elif reason == "header_timeout":
                transport.write(
                    _problem(
                        "408 Request Timeout",
                        "header_timeout",
                        f"the request head did not arrive within {limits.header_timeout:g} s",
                    )
                )
                transport.close()
            else:
                transport.close()
        if self._at_budget and len(self._open) < self.budget * 0.9:
            self._at_budget = False
            log.warning(
                "connections below the budget again: %d of %d", len(self._open), self.budget
            )
        return closed

    async def watch(self, every: float = 1.0) -> None:
        while True:
            await asyncio.sleep(every)
            self.sweep()

    # -- inside ----------------------------------------------------------------

    def _reclaim_idle(self) -> bool:
        """Close the longest-idle kept-alive connection to make room; whether one was."""
        idle = [
            p
            for p in self._open
            if p.record.transport is not None
            and not p.record.transport.is_closing()
            and p.record.in_flight == 0
            and p.record.idle_since is not None
        ]
        if not idle:
            return False
        oldest = min(idle, key=lambda p: p.record.idle_since or 0.0)
        assert oldest.record.transport is not None
        self._closed.labels("reclaimed").inc()
        oldest.record.transport.close()
        self._forget(oldest)
        return True

    def _budget_reached(self) -> None:
        if not self._at_budget:
            self._at_budget = True
            log.warning(
                "connection budget reached: %d of %d held, none idle; new connections are "
                "answered 503 until some close",
                len(self._open),
                self.budget,
            )

    def _forget(self, protocol: _GuardedProtocol) -> None:
        self._open.discard(protocol)
        if protocol.record.transport is not None:
            self._transports.pop(protocol.record.transport, None)
        self._gauge.set(len(self._open))


CONNECTIONS: web.AppKey[ConnectionGuard] = web.AppKey("connections", ConnectionGuard)


# Connections taken from the kernel's queue in one go, past the one awaited.
_ACCEPT_BATCH = 256


class _Listener:
    """Accepts connections itself, so that past capacity it can turn them away cheaply.

    At most ``max_handshakes`` TLS handshakes run at once in a worker. A
    connection that arrives while that many are under way is accepted and
    reset at once (it costs an accept, not a handshake), and the client
    tries again later, as the agent does after any failed contact. Left in
    the kernel's queue instead, it would wait out SYN retransmissions while
    the worker sits idle, or be handshaken after its client gave up: both
    how goodput collapses. Stands in for aiohttp's ``asyncio.Server``
    (``close`` and ``sockets``).
    """

    def __init__(
        self,
        sock: socket.socket,
        guard: ConnectionGuard,
        factory: Callable[[], asyncio.Protocol],
        ssl_context: ssl.SSLContext | None,
    ) -> None:
        self.sockets = [sock]
        self._sock = sock
        self._guard = guard
        self._factory = factory
        self._ssl = ssl_context
        self._handshakes = 0
        self._shedding = False
        self._out_of_descriptors = False
        self._connecting: set[asyncio.Task[None]] = set()
        self._task = asyncio.get_running_loop().create_task(self._accept())

    async def _accept(self) -> None:
        loop = asyncio.get_running_loop()
        limit = self._guard.limits.max_handshakes
        while True:
            try:
                conn, _ = await loop.sock_accept(self._sock)
            except OSError as e:
                if e.errno not in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    raise
                if not self._out_of_descriptors:
                    self._out_of_descriptors = True
                    log.warning("cannot accept connections: %s; waiting for some to close", e)
                await asyncio.sleep(0.1)
                continue
            if self._out_of_descriptors:
                self._out_of_descriptors = False
                log.warning("accepting connections again")
            self._take(conn, limit)
            # Empty the kernel's queue while here: under load the loop comes back to
            # this task seldom, and a connection left queued ages past its client's
            # patience (then its handshake is work for nobody).
            for _ in range(_ACCEPT_BATCH):
                try:
                    conn, _ = self._sock.accept()
                except (BlockingIOError, InterruptedError):
                    break
                except OSError:
                    break  # out of descriptors: the awaited accept above says so
                self._take(conn, limit)

    def _take(self, conn: socket.socket, limit: int) -> None:
        """Start a handshake for a new connection, or reset it at the bound."""
        if self._handshakes >= limit:
            self._shed(conn)
            return
        if self._shedding and self._handshakes < limit // 2:
            self._shedding = False
            log.warning("handshakes below their bound again: new connections are taken")
        self._handshakes += 1
        conn.setblocking(False)
        task = asyncio.get_running_loop().create_task(self._connect(conn))
        self._connecting.add(task)
        task.add_done_callback(self._connecting.discard)

    def _shed(self, conn: socket.socket) -> None:
        """Reset a connection the worker has no handshake to spare for."""
        self._guard._closed.labels("handshakes_full").inc()
        if not self._shedding:
            self._shedding = True
            log.warning(
                "%d TLS handshakes under way, the bound: new connections are reset until "
                "some finish",
                self._handshakes,
            )
        with contextlib.suppress(OSError):
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.close()

    async def _connect(self, conn: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        made: list[asyncio.Protocol] = []

        def factory() -> asyncio.Protocol:
            made.append(self._factory())
            return made[-1]

        try:
            await loop.connect_accepted_socket(
                factory,
                conn,
                ssl=self._ssl,
                ssl_handshake_timeout=self._guard.limits.handshake_timeout if self._ssl else None,
            )
        except (OSError, ssl.SSLError, TimeoutError):
            # The handshake failed or took too long: the transport is gone, and its
            # protocol, never connected, hears nothing more; the guard forgets it here.
            conn.close()
            for protocol in made:
                self._guard.never_connected(protocol)
        finally:
            self._handshakes -= 1

    def close(self) -> None:
        self._task.cancel()
        self._sock.close()


class GuardedSite(web.TCPSite):
    """aiohttp's TCP site, its connections guarded and its TLS handshakes bounded."""

    def __init__(self, runner: web.BaseRunner, guard: ConnectionGuard, **kwargs: Any) -> None:
        super().__init__(runner, **kwargs)
        self.guard = guard

    async def start(self) -> None:
        await web.BaseSite.start(self)
        server = self._runner.server
        assert server is not None
        host = self._host or "0.0.0.0"  # noqa: S104 - no host named: every address, as aiohttp
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if self._reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((host, self._port))
            sock.listen(self._backlog)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        listener = _Listener(sock, self.guard, self.guard.wrap(server), self._ssl_context)
        self._server = cast(asyncio.AbstractServer, listener)
        self._bound_port = sock.getsockname()[1]
