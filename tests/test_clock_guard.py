"""The home guards its own clock: a year ahead and back, a year back; what a wrong clock made
is replaced by itself once the clock is right, and devices with true clocks come back."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509

from homing.agent.agent import Agent
from homing.operations import clock
from homing.operations.provisioning import provision
from homing.server.maintenance import maintain
from homing.server.upkeep import Upkeep
from homing.site import DataDir
from tests.harness import RunningServer, assert_one_error, run_homing

SQLITE = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)

YEAR = timedelta(days=365)


def _signed(dd: DataDir) -> tuple[int, int, str]:
    """What the server has signed: timestamp version, server certificate serial, CRL bytes."""
    repo = dd.repository(dd.settings())
    leaf = dd.certificates("server-chain.pem")[0]
    crl = dd.pki_path("device-ca.crl.pem")
    return (
        repo.timestamp().signed.version,
        leaf.serial_number,
        crl.read_text() if crl.exists() else "",
    )


@SQLITE
def test_a_year_ahead_or_back_signs_nothing_until_the_clock_is_right_or_confirmed(
    server: RunningServer,
) -> None:
    dd = server.state.dd
    upkeep = Upkeep(dd, None)
    start = datetime.now(UTC)
    try:
        # A normal pass: the timestamp is due after half its day.
        assert any("timestamp" in done for done in upkeep.maintain(start + timedelta(hours=13)))
        before = _signed(dd)
        # The clock jumps a year ahead: nothing is signed, renewed or re-issued.
        assert upkeep.maintain(start + YEAR) == []
        assert upkeep.clock_doubt(start + YEAR) is not None
        assert _signed(dd) == before
        # Back to the true time: signing resumes where it was.
        done = upkeep.maintain(start + timedelta(hours=26))
        assert any("timestamp" in item for item in done), done
        before = _signed(dd)
        # A year back (an RTC reset): refused too, until an operator confirms.
        year_back = start - YEAR
        assert upkeep.maintain(year_back) == []
        assert _signed(dd) == before
        status = clock.clock_status(dd.database(), year_back)
        assert "before the last signing" in (status["doubt"] or "")
        overridden = clock.confirm_clock(dd.database(), "cli:ops", year_back, "RTC replaced")
        assert overridden is not None
        assert upkeep.clock_doubt(year_back) is None
    finally:
        upkeep.close()


@SQLITE
def test_what_a_wrong_clock_made_is_replaced_once_it_is_right(
    server: RunningServer, tmp_path: Path
) -> None:
    """The accident the guard prevents, had it happened anyway (an older server, or the
    guard overridden): a server certificate valid only from next year, a CRL dated then,
    online roles signed then. The next pass at the true time replaces all of it."""
    dd = server.state.dd
    device = provision(
        dd, tmp_path / "dev", datetime.now(UTC), device_id="dev-1", hardware="board-a",
        server=f"https://127.0.0.1:{server.port}",
    )  # fmt: skip
    agent = Agent(device, server=f"https://127.0.0.1:{server.port}", firmware_version="1.0.0")
    assert agent.run_once().checked_in
    ahead = datetime.now(UTC) + YEAR
    maintain(dd, ahead)
    server.settle()
    leaf = dd.certificates("server-chain.pem")[0]
    assert leaf.not_valid_before_utc > datetime.now(UTC) + timedelta(days=300)
    refused = agent.run_once()
    assert not refused.checked_in  # a true clock refuses next year's certificate
    now = datetime.now(UTC)
    done = maintain(dd, now)
    server.settle()
    assert any("server certificate" in item for item in done), done
    assert any("snapshot" in item for item in done), done
    assert "device CRL" in done
    leaf = dd.certificates("server-chain.pem")[0]
    assert leaf.not_valid_before_utc <= now
    crl = x509.load_pem_x509_crl(dd.pki_path("device-ca.crl.pem").read_bytes())
    assert crl.last_update_utc <= now
    timestamp = dd.repository(dd.settings()).timestamp().signed
    assert timestamp.expires <= now + dd.settings().expiries.timestamp + timedelta(minutes=1)
    assert agent.run_once().checked_in
    # And the next pass has nothing left to replace.
    assert maintain(dd, now + timedelta(minutes=1)) == []


@SQLITE
def test_clock_commands_from_outside(server: RunningServer) -> None:
    site = ["--data", str(server.data), "--db", server.config.db_url]
    status = run_homing("clock", "status", *site)
    assert status.returncode == 0, status.stderr
    assert "the server may sign at this time" in status.stdout
    confirmed = run_homing("clock", "confirm", "--reason", "checked against GPS", *site)
    assert confirmed.returncode == 0, confirmed.stderr
    assert "confirmed" in confirmed.stdout
    missing = run_homing("clock", "confirm", *site)
    assert missing.returncode == 2
    assert "--reason" in missing.stderr
    assert_one_error(
        run_homing("clock", "status", "--db", "postgresql://nobody@127.0.0.1:1/none",
                   "--data", str(server.data)),
        "cannot reach or migrate the database",
    )  # fmt: skip


def _station(server: RunningServer) -> Callable[[str], int]:
    """Enroll a new device through the server's EST endpoint; the answer's status."""
    import base64

    from cryptography.hazmat.primitives.asymmetric import ec

    from homing.operations import fleet as operations
    from tests.harness import est_csr

    secret = operations.add_factory(server.state.dd.database(), "test", datetime.now(UTC), "line")
    auth = base64.b64encode(f"line:{secret}".encode()).decode()

    def enroll(device_id: str) -> int:
        csr = est_csr(ec.generate_private_key(ec.SECP256R1()), device_id)
        return server.request(
            "POST", "/.well-known/est/simpleenroll", base64.b64encode(csr),
            headers={"Content-Type": "application/pkcs10", "Authorization": f"Basic {auth}"},
        ).status  # fmt: skip

    return enroll


NONCE = "ab" * 32


@SQLITE
def test_a_clock_set_back_or_ahead_issues_nothing_and_tells_no_time(
    server: RunningServer,
) -> None:
    """Workers check too: a certificate or a time dated a year off would put the fleet
    there. Refused 503 until the clock is right or confirmed; a jump is judged at once."""
    dd = server.state.dd
    enroll = _station(server)
    assert enroll("dev-1") == 200
    # The supervisor signed at the true time (half a day on: the timestamp is due);
    # then this worker's clock jumps a year ahead.
    server.clock.advance(timedelta(hours=13))
    assert any("timestamp" in done for done in maintain(dd, server.clock()))
    server.clock.advance(YEAR)
    assert enroll("dev-2") == 503
    ahead = server.request("GET", f"/v1/time?nonce={NONCE}")
    assert ahead.status == 503
    assert "days after the last signing" in ahead.json()["message"]
    assert ahead.headers["retry-after"] == "300"
    # Back to the true time: issuance and time resume without anyone's help.
    server.clock.advance(-YEAR)
    assert enroll("dev-3") == 200
    assert server.request("GET", f"/v1/time?nonce={NONCE}").status == 200
    # Set back a year (an RTC reset): refused until an operator confirms.
    server.clock.advance(-YEAR)
    assert enroll("dev-4") == 503
    answer = server.request("GET", f"/v1/time?nonce={NONCE}")
    assert answer.status == 503
    assert "before the last signing" in answer.json()["message"]
    clock.confirm_clock(dd.database(), "cli:ops", server.clock(), "RTC replaced, checked")
    server.state._clock_verdict = None  # a test need not wait out the verdict's ten seconds
    assert enroll("dev-5") == 200
    assert server.request("GET", f"/v1/time?nonce={NONCE}").status == 200


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_a_worker_away_from_its_database_servers_clock_issues_nothing(
    server: RunningServer,
) -> None:
    """A shared site's peer is its PostgreSQL server: on a host whose clock is ten minutes
    off it, the supervisor signs nothing and its workers issue nothing and tell no time
    (they share the host's clock and take the supervisor's verdict); both resume when the
    clocks agree."""
    enroll = _station(server)
    supervisor = Upkeep(server.state.dd, None)
    try:
        assert supervisor.clock_doubt(server.clock()) is None
        assert enroll("dev-1") == 200
        server.clock.advance(timedelta(minutes=10))
        assert supervisor.clock_doubt(server.clock()) is not None  # its pass signs nothing
        assert enroll("dev-2") == 503
        answer = server.request("GET", f"/v1/time?nonce={NONCE}")
        assert answer.status == 503
        assert "database server's reads" in answer.json()["message"]
        server.clock.advance(timedelta(minutes=-10))
        assert supervisor.clock_doubt(server.clock()) is None
        assert enroll("dev-3") == 200
        assert server.request("GET", f"/v1/time?nonce={NONCE}").status == 200
    finally:
        supervisor.close()


@SQLITE
def test_a_verdict_left_by_an_earlier_run_is_cleared_by_the_first_pass(
    server: RunningServer,
) -> None:
    """A supervisor that stopped while in doubt leaves its verdict; the next one's first
    pass at a believable time clears it, so workers are not held by a stale one."""
    dd = server.state.dd
    enroll = _station(server)
    clock.record_doubt(dd.root, "an earlier run's doubt")
    assert enroll("dev-1") == 503
    supervisor = Upkeep(dd, None)
    try:
        assert supervisor.clock_doubt(server.clock()) is None
    finally:
        supervisor.close()
    assert not (dd.root / clock.DOUBT_FILE).exists()
    assert enroll("dev-2") == 200
