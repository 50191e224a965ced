"""The site's egress proxy: reaching home through an HTTP CONNECT tunnel.

Many factories, hospitals and shops let traffic out only through an HTTP
proxy. The agent reads it as other tools do: ``HTTPS_PROXY`` (or
``https_proxy``), with ``NO_PROXY`` naming hosts reached directly, and
credentials in the URL (``http://user:password@proxy:3128``, sent as Basic
proxy authorization). The tunnel carries the agent's own TLS end to end:
pins, the chain's validation and the device certificate are checked with
the home through it, so a proxy that intercepts TLS is refused like any
other man in the middle.
"""

from __future__ import annotations

import base64
import socket
import urllib.request
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from homing.errors import ConfigError, TransportError

__all__ = ["EgressProxy", "egress_for"]

# A proxy's answer to CONNECT is a status line and a few headers: more is not a proxy.
_MAX_ANSWER = 16 * 1024


@dataclass(frozen=True)
class EgressProxy:
    host: str
    port: int
    authorization: str | None = None

    @classmethod
    def parse(cls, url: str) -> EgressProxy:
        parts = urlsplit(url if "://" in url else f"http://{url}")
        if parts.scheme != "http" or not parts.hostname:
            raise ConfigError(
                f"HTTPS_PROXY must be http://[USER:PASSWORD@]HOST:PORT, not {_hidden(url)!r}"
            )
        try:
            port = parts.port or 3128
        except ValueError as e:
            raise ConfigError(f"HTTPS_PROXY {_hidden(url)!r} has no valid port") from e
        authorization = None
        if parts.username is not None:
            pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
            authorization = "Basic " + base64.b64encode(pair.encode()).decode()
        return cls(parts.hostname, port, authorization)

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"

    def tunnel(self, host: str, port: int, timeout: float | None) -> socket.socket:
        """A TCP connection to ``host:port`` through the proxy (CONNECT), ready for TLS."""
        try:
            sock = socket.create_connection((self.host, self.port), timeout)
        except OSError as e:
            raise TransportError(f"cannot reach the egress proxy {self}: {e}") from e
        target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        lines = [f"CONNECT {target} HTTP/1.1", f"Host: {target}"]
        if self.authorization:
            lines.append(f"Proxy-Authorization: {self.authorization}")
        try:
            sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
            answer = b""
            while b"\r\n\r\n" not in answer:
                chunk = sock.recv(1024)
                if not chunk or len(answer) > _MAX_ANSWER:
                    raise TransportError(f"the egress proxy {self} closed the tunnel to {target}")
                answer += chunk
        except OSError as e:
            sock.close()
            raise TransportError(f"the egress proxy {self} failed: {e}") from e
        except TransportError:
            sock.close()
            raise
        status = answer.split(b"\r\n", 1)[0].decode("latin-1")
        fields = status.split(" ", 2)
        if len(fields) < 2 or fields[1] != "200":
            sock.close()
            # 407 is the standard answer; some proxies (tinyproxy) answer 401.
            asks = fields[1:2] in (["407"], ["401"])
            hint = " (set its credentials in HTTPS_PROXY)" if asks else ""
            raise TransportError(
                f"the egress proxy {self} refused a tunnel to {target}: {status}{hint}"
            )
        # Bytes past the answer would be the server's: a proxy does not send them first.
        if not answer.endswith(b"\r\n\r\n"):
            sock.close()
            raise TransportError(f"the egress proxy {self} sent data before the tunnel opened")
        return sock


def egress_for(host: str) -> EgressProxy | None:
    """The proxy to reach ``host`` through, from the environment (read at each connection,
    so a unit's ``Environment=`` takes effect at the next cycle); None: connect directly."""
    proxies = urllib.request.getproxies_environment()
    url = proxies.get("https")
    if not url or urllib.request.proxy_bypass(host):  # NO_PROXY, as other tools read it
        return None
    return EgressProxy.parse(url)


def _hidden(url: str) -> str:
    """The URL without its password, for an error line."""
    parts = urlsplit(url if "://" in url else f"http://{url}")
    if parts.password is None:
        return url
    return url.replace(f":{parts.password}@", ":***@")
