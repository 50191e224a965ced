"""The resident agent says what it does: one journal line per cycle, and a readable status."""

from __future__ import annotations

import logging
import random
from pathlib import Path

import pytest

from homing.agent.agent import Agent
from homing.agent.runner import run_forever
from tests import fleet
from tests.harness import RunningServer, run_homing

pytestmark = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


class _Stop(Exception):
    """Ends the resident loop after the cycles a test wants."""


def _cycles(agent: Agent, count: int) -> list[float]:
    delays: list[float] = []

    def sleep(delay: float) -> None:
        delays.append(delay)
        if len(delays) == count:
            raise _Stop

    with pytest.raises(_Stop):
        run_forever(agent, 600.0, sleep=sleep, rng=random.Random(1))
    return delays


def test_each_cycle_logs_one_line_with_what_it_did_and_when_it_runs_next(
    server: RunningServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    state = fleet.device(server, tmp_path, "dev-log", "board-a")
    caplog.set_level(logging.INFO, logger="homing.agent.runner")
    agent = Agent(state, server=fleet.url(server), firmware_version="1.0.0")
    delays = _cycles(agent, 2)
    lines = [r.getMessage() for r in caplog.records if r.name == "homing.agent.runner"]
    assert len(lines) == 2, lines  # one per cycle
    assert lines[0].startswith("checked in (trust root v1, targets v")
    assert f"next cycle in {delays[0]:.0f} s (at " in lines[0]
    assert "\n" not in lines[0]
    # A home out of reach: said, with the backoff's retry.
    caplog.clear()
    down = Agent(state, server="https://127.0.0.1:1", firmware_version="1.0.0")
    delays = _cycles(down, 1)
    lines = [r.getMessage() for r in caplog.records if r.name == "homing.agent.runner"]
    assert len(lines) == 1, lines
    assert lines[0].startswith("not checked in: ")
    assert f"retry in {delays[0]:.0f} s" in lines[0]


def test_agent_status_reads_as_sentences(server: RunningServer, tmp_path: Path) -> None:
    state = fleet.device(server, tmp_path, "dev-status", "board-a")
    fleet.check_in(server, state)
    shown = run_homing("agent", "status", "--state", str(state.root))
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[0] == "device dev-status (board-a)"
    assert any(line.startswith("certificate: valid until ") for line in lines)
    assert any(line.startswith("trust: root v1, ") for line in lines)
    assert "firmware: the factory image" in lines
    assert any(line.startswith("last cycle: ") and line.endswith(": checked in") for line in lines)
    assert "{" not in shown.stdout  # no Python reprs
