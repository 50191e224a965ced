"""A man in the middle for the tests: TLS with a certificate from a CA no device trusts.

It records whatever a client sends once the handshake is done, so a test can
assert that a device sent nothing. ``greet`` runs on the plain socket first (a
proxy's CONNECT answer, for an intercepting egress proxy).
"""

from __future__ import annotations

import ipaddress
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.harness import free_port

__all__ = ["foreign_certificate", "foreign_tls_server"]


def foreign_certificate(tmp_path: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 from a CA the device has never heard of."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "evil")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "evil.pem", tmp_path / "evil.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


@contextmanager
def foreign_tls_server(
    tmp_path: Path, greet: Callable[[socket.socket], None] | None = None
) -> Iterator[tuple[int, list[bytes]]]:
    """(port, what reached it): a loopback TLS server with another CA's certificate."""
    cert, key = foreign_certificate(tmp_path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    port = free_port()
    listener = socket.create_server(("127.0.0.1", port))
    listener.settimeout(0.5)
    received: list[bytes] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                raw, _ = listener.accept()
            except TimeoutError:
                continue
            try:
                raw.settimeout(5)
                if greet is not None:
                    greet(raw)
                with context.wrap_socket(raw, server_side=True) as tls:
                    data = tls.recv(65536)
                    if data:
                        received.append(data)
            except (ssl.SSLError, OSError):
                continue

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield port, received
    finally:
        stop.set()
        thread.join(10)
        listener.close()
