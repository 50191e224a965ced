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
channel never does.

Each cycle of the resident agent is a process of its own, so the sessions
are also saved in the state directory (``STATE/tls-sessions.json``, 0600)
at the end of a cycle and read at the start of the next: the hourly
wake-up resumes. The file holds resumption secrets, as sensitive as the
device key beside it and no more: with the key in a TPM or on a PKCS#11
token the state directory holds no secret that speaks for the device, so
then nothing is saved and only the connections within a cycle resume. A session is offered for a day
at most (the home accepts one until its day ends), never past the lifetime
the home gave it; one read from the file whose deadline lies further ahead
than that (a clock set back) is dropped.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import ssl
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from homing.agent.session_bytes import session_bytes
from homing.fsutil import atomic_write

__all__ = ["LIFETIME", "SESSIONS", "Offered", "Sessions"]

log = logging.getLogger(__name__)

# The longest a session is offered again (the home accepts one for at most a day).
LIFETIME = 24 * 3600.0
SCHEMA = "homing.tls-sessions/1"

SessionKey = tuple[str, int, str, str]
# What a connection offers: a session of this process, one read from the file, or none.
Offered = ssl.SSLSession | bytes | None


@dataclass
class _Kept:
    context: ssl.SSLContext | None  # None: read from the file, a new context is made
    session: ssl.SSLSession | bytes
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
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.lifetime = lifetime
        self.limit = limit
        self.clock = clock
        self._kept: OrderedDict[SessionKey, _Kept] = OrderedDict()
        self.path: Path | None = None
        self._changed = False
        # Pinned handshakes since last cleared, by kind: what a cycle reports.
        self.handshakes: Counter[str] = Counter()

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

    def _usable(self, kept: _Kept) -> bool:
        # Past its deadline, or a deadline further off than a lifetime (the clock went back).
        return 0 < kept.until - self.clock() <= self.lifetime

    def offer(
        self, key: SessionKey, make_context: Callable[[], ssl.SSLContext]
    ) -> tuple[ssl.SSLContext, Offered, list[bytes]]:
        """The context to connect with, the session to offer (None: a full handshake) and
        the chain the home presented when that session began."""
        kept = self._kept.get(key)
        if kept is None or not self._usable(kept):
            if self._kept.pop(key, None) is not None:
                self._changed = True
            return make_context(), None, []
        self._kept.move_to_end(key)
        if kept.context is None:
            kept.context = make_context()
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
        # A new one lasts the lifetime, or less if the home said so.
        lifetime = min(self.lifetime, float(session.timeout or self.lifetime))
        until = kept.until if kept is not None else self.clock() + lifetime
        self._kept[key] = _Kept(context, session, until, chain)
        self._kept.move_to_end(key)
        while len(self._kept) > self.limit:
            self._kept.popitem(last=False)
        self._changed = True

    def count(self, resumed: bool) -> None:
        self.handshakes["resumed" if resumed else "full"] += 1

    def forget(self) -> None:
        """Drop every session of this process (the file is left as it is)."""
        self._kept.clear()
        self.path = None
        self._changed = False

    # -- the file the next cycle's process reads ---------------------------------

    def use_file(self, path: Path | None) -> None:
        """Keep this process's sessions in ``path`` (None: in memory only) from now on,
        starting from what it holds."""
        if path == self.path:
            return
        self.forget()
        self.path = path
        if path is None:
            return
        try:
            doc = json.loads(path.read_bytes())
            entries = doc["sessions"] if doc.get("schema") == SCHEMA else []
            for entry in entries[-self.limit :]:
                kept = _Kept(
                    None,
                    base64.b64decode(entry["session"], validate=True),
                    float(entry["until"]),
                    [base64.b64decode(d, validate=True) for d in entry["chain"]],
                )
                if self._usable(kept) and kept.chain:
                    policy, identity = entry["identity"]
                    key = (str(entry["host"]), int(entry["port"]), str(policy), str(identity))
                    self._kept[key] = kept
        except FileNotFoundError:
            return
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            # Unreadable: the next connections are full handshakes, and the save replaces it.
            log.warning("ignoring the saved TLS sessions in %s: %s", path, e)
            self._kept.clear()
            self._changed = True

    def save(self) -> None:
        """Write the sessions to the file, if there is one and they changed."""
        if self.path is None or not self._changed:
            return
        entries: list[dict[str, Any]] = []
        for (host, port, *identity), kept in self._kept.items():
            raw = kept.session if isinstance(kept.session, bytes) else session_bytes(kept.session)
            if raw is None or not self._usable(kept):
                continue
            entries.append(
                {
                    "host": host,
                    "port": port,
                    "identity": identity,
                    "session": base64.b64encode(raw).decode(),
                    "until": kept.until,
                    "chain": [base64.b64encode(d).decode() for d in kept.chain],
                }
            )
        doc = {"schema": SCHEMA, "sessions": entries}
        try:
            atomic_write(self.path, json.dumps(doc).encode() + b"\n", mode=0o600)
        except OSError as e:  # a full disk costs the next cycle a full handshake, no more
            log.warning("cannot save the TLS sessions to %s: %s", self.path, e)
            return
        self._changed = False


SESSIONS = Sessions()
