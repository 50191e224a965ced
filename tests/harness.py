"""A real home server on loopback for tests: real TLS, real database, a movable clock."""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import socket
import ssl
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import uvloop
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from homing.server.app import build_app
from homing.server.config import ServerConfig
from homing.server.connections import CONNECTIONS, GuardedSite
from homing.server.state import ServerState
from homing.tls import wrap_or_close

PG_ADMIN_URL = os.environ.get(
    "HOMING_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)


def postgres_required() -> bool:
    return os.environ.get("HOMING_TEST_POSTGRES") == "1"


@contextmanager
def postgres_database() -> Iterator[str]:
    """A fresh PostgreSQL database for one test, dropped afterwards."""
    import psycopg

    name = f"homing_t_{uuid.uuid4().hex[:12]}"
    try:
        admin = psycopg.connect(
            PG_ADMIN_URL.replace("postgresql://", "postgresql://", 1),
            autocommit=True,
            connect_timeout=5,
        )
    except psycopg.OperationalError as e:
        if postgres_required():
            raise AssertionError(
                f"HOMING_TEST_POSTGRES=1 but PostgreSQL is unreachable: {e}"
            ) from e
        pytest.skip(f"PostgreSQL not reachable (set HOMING_TEST_POSTGRES=1 to require it): {e}")
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
        finally:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,)
            )
            admin.execute(f'DROP DATABASE IF EXISTS "{name}"')


class HTTPSConnection(http.client.HTTPSConnection):
    """http.client's HTTPS connection, its TLS wrap through ``homing.tls.wrap_or_close``.

    A test that reaches a server while it is killed or restarting can meet a
    reset between connect and handshake; Python's own wrap then leaves the
    descriptor for the garbage collector, whose ResourceWarning fails whichever
    test happens to be running.
    """

    def __init__(
        self, host: str, port: int, *, context: ssl.SSLContext, timeout: float = 30.0
    ) -> None:
        super().__init__(host, port, context=context, timeout=timeout)
        self._tls = context

    def connect(self) -> None:
        http.client.HTTPConnection.connect(self)
        self.sock = wrap_or_close(self._tls.wrap_socket, self.sock, server_hostname=self.host)


@dataclass
class Clock:
    """The server's notion of now; tests move it instead of sleeping."""

    offset: timedelta = field(default_factory=timedelta)

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.offset

    def advance(self, delta: timedelta) -> None:
        self.offset += delta


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class DeviceCredentials:
    device_id: str
    key: ec.EllipticCurvePrivateKey
    cert_pem: bytes
    key_file: Path
    cert_file: Path

    @property
    def certificate(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.cert_pem)


class RunningServer:
    def __init__(
        self,
        data: Path,
        db_url: str,
        clock: Clock,
        *,
        listen: tuple[str, ...] = ("127.0.0.1",),
        port: int = 0,
        **config: Any,
    ) -> None:
        """``listen``: loopback addresses it answers on, all on one ``port`` (0: any free)."""
        self.data = data
        self.clock = clock
        self.listen = listen
        self.wanted_port = port
        # No per-device or per-station rate unless a test sets one: tests check
        # in and enroll far faster than a fleet (test_admission tests the limits).
        settings: dict[str, Any] = {
            "reload_interval": 0.05,
            "checkin_limit": None,
            "enroll_limit": None,
            **config,
        }
        self.config = ServerConfig(data=data, port=0, db_url=db_url, **settings)
        self.state = ServerState(self.config, clock=clock)
        # The loop the server runs on in production (homing.server.runner).
        self._loop = uvloop.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.port = 0

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._start())
        self._ready.set()
        self._loop.run_forever()

    async def _start(self) -> None:
        self.app = build_app(self.state)
        self.runner = web.AppRunner(
            self.app, access_log=None, keepalive_timeout=self.app[CONNECTIONS].limits.http_keepalive
        )
        await self.runner.setup()
        guard = self.app[CONNECTIONS]
        site = GuardedSite(
            self.runner,
            guard,
            host=self.listen[0],
            port=self.wanted_port,
            ssl_context=self.state.ssl_context,
        )
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        for address in self.listen[1:]:
            await GuardedSite(
                self.runner, guard, host=address, port=self.port, ssl_context=self.state.ssl_context
            ).start()

    def start(self) -> RunningServer:
        self._thread.start()
        assert self._ready.wait(60), "the test server did not start"
        return self

    def settle(self) -> None:
        """Make the server take up what the test changed (files, rollouts) now, on its loop.

        The server's own watch does the same within its reload interval; tests
        call this instead of sleeping, so they hold on a busy machine.
        """

        async def take_up() -> None:
            self.state.forget_rollouts()
            self.state.reload_if_changed()

        asyncio.run_coroutine_threadsafe(take_up(), self._loop).result(60)

    def __enter__(self) -> RunningServer:
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def stop(self) -> None:
        async def shut_down() -> None:
            await self.runner.cleanup()
            # Handlers of connections the test left open end here, not at exit.
            left = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in left:
                task.cancel()
            await asyncio.gather(*left, return_exceptions=True)

        fut = asyncio.run_coroutine_threadsafe(shut_down(), self._loop)
        fut.result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()
        self.state.close()

    # -- clients ------------------------------------------------------------

    def client_context(self, device: DeviceCredentials | None = None) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.data / "pki" / "root-ca.pem"))
        if device is not None:
            context.load_cert_chain(device.cert_file, device.key_file)
        return context

    def request(
        self,
        method: str,
        path: str,
        body: bytes | dict[str, Any] | None = None,
        *,
        headers: dict[str, str] | None = None,
        device: DeviceCredentials | None = None,
        context: ssl.SSLContext | None = None,
    ) -> Response:
        headers = dict(headers or {})
        if isinstance(body, dict):
            body = json.dumps(body).encode()
            headers.setdefault("Content-Type", "application/json")
        conn = HTTPSConnection(
            "127.0.0.1", self.port, context=context or self.client_context(device), timeout=10
        )
        try:
            conn.request(method, path, body=body, headers=headers)
            raw = conn.getresponse()
            return Response(raw.status, {k.lower(): v for k, v in raw.getheaders()}, raw.read())
        finally:
            conn.close()

    def metric(self, sample: str, missing: float | None = None) -> float:
        """One sample of the server's /metrics: ``name`` or ``name{labels}`` as printed.

        ``missing``: the value when the sample is not there yet (a labelled counter
        appears at its first increment); without it, a missing sample fails the test.
        """
        for line in self.request("GET", "/metrics").body.decode().splitlines():
            if line.startswith(sample + " "):
                return float(line.split()[-1])
        if missing is None:
            raise AssertionError(f"{sample} is not in /metrics")
        return missing

    def log_in(self, token: str) -> str:
        """A fleet-view session for an operator token: the ``name=value`` cookie."""
        login = self.request(
            "POST",
            "/ui/login",
            f"token={token}".encode(),
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        assert login.status == 303, login.body
        return login.headers["set-cookie"].split(";")[0]

    def enroll(
        self,
        device_id: str,
        factory: tuple[str, str],
        tmp: Path,
        key: ec.EllipticCurvePrivateKey | None = None,
    ) -> DeviceCredentials:
        import base64

        key = key or ec.generate_private_key(ec.SECP256R1())
        csr = est_csr(key, device_id)
        token = base64.b64encode(f"{factory[0]}:{factory[1]}".encode()).decode()
        response = self.request(
            "POST",
            "/.well-known/est/simpleenroll",
            base64.b64encode(csr),
            headers={"Content-Type": "application/pkcs10", "Authorization": f"Basic {token}"},
        )
        assert response.status == 200, response.body
        cert = certs_from_pkcs7(response.body)[0]
        return save_device(tmp, device_id, key, cert)


def recover_with_key(
    server: RunningServer, device_id: str, key: ec.EllipticCurvePrivateKey
) -> tuple[int, dict[str, Any]]:
    """Key-proof recovery as a device (or a thief) holding ``key`` would attempt it."""
    import base64

    from homing.pki.proof import sign_recovery_proof

    challenge = server.request("POST", "/v1/recover/challenge", {"device_id": device_id})
    if challenge.status != 200:
        return challenge.status, challenge.json()
    nonce = challenge.json()["nonce"]
    csr = est_csr(key, device_id)
    response = server.request(
        "POST",
        "/v1/recover",
        {
            "device_id": device_id,
            "nonce": nonce,
            "csr": base64.b64encode(csr).decode(),
            "signature": base64.b64encode(sign_recovery_proof(key, nonce, csr)).decode(),
        },
    )
    return response.status, response.json()


def est_csr(key: ec.EllipticCurvePrivateKey, device_id: str) -> bytes:
    return (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(f"urn:homing:device:{device_id}")]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
        .public_bytes(serialization.Encoding.DER)
    )


def certs_from_pkcs7(body: bytes) -> list[x509.Certificate]:
    import base64

    from cryptography.hazmat.primitives.serialization import pkcs7

    return pkcs7.load_der_pkcs7_certificates(base64.b64decode(body))


def request_on_a_new_connection(
    port: int, context: ssl.SSLContext, session: ssl.SSLSession | None, request: bytes
) -> tuple[bytes, bytes, bool, ssl.SSLSession | None]:
    """One raw HTTP/1.1 request (``Connection: close``) on a new TLS connection to loopback
    offering ``session``: (head, body, whether it resumed, the session to offer next)."""
    with (
        socket.create_connection(("127.0.0.1", port), timeout=30) as raw,
        context.wrap_socket(raw, server_hostname="localhost", session=session) as tls,
    ):
        tls.sendall(request)
        answer = b""
        while chunk := tls.recv(65536):
            answer += chunk
        head, _, body = answer.partition(b"\r\n\r\n")
        return head, body, bool(tls.session_reused), tls.session


def save_device(
    tmp: Path, device_id: str, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate
) -> DeviceCredentials:
    directory = tmp / f"device-{device_id}-{uuid.uuid4().hex[:6]}"
    directory.mkdir(parents=True)
    key_file = directory / "key.pem"
    cert_file = directory / "cert.pem"
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    cert_file.write_bytes(cert_pem)
    return DeviceCredentials(device_id, key, cert_pem, key_file, cert_file)


def homing_entry_point() -> str:
    """The installed ``homing`` console script, as an operator runs it."""
    script = Path(sys.executable).with_name("homing")
    assert script.exists(), f"the homing entry point is not installed next to {sys.executable}"
    return str(script)


def run_homing(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """The installed CLI in a subprocess, without the caller's key passphrase unless given."""
    full_env = {k: v for k, v in os.environ.items() if k != "HOMING_KEY_PASSPHRASE"}
    full_env.update(env or {})
    return subprocess.run(
        [homing_entry_point(), *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=timeout,
        check=False,
    )


def system_tool(name: str) -> str:
    """The path of a Debian tool a test drives (chromium, promtool, pebble, softhsm2-util, ...).

    ``make test`` installs them (scripts/install-system-tools.sh) and stops
    when it cannot, so a missing tool fails the test that needs it: it never skips.
    """
    import shutil

    path = shutil.which(name)
    if path is None:
        raise AssertionError(f"{name} is not installed: run scripts/install-system-tools.sh")
    return path


def assert_one_error(result: subprocess.CompletedProcess[str], words: str) -> None:
    """A refusal as the CLI must give it: non-zero, one ``error:`` line saying ``words``."""
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr + result.stdout
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    assert words in errors[0], errors[0]


def free_port(*hosts: str) -> int:
    """A TCP port free on every one of ``hosts`` (loopback addresses) at once."""
    import socket

    hosts = hosts or ("127.0.0.1",)
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind((hosts[0], 0))
            port = int(probe.getsockname()[1])
        try:
            for host in hosts[1:]:
                with socket.socket() as other:
                    other.bind((host, port))
        except OSError:
            continue
        return port
    raise AssertionError(f"no port free on all of {hosts}")


def wait_until(what: str, condition: Callable[[], bool], timeout: float = 120.0) -> float:
    """Poll ``condition`` until it holds; returns the seconds it took.

    The timeout is a bound for a busy machine, never what a test measures.
    """
    import time

    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)
    return time.monotonic() - start


@contextmanager
def raw_tls(server: RunningServer, timeout: float = 120.0) -> Iterator[ssl.SSLSocket]:
    """A TLS connection to ``server`` to write raw HTTP on (slow, partial or odd requests)."""
    import socket

    context = server.client_context()
    with (
        socket.create_connection(("127.0.0.1", server.port)) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        tls.settimeout(timeout)
        yield tls
