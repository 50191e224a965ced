"""The home moves to a new name: devices follow through signed metadata, none is stranded.

The site starts at 127.0.0.1 and moves to 127.0.0.2 (two loopback
addresses stand for an old and a new domain: the server's certificate,
its CA's name constraints and the devices' pinned connections treat them
exactly as names). Devices are provisioned without a server override, so
they dial what their pin policy says.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography import x509

from homing import ceremonies
from homing.agent.agent import Agent, CycleReport
from homing.agent.state import DeviceState
from homing.ceremonies.endpoints import move_home
from homing.errors import StrandingError
from homing.operations.provisioning import provision
from homing.site import DataDir
from homing.trust.pins import PinPolicy
from tests.harness import Clock, RunningServer, assert_one_error, free_port, run_homing

OLD, NEW = "127.0.0.1", "127.0.0.2"


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[RunningServer]:
    monkeypatch.delenv("HOMING_KEY_PASSPHRASE", raising=False)
    port = free_port(OLD, NEW)
    data = tmp_path / "site"
    ceremonies.init(data, datetime.now(UTC), hosts=[OLD], primary=f"https://{OLD}:{port}")
    running = RunningServer(
        data, DataDir(data).default_db_url(), Clock(), listen=(OLD, NEW), port=port
    ).start()
    try:
        yield running
    finally:
        running.stop()


def _device(home: RunningServer, tmp_path: Path, name: str) -> DeviceState:
    return provision(home.state.dd, tmp_path / name, datetime.now(UTC), device_id=name)


def _cycle(state: DeviceState) -> CycleReport:
    report = Agent(state, firmware_version="1.0.0").run_once()
    assert report.checked_in, report
    return report


def _dials(state: DeviceState) -> str:
    return PinPolicy.from_bytes((state.root / "pins.json").read_bytes()).primary


def _served_names(home: RunningServer) -> set[str]:
    leaf = home.state.dd.certificates("server-chain.pem")[0]
    names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return {str(n.value) for n in names}


def test_a_device_asleep_through_the_move_comes_home_at_the_new_name(
    home: RunningServer, tmp_path: Path
) -> None:
    port = home.port
    dd = home.state.dd
    always = _device(home, tmp_path, "dev-always")
    asleep = _device(home, tmp_path, "dev-asleep")
    for state in (always, asleep):
        _cycle(state)
        assert _dials(state) == f"https://{OLD}:{port}"

    # Step 1, from outside: the new name beside the old.
    moved = run_homing(
        "rotate", "endpoints", "--data", str(dd.root), "--host", OLD, "--host", NEW,
        "--primary", f"https://{NEW}:{port}",
    )  # fmt: skip
    assert moved.returncode == 0, moved.stderr
    assert "covers the new names" in moved.stdout.replace("\n", " ")
    home.settle()
    assert {OLD, NEW} <= _served_names(home)
    _cycle(always)
    assert _dials(always) == f"https://{NEW}:{port}"
    _cycle(always)  # now at the new name

    # Step 2: dropping the old name is refused while a live device still dials it.
    with pytest.raises(StrandingError, match="dev-asleep"):
        move_home(dd, datetime.now(UTC), hosts=[NEW], primary=f"https://{NEW}:{port}")
    refused = run_homing(
        "rotate", "endpoints", "--data", str(dd.root), "--host", NEW,
        "--primary", f"https://{NEW}:{port}",
    )  # fmt: skip
    assert_one_error(refused, "dev-asleep")
    assert OLD in _served_names(home)  # nothing changed

    # The sleeper wakes, dials the old name (still served), learns the new one.
    _cycle(asleep)
    assert _dials(asleep) == f"https://{NEW}:{port}"
    dropped = move_home(dd, datetime.now(UTC), hosts=[NEW], primary=f"https://{NEW}:{port}")
    assert dropped.dropped == (OLD,)
    home.settle()
    assert _served_names(home) == {NEW}
    # Both come home at the new name only; the old name no longer validates.
    for state in (always, asleep):
        report = _cycle(state)
        assert all(OLD not in step for step in report.steps), report.steps
    stale = Agent(asleep, firmware_version="1.0.0", server=f"https://{OLD}:{port}").run_once()
    assert not stale.checked_in


def test_bad_endpoints_are_refused_in_one_line(home: RunningServer) -> None:
    data = str(home.state.dd.root)
    for args, words in (
        (["--host", NEW, "--primary", f"http://{NEW}:1"], "must be an https:// URL"),
        (["--host", OLD, "--primary", f"https://{NEW}:1"], "not among the hosts"),
        (["--host", "bad_name!", "--primary", "https://bad_name!:1"], "invalid host name"),
        (["--host", OLD, "--primary", f"https://{OLD}:1", "--reason", "x"], "only for --force"),
    ):
        assert_one_error(run_homing("rotate", "endpoints", "--data", data, *args), words)
    settings = home.state.dd.settings()
    assert settings.hosts == [OLD]
