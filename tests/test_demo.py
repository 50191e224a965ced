"""`homing demo` tells its story with real parts, and the story ends as it says."""

from __future__ import annotations

from pathlib import Path

import pytest

from homing.fleet.demo import run_demo
from tests.harness import run_homing


def test_demo_story(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HOMING_KEY_PASSPHRASE", raising=False)
    lines: list[str] = []
    table = run_demo(lines.append, tmp_path)
    rows = {row["device"]: row for row in table}
    assert rows["doorbell"]["last cycle"] == "checked in"
    assert rows["doorbell"]["root"] == "3"
    assert rows["kettle"]["last cycle"] == "checked in"
    assert rows["thermostat"]["last cycle"].startswith("revoked")
    assert {row["firmware"] for row in table} == {"2.0.0"}
    story = " ".join(lines)
    assert "walked 3 roots" in story
    assert "refused" in story


def test_demo_command_runs_in_under_a_minute() -> None:
    result = run_homing("demo", timeout=60)
    assert result.returncode == 0, result.stderr
    assert "the fleet at the end" in result.stdout
