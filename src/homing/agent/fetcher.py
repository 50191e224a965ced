"""python-tuf fetchers over homing's transports: pinned first, bootstrap when pins are stale."""

from __future__ import annotations

import http.client
from collections.abc import Iterator
from datetime import datetime
from urllib.parse import SplitResult, urlsplit

from tuf.api import exceptions as tuf_errors
from tuf.ngclient import FetcherInterface

from homing.agent.transport import open_connection
from homing.config import Limits
from homing.errors import HomingError
from homing.trust.pins import PinPolicy

__all__ = ["HTTPSFetcher"]

_CHUNK = 64 * 1024


class HTTPSFetcher(FetcherInterface):
    """Fetch over HTTPS; pinned when given a policy, bootstrap (unpinned) otherwise.

    Errors from homing's pin checks surface as ``DownloadError`` inside
    python-tuf and are re-raised from ``pin_failure`` so the agent can tell
    "pins are stale" from "the network is down".
    """

    def __init__(
        self,
        policy: PinPolicy | None,
        now: datetime,
        *,
        allow_plain_http: bool = False,
        limits: Limits | None = None,
    ) -> None:
        # Plain HTTP only for `homing agent tuf-client` (the TUF conformance
        # suite serves http://); the agent itself never enables it.
        self.allow_plain_http = allow_plain_http
        self._conn: http.client.HTTPConnection | None = None
        self._conn_key: tuple[str, str] | None = None
        self.policy = policy
        self.now = now
        self.limits = limits or Limits()
        self.pin_failure: HomingError | None = None
        self.requests = 0
        # Set by the agent when its clock reads behind its time floor
        # (homing.agent.transport.verify_pinned_chain says what changes).
        self.clock_behind_floor = False

    def _connection(self, parts: SplitResult) -> http.client.HTTPConnection:
        """One kept-alive connection per source: a refresh fetches several files."""
        key = (parts.scheme, parts.netloc)
        if self._conn is not None and self._conn_key == key:
            return self._conn
        self.close()
        conn: http.client.HTTPConnection
        if parts.scheme == "http" and self.allow_plain_http:
            conn = http.client.HTTPConnection(parts.hostname or "", parts.port or 80, timeout=15)
        else:
            conn = open_connection(
                f"{parts.scheme}://{parts.netloc}",
                policy=self.policy,
                now=self.now,
                clock_behind_floor=self.clock_behind_floor,
            )
        self._conn, self._conn_key = conn, key
        return conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
        self._conn, self._conn_key = None, None

    def _fetch(self, url: str) -> Iterator[bytes]:
        parts = urlsplit(url)
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        for attempt in (1, 2):
            try:
                conn = self._connection(parts)
                conn.request("GET", path, headers={"Accept": "application/json, */*"})
                response = conn.getresponse()
                break
            except HomingError as e:
                self.close()
                self.pin_failure = e
                raise tuf_errors.DownloadError(str(e)) from e
            except (OSError, http.client.HTTPException) as e:
                # A kept-alive connection the server closed: one fresh try.
                self.close()
                if attempt == 2:
                    raise tuf_errors.DownloadError(f"cannot fetch {url}: {e}") from e
        self.requests += 1
        if response.status != 200:
            # Only a reason is worth reading from a refusal, and on the bootstrap
            # channel anyone may answer: read a little, then drop the connection.
            response.read(self.limits.max_error_body_bytes)
            response.close()
            self.close()
            raise tuf_errors.DownloadHTTPError(f"{url}: HTTP {response.status}", response.status)
        return self._chunks(response)

    def _chunks(self, response: http.client.HTTPResponse) -> Iterator[bytes]:
        try:
            while chunk := response.read(_CHUNK):
                yield chunk
        finally:
            if not response.isclosed():
                # A partly read body cannot be followed by another request.
                self.close()
            response.close()
