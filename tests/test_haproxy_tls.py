"""HAProxy terminating the devices' TLS in front of homing (deploy/haproxy/homing-tls.cfg).

The shipped file, started for real with only its paths and addresses
changed: a device's agent checks in through it with its pins and its
certificate; the certificate reaches homing in the header HAProxy sets,
and nothing else does: a header a client forges is dropped by HAProxy and
ignored by homing from any other peer, and a certificate of another CA is
refused by homing as on a direct connection.
"""

from __future__ import annotations

import json
import re
import socket
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
from cryptography.hazmat.primitives import serialization

from homing.store import device_contacts as contacts
from tests.fleet import check_in, device
from tests.harness import Clock, HTTPSConnection, RunningServer, free_port, system_tool, wait_until
from tests.mitm import foreign_certificate

pytestmark = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)

SHIPPED = Path(__file__).parent.parent / "deploy" / "haproxy" / "homing-tls.cfg"
# HAProxy reaches homing from this loopback address, the only one homing trusts.
PROXY_SOURCE = "127.0.0.2"


def _files(server: RunningServer, where: Path) -> dict[str, Path]:
    """What the operator copies to /etc/haproxy/homing (docs/deployment.md)."""
    pki = server.data / "pki"
    key = server.state.dd.keystore(server.state.dd.settings()).load("server-tls")
    served = where / "server.pem"
    served.write_bytes(
        (pki / "server-chain.pem").read_bytes()
        + key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    served.chmod(0o600)
    cas = where / "client-cas.pem"
    cas.write_bytes((pki / "root-ca.pem").read_bytes() + (pki / "device-cas.pem").read_bytes())
    return {"server.pem": served, "client-cas.pem": cas, "root-ca.pem": pki / "root-ca.pem"}


@pytest.fixture
def front(
    server: RunningServer, db_url: str, clock: Clock, tmp_path: Path
) -> Iterator[tuple[int, RunningServer]]:
    """(HAProxy's port, the homing server behind it)."""
    behind = RunningServer(
        server.data, db_url, clock, trusted_proxies=(f"{PROXY_SOURCE}/32",)
    ).start()
    port = free_port()
    text = SHIPPED.read_text()
    for name, path in _files(server, tmp_path).items():
        text = text.replace(f"/etc/haproxy/homing/{name}", str(path))
    text = text.replace("bind :443", f"bind 127.0.0.1:{port}")
    text = re.sub(
        r"server homing \S+", f"server homing 127.0.0.1:{behind.port} source {PROXY_SOURCE}", text
    )
    text = text.replace("home.example.com", "localhost")
    config = tmp_path / "haproxy.cfg"
    config.write_text(text)
    checked = subprocess.run(
        [system_tool("haproxy"), "-c", "-f", str(config)], capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    process = subprocess.Popen(
        [system_tool("haproxy"), "-db", "-f", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def listening() -> bool:
        assert process.poll() is None, "haproxy exited"
        with socket.socket() as probe:
            return probe.connect_ex(("127.0.0.1", port)) == 0

    try:
        wait_until("haproxy listens", listening)
        yield port, behind
    finally:
        process.terminate()
        process.wait(timeout=30)
        behind.stop()


def _check_in(
    port: int, context: ssl.SSLContext, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, object]]:
    conn = HTTPSConnection("127.0.0.1", port, context=context, timeout=60)
    try:
        conn.request(
            "POST",
            "/v1/device/checkin",
            body=json.dumps({"firmware_version": "1.0.0"}),
            headers={"Content-Type": "application/json", **(headers or {})},
        )
        response = conn.getresponse()
        return response.status, json.loads(response.read() or b"{}")
    finally:
        conn.close()


def test_a_device_checks_in_through_haproxy_with_its_pins_and_certificate(
    server: RunningServer, front: tuple[int, RunningServer], tmp_path: Path
) -> None:
    port, behind = front
    state = device(server, tmp_path, "dev-via-haproxy", "board-a")
    for _ in range(3):
        report = check_in(server, state, via=f"https://127.0.0.1:{port}")
        assert report.checked_in, report
    with behind.state.db.begin() as conn:
        assert contacts.count_checkins(conn, "dev-via-haproxy") == 3


def test_a_forged_certificate_header_reaches_nobody(
    server: RunningServer, front: tuple[int, RunningServer], tmp_path: Path
) -> None:
    port, behind = front
    state = device(server, tmp_path, "dev-forged", "board-a")
    forged = {"X-Client-Cert": quote(state.cert_path.read_text())}
    anonymous = server.client_context()  # no client certificate of its own
    # Through HAProxy: the header is dropped, and without a handshake certificate, 401.
    status, body = _check_in(port, anonymous, forged)
    assert status == 401, body
    # Straight to homing from another address than HAProxy's: the header is ignored.
    status, body = _check_in(behind.port, anonymous, forged)
    assert status == 401, body
    with behind.state.db.begin() as conn:
        assert contacts.count_checkins(conn, "dev-forged") == 0


def test_a_certificate_of_another_ca_is_refused_by_homing_behind_haproxy(
    server: RunningServer, front: tuple[int, RunningServer], tmp_path: Path
) -> None:
    port, _ = front
    cert, key = foreign_certificate(tmp_path)
    context = server.client_context()
    context.load_cert_chain(cert, key)
    status, body = _check_in(port, context)
    assert status == 401, body
    assert body["error"] == "bad_client_certificate"
