"""The device key on a PKCS#11 token: enrolled, used for mutual TLS, renewal and recovery.

A SoftHSM2 token stands for the device's secure element; OpenSSL's pkcs11
engine (Debian's libengine-pkcs11-openssl) signs the TLS handshakes with the
key on it and python-pkcs11 the CSRs and key proofs. The agent runs as
installed (``homing`` entry point); the server is the real one on loopback.
Nothing of the private key may appear in the state directory, and the token
must refuse to give it out.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_der_public_key

from homing import ceremonies
from homing.agent.state import DeviceState
from homing.agent.token_key import KEY_LABEL, TokenKeyRef
from homing.store import device_contacts as contacts
from tests.harness import (
    RunningServer,
    assert_one_error,
    run_homing,
    system_tool,
)
from tests.key_stores import cycle, enroll_args, run_once
from tests.softhsm import PIN, Token, make_token

pytestmark = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)

LABEL = "device-se"


@pytest.fixture
def token(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Token:
    return make_token(tmp_path, LABEL, monkeypatch)


def _enroll_args(
    server: RunningServer, factory: tuple[str, str], state_dir: Path, token: Token
) -> list[str]:
    return enroll_args(
        server, factory, state_dir, "pkcs11",
        "--pkcs11-module", str(token.module), "--pkcs11-token", token.label,
    )  # fmt: skip


def _enroll(
    server: RunningServer, factory: tuple[str, str], tmp_path: Path, token: Token
) -> DeviceState:
    state_dir = tmp_path / "device"
    enrolled = run_homing(*_enroll_args(server, factory, state_dir, token), "--id", "se-1")
    assert enrolled.returncode == 0, enrolled.stderr
    return DeviceState(state_dir)


def _run_once(state: DeviceState, *before: str) -> str:
    return run_once(state.root, {}, *before)


# What the token says of the key, read in a process of its own (a PKCS#11 module reads
# its configuration once a process, so reading it here would hold this test's token).
_TOKEN_KEY = """
import json, sys
import pkcs11
from pkcs11 import Attribute, KeyType, ObjectClass
from pkcs11.util.ec import encode_ec_public_key

module, label, pin, name = sys.argv[1:]
with pkcs11.lib(module).get_token(token_label=label).open(user_pin=pin) as session:
    private = session.get_key(ObjectClass.PRIVATE_KEY, KeyType.EC, label=name)
    try:
        private[Attribute.VALUE]
        readable = True
    except pkcs11.exceptions.AttributeSensitive:
        readable = False
    public = session.get_key(ObjectClass.PUBLIC_KEY, KeyType.EC, label=name)
    print(json.dumps({
        "sensitive": private[Attribute.SENSITIVE],
        "extractable": private[Attribute.EXTRACTABLE],
        "readable": readable,
        "public": encode_ec_public_key(public).hex(),
    }))
"""


def _token_public_key(token: Token) -> ec.EllipticCurvePublicKey:
    """The key's public half, as the token gives it, once the token has refused to give
    out the private half."""
    ran = subprocess.run(
        [sys.executable, "-c", _TOKEN_KEY, str(token.module), token.label, PIN, KEY_LABEL],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    facts = json.loads(ran.stdout)
    assert (facts["sensitive"], facts["extractable"], facts["readable"]) == (True, False, False)
    key = load_der_public_key(bytes.fromhex(facts["public"]))
    assert isinstance(key, ec.EllipticCurvePublicKey)
    return key


def _assert_no_private_key_in(directory: Path, token: Token) -> None:
    for path in directory.rglob("*"):
        if not path.is_file():
            continue
        data = path.read_bytes()
        assert b"PRIVATE KEY" not in data, path
        assert PIN.encode() not in data, path
    # Nor a TLS session's resumption secret: with the key on a token none is saved.
    assert not (directory / "tls-sessions.json").exists()
    ref = TokenKeyRef.read(directory / "key.pem")
    assert ref == TokenKeyRef(str(token.module), token.label, KEY_LABEL)


def test_a_token_held_key_enrolls_checks_in_renews_and_recovers(
    token: Token, server: RunningServer, factory: tuple[str, str], tmp_path: Path
) -> None:
    state = _enroll(server, factory, tmp_path, token)
    assert state.config().key_store == "pkcs11"
    public = _token_public_key(token)
    first = state.certificate()
    assert first is not None
    assert first.public_key() == public
    _assert_no_private_key_in(state.root, token)

    # Mutual TLS: the handshake signed on the token, through OpenSSL's pkcs11 engine.
    state.save_config(replace(state.config(), export_dir=str(tmp_path / "exported")))
    _run_once(state)
    with server.state.db.begin() as conn:
        assert contacts.count_checkins(conn, "se-1") == 1
    # Applications are told where the key is: its URI, never its PIN.
    locator = (tmp_path / "exported" / "current" / "key").read_text()
    assert TokenKeyRef.parse(locator, "key") == TokenKeyRef.read(state.key_path)
    assert "pin" not in locator

    # Key-proof recovery: without a certificate, the token signs the proof and the CSR.
    state.cert_path.unlink()
    recovered = _run_once(state)
    assert "certificate recovered by key proof" in recovered
    second = state.certificate()
    assert second is not None
    assert second.serial_number != first.serial_number
    assert second.public_key() == public

    # Renewal over EST with the token's key, 250 days on (two thirds of the lifetime).
    later = datetime.now(UTC) + timedelta(days=250)
    ceremonies.refresh_snapshot(server.state.dd, later)
    ceremonies.rotate_server_cert(server.state.dd, later)
    server.clock.advance(timedelta(days=250))
    server.settle()
    renewed = _run_once(state, system_tool("faketime"), "-f", "+250d")
    assert "certificate renewed (EST simplereenroll)" in renewed
    third = state.certificate()
    assert third is not None
    assert third.serial_number != second.serial_number
    assert third.public_key() == public
    with server.state.db.begin() as conn:
        assert contacts.count_checkins(conn, "se-1") == 3
    _assert_no_private_key_in(state.root, token)


# Run in a process of its own: a PKCS#11 module reads its configuration (the test's
# token directory) once a process, and the test process has met other tokens.
_TWENTY_USES = """
import os, ssl, sys
from pathlib import Path
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from homing.agent.device_key import load_identity
from homing.agent.state import DeviceState
from homing.agent.token_pin import set_pin
from homing.tls import client_context

set_pin(os.environ["HOMING_PKCS11_PIN"])  # as the process's edge does
state = DeviceState(Path(sys.argv[1]))
load_identity(client_context(), state.cert_path, state.key_path)  # the engine logs in first
key = state.device_key()
public = key.public_key()
for n in range(20):
    csr = x509.load_der_x509_csr(key.csr("se-1"))
    assert csr.is_signature_valid and csr.public_key() == public, n
    message = f"proof {n}".encode()
    public.verify(key.sign(message, ec.ECDSA(hashes.SHA256())), message, ec.ECDSA(hashes.SHA256()))
try:
    ssl.create_default_context().load_cert_chain(state.cert_path, state.key_path)
except ssl.SSLError:
    print("key.pem is no key")
print("twenty uses signed")
"""


def test_twenty_csrs_and_proofs_with_the_engine_logged_in(
    token: Token, server: RunningServer, factory: tuple[str, str], tmp_path: Path
) -> None:
    """In one process the TLS engine logs in to the token first (the trust refresh), and
    every later CSR and proof must still sign: a PKCS#11 login belongs to the process."""
    state = _enroll(server, factory, tmp_path, token)
    ran = subprocess.run(
        [sys.executable, "-c", _TWENTY_USES, str(state.root)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.split() == ["key.pem", "is", "no", "key", "twenty", "uses", "signed"]


def test_a_wrong_or_missing_pin_is_one_clear_line(
    token: Token, server: RunningServer, factory: tuple[str, str], tmp_path: Path
) -> None:
    state = _enroll(server, factory, tmp_path, token)
    env = dict(os.environ)
    wrong = cycle(state.root, env | {"HOMING_PKCS11_PIN": "000000"})
    assert_one_error(wrong, "PKCS#11")
    assert "000000" not in wrong.stdout + wrong.stderr  # the PIN is never printed
    del env["HOMING_PKCS11_PIN"]
    assert_one_error(cycle(state.root, env), "HOMING_PKCS11_PIN")
    _run_once(state)  # the right PIN again: nothing was lost


def test_enrolling_onto_a_token_needs_both_its_module_and_label(
    token: Token, server: RunningServer, factory: tuple[str, str], tmp_path: Path
) -> None:
    args = _enroll_args(server, factory, tmp_path / "device", token)
    without_label = args[: args.index("--pkcs11-token")]
    refused = run_homing(*without_label)
    assert_one_error(refused, "--pkcs11-module and --pkcs11-token")
    file_store = [*args[: args.index("--key-store")], "--key-store", "file", *args[-4:]]
    refused = run_homing(*file_store)
    assert_one_error(refused, "--key-store pkcs11")
    wrong_label = [*args[:-1], "no-such-token"]
    refused = run_homing(*wrong_label)
    assert_one_error(refused, "no-such-token")
    assert not (tmp_path / "device").exists()


def test_a_damaged_key_uri_is_one_clear_line(
    token: Token, server: RunningServer, factory: tuple[str, str], tmp_path: Path
) -> None:
    state = _enroll(server, factory, tmp_path, token)
    good = state.key_path.read_text()
    for damaged, words in (
        (good.split("?")[0], "names no module-path"),
        ("pkcs11:token;object=homing-device?module-path=/x.so", "attribute without a value"),
    ):
        state.key_path.write_text(damaged)
        ran = run_homing("agent", "run", "--state", str(state.root), "--once")
        assert_one_error(ran, words)
    state.key_path.write_text(good)
    _run_once(state)
