"""For the device's own applications: talk home through homing's trust.

The agent keeps the device's trust current through every rotation: the pin
policy (roots, pinned SPKIs, endpoints) in its state directory, the device
certificate and key. An application on the device uses that trust here, and
follows it without a restart::

    from homing.apps import Home

    home = Home("/var/lib/homing-agent")
    answer = home.request("POST", "/api/telemetry", b"...", {"Content-Type": "application/json"})
    context = home.ssl_context()          # for any library that takes an ssl.SSLContext

Both check the server the way the agent does (``homing.agent.transport``):
the presented chain must validate to a root of the *current* pin policy, for
the host dialled, at the device's time, and an SPKI in the validated chain
must be pinned; only then is a request byte sent. The checks read the
policy at each handshake, so a context made before a rotation of the server
certificate, the server CA or the root still connects after it. The device
certificate is reloaded when the agent renews or recovers it. Only the
endpoints the pin policy names (and the device's configured server) are
destinations: anything else is refused before a connection is opened.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from homing.agent.device_key import load_identity
from homing.agent.state import DeviceState
from homing.agent.transport import PinnedConnection, parse_endpoint, verify_pinned_chain
from homing.config import Limits
from homing.errors import ChainError, ConfigError, MetadataError, TransportError
from homing.pki.validate import load_certificate
from homing.tls import client_context, wrap_or_close
from homing.trust.pins import PinPolicy

__all__ = ["Answer", "Home", "PinnedContext"]


@dataclass(frozen=True)
class Answer:
    """What home answered: status, headers (lower-case names) and the whole body."""

    status: int
    headers: dict[str, str]
    body: bytes


class Home:
    """The device's home, as its applications reach it, by the agent's current trust.

    ``state``: the agent's state directory. ``server``: an endpoint to use
    instead of the policy's primary (as the agent's ``--server``); the pins
    are the same whatever it is.
    """

    def __init__(
        self, state: str | Path, *, server: str | None = None, timeout: float = 15.0
    ) -> None:
        self.state = DeviceState(Path(state))
        self.server = server
        self.timeout = timeout
        self.limits = Limits()
        # An answer is read whole; a bigger one is an error, not a memory hog.
        self.max_answer_bytes = 16 * 1024 * 1024
        self._policy: tuple[int, PinPolicy] | None = None

    # -- trust, read fresh ---------------------------------------------------

    @property
    def policy(self) -> PinPolicy:
        """The pin policy the agent last verified (re-read when the agent writes a new one)."""
        path = self.state.root / "pins.json"
        try:
            mark = path.stat().st_mtime_ns
        except FileNotFoundError as e:
            raise ConfigError(
                f"{self.state.root} holds no verified pin policy yet: run the agent first"
            ) from e
        if self._policy is None or self._policy[0] != mark:
            self._policy = (mark, PinPolicy.from_bytes(path.read_bytes(), self.limits))
        return self._policy[1]

    def now(self) -> datetime:
        """The device's time for certificate checks: its clock, never below its time floor."""
        clock = datetime.now(UTC)
        floor = self.state.time_floor()
        return max(clock, floor) if floor is not None else clock

    def behind_floor(self) -> bool:
        """Whether the clock reads behind the time floor (a dead RTC): then, as for the
        agent, a server certificate issued since the floor is no reason to refuse."""
        floor = self.state.time_floor()
        return floor is not None and datetime.now(UTC) < floor

    def endpoints(self) -> list[str]:
        """Where home is: the configured server, the policy's primary, then its mirrors."""
        policy = self.policy
        configured = self.server or self.state.config().server
        urls = [configured] if configured else []
        urls += [policy.primary, *policy.mirrors]
        return list(dict.fromkeys(u.rstrip("/") for u in urls))

    def _destination(self, endpoint: str | None) -> str:
        allowed = self.endpoints()
        if endpoint is None:
            return allowed[0]
        wanted = endpoint.rstrip("/")
        if wanted not in allowed:
            raise ConfigError(
                f"{endpoint} is not a home endpoint of this device (the pin policy names "
                f"{', '.join(allowed)})"
            )
        return wanted

    # -- requests --------------------------------------------------------------

    def ssl_context(self) -> PinnedContext:
        """A client context that enforces the current pins at every handshake and presents
        the device certificate; for http.client, urllib, asyncio, and any library that
        takes an ``ssl.SSLContext``."""
        context = client_context(context_class=PinnedContext)
        assert isinstance(context, PinnedContext)
        context.home = self
        context.refresh_certificate()
        return context

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        *,
        endpoint: str | None = None,
    ) -> Answer:
        """One request over pinned mutual TLS to ``endpoint`` (by default the first of
        ``endpoints()``); TransportError when home cannot be reached, ChainError when the
        peer is not home."""
        url = self._destination(endpoint)
        if not path.startswith("/"):
            raise ConfigError(f"the path must start with '/', not {path!r}")
        conn = PinnedConnection(
            parse_endpoint(url),
            policy=self.policy,
            now=self.now(),
            client_cert=(self.state.cert_path, self.state.key_path),
            timeout=self.timeout,
            limits=self.limits,
            clock_behind_floor=self.behind_floor(),
        )
        try:
            base = urlsplit(url).path.rstrip("/")
            conn.request(method, base + path, body=body, headers=headers or {})
            response = conn.getresponse()
            data = response.read(self.max_answer_bytes + 1)
            if len(data) > self.max_answer_bytes:
                raise TransportError(f"{url} answered more than {self.max_answer_bytes} bytes")
            return Answer(response.status, {k.lower(): v for k, v in response.getheaders()}, data)
        except (OSError, ssl.SSLError) as e:
            raise TransportError(f"cannot reach {url}: {e}") from e
        finally:
            conn.close()


def _check_peer(home: Home, chain_der: list[bytes], host: str | None) -> None:
    """The agent's rule for a pinned connection, with the policy as it is now."""
    if not chain_der:
        raise ChainError("the server presented no certificate")
    if not host:
        raise ChainError("a pinned connection needs the host name it dials (server_hostname)")
    leaf = load_certificate(chain_der[0], home.limits)
    intermediates = [load_certificate(d, home.limits) for d in chain_der[1:]]
    try:
        verify_pinned_chain(
            leaf,
            intermediates,
            home.policy,
            host,
            home.now(),
            home.limits,
            clock_behind_floor=home.behind_floor(),
        )
    except MetadataError as e:
        raise ChainError(str(e)) from e


def _unverified_chain(sslobj: Any) -> list[bytes]:
    get_chain = getattr(sslobj, "get_unverified_chain", None)
    if get_chain is None:
        return []
    return [c.public_bytes(ssl._ssl.ENCODING_DER) for c in get_chain()]  # type: ignore[attr-defined]


def _refuse(e: ChainError) -> ssl.SSLCertVerificationError:
    """Libraries know a TLS verification failure; homing's reason goes with it."""
    error = ssl.SSLCertVerificationError(f"homing pinned check failed: {e}")
    error.reason = "homing_pin_check"
    return error


def _after_handshake(tls: ssl.SSLSocket | ssl.SSLObject) -> None:
    """homing's check of the peer a handshake just met; refused as a verification error."""
    context = tls.context
    assert isinstance(context, PinnedContext)
    try:
        chain = _unverified_chain(getattr(tls, "_sslobj", None))
        _check_peer(context.home, chain, tls.server_hostname)
    except ChainError as e:
        raise _refuse(e) from e


class _PinnedSocket(ssl.SSLSocket):
    def do_handshake(self, block: bool = False) -> None:
        super().do_handshake(block)
        try:
            _after_handshake(self)
        except ssl.SSLCertVerificationError:
            self.close()
            raise


class _PinnedObject(ssl.SSLObject):
    def do_handshake(self) -> None:
        super().do_handshake()
        _after_handshake(self)


class PinnedContext(ssl.SSLContext):
    """An ``ssl.SSLContext`` whose handshakes succeed only with home (``Home.ssl_context``).

    OpenSSL's own verification is off; after each handshake, before the
    application sends a byte, homing's check runs against the current pin
    policy, and a failure raises ``ssl.SSLCertVerificationError``. Pass the
    host name as ``server_hostname`` (every HTTP library does).
    """

    sslsocket_class = _PinnedSocket
    sslobject_class = _PinnedObject
    home: Home
    _cert_mark: int = -1

    def refresh_certificate(self) -> None:
        """Load the device certificate again if the agent renewed or recovered it."""
        try:
            mark = self.home.state.cert_path.stat().st_mtime_ns
        except FileNotFoundError as e:
            raise ConfigError(
                f"{self.home.state.cert_path}: the device holds no certificate"
            ) from e
        if mark != self._cert_mark:
            load_identity(self, self.home.state.cert_path, self.home.state.key_path)
            self._cert_mark = mark

    def wrap_socket(self, sock: Any, *args: Any, **kwargs: Any) -> ssl.SSLSocket:
        self.refresh_certificate()
        return wrap_or_close(super().wrap_socket, sock, *args, **kwargs)

    def wrap_bio(self, *args: Any, **kwargs: Any) -> ssl.SSLObject:
        self.refresh_certificate()
        return super().wrap_bio(*args, **kwargs)
