"""The device agent against a real server on loopback: catch-up, recovery, fail-closed."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select

from homing import ceremonies
from homing.agent.agent import Agent
from homing.agent.decide import TrustChannel
from homing.agent.enroll import enroll
from homing.agent.state import DeviceState
from homing.operations import fleet as operations
from homing.operations.provisioning import provision
from homing.store.schema import checkins
from tests.harness import RunningServer, homing_entry_point, wait_until

pytestmark = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


def _url(server: RunningServer) -> str:
    return f"https://127.0.0.1:{server.port}"


def _checkins(server: RunningServer) -> int:
    with server.state.db.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(checkins)).scalar_one())


def _device(server: RunningServer, tmp_path: Path, name: str = "dev-1") -> DeviceState:
    return provision(
        server.state.dd,
        tmp_path / name,
        datetime.now(UTC),
        device_id=name,
        hardware="board-a",
        server=_url(server),
    )


def _agent(state: DeviceState, server: RunningServer, offset: timedelta = timedelta()) -> Agent:
    return Agent(
        state,
        server=_url(server),
        clock=lambda: datetime.now(UTC) + offset,
        firmware_version="1.0.0",
    )


def _settle(server: RunningServer) -> None:
    """Have the running server load a rotated certificate before the device connects."""
    server.settle()


def test_provisioned_device_checks_in(server: RunningServer, tmp_path: Path) -> None:
    state = _device(server, tmp_path)
    report = _agent(state, server).run_once()
    assert report.checked_in, report
    assert report.trust["root"] == 1
    assert report.trust_channel is TrustChannel.PINNED
    assert _checkins(server) == 1
    assert state.time_floor() is not None


def test_online_enrollment_then_check_in(server: RunningServer, tmp_path: Path) -> None:
    secret = operations.add_factory(server.state.db, "t", datetime.now(UTC), "line")
    root = (server.data / "repository" / "metadata" / "1.root.json").read_bytes()
    state = enroll(
        tmp_path / "dev",
        _url(server),
        f"line:{secret}",
        root,
        datetime.now(UTC),
        device_id="online-1",
        hardware="board-b",
    )
    assert state.certificate() is not None
    assert _agent(state, server).run_once().checked_in


def test_long_offline_device_comes_back_by_itself(server: RunningServer, tmp_path: Path) -> None:
    """Server cert rotated 10 times, server CA twice, root three times, device cert expired."""
    state = _device(server, tmp_path)
    start = datetime.now(UTC)
    for i in range(10):
        ceremonies.rotate_server_cert(server.state.dd, start + timedelta(days=20 * i))
    ceremonies.rotate_issuing_ca(server.state.dd, "server", start + timedelta(days=150))
    ceremonies.rotate_issuing_ca(server.state.dd, "server", start + timedelta(days=250))
    for day in (100, 200, 300):
        ceremonies.rotate_root(server.state.dd, start + timedelta(days=day))
    later = timedelta(days=400)
    ceremonies.rotate_server_cert(server.state.dd, start + later)
    ceremonies.refresh_snapshot(server.state.dd, start + later)
    server.clock.advance(later)
    _settle(server)
    report = _agent(state, server, later).run_once()
    assert report.checked_in, report
    assert "pins do not match" in " ".join(report.steps)
    assert report.trust_channel is TrustChannel.BOOTSTRAP
    assert "certificate recovered by key proof" in report.steps
    assert report.trust["root"] == 4
    cert = state.certificate()
    assert cert is not None
    assert cert.not_valid_after_utc > start + later
    # The next cycle is pinned from the start.
    again = _agent(state, server, later).run_once()
    assert again.checked_in
    assert again.steps[0].startswith("trust refreshed over pinned TLS")


def test_expired_timestamp_fails_closed_and_recovers_by_itself(
    server: RunningServer, tmp_path: Path
) -> None:
    state = _device(server, tmp_path)
    assert _agent(state, server).run_once().checked_in
    before = _checkins(server)
    two_days = timedelta(days=2)
    # Two days on, and nothing re-signed the timestamp (the home's own time,
    # which a device in doubt asks for, has moved on too).
    server.clock.advance(two_days)
    report = _agent(state, server, two_days).run_once()
    assert not report.checked_in
    assert "expired" in (report.error or "")
    assert _checkins(server) == before  # nothing but metadata requests
    ceremonies.refresh_snapshot(server.state.dd, datetime.now(UTC) + two_days)
    assert _agent(state, server, two_days).run_once().checked_in


def test_renewal_at_two_thirds_of_the_lifetime(server: RunningServer, tmp_path: Path) -> None:
    state = _device(server, tmp_path)
    first = state.certificate()
    assert first is not None
    offset = timedelta(days=250)
    ceremonies.refresh_snapshot(server.state.dd, datetime.now(UTC) + offset)
    ceremonies.rotate_server_cert(server.state.dd, datetime.now(UTC) + offset)
    server.clock.advance(offset)
    _settle(server)
    report = _agent(state, server, offset).run_once()
    assert report.checked_in, report
    assert "certificate renewed (EST simplereenroll)" in report.steps
    renewed = state.certificate()
    assert renewed is not None
    assert renewed.serial_number != first.serial_number
    assert renewed.public_key() == first.public_key()


def test_revoked_device_stops_and_says_so(server: RunningServer, tmp_path: Path) -> None:
    state = _device(server, tmp_path)
    operations.revoke_device(
        server.state.dd, server.state.db, "t", datetime.now(UTC), "dev-1", "stolen"
    )
    report = _agent(state, server).run_once()
    assert not report.checked_in
    assert (report.error or "").startswith("revoked")
    assert state.last_run()["error"].startswith("revoked")


def test_clock_behind_the_floor_is_raised(server: RunningServer, tmp_path: Path) -> None:
    state = _device(server, tmp_path)
    assert _agent(state, server).run_once().checked_in
    floor = state.time_floor()
    assert floor is not None
    behind = _agent(state, server, timedelta(days=-3000))
    assert behind.now() == floor


def test_agent_run_keeps_running_and_checks_in(server: RunningServer, tmp_path: Path) -> None:
    """`homing agent run` re-executes into the lean daemon, which cycles on its own."""
    import json
    import signal
    import subprocess

    state = _device(server, tmp_path)
    process = subprocess.Popen(
        [
            homing_entry_point(),
            "agent",
            "run",
            "--state",
            str(state.root),
            "--server",
            _url(server),
            "--interval",
            "3600",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    # The journal is read as it is written: the daemon logs its line after the cycle's
    # process has written last-run.json and exited, so the test waits for the line itself.
    journal_lines: list[bytes] = []
    assert process.stderr is not None
    reader = threading.Thread(target=lambda: journal_lines.extend(process.stderr), daemon=True)
    reader.start()
    try:
        wait_until(
            "the daemon's line for its first cycle",
            lambda: b"next cycle in" in b"".join(journal_lines),
        )
        assert json.loads(state.last_run_path.read_bytes())["checked_in"] is True
        cmdline = Path(f"/proc/{process.pid}/cmdline").read_bytes().split(b"\0")
        assert b"homing.agent.daemon" in cmdline
        assert process.poll() is None
        # Asleep, the resident process holds the interpreter and its pacing: the cycle ran
        # in a process of its own, which took cryptography, python-tuf and TLS with it.
        status = Path(f"/proc/{process.pid}/status").read_text()
        resident_kib = int(status.split("VmRSS:")[1].split()[0])
        assert resident_kib < 30 * 1024, f"{resident_kib} KiB resident while asleep"
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
        reader.join(timeout=60)
        process.stderr.close()
    # Stopped by SIGTERM, it dies of it: systemd counts that as a clean stop.
    assert process.returncode == -signal.SIGTERM
    # The cycle's line for the journal: what it did, when the next one runs.
    journal = b"".join(journal_lines)
    assert b"checked in (trust root v1" in journal
    assert b"next cycle in" in journal


def test_a_dead_clock_still_reaches_home_after_the_server_certificate_renews(
    server: RunningServer, tmp_path: Path
) -> None:
    """A device whose RTC reads 1970 is behind its floor: it asks home for the time and
    works at it, so the server's next certificate, dated after that floor, is valid to it."""
    state = _device(server, tmp_path)
    assert _agent(state, server).run_once().checked_in
    floor = state.time_floor()
    assert floor is not None
    later = timedelta(hours=2)
    renewed = ceremonies.rotate_server_cert(server.state.dd, datetime.now(UTC) + later)
    server.clock.advance(later)
    _settle(server)
    dead = _agent(state, server, datetime(1970, 1, 1, tzinfo=UTC) - datetime.now(UTC))
    report = dead.run_once()
    assert report.checked_in, report
    assert "trusted time from" in " ".join(report.steps)
    # Time moved forward for it: the floor is past the renewed certificate's notBefore.
    assert state.time_floor() >= renewed.not_valid_before_utc


def test_the_dead_clock_grace_is_only_for_notbefore(server: RunningServer, tmp_path: Path) -> None:
    """Attack: a server chain that expired before the device's floor (a stolen, long-retired
    certificate) is refused even to a device whose clock reads 1970."""
    from homing.agent.transport import verify_pinned_chain
    from homing.errors import ChainError
    from homing.trust.pins import PinPolicy

    state = _device(server, tmp_path)
    policy = PinPolicy.from_bytes((state.root / "pins.json").read_bytes())
    chain = server.state.dd.certificates("server-chain.pem")
    leaf, intermediates = chain[0], chain[1:]
    host = "127.0.0.1"
    before = leaf.not_valid_before_utc - timedelta(hours=1)
    with pytest.raises(ChainError):
        verify_pinned_chain(leaf, intermediates, policy, host, before)  # a trusted clock
    verify_pinned_chain(leaf, intermediates, policy, host, before, clock_behind_floor=True)
    expired = leaf.not_valid_after_utc + timedelta(seconds=1)
    with pytest.raises(ChainError):
        verify_pinned_chain(leaf, intermediates, policy, host, expired, clock_behind_floor=True)


def test_the_resident_agent_stays_small_and_leaves_nothing_behind_over_many_cycles(
    server: RunningServer, tmp_path: Path
) -> None:
    """Each cycle is a process of its own: after a dozen, the resident process is as small
    as after one, no cycle's process is left (running or a zombie), and every cycle wrote
    its line for the journal."""
    import signal
    import subprocess

    from tests.harness import wait_until

    state = _device(server, tmp_path)
    journal = tmp_path / "journal.log"
    with journal.open("wb") as out:
        process = subprocess.Popen(
            [homing_entry_point(), "agent", "run", "--state", str(state.root),
             "--server", _url(server), "--interval", "0.05"],
            stdout=subprocess.DEVNULL,
            stderr=out,
        )  # fmt: skip
    cycles = 12
    try:
        wait_until(
            f"{cycles} cycles",
            lambda: journal.read_text().count("next cycle in") >= cycles,
            timeout=300,
        )
        assert journal.read_text().count("checked in (trust root v1") >= cycles
        process.send_signal(signal.SIGSTOP)  # between reads, nothing may start or end
        status = Path(f"/proc/{process.pid}/status").read_text()
        children = Path(f"/proc/{process.pid}/task/{process.pid}/children").read_text().split()
        process.send_signal(signal.SIGCONT)
        resident_kib = int(status.split("VmRSS:")[1].split()[0])
        assert resident_kib < 30 * 1024, f"{resident_kib} KiB resident after {cycles} cycles"
        # At most the cycle running now; none left over from the cycles before.
        assert len(children) <= 1, children
        for child in children:
            state_line = Path(f"/proc/{child}/status").read_text().split("State:")[1]
            assert "zombie" not in state_line, child
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
