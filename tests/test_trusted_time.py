"""Trusted time from home, against a real server: clocks years ahead and at 1970 come home;
forged, replayed and stale answers change nothing on the device."""

from __future__ import annotations

import http.server
import json
import ssl
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from homing import ceremonies
from homing.agent.agent import Agent
from homing.agent.state import DeviceState
from homing.errors import MetadataError
from homing.trust.signing import signer_for
from homing.trust.time_answer import new_nonce, sign_time, verify_time
from tests import fleet
from tests.harness import RunningServer, free_port

pytestmark = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)

TEN_YEARS = timedelta(days=3653)


_url = fleet.url


def _device(server: RunningServer, tmp_path: Path, name: str) -> DeviceState:
    return fleet.device(server, tmp_path, name, "board-a")


def _agent(state: DeviceState, url: str, clock: timedelta | datetime) -> Agent:
    def read() -> datetime:
        return clock if isinstance(clock, datetime) else datetime.now(UTC) + clock

    return Agent(state, server=url, clock=read, firmware_version="1.0.0")


def _answer(server: RunningServer, nonce: str) -> bytes:
    got = server.request("GET", f"/v1/time?nonce={nonce}")
    assert got.status == 200, got.body
    assert got.headers.get("cache-control") == "no-store"
    return got.body


def _rotate_everything(server: RunningServer) -> None:
    """What a fleet meets while a device is away: every kind of rotation, online keys too."""
    now = datetime.now(UTC)
    dd = server.state.dd
    ceremonies.rotate_server_cert(dd, now)
    ceremonies.rotate_issuing_ca(dd, "server", now, force_reason="test: the device is away")
    ceremonies.rotate_online_keys(dd, now)
    ceremonies.rotate_root(dd, now)
    server.settle()


def test_a_clock_ten_years_ahead_comes_home_after_every_rotation(
    server: RunningServer, tmp_path: Path
) -> None:
    state = _device(server, tmp_path, "dev-ahead")
    assert _agent(state, _url(server), timedelta()).run_once().checked_in
    _rotate_everything(server)
    report = _agent(state, _url(server), TEN_YEARS).run_once()
    assert report.checked_in, report
    steps = " ".join(report.steps)
    assert "clock in doubt: the clock" in steps
    assert "past every expiry" in steps
    assert "trusted time from" in steps
    # The time floor moved with the true time, not with the wrong clock.
    floor = state.time_floor()
    assert floor is not None
    assert floor < datetime.now(UTC) + timedelta(days=1)
    # It walked the root chain to today's keys (the online keys rotated too).
    assert report.trust["root"] == server.state.dd.repository(server.state.settings).root_version()
    assert report.trust["root"] >= 3


def test_a_dead_clock_at_1970_uses_home_time_not_its_floor(
    server: RunningServer, tmp_path: Path
) -> None:
    state = _device(server, tmp_path, "dev-dead")
    assert _agent(state, _url(server), timedelta()).run_once().checked_in
    _rotate_everything(server)
    report = _agent(state, _url(server), datetime(1970, 1, 1, tzinfo=UTC)).run_once()
    assert report.checked_in, report
    assert "is behind the time floor" in " ".join(report.steps)
    assert "trusted time from" in " ".join(report.steps)


def test_a_good_clock_costs_no_time_request(server: RunningServer, tmp_path: Path) -> None:
    state = _device(server, tmp_path, "dev-good")
    for _ in range(2):
        report = _agent(state, _url(server), timedelta()).run_once()
        assert report.checked_in, report
        assert not [s for s in report.steps if "time" in s and "trust" not in s], report.steps


def test_forged_replayed_and_stale_answers_are_refused(
    server: RunningServer, tmp_path: Path
) -> None:
    root = server.state.dd.repository(server.state.settings).root().signed
    nonce = new_nonce()
    good = _answer(server, nonce)
    assert verify_time(good, nonce, root) <= datetime.now(UTC) + timedelta(seconds=5)
    # Replayed: an answer to another request.
    with pytest.raises(MetadataError, match="its nonce differs"):
        verify_time(good, new_nonce(), root)
    # Signed by a key the root does not name for the timestamp role.
    thief = signer_for(ec.generate_private_key(ec.SECP256R1()))
    forged = json.dumps(sign_time(thief, nonce, datetime.now(UTC))).encode()
    with pytest.raises(MetadataError, match="not signed by the timestamp keys"):
        verify_time(forged, nonce, root)
    # A true signature over a payload someone altered.
    doc = json.loads(good)
    doc["payload"] = doc["payload"][:-4] + ("AAAA" if doc["payload"][-4:] != "AAAA" else "BBBB")
    with pytest.raises(MetadataError):
        verify_time(json.dumps(doc).encode(), nonce, root)
    # A genuine answer below the device's floor (the home's clock set back).
    server.clock.advance(timedelta(days=-2))
    stale_nonce = new_nonce()
    stale = _answer(server, stale_nonce)
    with pytest.raises(MetadataError, match="below this device's time floor"):
        verify_time(stale, stale_nonce, root, floor=datetime.now(UTC) - timedelta(hours=1))
    # Garbage of every shape.
    for junk in (b"", b"[]", b"{}", b"x" * 5000, b'{"payload": 1}'):
        with pytest.raises(MetadataError):
            verify_time(junk, nonce, root)


def test_the_endpoint_refuses_a_bad_nonce(server: RunningServer) -> None:
    for query in ("", "?nonce=abc", "?nonce=" + "G" * 64, "?nonce=" + "A" * 64):
        got = server.request("GET", f"/v1/time{query}")
        assert got.status == 400, (query, got.body)
        assert "'nonce' must be" in got.body.decode()


@pytest.fixture
def forger(server: RunningServer, tmp_path: Path) -> Iterator[str]:
    """A TLS server in the device's path that answers time requests with a forged signature."""
    thief = signer_for(ec.generate_private_key(ec.SECP256R1()))

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.startswith("/v1/time?nonce="):
                nonce = self.path.split("=", 1)[1]
                body = json.dumps(sign_time(thief, nonce, datetime.now(UTC))).encode()
                self.send_response(200)
            else:
                body = b"{}"
                self.send_response(404)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            return

    port = free_port()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    pki = server.data / "pki"
    # Any certificate will do: the device's bootstrap channel checks none, and
    # the forged answer must fail on its signature alone.
    context.load_cert_chain(pki / "server-chain.pem", server.state.tls_key_path)
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{port}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_a_forged_time_answer_changes_nothing_on_the_device(
    server: RunningServer, forger: str, tmp_path: Path
) -> None:
    state = _device(server, tmp_path, "dev-mitm")
    assert _agent(state, _url(server), timedelta()).run_once().checked_in
    floor = state.time_floor()
    root_before = (state.trust_dir / "root.json").read_bytes()
    report = _agent(state, forger, TEN_YEARS).run_once()
    assert not report.checked_in
    assert "not signed by the timestamp keys" in " ".join(report.steps)
    assert state.time_floor() == floor
    assert (state.trust_dir / "root.json").read_bytes() == root_before
    # And the true home still brings the same device back.
    assert _agent(state, _url(server), TEN_YEARS).run_once().checked_in


def test_a_frozen_dead_clock_device_talks_to_no_one_who_cannot_give_it_the_time(
    server: RunningServer, tmp_path: Path
) -> None:
    """The freeze attack on a dead RTC: a thief holds the server-issuing CA key (not the
    online timestamp key) and a copy of the site's metadata from the day the device last
    came home. Working at its floor, the device would take that metadata as current and
    the thief's certificate as the home's. In doubt and without a signed time, it sends
    nothing but metadata and time requests: its exposure is no check-in at all."""
    import shutil

    from sqlalchemy import func, select

    from homing.store.schema import checkins
    from tests.harness import Clock

    state = _device(server, tmp_path, "dev-frozen")
    assert _agent(state, _url(server), timedelta()).run_once().checked_in
    # The thief's copy, taken now: the site's files and database, less the online keys.
    stolen = tmp_path / "stolen"
    shutil.copytree(server.data, stolen)
    for key in stolen.glob("keys/timestamp-*"):
        key.unlink()
    db_file = Path(server.config.db_url.removeprefix("sqlite:///"))
    for suffix in ("", "-wal", "-shm"):
        if Path(f"{db_file}{suffix}").exists():
            shutil.copy(f"{db_file}{suffix}", tmp_path / f"stolen.db{suffix}")
    ceremonies.rotate_server_cert(stolen, datetime.now(UTC))  # minted with the stolen CA key
    thief = RunningServer(stolen, f"sqlite:///{tmp_path / 'stolen.db'}", Clock()).start()
    dead = datetime(1970, 1, 1, tzinfo=UTC)
    thief_url = f"https://127.0.0.1:{thief.port}"

    def reached_thief() -> int:
        with thief.state.db.engine.connect() as conn:
            return int(
                conn.execute(
                    select(func.count())
                    .select_from(checkins)
                    .where(checkins.c.device_id == "dev-frozen")
                ).scalar_one()
            )

    try:
        # The impostor works: a device with a true clock, today, takes it for home
        # (the thief's copy is as fresh as the real site's until its timestamp expires).
        before = reached_thief()
        assert _agent(state, thief_url, timedelta()).run_once().checked_in
        assert reached_thief() == before + 1
        # The real site moves on, and the device's RTC dies.
        ceremonies.rotate_server_cert(server.state.dd, datetime.now(UTC))
        ceremonies.refresh_snapshot(server.state.dd, datetime.now(UTC))
        server.settle()
        floor = state.time_floor()
        report = _agent(state, thief_url, dead).run_once()
        assert not report.checked_in
        assert "no home answered with a signed time" in (report.error or "")
        assert "/v1/time" in " ".join(report.steps)  # asked, and the thief could not answer
        assert reached_thief() == before + 1  # nothing more reached the thief
        assert state.time_floor() == floor
    finally:
        thief.stop()
    # Back on the true home, the same dead clock gets the time and checks in.
    report = _agent(state, _url(server), dead).run_once()
    assert report.checked_in, report


def test_a_clock_that_jumps_within_a_boot_is_in_doubt_until_it_is_right(
    server: RunningServer, tmp_path: Path
) -> None:
    state = _device(server, tmp_path, "dev-jump")
    offset = timedelta()
    since_boot = 1000.0

    def agent() -> Agent:
        return Agent(
            state,
            server=_url(server),
            clock=lambda: datetime.now(UTC) + offset,
            uptime=lambda: since_boot,
            firmware_version="1.0.0",
        )

    assert "clock in doubt" not in " ".join(agent().run_once().steps)
    # Ten seconds of uptime later the wall clock reads two hours on: a jump.
    offset, since_boot = timedelta(hours=2), since_boot + 10
    report = agent().run_once()
    assert report.checked_in, report
    assert "the clock jumped since the last cycle" in " ".join(report.steps)
    # The clock stays wrong: still in doubt (the last cycle worked at the home's time).
    since_boot += 10
    assert "clock jumped" in " ".join(agent().run_once().steps)
    # It jumps again while home is out of reach: that cycle stops, and its unverified time
    # is no base for the next, which (home back) still sees the jump and asks.
    offset, since_boot = timedelta(hours=5), since_boot + 10
    away = Agent(
        state,
        server=f"https://127.0.0.1:{free_port()}",
        clock=lambda: datetime.now(UTC) + offset,
        uptime=lambda: since_boot,
    )
    assert not away.run_once().checked_in
    since_boot += 10
    report = agent().run_once()
    assert report.checked_in, report
    assert "the clock jumped since the last cycle" in " ".join(report.steps)
    # Set right again: no doubt once the first cycle has settled on it.
    offset, since_boot = timedelta(), since_boot + 10
    assert agent().run_once().checked_in
    since_boot += 10
    assert "clock in doubt" not in " ".join(agent().run_once().steps)


def test_a_clock_behind_by_less_than_it_slept_asks_home_when_the_chain_fails(
    server: RunningServer, tmp_path: Path
) -> None:
    """The fourth doubt rule (ADR 0009). A device stored two years with a clock 400 days
    slow reads a time above its floor and short of every expiry: not in doubt by the first
    three rules, and the home's certificate, issued since, is not yet valid by it. The
    failing chain puts the clock in doubt: it asks home, and comes home at the home's time
    (recovering its expired certificate by key proof)."""
    state = _device(server, tmp_path, "dev-slow")
    assert _agent(state, _url(server), timedelta()).run_once().checked_in
    two_years = timedelta(days=730)
    fleet.move_server_clock(server, two_years)
    ceremonies.rotate_server_cert(server.state.dd, server.clock())
    server.settle()
    slow = two_years - timedelta(days=400)
    report = _agent(state, _url(server), slow).run_once()
    assert report.checked_in, report
    steps = " ".join(report.steps)
    assert "the home's certificate does not validate at it" in steps
    assert "trusted time from" in steps
    # A right clock with a wrong chain is not helped: a MITM stays refused (the time
    # matches, so the refusal stands; test_device_apps and the transport tests attack).
    assert report.recovered


def test_a_clock_a_year_ahead_short_of_every_expiry_asks_home_when_metadata_expires(
    server: RunningServer, tmp_path: Path
) -> None:
    """A year ahead is short of the root's and targets' expiry (not in doubt by the first
    three rules), yet past the timestamp's: the refusal puts the clock in doubt, and the
    device comes home at the home's time. A replay to a right clock is still refused
    (test_trust_attacks): the home's time matches it, so the refusal stands."""
    state = _device(server, tmp_path, "dev-year-ahead")
    assert _agent(state, _url(server), timedelta()).run_once().checked_in
    report = _agent(state, _url(server), timedelta(days=365)).run_once()
    assert report.checked_in, report
    steps = " ".join(report.steps)
    assert "metadata expired by it" in steps
    assert "trusted time from" in steps
