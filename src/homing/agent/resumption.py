"""TLS sessions the agent resumes: one per home endpoint, trust and certificate, for an hour.

A cycle opens several connections home (metadata, check-in, firmware); after
the first, each resumes its TLS 1.3 session, which spares the device (and the
home) the certificate exchange and its signatures. A session is kept under a
key made of everything it must not outlive: the endpoint, the pin policy it
was checked against (any change of pins or trust starts afresh) and the
device certificate it presented (a renewed certificate is presented anew,
never hidden behind an old session). Resumption never skips homing's own
checks: the pinned chain is checked on every connection, resumed or not
(homing.agent.transport), and the home checks the device's certificate on
every request. Only pinned connections resume; the unpinned bootstrap
channel never does. Kept in memory for the life of the process.
"""

from __future__ import annotations

import hashlib
import ssl
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

__all__ = ["LIFETIME", "SESSIONS", "Sessions"]

# The longest a session is offered again (the home accepts one for at most a day).
LIFETIME = 3600.0

SessionKey = tuple[str, int, str, str]


@dataclass
class _Kept:
    context: ssl.SSLContext
    session: ssl.SSLSession | None
    until: float
    # The chain the home presented in the full handshake (a resumed one carries none):
    # its pins are checked again, at the time of each resumed connection.
    chain: list[bytes]


class Sessions:
    """The sessions of one process, a few endpoints at most."""

    def __init__(
        self,
        lifetime: float = LIFETIME,
        limit: int = 8,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.lifetime = lifetime
        self.limit = limit
        self.clock = clock
        self._kept: OrderedDict[SessionKey, _Kept] = OrderedDict()

    @staticmethod
    def key(
        host: str, port: int, policy_bytes: bytes, client_cert: tuple[Path, Path] | None
    ) -> SessionKey:
        """What a session must not outlive: endpoint, pin policy and device certificate."""
        identity = ""
        if client_cert is not None:
            cert, key = client_cert
            try:
                identity = f"{cert}:{cert.stat().st_mtime_ns}:{key}:{key.stat().st_mtime_ns}"
            except OSError:
                identity = f"{cert}:missing"
        return (host, port, hashlib.sha256(policy_bytes).hexdigest(), identity)

    def offer(
        self, key: SessionKey, make_context: Callable[[], ssl.SSLContext]
    ) -> tuple[ssl.SSLContext, ssl.SSLSession | None, list[bytes]]:
        """The context to connect with, the session to offer (None: a full handshake) and
        the chain the home presented when that session began."""
        kept = self._kept.get(key)
        if kept is None or self.clock() >= kept.until:
            self._kept.pop(key, None)
            return make_context(), None, []
        self._kept.move_to_end(key)
        return kept.context, kept.session, kept.chain

    def remember(
        self,
        key: SessionKey,
        context: ssl.SSLContext,
        session: ssl.SSLSession | None,
        chain: list[bytes],
    ) -> None:
        """Keep ``session`` (with a ticket) and the home's validated ``chain`` for the next
        connection under ``key``."""
        if session is None or not session.has_ticket or not chain:
            return
        kept = self._kept.get(key)
        # A resumed session keeps the first one's deadline: resumption never extends it.
        until = kept.until if kept is not None else self.clock() + self.lifetime
        self._kept[key] = _Kept(context, session, until, chain)
        self._kept.move_to_end(key)
        while len(self._kept) > self.limit:
            self._kept.popitem(last=False)

    def forget(self) -> None:
        self._kept.clear()


SESSIONS = Sessions()
