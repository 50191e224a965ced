"""Real `homing serve` processes: several share one database; workers share a port."""

from __future__ import annotations

import base64
import json
import os
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import func, select

from homing import ceremonies
from homing.operations import fleet as operations
from homing.site import DataDir
from homing.store.schema import certificates, checkins, devices
from tests.harness import (
    HTTPSConnection,
    assert_one_error,
    certs_from_pkcs7,
    est_csr,
    homing_entry_point,
    request_on_a_new_connection,
    run_homing,
    save_device,
    wait_until,
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def _serve(
    data: Path, port: int, db_url: str, workers: int = 1, extra: tuple[str, ...] = ()
) -> Iterator[subprocess.Popen[bytes]]:
    env = {k: v for k, v in os.environ.items() if k != "HOMING_KEY_PASSPHRASE"}
    process = subprocess.Popen(
        [
            homing_entry_point(),
            "serve",
            "--data",
            str(data),
            "--listen",
            f"127.0.0.1:{port}",
            "--db",
            db_url,
            "--workers",
            str(workers),
            *extra,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            # A server started with --init makes its data directory (and CA) first.
            ready = (data / "pki" / "root-ca.pem").exists()
            context = _context(data) if ready else ssl.create_default_context()
            conn = HTTPSConnection("127.0.0.1", port, context=context, timeout=2)
            try:
                conn.request("GET", "/healthz")
                if conn.getresponse().status == 200:
                    break
            except OSError:
                pass  # not listening yet: poll again
            finally:
                conn.close()
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(
                    process.stderr.read().decode() if process.stderr else "no output"
                )
            time.sleep(0.2)
        yield process
    finally:
        process.terminate()
        try:
            process.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()
        except ValueError:
            pass  # the test already read the pipes


def _context(data: Path, cert: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(data / "pki" / "root-ca.pem"))
    if cert is not None:
        context.load_cert_chain(cert, key)
    return context


def _post(
    port: int, context: ssl.SSLContext, path: str, body: bytes, headers: dict[str, str]
) -> tuple[int, bytes]:
    conn = HTTPSConnection("127.0.0.1", port, context=context, timeout=30)
    try:
        conn.request("POST", path, body=body, headers=headers)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def test_several_processes_against_one_database_stay_consistent(
    tmp_path: Path, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HOMING_KEY_PASSPHRASE", raising=False)
    data = tmp_path / "data"
    ceremonies.init(data, datetime.now(UTC))
    dd = DataDir(data, db_url)
    db = dd.database()
    name, secret = "line", operations.add_factory(db, "test", datetime.now(UTC), "line")
    auth = "Basic " + base64.b64encode(f"{name}:{secret}".encode()).decode()
    ports = [_free_port() for _ in range(3)]
    devices_count, checkins_each = 45, 5
    with (
        _serve(data, ports[0], db_url),
        _serve(data, ports[1], db_url),
        _serve(data, ports[2], db_url),
    ):

        def enroll_and_check_in(i: int) -> int:
            key = ec.generate_private_key(ec.SECP256R1())
            port = ports[i % 3]
            status, body = _post(
                port,
                _context(data),
                "/.well-known/est/simpleenroll",
                base64.b64encode(est_csr(key, f"dev-{i}")),
                {"Content-Type": "application/pkcs10", "Authorization": auth},
            )
            assert status == 200, body
            creds = save_device(tmp_path, f"dev-{i}", key, certs_from_pkcs7(body)[0])
            context = _context(data, creds.cert_file, creds.key_file)
            ok = 0
            for j in range(checkins_each):
                status, body = _post(
                    ports[(i + j) % 3],
                    context,
                    "/v1/device/checkin",
                    json.dumps({"firmware_version": f"1.{j}"}).encode(),
                    {"Content-Type": "application/json"},
                )
                assert status == 200, body
                ok += 1
            return ok

        with ThreadPoolExecutor(max_workers=12) as pool:
            answered = sum(pool.map(enroll_and_check_in, range(devices_count)))
    with db.engine.connect() as conn:
        serials = (
            conn.execute(select(certificates.c.serial).where(certificates.c.kind == "device"))
            .scalars()
            .all()
        )
        assert len(serials) == len(set(serials)) == devices_count
        assert conn.execute(select(func.count()).select_from(devices)).scalar_one() == devices_count
        assert conn.execute(select(func.count()).select_from(checkins)).scalar_one() == answered
        assert answered == devices_count * checkins_each
        last = conn.execute(select(devices.c.firmware_version)).scalars().all()
        assert set(last) == {f"1.{checkins_each - 1}"}
    dd.close()


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_workers_share_one_port(
    tmp_path: Path, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HOMING_KEY_PASSPHRASE", raising=False)
    data = tmp_path / "data"
    ceremonies.init(data, datetime.now(UTC))
    port = _free_port()
    with _serve(data, port, db_url, workers=2):
        pids: set[int] = set()
        deadline = time.monotonic() + 30
        while len(pids) < 2 and time.monotonic() < deadline:
            conn = HTTPSConnection("127.0.0.1", port, context=_context(data), timeout=5)
            try:
                conn.request("GET", "/healthz")
                response = conn.getresponse()
                assert response.status == 200
                pids.add(json.loads(response.read())["worker"])
            finally:
                conn.close()
    assert len(pids) == 2, pids


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_second_unrelated_server_cannot_take_the_port(
    tmp_path: Path, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two homing servers with different repositories on one port split the fleet: refused."""
    monkeypatch.delenv("HOMING_KEY_PASSPHRASE", raising=False)
    first, second = tmp_path / "first", tmp_path / "second"
    ceremonies.init(first, datetime.now(UTC))
    ceremonies.init(second, datetime.now(UTC))
    port = _free_port()
    with _serve(first, port, db_url, workers=2):
        refused = run_homing(
            "serve", "--data", str(second), "--listen", f"127.0.0.1:{port}", timeout=60
        )
        # The first server still answers, alone.
        conn = HTTPSConnection("127.0.0.1", port, context=_context(first), timeout=5)
        try:
            conn.request("GET", "/healthz")
            assert conn.getresponse().status == 200
        finally:
            conn.close()
    assert refused.returncode == 1
    assert "Traceback" not in refused.stderr
    errors = [line for line in refused.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, refused.stderr
    assert f"127.0.0.1:{port} is already in use by another server" in errors[0]


def test_a_port_held_by_any_other_program_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HOMING_KEY_PASSPHRASE", raising=False)
    data = tmp_path / "data"
    ceremonies.init(data, datetime.now(UTC))
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        refused = run_homing("serve", "--data", str(data), "--listen", f"127.0.0.1:{port}")
        fresh = tmp_path / "fresh"
        refused_init = run_homing(
            "serve", "--data", str(fresh), "--init", "--listen", f"127.0.0.1:{port}"
        )
    assert refused.returncode == 1
    assert "already in use by another server" in refused.stderr
    assert refused.stdout == ""  # the error, and no banner before it
    # With --init on a busy port: refused before a site is made.
    assert_one_error(refused_init, "already in use by another server")
    assert refused_init.stdout == ""
    assert not fresh.exists()


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_serve_init_publishes_the_endpoint_it_listens_on(
    tmp_path: Path, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`make run LISTEN=127.0.0.1:PORT`: the site it makes tells devices to dial that port."""
    from homing.site import DataDir
    from homing.trust.pins import PIN_POLICY_TARGET, PinPolicy

    monkeypatch.delenv("HOMING_KEY_PASSPHRASE", raising=False)
    data, port = tmp_path / "made-by-serve", _free_port()
    with _serve(data, port, db_url, extra=("--init",)):
        conn = HTTPSConnection("127.0.0.1", port, context=_context(data), timeout=5)
        try:
            conn.request("GET", "/healthz")
            assert conn.getresponse().status == 200
        finally:
            conn.close()
    dd = DataDir(data)
    policy = PinPolicy.from_bytes(dd.repository(dd.settings()).target_bytes(PIN_POLICY_TARGET))
    assert policy.primary == f"https://127.0.0.1:{port}"
    assert "127.0.0.1" in policy.hosts


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_serve_takes_its_rate_limits_from_the_command_line(
    tmp_path: Path, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`homing serve --checkin-limit 2/600 --enroll-limit 1/600`: the third check-in
    and the second enrollment are answered 429 with the wait."""
    monkeypatch.delenv("HOMING_KEY_PASSPHRASE", raising=False)
    data = tmp_path / "data"
    ceremonies.init(data, datetime.now(UTC))
    db = DataDir(data, db_url).database()
    secret = operations.add_factory(db, "test", datetime.now(UTC), "line")
    auth = "Basic " + base64.b64encode(f"line:{secret}".encode()).decode()
    port = _free_port()
    limits = (
        "--checkin-limit",
        "2/600",
        "--enroll-limit",
        "1/600",
        "--max-in-flight",
        "64",
        # The operator's decision command: here one that allows every enrollment.
        "--enroll-hook",
        "true",
    )
    with _serve(data, port, db_url, extra=limits):
        enrolled = []
        for n in range(2):
            key = ec.generate_private_key(ec.SECP256R1())
            status, body = _post(
                port,
                _context(data),
                "/.well-known/est/simpleenroll",
                base64.b64encode(est_csr(key, f"dev-{n}")),
                {"Content-Type": "application/pkcs10", "Authorization": auth},
            )
            enrolled.append((status, key, body))
        assert [status for status, _, _ in enrolled] == [200, 429]
        _, key, body = enrolled[0]
        creds = save_device(tmp_path, "dev-0", key, certs_from_pkcs7(body)[0])
        context = _context(data, creds.cert_file, creds.key_file)
        statuses = [
            _post(port, context, "/v1/device/checkin", b"{}", {"Content-Type": "application/json"})
            for _ in range(3)
        ]
        assert [status for status, _ in statuses] == [200, 200, 429]
        assert json.loads(statuses[2][1])["error"] == "too_often"


def _get_healthz(
    port: int, context: ssl.SSLContext, session: ssl.SSLSession | None
) -> tuple[int, bool, ssl.SSLSession | None]:
    """One /healthz on a new connection offering ``session``: (worker, resumed, new session)."""
    head, body, resumed, new_session = request_on_a_new_connection(
        port,
        context,
        session,
        b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    assert head.startswith(b"HTTP/1.1 200"), head
    return int(json.loads(body)["worker"]), resumed, new_session


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_session_resumes_on_either_worker(
    tmp_path: Path, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every worker seals tickets with the site's key of the day, so a device's next
    connection resumes whichever worker it lands on (without it: only on the same one)."""
    monkeypatch.delenv("HOMING_KEY_PASSPHRASE", raising=False)
    data = tmp_path / "data"
    ceremonies.init(data, datetime.now(UTC))
    port = _free_port()
    context = _context(data)
    with _serve(data, port, db_url, workers=2):
        _, _, session = _get_healthz(port, context, None)
        resumed_on: set[int] = set()
        full = 0
        deadline = time.monotonic() + 60
        while len(resumed_on) < 2 and time.monotonic() < deadline:
            worker, resumed, session = _get_healthz(port, context, session)
            if resumed:
                resumed_on.add(worker)
            else:
                full += 1
    assert len(resumed_on) == 2, resumed_on
    assert full == 0
    secret = data / "keys" / "session-tickets.secret"
    assert secret.stat().st_mode & 0o777 == 0o600
    assert len(secret.read_bytes()) == 32


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_session_resumes_on_another_server_with_the_sites_secret_and_chain(
    tmp_path: Path, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two server processes serving one site (its chain, its ticket secret) resume each
    other's sessions; once the secret is replaced (`homing rotate session-tickets`) an
    earlier session resumes on neither, and the new sessions are shared again."""
    monkeypatch.delenv("HOMING_KEY_PASSPHRASE", raising=False)
    data = tmp_path / "data"
    ceremonies.init(data, datetime.now(UTC))
    context = _context(data)
    first, second = _free_port(), _free_port()
    with _serve(data, first, db_url), _serve(data, second, db_url):
        _, resumed, session = _get_healthz(first, context, None)
        assert not resumed
        for _ in range(10):  # back and forth: each resumes what the other sealed
            for port in (second, first):
                _, resumed, session = _get_healthz(port, context, session)
                assert resumed
        done = run_homing("rotate", "session-tickets", "--data", str(data))
        assert done.returncode == 0, done.stderr

        def sealed_anew() -> bool:
            """Whether both servers refuse the old session (each within its reload check)."""
            return not any(_get_healthz(p, context, session)[1] for p in (first, second))

        wait_until("both servers to take up the new secret", sealed_anew)
        _, _, fresh = _get_healthz(first, context, None)
        assert _get_healthz(second, context, fresh)[1]  # and share the new one
