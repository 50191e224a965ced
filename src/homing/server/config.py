"""Settings of one home server deployment."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from homing.errors import ConfigError
from homing.site import DataDir

__all__ = ["ServerConfig", "parse_listen", "parse_rate"]


def parse_listen(value: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[IPv6]:PORT``."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"--listen must be HOST:PORT, not {value!r}")
    return host.strip("[]") or "0.0.0.0", int(port)  # noqa: S104 - an explicit empty host


def parse_rate(value: str, option: str) -> tuple[int, float] | None:
    """``BURST/SECONDS`` (e.g. ``10/60``), or ``off`` for no limit."""
    if value.strip().lower() == "off":
        return None
    burst, sep, every = value.partition("/")
    try:
        limit = (int(burst), float(every))
    except ValueError:
        limit = (0, 0.0)
    if not sep or limit[0] < 1 or not 0 < limit[1] < 1e9:
        raise ConfigError(
            f"{option} must be BURST/SECONDS (e.g. 10/60: ten at once, then one a minute) "
            f"or 'off', not {value!r}"
        )
    return limit


@dataclass(frozen=True)
class ServerConfig:
    data: Path
    host: str = "127.0.0.1"
    port: int = 8443
    db_url: str | None = None
    workers: int = 1
    # Reverse proxies allowed to pass a client certificate in a header; none by default.
    trusted_proxies: tuple[str, ...] = ()
    client_cert_header: str = "X-Client-Cert"
    max_body_bytes: int = 64 * 1024
    # Seconds a client may take to send a whole request body (then 408).
    body_timeout: float = 30.0
    # Seconds for each phase of a connection (homing.server.connections).
    handshake_timeout: float = 10.0
    header_timeout: float = 15.0
    idle_timeout: float = 30.0
    send_timeout: float = 30.0
    # Connections one worker holds at most (None: its descriptor limit less a reserve).
    max_connections: int | None = None
    # TLS handshakes one worker runs at once; a connection past them is reset.
    max_handshakes: int = 64
    # Requests one worker works on at once; past each kind's share of it the
    # server answers 429 (homing.server.admission).
    max_in_flight: int = 512
    # (burst, seconds per request after it): one device's check-ins and one
    # factory station's enrollments, per worker; None: unlimited.
    checkin_limit: tuple[int, float] | None = (10, 60.0)
    enroll_limit: tuple[int, float] | None = (100, 0.5)
    # The operator's allow/deny decision on each enrollment (homing.server.enroll_hook):
    # a command (argv) and/or a webhook URL, each given this many seconds.
    enroll_hook: tuple[str, ...] | None = None
    enroll_webhook: str | None = None
    enroll_hook_timeout: float = 5.0
    # Recovery policy: how long a device may have been silent and still recover.
    max_offline: timedelta | None = None
    nonce_ttl: timedelta = timedelta(minutes=5)
    maintenance_interval: float = 30.0
    reload_interval: float = 2.0
    # How often a replica of a shared site looks for a new publication
    # (timestamp requests also look, so devices never see one go backwards).
    sync_interval: float = 2.0
    checkin_batch_max: int = 512
    executor_threads: int = 8
    # One JSON line per request; off by default, as a fleet checks in often.
    access_log: bool = False
    # The key store's passphrase, read by the CLI at its edge (never from here).
    key_passphrase: bytes | None = field(default=None, repr=False)
    # The PKCS#11 token's user PIN, likewise (HOMING_PKCS11_PIN at the edge).
    pkcs11_pin: str | None = field(default=None, repr=False)
    # Check-in rows older than this are pruned by maintenance (None: kept).
    checkin_retention: timedelta | None = timedelta(days=90)
    # Where several workers share their metrics (set by the runner, not by hand).
    metrics_dir: Path | None = None
    proxy_networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = field(
        default=(), init=False
    )

    def site(self) -> DataDir:
        """The server's data directory, with the database and passphrase it was given."""
        return DataDir(
            self.data, self.db_url, passphrase=self.key_passphrase, pkcs11_pin=self.pkcs11_pin
        )

    def __post_init__(self) -> None:
        if self.max_handshakes < 1:
            raise ConfigError("max handshakes must be at least 1")
        if self.max_connections is not None and self.max_connections < 1:
            raise ConfigError("--max-connections must be at least 1")
        for name in ("handshake_timeout", "header_timeout", "idle_timeout", "send_timeout"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name.replace('_', ' ')} must be more than 0 seconds")
        if self.enroll_webhook is not None and not self.enroll_webhook.startswith(
            ("https://", "http://")
        ):
            raise ConfigError("--enroll-webhook must be an http:// or https:// URL")
        if not self.enroll_hook_timeout > 0:
            raise ConfigError("the enrollment hook's timeout must be more than 0 seconds")
        if self.max_in_flight < 1:
            raise ConfigError("max in flight must be at least 1")
        for name in ("checkin_limit", "enroll_limit"):
            limit = getattr(self, name)
            if limit is not None and not (limit[0] >= 1 and limit[1] > 0):
                raise ConfigError(f"{name.replace('_', ' ')} must be BURST/SECONDS, both above 0")
        if self.workers < 1:
            raise ConfigError("--workers must be at least 1")
        try:
            networks = tuple(ipaddress.ip_network(p, strict=False) for p in self.trusted_proxies)
        except ValueError as e:
            raise ConfigError(f"invalid trusted proxy: {e}") from e
        object.__setattr__(self, "proxy_networks", networks)
