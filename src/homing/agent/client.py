"""The one seam between the agent and its home server.

Every request the agent makes to the home server API (check-in, EST
re-enrollment, recovery, progress reports, image downloads) goes through
``HomeClient``. The server is pinned, but a device must survive a server
that misbehaves anyway (a bug, a compromised replica, a proxy in between),
so here:

- every body read is bounded (``Limits.max_answer_bytes``, and for refusals
  ``Limits.max_error_body_bytes``), enforced while streaming;
- every request has an overall deadline (``Limits.request_deadline_seconds``)
  besides the per-read timeout, so a slow drip of headers or body ends
  (``_DeadlineReader``: each read waits only for the time that is left);
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

import http.client
import io
import json
import socket
import time
from collections.abc import Callable, Iterator, Sequence
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
        code, message = _problem(self.body)
        if self.status == 403 and code == "revoked":
            raise RevokedError(f"{what} refused: the device is revoked")
        if code is not None and message is not None:
            # The server's own words, not its JSON: an operator reads this line.
            raise RefusedError(
                f"{what} refused (HTTP {self.status} {code}): {message[:300]}", self.status, code
            )
        preview = self.body[:200].decode("utf-8", "replace")
        raise RefusedError(f"{what} refused: HTTP {self.status} {preview!r}", self.status, code)


def _problem(body: bytes) -> tuple[str | None, str | None]:
    """The ``error`` code and ``message`` of a problem answer, where it is one."""
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):
        return None, None
    if not isinstance(doc, dict):
        return None, None
    code, message = doc.get("error"), doc.get("message")
    return (
        code if isinstance(code, str) else None,
        message if isinstance(message, str) else None,
    )


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


class _DeadlineReader(io.RawIOBase):
    """The socket as http.client reads it, every read bounded by one overall deadline.

    The per-read timeout alone cannot end a server that sends one byte just
    before each timeout, in the headers or in the body; here each read may
    only wait for what is left of the request's time, and none is made after.
    """

    def __init__(self, sock: socket.socket, deadline: float, read_timeout: float) -> None:
        super().__init__()
        self._sock = sock
        # A socket file keeps the socket open while the answer is read, even
        # after http.client closes the connection (as for its own reader).
        self._raw = sock.makefile("rb", buffering=0)
        self._deadline = deadline
        self._read_timeout = read_timeout

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("the request's deadline has passed")
        self._sock.settimeout(min(self._read_timeout, remaining))
        count = self._raw.readinto(buffer)
        return count or 0

    def close(self) -> None:
        self._raw.close()
        super().close()


class _DeadlineSocket:
    """What http.client.HTTPResponse needs of a socket: ``makefile``, with the deadline."""

    def __init__(self, sock: socket.socket, deadline: float, read_timeout: float) -> None:
        self._reader = _DeadlineReader(sock, deadline, read_timeout)

    def makefile(self, mode: str = "rb", *args: Any, **kwargs: Any) -> io.BufferedReader:
        return io.BufferedReader(self._reader)


def _with_deadline(conn: PinnedConnection, seconds: float, read_timeout: float) -> None:
    """Make every answer on ``conn`` read under one deadline from now."""
    deadline = time.monotonic() + seconds

    class _Response(http.client.HTTPResponse):
        def __init__(self, sock: socket.socket, *args: Any, **kwargs: Any) -> None:
            super().__init__(_DeadlineSocket(sock, deadline, read_timeout), *args, **kwargs)  # type: ignore[arg-type]

    conn.response_class = _Response


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
        clock_behind_floor: bool = False,
    ) -> None:
        self.url = url.rstrip("/")
        self.clock_behind_floor = clock_behind_floor
        self.endpoint = parse_endpoint(self.url)
        self.policy = policy
        self.now = now
        self.client_cert = client_cert
        self.limits = limits or Limits()

    def _connection(self, *, mutual: bool) -> PinnedConnection:
        return PinnedConnection(
            self.endpoint,
            policy=self.policy,
            now=self.now,
            client_cert=self.client_cert if mutual else None,
            timeout=self.limits.read_timeout_seconds,
            limits=self.limits,
            clock_behind_floor=self.clock_behind_floor,
        )

    def post(
        self,
        path: str,
        body: bytes | Callable[[Sequence[x509.Certificate]], bytes],
        content_type: str,
        *,
        mutual: bool,
        headers: dict[str, str] | None = None,
    ) -> Answer:
        """POST and read the whole (bounded) answer.

        ``body`` may be a function of the chain this connection verified (a
        check-in reports the pins that matched on the very connection it
        travels on); it is called after the pin checks, before a byte is sent.
        """
        conn = self._connection(mutual=mutual)
        what = f"request to {path}"
        sent = {"Content-Type": content_type, **(headers or {})}
        _with_deadline(conn, self.limits.request_deadline_seconds, self.limits.read_timeout_seconds)
        response: http.client.HTTPResponse | None = None
        try:
            if callable(body):
                conn.connect()
                body = body(conn.verified_chain)
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
        except TimeoutError as e:
            raise TransportError(
                f"{what} took longer than {self.limits.request_deadline_seconds:g} s"
            ) from e
        except (OSError, http.client.HTTPException) as e:
            raise TransportError(f"{what} failed: {type(e).__name__}: {e}") from e
        finally:
            # The answer's reader holds the socket open: close both, whatever happened.
            if response is not None:
                response.close()
            conn.close()

    def post_json(
        self,
        path: str,
        doc: dict[str, Any] | Callable[[Sequence[x509.Certificate]], dict[str, Any]],
        *,
        mutual: bool,
    ) -> Answer:
        """POST a JSON object (or one made from the verified chain); None fields are left out."""

        def encode(d: dict[str, Any]) -> bytes:
            return json.dumps({k: v for k, v in d.items() if v is not None}).encode()

        if callable(doc):
            make = doc
            return self.post(
                path, lambda chain: encode(make(chain)), "application/json", mutual=mutual
            )
        return self.post(path, encode(doc), "application/json", mutual=mutual)

    @contextmanager
    def download(self, path: str, *, offset: int) -> Iterator[tuple[int, Callable[[int], bytes]]]:
        """GET ``path`` from ``offset`` (HTTP Range); yields (status, read(n)).

        Reads are bounded by the caller (the signed length of the image) and
        each waits at most ``Limits.read_timeout_seconds``: a large image may
        rightly take longer than one request's deadline.
        """
        conn = self._connection(mutual=False)
        response: http.client.HTTPResponse | None = None
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
                try:
                    return response.read(n)
                except (OSError, http.client.HTTPException) as e:
                    raise TransportError(f"download of {path} interrupted: {e}") from e

            if response.status not in (200, 206):
                read_bounded(response, self.limits.max_error_body_bytes, path, truncate=True)
            yield response.status, read
        finally:
            if response is not None:
                response.close()
            conn.close()
