"""HAProxy terminating the devices' TLS in front of homing: a measured deployment option.

HAProxy (Debian's package) takes the devices' handshakes with the site's
server certificate and the same TLS profile as homing, asks for a client
certificate (``verify optional``, every chain error passed on, as homing's
own TLS layer does: the application validates the chain and answers an
expired or foreign certificate itself) and hands the certificate to homing
in ``X-Client-Cert`` (base64 DER) over TLS connections it keeps and reuses.
homing trusts that header only from HAProxy's source address
(``--trusted-proxy``); everything it checks on a direct connection it checks
here. The shipped configuration is deploy/haproxy/homing-tls.cfg.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from benchmarks._server import free_port, listening_process
from homing.tls import TLS12_CIPHERS

__all__ = ["PROXY_SOURCE", "haproxy_front"]

# The loopback address HAProxy connects to homing from: the only peer homing trusts
# with the header (the load generator connects from 127.0.0.1).
PROXY_SOURCE = "127.0.0.2"
TLS13_SUITES = "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256"


def _config(work: Path, port: int, data: Path, homing_port: int) -> Path:
    pki = data / "pki"
    served = work / "server.pem"  # HAProxy reads the chain and its key from one file
    served.write_bytes(
        (pki / "server-chain.pem").read_bytes()
        + (data / "keys" / "server-tls.key.pem").read_bytes()
    )
    client_cas = work / "client-cas.pem"
    client_cas.write_bytes(
        (pki / "root-ca.pem").read_bytes() + (pki / "device-cas.pem").read_bytes()
    )
    config = work / "haproxy.cfg"
    config.write_text(f"""
global
    nbthread 2
    maxconn 8000
    ssl-default-bind-options ssl-min-ver TLSv1.2
    ssl-default-bind-ciphers {TLS12_CIPHERS}
    ssl-default-bind-ciphersuites {TLS13_SUITES}
    ssl-default-bind-curves X25519:P-256

defaults
    mode http
    timeout connect 5s
    timeout client 30s
    timeout server 30s
    timeout http-request 10s
    option http-keep-alive

frontend devices
    bind 127.0.0.1:{port} ssl crt {served} ca-file {client_cas} verify optional crt-ignore-err all ca-ignore-err all alpn http/1.1
    http-request del-header X-Client-Cert
    http-request set-header X-Client-Cert %[ssl_c_der,base64] if {{ ssl_c_used }}
    default_backend homing

backend homing
    http-reuse always
    server homing 127.0.0.1:{homing_port} source {PROXY_SOURCE} ssl verify required ca-file {pki / "root-ca.pem"} sni str(localhost) verifyhost localhost
""")  # noqa: E501
    return config


@contextmanager
def haproxy_front(work: Path, data: Path, homing_port: int) -> Iterator[tuple[int, int]]:
    """HAProxy on a free loopback port in front of homing at ``homing_port``: (port, pid)."""
    haproxy = shutil.which("haproxy") or "/usr/sbin/haproxy"
    port = free_port()
    (work / "haproxy").mkdir()
    config = _config(work / "haproxy", port, data, homing_port)
    with listening_process([haproxy, "-f", str(config), "-db"], port) as process:
        yield port, process.pid
