"""A public-CA server certificate over ACME, against Debian's pebble on loopback.

Issue, serve, renew, key change, a public root change slept through, a fleet
that migrates with devices of both kinds, and a man in the middle holding a
perfectly valid certificate from the same public CA for another key.
"""

from __future__ import annotations

import http.server
import logging
import ssl
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from homing import ceremonies
from homing.agent.agent import Agent
from homing.agent.decide import TrustChannel
from homing.agent.state import DeviceState
from homing.agent.transport import open_connection
from homing.ceremonies import acme
from homing.errors import CeremonyError, PinError
from homing.pki.acme_order import AcmeAccount, order_certificate
from homing.pki.keys import generate_tls_key, spki_pin
from homing.store import devices as device_store
from homing.trust.pins import PinPolicy
from tests.fleet import check_in, device, url
from tests.harness import Clock, RunningServer, run_homing
from tests.pebble import Pebble

sqlite_only = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)

IDENTIFIER = "127.0.0.1"


@pytest.fixture
def pebble(tmp_path: Path) -> Iterator[Pebble]:
    ca = Pebble(tmp_path / "pebble").start()
    try:
        yield ca
    finally:
        ca.stop()


def _setup(server: RunningServer, pebble: Pebble, roots: bytes | None = None) -> None:
    acme.acme_setup(
        server.state.dd,
        server.clock(),
        directory=pebble.directory,
        public_roots_pem=roots or pebble.root_pem(),
        identifiers=(IDENTIFIER,),
        directory_ca=pebble.listener_ca,
        http_host="127.0.0.1",
        http_port=pebble.http_port,
    )


def _issue(server: RunningServer, *, rotate_key: bool = False) -> object:
    leaf = acme.acme_issue(server.state.dd, server.clock(), rotate_key=rotate_key)
    server.settle()
    return leaf


def _held(state: DeviceState) -> PinPolicy:
    return PinPolicy.from_bytes((state.root / "pins.json").read_bytes())


def _row(server: RunningServer, device_id: str) -> device_store.DeviceRow:
    with server.state.db.engine.connect() as conn:
        row = device_store.device(conn, device_id)
    assert row is not None
    return row


def _served_leaf(server: RunningServer) -> bytes:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    import socket

    with (
        socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw,
        context.wrap_socket(raw) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return der


def _cycle(server: RunningServer, state: DeviceState) -> TrustChannel | None:
    """One agent cycle that must check in; the channel its trust came over."""
    agent = Agent(state, server=url(server), firmware_version="1.0.0")
    report = agent.run_once()
    assert report.checked_in, report
    return report.trust_channel


@sqlite_only
def test_issue_serve_renew_and_key_change_without_a_device_cut_off(
    server: RunningServer, pebble: Pebble, tmp_path: Path
) -> None:
    from cryptography import x509

    before = device(server, tmp_path, "dev-before", "board-a")
    check_in(server, before)  # holds the private-only pin policy
    _setup(server, pebble)
    assert _cycle(server, before) is TrustChannel.PINNED  # takes the mixed policy
    held = _held(before)
    assert len(held.root_cas) == 2
    assert len(held.spki_pins) == 4

    leaf = _issue(server)
    assert isinstance(leaf, x509.Certificate)
    served = x509.load_der_x509_certificate(_served_leaf(server))
    assert served == leaf
    assert served.issuer != server.state.dd.certificate("server-ca.pem").subject
    dd = server.state.dd
    settings = dd.settings()
    active = acme.AcmeSettings.of(settings)
    active_pin = spki_pin(dd.keystore(settings).load(active.key_name()).public_key())
    # The device that enrolled under the private CA comes home pinned, by key.
    assert _cycle(server, before) is TrustChannel.PINNED
    assert _row(server, "dev-before").pins_matched == (active_pin,)
    # A device made after the switch too (mixed fleet).
    after = device(server, tmp_path, "dev-after", "board-a")
    _cycle(server, after)

    # Renewal: same key, same pins, no new trust metadata for anyone.
    targets = dd.repository(dd.settings()).targets().signed.version
    renewed = _issue(server)
    assert isinstance(renewed, x509.Certificate)
    assert renewed.serial_number != leaf.serial_number
    assert renewed.public_key() == leaf.public_key()
    assert dd.repository(dd.settings()).targets().signed.version == targets
    assert _cycle(server, before) is TrustChannel.PINNED

    # Key change: the backup every device already pins is promoted.
    backup_pin = _held(before).spki_pins[3]
    rotated = _issue(server, rotate_key=True)
    assert isinstance(rotated, x509.Certificate)
    assert spki_pin(rotated.public_key()) == backup_pin
    # Still holding the pins from before the change:
    assert _cycle(server, after) is TrustChannel.PINNED
    assert _row(server, "dev-after").pins_matched == (backup_pin,)

    # Public only: the private CA leaves the policy; devices still come home.
    acme.set_tls_mode(dd, server.clock(), "public")
    server.settle()
    _cycle(server, before)
    assert [c.subject for c in _held(before).root_cas] == [
        c.subject for c in dd.certificates("public-roots.pem")
    ]


@sqlite_only
def test_a_device_sleeping_through_a_public_root_change_comes_home(
    server: RunningServer, pebble: Pebble, tmp_path: Path
) -> None:
    sleeper = device(server, tmp_path, "dev-sleeper", "board-a")
    _setup(server, pebble)
    _issue(server)
    check_in(server, sleeper)
    old_root = pebble.root_pem()
    pebble.restart()  # the public CA moves to a brand-new root
    new_root = pebble.root_pem()
    assert new_root != old_root
    dd = server.state.dd
    # Serving a chain to a root devices do not accept yet is refused.
    with pytest.raises(CeremonyError, match="devices would refuse this chain"):
        acme.acme_issue(dd, server.clock())
    # Dropping the served chain's root is refused too.
    with pytest.raises(CeremonyError, match="devices would refuse this chain"):
        acme.set_public_roots(dd, server.clock(), new_root)
    acme.set_public_roots(dd, server.clock(), old_root + new_root)
    _issue(server)
    acme.set_public_roots(dd, server.clock(), new_root)
    acme.set_tls_mode(dd, server.clock(), "public")
    server.settle()
    # The sleeper holds only the old root: its pinned channel fails, it walks
    # the metadata over the bootstrap channel and comes home.
    assert len(_held(sleeper).root_cas) == 2
    assert _cycle(server, sleeper) is TrustChannel.BOOTSTRAP
    assert [c.subject for c in _held(sleeper).root_cas] == [
        c.subject for c in dd.certificates("public-roots.pem")
    ]


class _Recorder(http.server.BaseHTTPRequestHandler):
    seen: list[tuple[str, str]]

    def _answer(self) -> None:
        self.seen.append((self.command, self.path))
        self.send_response(404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = _answer
    do_POST = _answer

    def log_message(self, format: str, *args: object) -> None:
        return


@sqlite_only
def test_mitm_with_a_valid_certificate_from_the_same_public_ca_is_refused(
    server: RunningServer, pebble: Pebble, tmp_path: Path
) -> None:
    state = device(server, tmp_path, "dev-1", "board-a")
    _setup(server, pebble)
    _issue(server)
    acme.set_tls_mode(server.state.dd, server.clock(), "public")
    server.settle()
    check_in(server, state)
    # The attacker gets a real certificate for the same address from the same CA.
    attacker_key = generate_tls_key()
    order = order_certificate(
        AcmeAccount(pebble.directory, generate_tls_key(), directory_ca=str(pebble.listener_ca)),
        attacker_key,
        [IDENTIFIER],
        http_host="127.0.0.1",
        http_port=pebble.http_port,
    )
    chain_file = tmp_path / "mitm-chain.pem"
    chain_file.write_bytes(order.fullchain_pem)
    key_file = tmp_path / "mitm-key.pem"
    from homing.pki.keys import private_key_pem

    key_file.write_bytes(private_key_pem(attacker_key, None))
    handler = type("Recorder", (_Recorder,), {"seen": []})
    mitm = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(chain_file, key_file)
    mitm.socket = context.wrap_socket(mitm.socket, server_side=True)
    thread = threading.Thread(target=mitm.serve_forever, daemon=True)
    thread.start()
    try:
        target = f"https://127.0.0.1:{mitm.server_address[1]}"
        policy = _held(state)
        # The chain validates to a public root the device accepts; the key is not pinned.
        with pytest.raises(PinError):
            open_connection(target, policy=policy, now=datetime.now(UTC)).connect()
        report = Agent(state, server=target, firmware_version="1.0.0").run_once()
        assert not report.checked_in
        # Nothing but metadata requests reached the attacker, over the bootstrap channel.
        assert all(method == "GET" and path.startswith("/tuf/") for method, path in handler.seen)
    finally:
        mitm.shutdown()
        mitm.server_close()
    # And the device still trusts exactly what it did.
    assert _held(state) == policy
    # Control: the real server is still home.
    _cycle(server, state)


@sqlite_only
def test_acme_refuses_bad_setup(server: RunningServer, pebble: Pebble, tmp_path: Path) -> None:
    dd = server.state.dd
    leaf = dd.certificates("server-chain.pem")[0].public_bytes(serialization.Encoding.PEM)
    cases = [
        ({"directory": "http://127.0.0.1/dir"}, "https://"),
        ({"public_roots_pem": b"not a certificate"}, "public roots"),
        ({"public_roots_pem": leaf}, "not a self-signed CA"),
        ({"identifiers": ("home.example.com",)}, "not one of the server's hosts"),
        ({"http_port": 0}, "1-65535"),
    ]
    for change, words in cases:
        args = {
            "directory": pebble.directory,
            "public_roots_pem": pebble.root_pem(),
            "identifiers": (IDENTIFIER,),
            "directory_ca": pebble.listener_ca,
            "http_port": pebble.http_port,
            **change,
        }
        with pytest.raises(CeremonyError, match=words):
            acme.acme_setup(dd, server.clock(), **args)  # type: ignore[arg-type]
        assert dd.settings().acme is None
    with pytest.raises(CeremonyError, match="not set up"):
        acme.acme_issue(dd, server.clock())
    _setup(server, pebble)
    with pytest.raises(CeremonyError, match="still serves its private"):
        acme.set_tls_mode(dd, server.clock(), "public")
    # The private server certificate is not renewed by hand while ACME serves.
    _issue(server)
    with pytest.raises(CeremonyError, match="ACME"):
        ceremonies.rotate_server_cert(dd, server.clock())


def test_acme_through_the_cli(
    pebble: Pebble, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The whole migration through the installed entry point: setup, issue, roots, mode, back."""
    from homing.site import DataDir

    monkeypatch.delenv("HOMING_KEY_PASSPHRASE", raising=False)
    data = tmp_path / "site"
    ceremonies.init(data, datetime.now(UTC))
    running = RunningServer(data, DataDir(data).default_db_url(), Clock()).start()
    try:
        state = device(running, tmp_path, "dev-1", "board-a")
        check_in(running, state)
        roots = tmp_path / "roots.pem"
        roots.write_bytes(pebble.root_pem())
        d = ["--data", str(data)]
        setup = run_homing(
            "acme", "setup", *d, "--directory", pebble.directory, "--public-roots", str(roots),
            "--identifier", IDENTIFIER, "--directory-ca", str(pebble.listener_ca),
            "--http-host", "127.0.0.1", "--http-port", str(pebble.http_port),
        )  # fmt: skip
        assert setup.returncode == 0, setup.stderr
        assert "pins for the public chain published" in setup.stdout
        issue = run_homing("acme", "issue", *d)
        assert issue.returncode == 0, issue.stderr
        assert "serving ACME certificate" in issue.stdout
        running.settle()
        check_in(running, state)
        again = run_homing("acme", "roots", *d, str(roots))
        assert again.returncode == 0, again.stderr
        public = run_homing("acme", "mode", *d, "public")
        assert public.returncode == 0, public.stderr
        running.settle()
        check_in(running, state)
        # And back: mixed, then private (the server returns to its private CA).
        for mode in ("mixed", "private"):
            back = run_homing("acme", "mode", *d, mode)
            assert back.returncode == 0, back.stderr
            running.settle()
            check_in(running, state)
        assert DataDir(data).settings().serving == "private"
        refused = run_homing("acme", "mode", *d, "public")
        assert refused.returncode != 0
        assert "still serves its private certificate" in refused.stderr
    finally:
        running.stop()


@sqlite_only
def test_the_server_renews_its_acme_certificate_by_itself(
    server: RunningServer, pebble: Pebble, caplog: pytest.LogCaptureFixture
) -> None:
    from cryptography import x509

    from homing.server.maintenance import maintain

    _setup(server, pebble)
    leaf = _issue(server)
    assert isinstance(leaf, x509.Certificate)
    dd = server.state.dd
    assert not any("ACME" in done for done in maintain(dd, server.clock()))
    lifetime = leaf.not_valid_after_utc - leaf.not_valid_before_utc
    due = leaf.not_valid_before_utc + lifetime * 0.7
    done = maintain(dd, due)
    assert any("(ACME)" in d for d in done), done
    renewed = dd.certificates("server-chain.pem")[0]
    assert renewed.serial_number != leaf.serial_number
    assert renewed.public_key() == leaf.public_key()
    # The CA unreachable: the server logs and keeps serving what it has.
    pebble.stop()
    later = renewed.not_valid_before_utc + lifetime * 0.8
    with caplog.at_level(logging.WARNING, logger="homing.server.maintenance"):
        done = maintain(dd, later)
    assert not any("ACME" in d for d in done)
    assert dd.certificates("server-chain.pem")[0] == renewed
    assert "ACME renewal failed, will retry" in caplog.text


def test_pebble_moves_to_fresh_ports_when_one_is_taken(tmp_path: Path) -> None:
    """The harness itself: a port taken between picking and binding is not a failed test."""
    import socket

    ca = Pebble(tmp_path / "pebble")
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", ca.management_port))
        squatter.listen()
        taken = ca.management_port
        ca.start()
        try:
            assert ca.management_port != taken
            assert ca.root_pem().startswith(b"-----BEGIN CERTIFICATE-----")
        finally:
            ca.stop()
    assert ca.processes == []


@sqlite_only
def test_a_mode_switch_that_would_strand_a_live_device_is_refused_and_named(
    server: RunningServer, pebble: Pebble, tmp_path: Path
) -> None:
    """Back to the private CA while a device still holds only the public pins: refused."""
    from homing.errors import StrandingError
    from homing.store import audit
    from tests.harness import assert_one_error

    dd = server.state.dd
    behind = device(server, tmp_path, "dev-behind", "board-a")
    early = device(server, tmp_path, "dev-early", "board-a")
    check_in(server, early)  # live, on the private pins only
    _setup(server, pebble)
    _issue(server)
    # Public only would cut off a live device that holds none of the public pins.
    with pytest.raises(StrandingError, match="dev-early"):
        acme.set_tls_mode(dd, server.clock(), "public")
    acme.set_tls_mode(dd, server.clock(), "mixed")
    server.settle()
    check_in(server, early)
    check_in(server, behind)
    acme.set_tls_mode(dd, server.clock(), "public")
    server.settle()
    check_in(server, behind)  # it now holds only the public pins
    assert spki_pin(dd.certificate("server-ca.pem")) not in _held(behind).spki_pins
    acme.set_tls_mode(dd, server.clock(), "mixed")
    server.settle()
    # It has not checked in since: the private server CA is not among its pins.
    targets = dd.repository(dd.settings()).targets().signed.version
    with pytest.raises(StrandingError, match="dev-behind"):
        acme.set_tls_mode(dd, server.clock(), "private")
    assert dd.settings().serving == "acme"  # nothing changed
    assert dd.repository(dd.settings()).targets().signed.version == targets
    # From outside: one line that names the device; --reason alone is not enough.
    site = {"HOMING_DB": str(server.config.db_url)}
    refused = run_homing("acme", "mode", "private", "--data", str(dd.root), env=site)
    assert_one_error(refused, "dev-behind")
    lone = run_homing("acme", "mode", "private", "--data", str(dd.root), "--reason", "x", env=site)
    assert_one_error(lone, "--reason is only for --force")
    forced = run_homing(
        "acme", "mode", "private", "--data", str(dd.root), "--force", "--reason", "lab move",
        env=site,
    )  # fmt: skip
    assert forced.returncode == 0, forced.stderr
    assert dd.settings().serving == "private"
    with dd.database().begin() as conn:
        entry = next(e for e in audit.audit_entries(conn) if e["action"] == "tls_mode")
    assert "dev-behind" in str(entry)
    assert "lab move" in str(entry)
    # Forced, it lost its pinned path, not its way home: the bootstrap channel.
    server.settle()
    assert _cycle(server, behind) is TrustChannel.BOOTSTRAP
    assert _cycle(server, behind) is TrustChannel.PINNED


def test_the_deployment_docs_public_ca_migration_runs_as_written(
    pebble: Pebble, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """docs/deployment.md's ACME blocks, as written, with pebble for the public CA: to the
    public CA, a new public root added (its removal refused), and back to the private CA."""
    from homing.pki.authority import make_root_ca
    from homing.site import DataDir
    from tests.doc_blocks import reader_for

    monkeypatch.delenv("HOMING_KEY_PASSPHRASE", raising=False)
    data = tmp_path / "site"
    ceremonies.init(data, datetime.now(UTC))
    running = RunningServer(data, DataDir(data).default_db_url(), Clock()).start()
    try:
        state = device(running, tmp_path, "dev-1", "board-a")
        check_in(running, state)
        (tmp_path / "public-roots.pem").write_bytes(pebble.root_pem())
        (tmp_path / "old-root.pem").write_bytes(pebble.root_pem())
        # The public CA's next root (another CA's, as a new public root is).
        other = make_root_ca(generate_tls_key(), datetime.now(UTC), common_name="Public Root G2")
        (tmp_path / "new-root.pem").write_bytes(other.public_bytes(serialization.Encoding.PEM))
        reader = reader_for(tmp_path, data)
        reader.paths[:0] = [
            # Let's Encrypt's directory: pebble's, over its own listener CA and HTTP-01 port.
            (
                r"https://acme-v02\.api\.letsencrypt\.org/directory",
                f"{pebble.directory} --directory-ca {pebble.listener_ca} "
                f"--http-host 127.0.0.1 --http-port {pebble.http_port}",
            ),
            (r"--identifier home\.example\.com", f"--identifier {IDENTIFIER}"),
        ]
        # Step 2, the wait: the fleet (one device) takes the new pin policy.
        reader.after["homing acme setup"] = (
            f"homing agent run --state {state.root} --server {url(running)} --once"
        )
        result = reader.run("deployment.md", run_by="tests/test_acme.py")
        assert "serving ACME certificate" in result.stdout
        running.settle()
        check_in(running, state)
        assert DataDir(data).settings().serving == "private"
    finally:
        running.stop()
