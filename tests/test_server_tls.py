"""The server's TLS profile, checked from outside with the openssl client.

Each refusal has a negative control that succeeds on the same server, so a
test cannot pass because the server is simply down.
"""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.harness import RunningServer

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl CLI missing")


def _handshake(server: RunningServer, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            "openssl",
            "s_client",
            "-connect",
            f"127.0.0.1:{server.port}",
            "-servername",
            "localhost",
            "-CAfile",
            str(server.data / "pki" / "root-ca.pem"),
            "-verify_return_error",
            *args,
        ],
        input="",
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def _ok(result: subprocess.CompletedProcess[str]) -> bool:
    return result.returncode == 0 and "Verify return code: 0 (ok)" in result.stdout


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_protocol_versions(server: RunningServer) -> None:
    assert _ok(_handshake(server, "-tls1_3"))
    assert _ok(_handshake(server, "-tls1_2"))
    assert not _ok(_handshake(server, "-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0"))


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_only_aead_forward_secret_suites_in_tls12(server: RunningServer) -> None:
    for cipher in (
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
    ):
        assert _ok(_handshake(server, "-tls1_2", "-cipher", cipher)), cipher
    for cipher in ("ECDHE-ECDSA-AES128-SHA256", "ECDHE-ECDSA-AES256-SHA", "AES128-GCM-SHA256"):
        assert not _ok(_handshake(server, "-tls1_2", "-cipher", cipher)), cipher


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_only_x25519_and_p256_groups(server: RunningServer) -> None:
    assert _ok(_handshake(server, "-groups", "X25519"))
    assert _ok(_handshake(server, "-groups", "P-256"))
    assert not _ok(_handshake(server, "-groups", "P-384"))
    assert not _ok(_handshake(server, "-tls1_2", "-groups", "P-521"))
