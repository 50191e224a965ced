"""Power cuts: the agent stopped dead at every kind of write, then started again.

Each run copies a device state, cuts the power at a chosen file-system
operation of the cycle (every ``os.replace``, ``os.remove`` and ``os.symlink``
the agent or python-tuf makes; before or after it takes effect), then starts
a fresh agent from what is on disk, which must finish the job. The number of
runs is ``HOMING_POWER_CUT_RUNS`` (default 50 each). A second test kills a
real agent process with SIGKILL at random moments.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from homing import ceremonies
from homing.agent.agent import Agent
from homing.agent.state import DeviceState
from homing.operations.provisioning import provision
from homing.trust.pins import PinPolicy
from tests.harness import RunningServer, homing_entry_point

pytestmark = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)

RUNS = int(os.environ.get("HOMING_POWER_CUT_RUNS", "50"))
KILL_RUNS = int(os.environ.get("HOMING_KILL_RUNS", "8"))
_OPS = ("replace", "remove", "symlink")


class PowerCut(BaseException):
    """Raised where the power went; nothing in the process survives it."""


@contextmanager
def power_cut_at(index: int | None, after: bool) -> Iterator[list[int]]:
    """Cut the power at the ``index``-th file operation (None: only count them)."""
    originals: dict[str, Callable[..., Any]] = {op: getattr(os, op) for op in _OPS}
    counter = [0]

    def wrap(op: str) -> Callable[..., Any]:
        def faulty(*args: Any, **kwargs: Any) -> Any:
            counter[0] += 1
            if index is not None and counter[0] == index and not after:
                raise PowerCut(op)
            if index is not None and counter[0] == index and after:
                try:
                    originals[op](*args, **kwargs)
                finally:
                    raise PowerCut(op)
            return originals[op](*args, **kwargs)

        return faulty

    for op in _OPS:
        setattr(os, op, wrap(op))
    try:
        yield counter
    finally:
        for op, fn in originals.items():
            setattr(os, op, fn)


def _consistent(state: DeviceState) -> None:
    """Every file the agent keeps is whole: it parses."""
    state.config()
    state.key()
    assert state.certificate() is not None
    pins = state.root / "pins.json"
    if pins.exists():
        PinPolicy.from_bytes(pins.read_bytes())


def _agent(state: DeviceState, server: RunningServer, offset: timedelta) -> Agent:
    return Agent(
        state, server=f"https://127.0.0.1:{server.port}", clock=lambda: datetime.now(UTC) + offset
    )


def _power_cut_runs(
    template: DeviceState,
    server: RunningServer,
    tmp_path: Path,
    offset: timedelta,
    expect_step: str,
) -> None:
    probe = DeviceState(tmp_path / "probe")
    shutil.copytree(template.root, probe.root)
    with power_cut_at(None, False) as counter:
        report = _agent(probe, server, offset).run_once()
    assert report.checked_in, report
    assert any(expect_step in step for step in report.steps), report.steps
    operations = counter[0]
    assert operations >= 5
    rng = random.Random(20261128)
    for run in range(RUNS):
        state = DeviceState(tmp_path / f"run-{run}")
        shutil.copytree(template.root, state.root)
        index, after = rng.randint(1, operations), rng.random() < 0.5
        with power_cut_at(index, after) as seen:
            try:
                _agent(state, server, offset).run_once()
            except PowerCut:
                pass  # the expected outcome; the else branch fails the test
            else:
                pytest.fail(f"run {run}: no power cut at {index} of {seen[0]} operations")
        _consistent(state)
        report = _agent(state, server, offset).run_once()
        assert report.checked_in, (run, index, after, report)
        _consistent(state)


def test_power_cuts_during_a_trust_update(server: RunningServer, tmp_path: Path) -> None:
    template = provision(
        server.state.dd, tmp_path / "template", datetime.now(UTC), device_id="dev-1"
    )
    now = datetime.now(UTC)
    ceremonies.rotate_root(server.state.dd, now)
    ceremonies.rotate_issuing_ca(server.state.dd, "server", now)
    ceremonies.rotate_issuing_ca(server.state.dd, "server", now)
    ceremonies.rotate_root(server.state.dd, now)
    server.settle()
    _power_cut_runs(template, server, tmp_path, timedelta(), "bootstrap channel")


def test_power_cuts_during_a_certificate_renewal(server: RunningServer, tmp_path: Path) -> None:
    template = provision(
        server.state.dd, tmp_path / "template", datetime.now(UTC), device_id="dev-1"
    )
    offset = timedelta(days=250)
    ceremonies.refresh_snapshot(server.state.dd, datetime.now(UTC) + offset)
    ceremonies.rotate_server_cert(server.state.dd, datetime.now(UTC) + offset)
    server.clock.advance(offset)
    server.settle()
    _power_cut_runs(template, server, tmp_path, offset, "renewed")


def test_sigkill_at_random_moments(server: RunningServer, tmp_path: Path) -> None:
    """A real `homing agent run --once` process killed with SIGKILL, then run again."""
    template = provision(
        server.state.dd, tmp_path / "template", datetime.now(UTC), device_id="dev-1"
    )
    ceremonies.rotate_issuing_ca(server.state.dd, "server", datetime.now(UTC))
    ceremonies.rotate_issuing_ca(server.state.dd, "server", datetime.now(UTC))
    server.settle()
    rng = random.Random(7)
    command = [
        homing_entry_point(),
        "agent",
        "run",
        "--once",
        "--server",
        f"https://127.0.0.1:{server.port}",
        "--state",
    ]
    for run in range(KILL_RUNS):
        state = tmp_path / f"kill-{run}"
        shutil.copytree(template.root, state)
        process = subprocess.Popen(
            [*command, str(state)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        time.sleep(rng.uniform(0.3, 1.2))
        process.send_signal(signal.SIGKILL)
        process.wait()
        _consistent(DeviceState(state))
        result = subprocess.run(
            [*command, str(state)], capture_output=True, text=True, timeout=120, check=False
        )
        assert result.returncode == 0, result.stderr
