"""Pinned transport: trust a TLS peer only after homing's own checks pass.

A connection is trusted when, after the handshake and before any request
byte is sent: the presented chain validates (cryptography's verifier) to a
root CA from the verified pin policy at the device's `now`, for the host
name dialled, and an SPKI in the validated chain matches a pin. Otherwise
the socket is closed and ``ChainError``/``PinError`` raised.

The *bootstrap* transport skips those checks and is used only to fetch TUF
metadata, which authenticates itself; it never carries device data.
"""

from __future__ import annotations

import http.client
import ipaddress
import logging
import socket
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from cryptography import x509

from homing.agent.device_key import load_identity
from homing.agent.egress import egress_for
from homing.agent.resumption import SESSIONS, Offered, SessionKey
from homing.agent.session_bytes import offer_saved
from homing.config import Limits
from homing.errors import ChainError, ConfigError, TransportError
from homing.pki.validate import (
    VerifiedChain,
    load_certificate,
    verify_pins,
    verify_server_chain,
)
from homing.tls import client_context, wrap_or_close
from homing.trust.pins import PinPolicy

__all__ = [
    "SESSIONS",
    "Endpoint",
    "PinnedConnection",
    "check_server_url",
    "open_connection",
    "parse_endpoint",
    "verify_pinned_chain",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int

    @property
    def is_ip(self) -> bool:
        try:
            ipaddress.ip_address(self.host)
            return True
        except ValueError:
            return False


def parse_endpoint(url: str) -> Endpoint:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        raise TransportError(f"server URL must be https://HOST[:PORT], not {url!r}")
    return Endpoint(parts.hostname, parts.port or 443)


def _peer_chain(tls: ssl.SSLSocket) -> list[bytes]:
    """The chain the peer presented, leaf first (DER)."""
    sslobj = getattr(tls, "_sslobj", None)
    get_chain = getattr(sslobj, "get_unverified_chain", None)
    if get_chain is not None:  # CPython >= 3.10 (public from 3.13)
        chain = get_chain() or []
        return [c.public_bytes(ssl._ssl.ENCODING_DER) for c in chain]  # type: ignore[attr-defined]
    leaf = tls.getpeercert(binary_form=True)
    return [leaf] if leaf else []


class PinnedConnection(http.client.HTTPSConnection):
    """An HTTPS connection whose peer is checked against the pin policy first."""

    def __init__(
        self,
        endpoint: Endpoint,
        *,
        policy: PinPolicy | None,
        now: datetime,
        client_cert: tuple[Path, Path] | None = None,
        timeout: float = 15.0,
        limits: Limits | None = None,
        clock_behind_floor: bool = False,
    ) -> None:
        def make_context() -> ssl.SSLContext:
            context = client_context()
            if client_cert is not None:
                load_identity(context, *client_cert)
            return context

        # Pinned connections resume the last session to the same home under the same
        # pins and certificate (homing.agent.resumption); the bootstrap channel never.
        self._session_key: SessionKey | None = None
        self._offered: Offered = None
        self._offered_chain: list[bytes] = []
        if policy is not None:
            self._session_key = SESSIONS.key(
                endpoint.host, endpoint.port, policy.to_bytes(), client_cert
            )
            context, self._offered, self._offered_chain = SESSIONS.offer(
                self._session_key, make_context
            )
        else:
            context = make_context()
        super().__init__(endpoint.host, endpoint.port, timeout=timeout, context=context)
        self.endpoint = endpoint
        self.policy = policy
        self.now = now
        self.limits = limits or Limits()
        self.clock_behind_floor = clock_behind_floor
        self._tls_context = context
        self.verified_chain: list[x509.Certificate] = []
        self.resumed = False
        self._presented: list[bytes] = []

    def connect(self) -> None:
        proxy = egress_for(self.host)
        if proxy is not None:
            raw = proxy.tunnel(self.host, self.port, self.timeout)
        else:
            try:
                raw = socket.create_connection((self.host, self.port), self.timeout)
            except OSError as e:
                raise TransportError(f"cannot reach {self.host}:{self.port}: {e}") from e
        tls = self._handshake(raw)
        if self._session_key is not None:
            SESSIONS.count(bool(tls.session_reused))
        if self.policy is not None:
            try:
                self._check(tls)
            except ChainError as e:
                tls.close()
                if proxy is not None:
                    # The chain the tunnel delivered is not home's: most likely the proxy
                    # answers TLS itself. Said so, and refused like any other interceptor.
                    raise type(e)(
                        f"{e} (through the egress proxy {proxy}: a proxy that intercepts "
                        "TLS is refused; let it pass the tunnel through)"
                    ) from e
                raise
            except BaseException:
                tls.close()  # nothing is sent over a connection whose check did not finish
                raise
        self.resumed = bool(tls.session_reused)
        self.sock = tls

    def _handshake(self, raw: socket.socket) -> ssl.SSLSocket:
        """TLS over ``raw``, offering the kept session: one of this process, or one a
        previous cycle saved (homing.agent.session_bytes)."""
        offered = self._offered
        server_name = None if self.endpoint.is_ip else self.host
        try:
            tls = wrap_or_close(
                self._tls_context.wrap_socket,
                raw,
                server_hostname=server_name,
                session=offered if isinstance(offered, ssl.SSLSession) else None,
                do_handshake_on_connect=False,
            )
            try:
                if isinstance(offered, bytes):
                    offer_saved(tls, self._tls_context, offered)
                tls.do_handshake()
            except BaseException:
                tls.close()
                raise
        except (ssl.SSLError, OSError) as e:
            raise TransportError(f"TLS handshake with {self.host}:{self.port} failed: {e}") from e
        return tls

    def close(self) -> None:
        """Keep the session (its ticket has come by now) for the next connection home."""
        tls = self.sock
        if self._session_key is not None and isinstance(tls, ssl.SSLSocket) and self.verified_chain:
            SESSIONS.remember(self._session_key, self._tls_context, tls.session, self._presented)
        super().close()

    def _check(self, tls: ssl.SSLSocket) -> None:
        assert self.policy is not None
        # A resumed session carries no chain: the one presented when it began is checked
        # again (the session proves the same server; the pins and dates are checked now).
        ders = self._offered_chain if tls.session_reused else _peer_chain(tls)
        if not ders:
            raise ChainError("the server presented no certificate")
        leaf = load_certificate(ders[0], self.limits)
        intermediates = [load_certificate(d, self.limits) for d in ders[1:]]
        chain = verify_pinned_chain(
            leaf,
            intermediates,
            self.policy,
            self.host,
            self.now,
            self.limits,
            clock_behind_floor=self.clock_behind_floor,
        )
        self.verified_chain = list(chain.chain)
        self._presented = ders


def verify_pinned_chain(
    leaf: x509.Certificate,
    intermediates: Sequence[x509.Certificate],
    policy: PinPolicy,
    host: str,
    now: datetime,
    limits: Limits | None = None,
    *,
    clock_behind_floor: bool = False,
) -> VerifiedChain:
    """The pinned connection's rule, before any request byte is sent.

    The chain must validate to one of the policy's roots for ``host`` at
    ``now``, and a certificate in the *validated* chain must carry a pinned
    SPKI (RFC 7469 §2.6). Raises ChainError (PinError for the pin). The
    fleet simulator applies this same function to its devices.

    ``clock_behind_floor``: the device's clock reads earlier than its secure
    time floor (a dead RTC reading 1970), so ``now`` is the floor, the last
    time the device could vouch for. A certificate issued since then has a
    notBefore after ``now`` that says nothing against it, so the chain is
    validated at the later of ``now`` and the leaf's notBefore (RFC 5280
    §6.1.3 (a)(2) at that time); anything expired by ``now`` is still
    refused. A device whose clock is trusted gets no such grace: a pinned
    key's thief could otherwise push its time floor into the future.
    """
    at = max(now, leaf.not_valid_before_utc) if clock_behind_floor else now
    chain = verify_server_chain(leaf, intermediates, policy.root_cas, host, at, limits)
    verify_pins(chain, policy.spki_pins)
    return chain


def open_connection(
    url: str,
    *,
    policy: PinPolicy | None,
    now: datetime,
    client_cert: tuple[Path, Path] | None = None,
    clock_behind_floor: bool = False,
) -> PinnedConnection:
    """A connection to ``url``'s host; ``policy=None`` is the unpinned bootstrap channel."""
    return PinnedConnection(
        parse_endpoint(url),
        policy=policy,
        now=now,
        client_cert=client_cert,
        clock_behind_floor=clock_behind_floor,
    )


def check_server_url(url: str) -> None:
    """A ``--server`` that is not an https:// URL is a typo: said at once, with the fix."""
    try:
        parse_endpoint(url)
    except TransportError as e:
        raise ConfigError(
            f"--server {url!r} must be https://HOST[:PORT] (e.g. https://{url.split('://')[-1]})"
        ) from e
