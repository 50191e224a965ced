"""TLS session tickets that every worker of a site opens: keys derived from one secret, daily.

A device that wakes, checks in and sleeps pays a full handshake each time
unless it resumes its last session. With TLS 1.3 the server keeps nothing
per session: it hands the device a ticket sealed with its ticket key and
opens it when the device comes back. Each worker has its own OpenSSL
context, and by default its own random ticket key, so a device whose next
connection lands on another worker would get a full handshake anyway. Here
every worker derives the ticket key from one secret of the data directory
(``DATA/keys/session-tickets.secret``, made once, 0600, replaced by
``homing rotate session-tickets``), the day (UTC) and the server
certificate chain in force: the same key in every process serving that
chain, a new one every day, at every new server certificate and every new
secret, so a ticket opens at most until the day changes, and a device meets
(and checks) a new server certificate in a full handshake as soon as it is
served. A replica on another host serves its own certificate, so a device
that moves to it makes a full handshake and checks it.

Resumption never skips a check that matters: TLS 1.3 resumption here still
runs an (EC)DHE exchange (forward secrecy), and the application checks the
device's certificate (chain, standing, revocation) on every request,
resumed or not (homing.server.auth).
"""

from __future__ import annotations

import hashlib
import logging
import ssl
from datetime import UTC, date, datetime
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from homing import tls
from homing.errors import ConfigError
from homing.site.ticket_secret import read_secret, secret_mark

__all__ = ["SESSION_LIFETIME", "SessionTickets", "ticket_keys"]

log = logging.getLogger(__name__)

# A ticket is accepted for a day at most (and never past the day its key was made for).
SESSION_LIFETIME = 24 * 3600


def ticket_keys(secret: bytes, when: datetime, server_chain: bytes = b"") -> bytes:
    """The 80 bytes OpenSSL seals tickets with on ``when``'s day for the server certificate
    chain in force (name, HMAC and AES keys)."""
    day = when.astimezone(UTC).date().isoformat()
    chain = hashlib.sha256(server_chain).hexdigest()
    return HKDF(
        algorithm=hashes.SHA256(),
        length=80,
        salt=None,
        info=f"homing tls tickets {day} {chain}".encode(),
    ).derive(secret)


class SessionTickets:
    """Keeps a server context's ticket key the day's key."""

    def __init__(self, keys_dir: Path) -> None:
        self.keys_dir = keys_dir
        # (day, chain, secret file) the context's key was derived for: re-derived only
        # when one changes.
        self._sealed_for: tuple[date, int, int, tuple[int, int] | None] | None = None

    def apply(self, context: ssl.SSLContext, now: datetime, server_chain: bytes) -> None:
        """Set the key of the day and of ``server_chain`` (the PEM the context serves) on
        ``context`` if it does not hold it yet."""
        day = now.astimezone(UTC).date()
        mark = secret_mark(self.keys_dir)
        if mark is not None and (day, len(server_chain), hash(server_chain), mark) == (
            self._sealed_for
        ):
            return
        try:
            secret, mark = read_secret(self.keys_dir)
        except ConfigError as e:
            log.warning("sessions resume on this worker only: %s", e)
            return
        keys = ticket_keys(secret, now, server_chain)
        sealed_for = (day, len(server_chain), hash(server_chain), mark)
        if not tls.set_ticket_keys(context, keys, SESSION_LIFETIME):
            log.warning("sessions resume on this worker only: its TLS library takes no ticket key")
            return
        self._sealed_for = sealed_for
