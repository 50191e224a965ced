"""The simulator's newer events: emergency rotations, late answers to a theft with a share
of the fleet intercepted, clocks that reset at every start and are fixed later, and a
finer step than a week. Each runs its shipped scenario (docs/scenarios/) with the real
ceremonies and the real agent, and a variant that shows the setting is what matters."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from homing.errors import ConfigError
from homing.fleet.scenario import CompromiseResponse
from homing.fleet.scenario_file import load_scenario, scenario_from_dict
from homing.fleet.simulate import StrategyResult, simulate
from homing.fleet.strategies import Cause

pytestmark = [pytest.mark.xdist_group("simulate"), pytest.mark.long]

SCENARIOS = Path(__file__).resolve().parent.parent / "docs" / "scenarios"
DEVICES = 600


def _run(
    name: str, strategies: list[str], **changes: object
) -> tuple[dict[str, StrategyResult], list[tuple[int, str]]]:
    scenario = load_scenario(SCENARIOS / name).with_fleet(devices=DEVICES)
    if changes:
        scenario = dataclasses.replace(scenario, **changes)  # type: ignore[arg-type]
        scenario.check()
    results = simulate(scenario, strategies)
    return {s.name: s for s in results.strategies}, results.events


def test_emergency_rotations_happen_unannounced_and_homing_loses_nobody() -> None:
    results, events = _run("emergency-rotations.toml", ["announce-next", "homing"])
    sudden = [e for _, e in events if "emergency" in e]
    assert len(sudden) == 4, events
    assert any("server TLS key replaced at once" in e for e in sudden)
    assert any("device CA replaced at once" in e for e in sudden)
    homing = results["homing"]
    assert homing.bricked == 0
    assert sum(homing.cut_off_days.values()) == 0
    # The same fleet with the server's key changed on its schedule instead (announced):
    # the unannounced change is what cuts announce-next's devices off.
    calm, _ = _run("emergency-rotations.toml", ["announce-next"], emergency_rotations=())
    assert results["announce-next"].bricked > calm["announce-next"].bricked


def test_a_late_answer_lengthens_exposure_and_interception_bounds_who_and_how_long() -> None:
    results, events = _run("compromise-response.toml", ["private-ca", "homing"])
    assert any("14 days after the theft" in e for _, e in events)
    homing = results["homing"].exposures["server CA key"]
    private = results["private-ca"].exposures["server CA key"]
    # homing's devices accept the minted certificate until the freshest replay the
    # attacker holds expires: signed just before the answer, two weeks after the theft.
    assert 7 < homing["longest_exposure_days"] <= 14 + 1
    # The attacker reaches a fifth of the fleet for 60 days: no longer, no more.
    assert private["longest_exposure_days"] <= 60
    assert 0.1 * DEVICES < private["exposed_devices"] < 0.3 * DEVICES
    assert private["intercepted_share"] == 0.2
    # Answered at once, and every device in reach for the rest of the run.
    everyone, _ = _run(
        "compromise-response.toml", ["private-ca", "homing"], compromise=CompromiseResponse()
    )
    at_once = everyone["homing"].exposures["server CA key"]
    assert at_once["longest_exposure_days"] <= 1.0
    assert everyone["private-ca"].exposures["server CA key"]["exposed_devices"] > 0.8 * DEVICES
    assert results["homing"].bricked == everyone["homing"].bricked == 0


def test_clocks_that_reset_at_every_start_cut_baselines_off_until_fixed() -> None:
    results, _ = _run("clock-resets.toml", ["private-ca", "homing"])
    private, homing = results["private-ca"], results["homing"]
    assert private.reasons[Cause.CLOCK_WRONG] > 0
    assert private.cut_off_days["no clock battery"] > 0
    assert private.cut_off_days["good clock"] == 0
    # Set right in year 3 (even a device that starts in the very week of the fix).
    assert private.bricked == 0
    assert homing.bricked == 0
    assert sum(homing.cut_off_days.values()) == 0
    # Never fixed: the baseline's sleepers stay cut off, homing's still ask home.
    scenario = load_scenario(SCENARIOS / "clock-resets.toml")
    never = tuple(dataclasses.replace(p, clock_fixed_at=None) for p in scenario.populations)
    unfixed, _ = _run("clock-resets.toml", ["private-ca", "homing"], populations=never)
    assert unfixed["private-ca"].bricked_causes[Cause.CLOCK_WRONG] > 0
    assert unfixed["homing"].bricked == 0
    assert sum(unfixed["homing"].cut_off_days.values()) == 0


def test_a_daily_step_expresses_events_days_apart() -> None:
    scenario = load_scenario(SCENARIOS / "daily-step.toml").with_fleet(devices=DEVICES)
    results = simulate(scenario, ["private-ca", "homing"])
    assert results.step_days == 1
    assert results.ticks == 731
    assert results.to_json()["step_days"] == 1
    assert any(tick % 7 for tick, _ in results.events)
    homing = next(s for s in results.strategies if s.name == "homing")
    # A four-day lapse cuts homing's online devices off for four days at most each.
    assert homing.reasons[Cause.METADATA_EXPIRED] > 0
    assert 0 < sum(homing.cut_off_days.values()) <= 5 * DEVICES
    assert homing.bricked == 0
    # The same lapse cannot be said in weeks.
    with pytest.raises(ConfigError, match=r"fleet\.step_days"):
        scenario_from_dict({"lapse": [{"role": "timestamp", "at": 1.0, "days": 4}]})


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"fleet": {"step_days": 0}}, "step_days must be between 1 and 7"),
        ({"fleet": {"step_days": 14}}, "step_days must be between 1 and 7"),
        ({"emergency_rotation": [{"of": "hsm", "at": 1.0}]}, "of must be one of"),
        ({"emergency_rotation": [{"at": 1.0}]}, "needs of"),
        ({"compromise": {"intercepted_share": 0}}, "intercepted_share"),
        ({"compromise": {"response_days": -1}}, "response_days"),
        ({"compromise": {"intercept_days": 0}}, "intercept_days"),
        ({"compromise": {"delay": 3}}, "unknown key compromise.delay"),
        (
            {"population": [{"pattern": "daily", "share": 1.0, "clock_resets_at_boot": "yes"}]},
            "true or false",
        ),
        (
            {"population": [{"pattern": "daily", "share": 1.0, "clock_fixed_at": -1}]},
            "clock_fixed_at",
        ),
    ],
)
def test_the_new_settings_are_parsed_strictly(doc: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        scenario_from_dict(doc)
