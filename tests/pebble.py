"""A real ACME CA on loopback: Debian's pebble, with its challenge test server as its DNS.

Each ``Pebble`` is one CA: pebble makes a fresh root and intermediate every
time it starts, so restarting it is what a public root change looks like.
Devices and homing reach it over real HTTPS (its own certificate, from a
throw-away CA made here) and real HTTP-01 validation on loopback.
"""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from ipaddress import ip_address
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.harness import free_port, system_tool

# pebble starts in well under a second; a loaded machine gets far longer.
START_DEADLINE_S = 60.0
_START_ATTEMPTS = 3


class _PortTaken(Exception):
    """pebble or its challenge server found a picked port taken by someone else."""


def _tls_for_pebble(directory: Path) -> tuple[Path, Path, Path]:
    """A CA and a certificate for pebble's own HTTPS listener on 127.0.0.1."""
    now = datetime.now(UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pebble listener test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    ca_path, cert_path = directory / "ca.pem", directory / "cert.pem"
    key_path = directory / "key.pem"
    ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_path.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return ca_path, cert_path, key_path


@dataclass
class Pebble:
    """pebble and pebble-challtestsrv, started by ``start`` and stopped by ``stop``."""

    workdir: Path
    http_port: int = field(default_factory=free_port)
    port: int = field(default_factory=free_port)
    management_port: int = field(default_factory=free_port)
    dns_port: int = field(default_factory=free_port)
    challtest_management_port: int = field(default_factory=free_port)
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    _started: bool = False

    @property
    def directory(self) -> str:
        return f"https://127.0.0.1:{self.port}/dir"

    @property
    def listener_ca(self) -> Path:
        return self.workdir / "ca.pem"

    def start(self) -> Pebble:
        """Start both; a port taken meanwhile by another program means fresh ports and a retry.

        Ports are picked free, then bound by pebble a moment later: an
        outgoing connection can take one in between. Once a site has been
        configured with these ports (a restart), they are kept.
        """
        for attempt in range(_START_ATTEMPTS):
            try:
                self._launch()
                self._wait_ready()
            except _PortTaken:
                self.stop()
                if attempt == _START_ATTEMPTS - 1:
                    raise
                if not self._started:
                    self.http_port, self.port = free_port(), free_port()
                    self.management_port, self.dns_port = free_port(), free_port()
                    self.challtest_management_port = free_port()
                continue
            except BaseException:
                self.stop()  # no process outlives a failed start
                raise
            self._started = True
            return self
        raise AssertionError("unreachable")

    def _launch(self) -> None:
        pebble = system_tool("pebble")
        challtestsrv = system_tool("pebble-challtestsrv")
        self.workdir.mkdir(parents=True, exist_ok=True)
        _, cert, key = _tls_for_pebble(self.workdir)
        config = self.workdir / "pebble-config.json"
        config.write_text(
            json.dumps(
                {
                    "pebble": {
                        "listenAddress": f"127.0.0.1:{self.port}",
                        "managementListenAddress": f"127.0.0.1:{self.management_port}",
                        "certificate": str(cert),
                        "privateKey": str(key),
                        "httpPort": self.http_port,
                        "tlsPort": free_port(),
                        "ocspResponderURL": "",
                        "externalAccountBindingRequired": False,
                    }
                }
            )
        )
        challtest_args = [
            challtestsrv,
            "-dns01", f"127.0.0.1:{self.dns_port}",
            "-http01", "", "-https01", "", "-tlsalpn01", "",
            "-management", f"127.0.0.1:{self.challtest_management_port}",
            "-defaultIPv4", "127.0.0.1",
        ]  # fmt: skip
        env = {
            **os.environ,
            "PEBBLE_VA_NOSLEEP": "1",
            "PEBBLE_WFE_NONCEREJECT": "0",
            "PEBBLE_AUTHZREUSE": "0",
        }
        pebble_args = [pebble, "-config", str(config), "-dnsserver", f"127.0.0.1:{self.dns_port}"]
        for args, name, environment in (
            (challtest_args, "challtestsrv", None),
            (pebble_args, "pebble", env),
        ):
            # The child keeps its own copy of the log descriptor.
            with (self.workdir / f"{name}.log").open("ab") as log:
                self.processes.append(
                    subprocess.Popen(args, stdout=log, stderr=log, env=environment)
                )

    def _context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.listener_ca))

    def _get(self, url: str) -> bytes:
        with urllib.request.urlopen(url, context=self._context(), timeout=10) as answer:
            return bytes(answer.read())

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_DEADLINE_S
        while True:
            for process in self.processes:
                if process.poll() is not None:
                    logs = "".join(
                        (self.workdir / f"{name}.log").read_text(errors="replace")[-2000:]
                        for name in ("pebble", "challtestsrv")
                    )
                    if "address already in use" in logs:
                        raise _PortTaken(logs)
                    raise AssertionError(f"{process.args[0]} exited: {logs}")
            try:
                self._get(self.directory)
                self._get(f"https://127.0.0.1:{self.management_port}/roots/0")
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)  # polling a process we started for readiness

    def root_pem(self) -> bytes:
        """The root this pebble signs under (new at every start)."""
        return self._get(f"https://127.0.0.1:{self.management_port}/roots/0")

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.terminate()
        for process in self.processes:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)
        self.processes.clear()

    def restart(self) -> None:
        """A public root change: the same CA endpoints under a brand-new root."""
        self.stop()
        self.start()
