"""Offline keys never touch the server: moved to media, used from it, refused when back.

Through the installed entry point: a production site is refused by
``homing serve`` while its root CA, targets and firmware keys sit in the
server's store; ``homing keystore move-offline`` takes them to "removable
media" under the holder's own passphrase; a rotation needs the media
mounted; the server then starts, and refuses again if a key comes back.
"""

from __future__ import annotations

import http.client
import os
import shutil
import socket
import ssl
import subprocess
import time
from pathlib import Path

import pytest

from homing.errors import KeyStoreError
from homing.pki.keystore import FileKeyStore
from tests.harness import homing_entry_point, run_homing

SERVER = "the server's own passphrase"
HOLDER = "the key holder's passphrase"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _one_error(result: subprocess.CompletedProcess[str], words: str) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    assert words in errors[0], errors[0]


def _serves(data: Path, env: dict[str, str]) -> bool:
    """Start `homing serve`; True once /healthz answers (then stop it), False if it exits."""
    port = _free_port()
    full = {**{k: v for k, v in os.environ.items() if not k.startswith("HOMING_")}, **env}
    process = subprocess.Popen(
        [homing_entry_point(), "serve", "--data", str(data), "--listen", f"127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=full,
    )
    context = ssl.create_default_context(cafile=str(data / "pki" / "root-ca.pem"))
    deadline = time.monotonic() + 60
    try:
        while process.poll() is None and time.monotonic() < deadline:
            conn = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=2)
            try:
                conn.request("GET", "/healthz")
                if conn.getresponse().status == 200:
                    return True
            except OSError:
                pass  # not listening yet
            finally:
                conn.close()
            time.sleep(0.2)  # polling a process we started for readiness
        return False
    finally:
        process.terminate()
        try:
            process.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()


@pytest.fixture
def site(tmp_path: Path) -> Path:
    data = tmp_path / "site"
    env = {"HOMING_KEY_PASSPHRASE": SERVER, "HOMING_HOLDER_PASSPHRASE_1": HOLDER}
    made = run_homing(
        "init", "--data", str(data), "--ceremony",
        "--root-key", str(tmp_path / "holder" / "root.pem"), env=env,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    return data


def test_offline_keys_leave_the_server_and_serve_refuses_them(site: Path, tmp_path: Path) -> None:
    server = {"HOMING_KEY_PASSPHRASE": SERVER}
    refused = run_homing(
        "serve", "--data", str(site), "--listen", f"127.0.0.1:{_free_port()}", env=server
    )
    _one_error(refused, "offline keys are in the server's key store: firmware, root-ca, targets")

    media = tmp_path / "usb-stick"
    no_pass = run_homing("keystore", "move-offline", "--data", str(site), "--to", str(media),
                         env=server)  # fmt: skip
    _one_error(no_pass, "set HOMING_HOLDER_PASSPHRASE")
    moved = run_homing(
        "keystore", "move-offline", "--data", str(site), "--to", str(media),
        env={**server, "HOMING_HOLDER_PASSPHRASE": HOLDER},
    )  # fmt: skip
    assert moved.returncode == 0, moved.stderr
    assert "moved firmware, root-ca, targets" in moved.stdout
    keys = site / "keys"
    assert not {"root-ca.key.pem", "targets.key.pem", "firmware.key.pem"} & {
        p.name for p in keys.iterdir()
    }
    # On the media, under the holder's passphrase, not the server's.
    with pytest.raises(KeyStoreError, match="wrong passphrase"):
        FileKeyStore(media, SERVER.encode()).load("root-ca")
    FileKeyStore(media, HOLDER.encode()).load("root-ca")

    # A ceremony that needs them refuses without the media, and works with it.
    _one_error(
        run_homing("rotate", "server-ca", "--data", str(site), env=server),
        "is kept offline: mount its media and set HOMING_OFFLINE_KEYS",
    )
    mounted = {**server, "HOMING_OFFLINE_KEYS": str(media), "HOMING_HOLDER_PASSPHRASE": HOLDER}
    rotated = run_homing("rotate", "server-ca", "--data", str(site), env=mounted)
    assert rotated.returncode == 0, rotated.stderr
    assert not (keys / "root-ca.key.pem").exists()

    # The server now starts, and keeps its online work: it re-signs its timestamp.
    assert _serves(site, server)
    # A key copied back by mistake: refused again, by name.
    shutil.copy(media / "targets.key.pem", keys / "targets.key.pem")
    _one_error(
        run_homing(
            "serve", "--data", str(site), "--listen", f"127.0.0.1:{_free_port()}", env=server
        ),
        "offline keys are in the server's key store: targets",
    )


def test_moving_offline_refuses_bad_media_and_passphrases(site: Path, tmp_path: Path) -> None:
    server = {"HOMING_KEY_PASSPHRASE": SERVER}
    _one_error(
        run_homing("keystore", "move-offline", "--data", str(site), "--to", str(site / "x"),
                   env={**server, "HOMING_HOLDER_PASSPHRASE": HOLDER}),
        "inside the data directory",
    )  # fmt: skip
    _one_error(
        run_homing("keystore", "move-offline", "--data", str(site), "--to", str(tmp_path / "m"),
                   env={**server, "HOMING_HOLDER_PASSPHRASE": SERVER}),
        "must not be the server's",
    )  # fmt: skip
    assert (site / "keys" / "root-ca.key.pem").exists()


def test_a_development_directory_only_warns(tmp_path: Path) -> None:
    data = tmp_path / "dev"
    assert run_homing("init", "--data", str(data)).returncode == 0
    assert _serves(data, {})
