"""A man in the middle against the agent: refused, and no device data reaches it.

The attacker is a real HTTPS server on loopback that records every request
it receives and serves TUF files from a directory of its choosing.
"""

from __future__ import annotations

import functools
import shutil
import ssl
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from homing import ceremonies
from homing.agent.agent import Agent
from homing.agent.state import DeviceState
from homing.operations.provisioning import provision
from homing.pki import Authority, MemoryLedger, generate_tls_key, make_issuing_ca
from homing.pki.profiles import server_profile
from homing.site import DataDir
from tests.conftest import make_csr
from tests.harness import RunningServer

pytestmark = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


class _Recorder(SimpleHTTPRequestHandler):
    seen: list[tuple[str, str, bytes]]

    def log_message(self, format: str, *args: object) -> None:
        """Keep test output clean: this server logs nothing."""

    def translate_path(self, path: str) -> str:
        # /tuf/metadata/x -> DIR/metadata/x, as the home server lays it out.
        return super().translate_path(path.removeprefix("/tuf"))

    def do_GET(self) -> None:
        self.seen.append(("GET", self.path, b""))
        super().do_GET()

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.seen.append(("POST", self.path, self.rfile.read(length)))
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b'{"server_time": "2026-01-01T00:00:00+00:00"}')


class Attacker:
    def __init__(self, repository: Path, chain_pem: bytes, key_pem: bytes, tmp: Path) -> None:
        self.seen: list[tuple[str, str, bytes]] = []
        (tmp / "mitm").mkdir()
        chain_file, key_file = tmp / "mitm" / "chain.pem", tmp / "mitm" / "key.pem"
        chain_file.write_bytes(chain_pem)
        key_file.write_bytes(key_pem)
        handler = type("Handler", (_Recorder,), {"seen": self.seen})
        self.httpd = ThreadingHTTPServer(
            ("127.0.0.1", 0), functools.partial(handler, directory=str(repository))
        )
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(chain_file, key_file)
        self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"https://127.0.0.1:{self.httpd.server_address[1]}"

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    @property
    def posts(self) -> list[tuple[str, str, bytes]]:
        return [r for r in self.seen if r[0] == "POST"]


def _key_pem(key: object) -> bytes:
    return key.private_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


@pytest.fixture
def device(server: RunningServer, tmp_path: Path) -> DeviceState:
    return provision(server.state.dd, tmp_path / "dev", datetime.now(UTC), device_id="dev-1")


def _run(device: DeviceState, url: str) -> Agent:
    return Agent(device, server=url)


@pytest.fixture
def other_ca_attacker(tmp_path: Path) -> Iterator[Attacker]:
    """A MITM with a valid chain from another organisation's private CA, and its metadata."""
    other = tmp_path / "attacker-data"
    ceremonies.init(other, datetime.now(UTC))
    dd = DataDir(other)
    attacker = Attacker(
        other / "repository",
        (other / "pki" / "server-chain.pem").read_bytes(),
        _key_pem(dd.keystore(dd.settings()).load("server-tls")),
        tmp_path,
    )
    yield attacker
    attacker.stop()


def test_mitm_with_another_ca_is_refused(
    server: RunningServer, device: DeviceState, other_ca_attacker: Attacker
) -> None:
    report = _run(device, other_ca_attacker.url).run_once()
    assert not report.checked_in
    assert other_ca_attacker.posts == []
    # Only metadata was ever requested, and none of it was accepted.
    assert all(path.startswith("/tuf/") for _, path, _ in other_ca_attacker.seen)
    assert report.trust == {}


@pytest.fixture
def unpinned_key_attacker(server: RunningServer, tmp_path: Path) -> Iterator[Attacker]:
    """A MITM whose chain validates to the device's root CA through an unpinned CA key.

    It serves the real, current metadata, so the bootstrap channel gives the
    device good pins; the attack must fail at the pin check.
    """
    dd = server.state.dd
    settings = dd.settings()
    store = dd.keystore(settings)
    root = dd.certificate("root-ca.pem")
    rogue_key = generate_tls_key()
    rogue_ca = make_issuing_ca(
        "server",
        rogue_key.public_key(),
        root,
        store.load("root-ca"),  # type: ignore[arg-type]
        datetime.now(UTC),
        hosts=settings.hosts,
    )
    leaf_key = generate_tls_key()
    leaf = Authority(rogue_ca, rogue_key, MemoryLedger()).issue_csr(
        make_csr(leaf_key, ips=["127.0.0.1"], dns=["localhost"]),
        server_profile(settings.hosts),
        datetime.now(UTC),
    )
    chain = leaf.public_bytes(serialization.Encoding.PEM) + rogue_ca.public_bytes(
        serialization.Encoding.PEM
    )
    attacker = Attacker(server.data / "repository", chain, _key_pem(leaf_key), tmp_path)
    yield attacker
    attacker.stop()


def test_mitm_with_the_right_root_but_an_unpinned_key_is_refused(
    server: RunningServer, device: DeviceState, unpinned_key_attacker: Attacker
) -> None:
    report = _run(device, unpinned_key_attacker.url).run_once()
    assert not report.checked_in
    assert "pinned" in (report.error or "") or "pins" in " ".join(report.steps)
    assert unpinned_key_attacker.posts == []
    # Negative control: the same device checks in with the real server.
    assert _run(device, f"https://127.0.0.1:{server.port}").run_once().checked_in


@pytest.fixture
def replaying_attacker(server: RunningServer, tmp_path: Path) -> Iterator[tuple[Attacker, Path]]:
    """A mirror with the real server's identity that replays the repository of yesterday."""
    old = tmp_path / "old-repository"
    shutil.copytree(server.data / "repository", old)
    dd = server.state.dd
    attacker = Attacker(
        old,
        (server.data / "pki" / "server-chain.pem").read_bytes(),
        _key_pem(dd.keystore(dd.settings()).load("server-tls")),
        tmp_path,
    )
    yield attacker, old
    attacker.stop()


def test_older_metadata_is_refused(
    server: RunningServer, device: DeviceState, replaying_attacker: tuple[Attacker, Path]
) -> None:
    attacker, _ = replaying_attacker
    ceremonies.rotate_root(server.state.dd, datetime.now(UTC))
    assert _run(device, f"https://127.0.0.1:{server.port}").run_once().trust["root"] == 2
    report = _run(device, attacker.url).run_once()
    assert not report.checked_in
    assert "refused" in (report.error or "") or "rollback" in (report.error or "").lower()


def test_tampered_pin_policy_target_is_refused(
    server: RunningServer, device: DeviceState, replaying_attacker: tuple[Attacker, Path]
) -> None:
    attacker, repository = replaying_attacker
    (target,) = (repository / "targets").glob("*.pins.json")
    target.write_bytes(target.read_bytes().replace(b"spki_pins", b"spki_pinz"))
    # The device has never fetched the target, so it must download (and check) it.
    report = _run(device, attacker.url).run_once()
    assert not report.checked_in
    assert attacker.posts == []
