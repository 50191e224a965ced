"""A local pinned proxy: applications in any language reach home through the agent's trust.

Opt-in (``homing agent proxy``), on a Unix socket or a loopback port. An
application speaks plain HTTP to it; the proxy forwards each request over
pinned mutual TLS, with the device certificate, to a home endpoint and
relays the answer. ``CONNECT host:port`` to a home endpoint opens the same
pinned mutual-TLS connection and relays bytes both ways, for protocols that
are not HTTP requests (the application speaks its plain protocol inside).

Only home endpoints (the pin policy's and the device's configured server,
``homing.apps.Home.endpoints``) are destinations; anything else is answered
``403``. Request heads, bodies and answers are bounded, every connection has
an idle limit, and at most ``MAX_CONNECTIONS`` are open at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path
from urllib.parse import urlsplit

from homing.agent.apps import Home
from homing.agent.egress import egress_for
from homing.errors import HomingError

__all__ = ["IDLE_SECONDS", "MAX_BODY_BYTES", "MAX_CONNECTIONS", "MAX_HEAD_BYTES", "serve"]

log = logging.getLogger(__name__)

MAX_HEAD_BYTES = 16 * 1024
MAX_BODY_BYTES = 16 * 1024 * 1024
MAX_CONNECTIONS = 64
IDLE_SECONDS = 60.0
# Hop-by-hop headers (RFC 9110 §7.6.1) are the proxy's own, never forwarded.
_HOP = {
    "connection",
    "keep-alive",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
}


class _Refusal(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


async def _answer(writer: asyncio.StreamWriter, status: int, text: str) -> None:
    body = (text + "\n").encode()
    writer.write(
        f"HTTP/1.1 {status} {text.split(':')[0][:60]}\r\nContent-Type: text/plain\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
        + body
    )
    with contextlib.suppress(ConnectionError):
        await writer.drain()


def _destination(home: Home, target: str) -> tuple[str, str]:
    """(home endpoint URL, path under it) for a request target, or a refusal.

    An origin-form target (``/path``: the application uses the proxy as its
    server) goes to the device's home; an absolute URL must name a home
    endpoint, whatever its scheme (the proxy always speaks pinned TLS).
    """
    endpoints = home.endpoints()
    if target.startswith("/"):
        return endpoints[0], target
    if not target.startswith(("http://", "https://")):
        raise _Refusal(400, "Bad Request: the request target must be a path or an absolute URL")
    wanted = urlsplit(target)
    path = (wanted.path or "/") + (f"?{wanted.query}" if wanted.query else "")
    for url in endpoints:
        parts = urlsplit(url)
        if wanted.hostname == parts.hostname and (wanted.port or 443) == (parts.port or 443):
            return url, path
    raise _Refusal(403, f"Forbidden: {wanted.netloc} is not a home endpoint of this device")


def _connect_destination(home: Home, authority: str) -> str:
    for url in home.endpoints():
        parts = urlsplit(url)
        if authority in (parts.netloc, f"{parts.hostname}:{parts.port or 443}"):
            return url
    raise _Refusal(403, f"Forbidden: {authority} is not a home endpoint of this device")


async def _read_head(reader: asyncio.StreamReader) -> list[str]:
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), IDLE_SECONDS)
    except asyncio.LimitOverrunError as e:
        raise _Refusal(431, "Request Header Fields Too Large") from e
    return head.decode("latin-1").split("\r\n")[:-2]


async def _relay(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
    try:
        while data := await asyncio.wait_for(src.read(65536), IDLE_SECONDS):
            dst.write(data)
            await dst.drain()
    except (TimeoutError, ConnectionError):
        pass
    finally:
        with contextlib.suppress(OSError):
            dst.close()


async def _tunnel(
    home: Home, url: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    parts = urlsplit(url)
    host, port = parts.hostname or "", parts.port or 443
    context = home.ssl_context()
    try:
        egress = egress_for(host)
        if egress is not None:
            # Through the site's egress proxy: its tunnel, then the same pinned TLS.
            sock = await asyncio.to_thread(egress.tunnel, host, port, IDLE_SECONDS)
            opening = asyncio.open_connection(sock=sock, ssl=context, server_hostname=host)
        else:
            opening = asyncio.open_connection(host, port, ssl=context, server_hostname=host)
        up_reader, up_writer = await asyncio.wait_for(opening, IDLE_SECONDS)
    except (OSError, TimeoutError, HomingError) as e:
        raise _Refusal(502, f"Bad Gateway: home cannot be reached: {e}") from e
    writer.write(b"HTTP/1.1 200 Connection Established\r\n\r\n")
    await writer.drain()
    await asyncio.gather(_relay(reader, up_writer), _relay(up_reader, writer))


async def _forward(
    home: Home, lines: list[str], reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    request_line = lines[0].split(" ")
    if len(request_line) != 3:
        raise _Refusal(400, "Bad Request: the request line is not METHOD TARGET VERSION")
    method, target, _version = request_line
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep:
            raise _Refusal(400, "Bad Request: a header line without ':'")
        headers[name.strip()] = value.strip()
    lower = {k.lower(): v for k, v in headers.items()}
    if "transfer-encoding" in lower:
        raise _Refusal(411, "Length Required: send a Content-Length, not chunks")
    declared = lower.get("content-length", "0")
    if not declared.isdigit():
        raise _Refusal(400, "Bad Request: Content-Length is not a number")
    length = int(declared)
    if length > MAX_BODY_BYTES:
        raise _Refusal(413, f"Content Too Large: at most {MAX_BODY_BYTES} bytes")
    if method == "CONNECT":
        await _tunnel(home, _connect_destination(home, target), reader, writer)
        return
    url, path = _destination(home, target)
    body = await asyncio.wait_for(reader.readexactly(length), IDLE_SECONDS) if length else None
    forwarded = {k: v for k, v in headers.items() if k.lower() not in _HOP | {"host"}}
    try:
        answer = await asyncio.to_thread(home.request, method, path, body, forwarded, endpoint=url)
    except HomingError as e:
        raise _Refusal(502, f"Bad Gateway: {e}") from e
    head = [f"HTTP/1.1 {answer.status} {'OK' if answer.status == 200 else 'Answer'}"]
    head += [f"{k}: {v}" for k, v in answer.headers.items() if k not in _HOP | {"content-length"}]
    head += [f"Content-Length: {len(answer.body)}", "Connection: close"]
    writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + answer.body)
    await writer.drain()


async def _handle(
    home: Home,
    slots: asyncio.Semaphore,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
) -> None:
    if slots.locked():
        await _answer(writer, 503, "Service Unavailable: too many connections")
        writer.close()
        return
    async with slots:
        try:
            lines = await _read_head(reader)
            if not lines or not lines[0]:
                raise _Refusal(400, "Bad Request: no request line")
            await _forward(home, lines, reader, writer)
        except _Refusal as e:
            await _answer(writer, e.status, e.reason)
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            with contextlib.suppress(OSError):
                writer.close()


async def serve(home: Home, *, unix: Path | None = None, port: int | None = None) -> None:
    """Serve until cancelled, on a Unix socket (mode 0660) or a loopback port."""
    slots = asyncio.Semaphore(MAX_CONNECTIONS)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _handle(home, slots, reader, writer)

    if unix is not None:
        unix.unlink(missing_ok=True)
        server = await asyncio.start_unix_server(handle, path=str(unix), limit=MAX_HEAD_BYTES)
        unix.chmod(0o660)
    else:
        server = await asyncio.start_server(
            handle, host="127.0.0.1", port=port or 0, limit=MAX_HEAD_BYTES
        )
    log.warning("pinned proxy to home listening on %s", unix or f"127.0.0.1:{port}")
    async with server:
        await server.serve_forever()
