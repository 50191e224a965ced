"""python-tuf fetchers over homing's transports: pinned first, bootstrap when pins are stale."""

from __future__ import annotations

import http.client
from collections.abc import Iterator
from datetime import datetime
from urllib.parse import urlsplit

from tuf.api import exceptions as tuf_errors
from tuf.ngclient import FetcherInterface

from homing.agent.transport import open_connection
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
        self, policy: PinPolicy | None, now: datetime, *, allow_plain_http: bool = False
    ) -> None:
        # Plain HTTP only for `homing agent tuf-client` (the TUF conformance
        # suite serves http://); the agent itself never enables it.
        self.allow_plain_http = allow_plain_http
        self.policy = policy
        self.now = now
        self.pin_failure: HomingError | None = None
        self.requests = 0

    def _fetch(self, url: str) -> Iterator[bytes]:
        parts = urlsplit(url)
        base = f"{parts.scheme}://{parts.netloc}"
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        try:
            conn: http.client.HTTPConnection
            if parts.scheme == "http" and self.allow_plain_http:
                conn = http.client.HTTPConnection(
                    parts.hostname or "", parts.port or 80, timeout=15
                )
            else:
                conn = open_connection(base, policy=self.policy, now=self.now)
            conn.request("GET", path, headers={"Accept": "application/json, */*"})
            response = conn.getresponse()
        except HomingError as e:
            self.pin_failure = e
            raise tuf_errors.DownloadError(str(e)) from e
        except OSError as e:
            raise tuf_errors.DownloadError(f"cannot fetch {url}: {e}") from e
        self.requests += 1
        if response.status != 200:
            conn.close()
            raise tuf_errors.DownloadHTTPError(f"{url}: HTTP {response.status}", response.status)
        return self._chunks(conn, response)

    @staticmethod
    def _chunks(conn: object, response: object) -> Iterator[bytes]:
        assert isinstance(response, http.client.HTTPResponse)
        try:
            while chunk := response.read(_CHUNK):
                yield chunk
        finally:
            response.close()
            conn.close()  # type: ignore[attr-defined]
