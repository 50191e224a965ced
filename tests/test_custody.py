"""Offline keys never touch the server: moved to media, used from it, refused when back.

Through the installed entry point: a production site is refused by
``homing serve`` while its root CA, targets and firmware keys sit in the
server's store; ``homing keystore move-offline`` takes them to "removable
media" under the holder's own passphrase; a rotation needs the media
mounted; the server then starts, and refuses again if a key comes back.
"""

from __future__ import annotations

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
from tests.harness import HTTPSConnection, assert_one_error, homing_entry_point, run_homing

SERVER = "the server's own passphrase"
HOLDER = "the key holder's passphrase"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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
            conn = HTTPSConnection("127.0.0.1", port, context=context, timeout=2)
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
    assert_one_error(
        refused, "offline keys are in the server's key store: firmware, root-ca, targets"
    )

    media = tmp_path / "usb-stick"
    no_pass = run_homing("keystore", "move-offline", "--data", str(site), "--to", str(media),
                         env=server)  # fmt: skip
    assert_one_error(no_pass, "set HOMING_HOLDER_PASSPHRASE")
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
    assert_one_error(
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
    assert_one_error(
        run_homing(
            "serve", "--data", str(site), "--listen", f"127.0.0.1:{_free_port()}", env=server
        ),
        "offline keys are in the server's key store: targets",
    )


def test_moving_offline_refuses_bad_media_and_passphrases(site: Path, tmp_path: Path) -> None:
    server = {"HOMING_KEY_PASSPHRASE": SERVER}
    assert_one_error(
        run_homing("keystore", "move-offline", "--data", str(site), "--to", str(site / "x"),
                   env={**server, "HOMING_HOLDER_PASSPHRASE": HOLDER}),
        "inside the data directory",
    )  # fmt: skip
    assert_one_error(
        run_homing("keystore", "move-offline", "--data", str(site), "--to", str(tmp_path / "m"),
                   env={**server, "HOMING_HOLDER_PASSPHRASE": SERVER}),
        "must not be the server's",
    )  # fmt: skip
    assert (site / "keys" / "root-ca.key.pem").exists()


def test_a_development_directory_only_warns(tmp_path: Path) -> None:
    data = tmp_path / "dev"
    assert run_homing("init", "--data", str(data)).returncode == 0
    assert _serves(data, {})


def test_two_homes_an_issuing_ca_promoted_without_a_root_key_on_the_server(
    site: Path, tmp_path: Path
) -> None:
    """Request on the server, certificates from the offline site, checked and promoted."""
    from cryptography.hazmat.primitives import serialization

    from homing.pki.authority import make_issuing_ca, make_root_ca
    from homing.pki.keys import generate_tls_key
    from homing.pki.validate import load_certificates_pem

    server = {"HOMING_KEY_PASSPHRASE": SERVER}
    holder = {"HOMING_HOLDER_PASSPHRASE": HOLDER}
    media = tmp_path / "usb-stick"
    moved = run_homing("keystore", "move-offline", "--data", str(site), "--to", str(media),
                       env={**server, **holder})  # fmt: skip
    assert moved.returncode == 0, moved.stderr
    # The pins go to a targets holder, by a root ceremony (the root key is the holder's).
    keygen = run_homing("ceremony", "keygen", "--out", str(tmp_path / "t.pem"),
                        "--public-out", str(tmp_path / "t.pub"), env=holder)  # fmt: skip
    assert keygen.returncode == 0, keygen.stderr
    root_proposal, root_sig = tmp_path / "root.json", tmp_path / "root.sig"
    steps = [
        (["ceremony", "propose-root", "--data", str(site), "--out", str(root_proposal),
          "--targets-key", str(tmp_path / "t.pub")], server),
        (["ceremony", "sign", str(root_proposal), "--key", str(tmp_path / "holder" / "root.pem"),
          "--out", str(root_sig), "--yes"], holder),
        (["ceremony", "publish", "--data", str(site), str(root_proposal), str(root_sig)], server),
    ]  # fmt: skip
    for args, env in steps:
        result = run_homing(*args, env=env)
        assert result.returncode == 0, result.stderr

    # 1. The server asks (no offline media in sight).
    request = tmp_path / "server-ca.request.json"
    asked = run_homing("ceremony", "propose-ca", "--data", str(site), "--kind", "server",
                       "--out", str(request), env=server)  # fmt: skip
    assert asked.returncode == 0, asked.stderr
    assert "certify the server-issuing CA generation 2" in asked.stdout
    # 2. The offline site certifies it with the root CA key from its medium.
    certs = tmp_path / "server-ca.certs.pem"
    root_ca_key = str(media / "root-ca.key.pem")
    signed = run_homing("ceremony", "sign-ca", str(request), "--root-ca-key", root_ca_key,
                        "--out", str(certs), "--yes", env=holder)  # fmt: skip
    assert signed.returncode == 0, signed.stderr
    # The attack: certificates from another root, for the same key, are refused.
    stranger_key = generate_tls_key()
    from datetime import UTC, datetime

    now = datetime.now(UTC)
    stranger = make_root_ca(stranger_key, now, common_name="homing root CA")
    backup = load_certificates_pem(certs.read_bytes())[0].public_key()
    forged = make_issuing_ca("server", backup, stranger, stranger_key, now, hosts=["localhost"])  # type: ignore[arg-type]
    forged_file = tmp_path / "forged.pem"
    forged_file.write_bytes(forged.public_bytes(serialization.Encoding.PEM))
    assert_one_error(
        run_homing("ceremony", "import-ca", "--data", str(site), str(request), str(forged_file),
                   env=server),
        "not signed by a root of this site",
    )  # fmt: skip
    # 3. The server checks and promotes; the pins await the targets holder.
    imported = run_homing("ceremony", "import-ca", "--data", str(site), str(request), str(certs),
                          env=server)  # fmt: skip
    assert imported.returncode == 0, imported.stderr
    assert "server-issuing CA generation 2 is active" in imported.stdout
    assert not (site / "keys" / "root-ca.key.pem").exists()
    # A replayed request is refused: the site awaits the next generation now.
    assert_one_error(
        run_homing("ceremony", "import-ca", "--data", str(site), str(request), str(certs),
                   env=server),
        "now awaits generation 3",
    )  # fmt: skip
    pins, pins_sig = tmp_path / "pins.json", tmp_path / "pins.sig"
    for args, env in (
        (["ceremony", "propose-targets", "--data", str(site), "--out", str(pins)], server),
        (["ceremony", "sign", str(pins), "--key", str(tmp_path / "t.pem"), "--out",
          str(pins_sig), "--yes"], holder),
        (["ceremony", "publish", "--data", str(site), str(pins), str(pins_sig)], server),
    ):  # fmt: skip
        result = run_homing(*args, env=env)
        assert result.returncode == 0, result.stderr
    assert _serves(site, server)
