"""The one seam between the agent and its home server.

Every request the agent makes to the home server API (check-in, EST
re-enrollment, recovery, progress reports, image downloads) goes through
``HomeClient``. The server is pinned, but a device must survive a server
that misbehaves anyway (a bug, a compromised replica, a proxy in between),
so here:

- every body read is bounded (``Limits.max_answer_bytes``, and for refusals
  ``Limits.max_error_body_bytes``), enforced while streaming;
- every request has an overall deadline (``Limits.request_deadline_seconds``)
  besides the per-read timeout, so a slow drip of headers or body ends;
- every failure of the transport or of HTTP parsing (``OSError``,
  ``ssl.SSLError``, ``http.client.HTTPException``, too many or too long
  headers) becomes a ``TransportError``; a refusal becomes a
  ``RefusedError`` that carries the server's problem code, so callers decide
  on a typed value and never on message text;
- an answer that should be JSON is parsed here, bounded, and must be an
  object: anything else is a ``TransportError``.

The fleet simulator drives the agent's decisions through its own seam; this
module is only the wire.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography import x509

from homing.agent.transport import PinnedConnection, parse_endpoint
from homing.config import Limits
from homing.errors import HomingError, RefusedError, RevokedError, TransportError
from homing.trust.pins import PinPolicy

__all__ = ["Answer", "HomeClient", "read_bounded"]

_CHUNK = 64 * 1024


@dataclass(frozen=True)
class Answer:
    """A complete answer of the home server, its body already bounded."""

    status: int
    body: bytes
    retry_after: str | None = None
    chain: list[x509.Certificate] = field(default_factory=list)

    def json(self, what: str) -> dict[str, Any]:
        """The body as a JSON object, or TransportError naming ``what`` was malformed."""
        try:
            doc = json.loads(self.body)
        except (ValueError, RecursionError) as e:
            raise TransportError(f"the {what} answer is not JSON") from e
        if not isinstance(doc, dict):
            raise TransportError(f"the {what} answer is not a JSON object")
        return doc

    def expect_ok(self, what: str) -> Answer:
        """This answer when it is a 200; otherwise the one error that says why not."""
        if self.status == 200:
            return self
        code = _problem_code(self.body)
        if self.status == 403 and code == "revoked":
            raise RevokedError(f"{what} refused: the device is revoked")
        preview = self.body[:200].decode("utf-8", "replace")
        raise RefusedError(f"{what} refused: HTTP {self.status} {preview!r}", self.status, code)


def _problem_code(body: bytes) -> str | None:
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):
        return None
    code = doc.get("error") if isinstance(doc, dict) else None
    return code if isinstance(code, str) else None


def read_bounded(
    response: http.client.HTTPResponse, limit: int, what: str, *, truncate: bool = False
) -> bytes:
    """Read a body of at most ``limit`` bytes; longer is an error (or cut, with ``truncate``)."""
    declared = response.getheader("Content-Length")
    if (
        declared is not None
        and declared.strip().isdigit()
        and int(declared) > limit
        and not truncate
    ):
        raise TransportError(f"the {what} answer is {int(declared)} bytes; the limit is {limit}")
    parts: list[bytes] = []
    size = 0
    while size <= limit:
        chunk = response.read(min(_CHUNK, limit + 1 - size))
        if not chunk:
            break
        parts.append(chunk)
        size += len(chunk)
    if size > limit:
        if not truncate:
            raise TransportError(f"the {what} answer is larger than {limit} bytes")
        return b"".join(parts)[:limit]
    declared_size = int(declared) if declared is not None and declared.strip().isdigit() else None
    if declared_size is not None and size < declared_size:
        raise TransportError(f"the {what} answer was cut short ({size} of {declared_size} bytes)")
    return b"".join(parts)


@contextmanager
def _deadline(conn: PinnedConnection, seconds: float, what: str) -> Iterator[None]:
    """Cut the connection when the whole request takes longer than ``seconds``.

    The per-read timeout alone cannot end a server that sends one byte just
    before each timeout; closing the socket from a timer makes the blocked
    read fail, and the failure is reported as the deadline.
    """
    expired = threading.Event()

    def cut() -> None:
        expired.set()
        sock = conn.sock
        if sock is not None:
            with contextlib.suppress(OSError):  # already closed: nothing left to cut
                sock.shutdown(socket.SHUT_RDWR)

    timer = threading.Timer(seconds, cut)
    timer.daemon = True
    timer.start()
    try:
        yield
    except (TransportError, OSError, http.client.HTTPException) as e:
        if expired.is_set():
            raise TransportError(f"the {what} took longer than {seconds:g} s") from e
        raise
    finally:
        timer.cancel()
    if expired.is_set():
        raise TransportError(f"the {what} took longer than {seconds:g} s")


class HomeClient:
    """Requests to one home server, pinned by ``policy``, at one moment ``now``."""

    def __init__(
        self,
        url: str,
        *,
        policy: PinPolicy,
        now: datetime,
        client_cert: tuple[Path, Path] | None,
        limits: Limits | None = None,
        connect: Callable[..., PinnedConnection] | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.endpoint = parse_endpoint(self.url)
        self.policy = policy
        self.now = now
        self.client_cert = client_cert
        self.limits = limits or Limits()
        self._connect = connect or PinnedConnection

    def _connection(self, *, mutual: bool) -> PinnedConnection:
        return self._connect(
            self.endpoint,
            policy=self.policy,
            now=self.now,
            client_cert=self.client_cert if mutual else None,
            timeout=self.limits.read_timeout_seconds,
            limits=self.limits,
        )

    def post(
        self,
        path: str,
        body: bytes,
        content_type: str,
        *,
        mutual: bool,
        headers: dict[str, str] | None = None,
    ) -> Answer:
        """POST and read the whole (bounded) answer."""
        conn = self._connection(mutual=mutual)
        what = f"request to {path}"
        sent = {"Content-Type": content_type, **(headers or {})}
        try:
            with _deadline(conn, self.limits.request_deadline_seconds, what):
                conn.request("POST", path, body=body, headers=sent)
                response = conn.getresponse()
                limit = (
                    self.limits.max_answer_bytes
                    if response.status == 200
                    else self.limits.max_error_body_bytes
                )
                data = read_bounded(response, limit, path, truncate=response.status != 200)
            return Answer(
                response.status, data, response.getheader("Retry-After"), conn.verified_chain
            )
        except HomingError:
            raise
        except (OSError, http.client.HTTPException) as e:
            raise TransportError(f"{what} failed: {type(e).__name__}: {e}") from e
        finally:
            conn.close()

    def post_json(self, path: str, doc: dict[str, Any], *, mutual: bool) -> Answer:
        """POST a JSON object; fields that are None are left out."""
        body = json.dumps({k: v for k, v in doc.items() if v is not None}).encode()
        return self.post(path, body, "application/json", mutual=mutual)

    @contextmanager
    def download(self, path: str, *, offset: int) -> Iterator[tuple[int, Callable[[int], bytes]]]:
        """GET ``path`` from ``offset`` (HTTP Range); yields (status, read(n)).

        Reads are bounded by the caller (the signed length of the image); the
        deadline here is per chunk read, since a large image may take long.
        """
        conn = self._connection(mutual=False)
        try:
            headers = {"Range": f"bytes={offset}-"} if offset else {}
            try:
                conn.request("GET", path, headers=headers)
                response = conn.getresponse()
            except HomingError:
                raise
            except (OSError, http.client.HTTPException) as e:
                raise TransportError(f"download of {path} failed: {e}") from e

            def read(n: int) -> bytes:
                started = time.monotonic()
                try:
                    chunk = response.read(n)
                except (OSError, http.client.HTTPException) as e:
                    raise TransportError(f"download of {path} interrupted: {e}") from e
                if time.monotonic() - started > self.limits.request_deadline_seconds:
                    raise TransportError(f"download of {path} stalled")
                return chunk

            if response.status not in (200, 206):
                read_bounded(response, self.limits.max_error_body_bytes, path, truncate=True)
            yield response.status, read
        finally:
            conn.close()
