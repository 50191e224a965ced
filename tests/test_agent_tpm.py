"""The device key inside a TPM 2.0: enrolled, used for mutual TLS, renewal and recovery.

A software TPM (swtpm) behind the TPM2 resource manager (tpm2-abrmd, on a
private D-Bus), as a device has its TPM behind the kernel's /dev/tpmrm0;
Debian's tpm2-openssl provider makes the key inside it and signs with it.
The agent runs as installed (``homing`` entry point) with the shipped
OpenSSL configuration (deploy/openssl-tpm2.cnf); the server is the real one
on loopback. Nothing of the private key may appear in the state directory.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from homing import ceremonies
from homing.agent.device_key import PROVIDER_ARGS
from homing.agent.state import DeviceState
from homing.store import device_contacts as contacts
from tests.harness import (
    RunningServer,
    assert_one_error,
    free_port,
    run_homing,
    system_tool,
    wait_until,
)
from tests.key_stores import cycle, enroll_args, run_once

pytestmark = [
    pytest.mark.parametrize("db_url", ["sqlite"], indirect=True),
    pytest.mark.xdist_group("tpm"),
]

ROOT = Path(__file__).resolve().parent.parent
OPENSSL_CONF = ROOT / "deploy" / "openssl-tpm2.cnf"


@pytest.fixture(scope="module")
def tpm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A TPM 2.0 behind a resource manager: the environment that reaches it."""
    work = tmp_path_factory.mktemp("tpm")
    (work / "state").mkdir()
    processes: list[subprocess.Popen[bytes]] = []
    try:
        swtpm, port = _start_swtpm(work / "state")
        processes.append(swtpm)
        bus = subprocess.Popen(
            [system_tool("dbus-daemon"), "--session", "--nofork", "--print-address=1"],
            stdout=subprocess.PIPE,
        )
        processes.append(bus)
        assert bus.stdout is not None
        address = bus.stdout.readline().decode().strip()
        bus.stdout.close()
        env = {
            "DBUS_SESSION_BUS_ADDRESS": address,
            "TPM2OPENSSL_TCTI": "tabrmd:bus_type=session",
            "OPENSSL_CONF": str(OPENSSL_CONF),
        }
        processes.append(
            subprocess.Popen(
                [
                    system_tool("tpm2-abrmd"),
                    "--session",
                    "--allow-root",
                    f"--tcti=swtpm:host=127.0.0.1,port={port}",
                ],
                env={**os.environ, **env},
            )
        )

        def answers() -> bool:
            probe = subprocess.run(
                ["openssl", "rand", *PROVIDER_ARGS[:4], "-hex", "8"],
                env={**os.environ, **env},
                capture_output=True,
                check=False,
            )
            return probe.returncode == 0

        wait_until("the TPM answers through its resource manager", answers)
        yield env
    finally:
        for process in reversed(processes):
            process.terminate()
            process.wait(30)


def _start_swtpm(state: Path) -> tuple[subprocess.Popen[bytes], int]:
    """A software TPM listening on a free port and the next (its control channel).

    The next port may be taken between the choice and the bind (by another test's
    connection, or one in TIME_WAIT), and swtpm then exits at once: choose again.
    """
    for _ in range(10):
        port = free_port()
        swtpm = subprocess.Popen(
            [
                system_tool("swtpm"),
                "socket",
                "--tpm2",
                "--tpmstate",
                f"dir={state}",
                "--server",
                f"type=tcp,port={port},bindaddr=127.0.0.1",
                "--ctrl",
                # The swtpm TCTI reaches the control channel on the next port.
                f"type=tcp,port={port + 1},bindaddr=127.0.0.1",
                "--flags",
                "not-need-init,startup-clear",
            ]
        )

        def up_or_gone(swtpm: subprocess.Popen[bytes] = swtpm, port: int = port) -> bool:
            return swtpm.poll() is not None or (_listens(port) and _listens(port + 1))

        wait_until("the TPM listens on both ports or exits", up_or_gone)
        if swtpm.poll() is None:
            return swtpm, port
    raise AssertionError("swtpm exited at start ten times: no free pair of ports")


def _listens(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    except OSError:
        return False
    return True


def _enroll(
    server: RunningServer, factory: tuple[str, str], tmp_path: Path, env: dict[str, str]
) -> DeviceState:
    state_dir = tmp_path / "device"
    enrolled = run_homing(
        *enroll_args(server, factory, state_dir, "tpm2"), "--id", "tpm-1", env=env
    )
    assert enrolled.returncode == 0, enrolled.stderr
    return DeviceState(state_dir)


def _tpm_public_key(state: DeviceState, env: dict[str, str]) -> bytes:
    """The key's public half, as the TPM gives it."""
    done = subprocess.run(
        ["openssl", "pkey", *PROVIDER_ARGS, "-in", str(state.key_path), "-pubout"],
        env={**os.environ, **env},
        capture_output=True,
        check=True,
    )
    return done.stdout


def _public_pem(cert: x509.Certificate) -> bytes:
    return cert.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _assert_no_private_key_in(directory: Path) -> None:
    for path in directory.rglob("*"):
        if not path.is_file():
            continue
        data = path.read_bytes()
        assert b"BEGIN PRIVATE KEY" not in data, path
        assert b"BEGIN EC PRIVATE KEY" not in data, path
        assert b"BEGIN ENCRYPTED PRIVATE KEY" not in data, path
    # Nor a TLS session's resumption secret: with the key in the TPM none is saved.
    assert not (directory / "tls-sessions.json").exists()
    blob = (directory / "key.pem").read_bytes()
    assert blob.startswith(b"-----BEGIN TSS2 PRIVATE KEY-----")
    with pytest.raises(ValueError, match=r"(?i)key|PEM"):
        serialization.load_pem_private_key(blob, None)  # a wrapped blob: no key outside the TPM


def test_a_tpm_held_key_enrolls_checks_in_renews_and_recovers(
    tpm: dict[str, str], server: RunningServer, factory: tuple[str, str], tmp_path: Path
) -> None:
    state = _enroll(server, factory, tmp_path, tpm)
    assert state.config().key_store == "tpm2"
    first = state.certificate()
    assert first is not None
    public = _tpm_public_key(state, tpm)
    assert _public_pem(first) == public
    _assert_no_private_key_in(state.root)

    # Mutual TLS: the handshake signed inside the TPM.
    run_once(state.root, tpm)
    with server.state.db.begin() as conn:
        assert contacts.count_checkins(conn, "tpm-1") == 1

    # Key-proof recovery: without a certificate, the TPM signs the proof and the CSR.
    state.cert_path.unlink()
    recovered = run_once(state.root, tpm)
    assert "certificate recovered by key proof" in recovered
    second = state.certificate()
    assert second is not None
    assert second.serial_number != first.serial_number
    assert _public_pem(second) == public

    # Renewal over EST with the TPM-held key, 250 days on (two thirds of the lifetime).
    later = datetime.now(UTC) + timedelta(days=250)
    ceremonies.refresh_snapshot(server.state.dd, later)
    ceremonies.rotate_server_cert(server.state.dd, later)
    server.clock.advance(timedelta(days=250))
    server.settle()
    renewed = run_once(state.root, tpm, system_tool("faketime"), "-f", "+250d")
    assert "certificate renewed (EST simplereenroll)" in renewed
    third = state.certificate()
    assert third is not None
    assert third.serial_number != second.serial_number
    assert _public_pem(third) == public
    with server.state.db.begin() as conn:
        assert contacts.count_checkins(conn, "tpm-1") == 3
    _assert_no_private_key_in(state.root)


def test_twenty_csrs_and_proofs_leave_the_tpm_as_able_as_before(
    tpm: dict[str, str],
    server: RunningServer,
    factory: tuple[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A device renews and recovers for years: every use of the key must leave no object
    behind in the TPM (a TPM holds a handful), so the twentieth works as the first."""
    state = _enroll(server, factory, tmp_path, tpm)
    for name, value in tpm.items():
        monkeypatch.setenv(name, value)
    key = state.device_key()
    public = key.public_key()
    for n in range(20):
        csr = x509.load_der_x509_csr(key.csr("tpm-1"))
        assert csr.is_signature_valid
        assert csr.public_key() == public
        message = f"proof {n}".encode()
        public.verify(
            key.sign(message, ec.ECDSA(hashes.SHA256())), message, ec.ECDSA(hashes.SHA256())
        )
    run_once(state.root, tpm)  # and the TLS stack still signs with it


def test_without_the_providers_configuration_the_agent_says_what_is_missing(
    tpm: dict[str, str], server: RunningServer, factory: tuple[str, str], tmp_path: Path
) -> None:
    state = _enroll(server, factory, tmp_path, tpm)
    without = {k: v for k, v in tpm.items() if k != "OPENSSL_CONF"}
    env = {k: v for k, v in os.environ.items() if k != "OPENSSL_CONF"} | without
    ran = cycle(state.root, env)
    assert_one_error(ran, "held by the TPM")
    assert "OPENSSL_CONF" in ran.stderr


def test_a_key_store_that_does_not_exist_is_refused(
    server: RunningServer, factory: tuple[str, str], tmp_path: Path
) -> None:
    refused = run_homing(*enroll_args(server, factory, tmp_path / "device", "smartcard"))
    assert refused.returncode == 2
    assert "smartcard" in refused.stderr
    assert not (tmp_path / "device").exists()
    assert shutil.which("openssl")
