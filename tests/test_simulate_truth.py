"""The simulator tells the truth about every event it accepts: no crash on a lapse of any
role at any length of run, no ceremony dropped because a lapse held it back, and no device
counted bricked that died while a lapse kept it from home."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from homing.fleet.device_table import padded_counts
from homing.fleet.scenario_file import load_scenario, scenario_from_dict
from homing.fleet.simulate import simulate
from homing.fleet.strategies import Cause

SCENARIOS = Path(__file__).resolve().parent.parent / "docs" / "scenarios"
pytestmark = [pytest.mark.xdist_group("simulate-truth"), pytest.mark.long]


def _run(doc: dict[str, Any], strategies: list[str]) -> dict[str, Any]:
    results = simulate(scenario_from_dict(doc), strategies)
    return {"results": results, **{s.name: s for s in results.strategies}}


@pytest.mark.parametrize("role", ["root", "targets", "snapshot", "timestamp"])
def test_a_lapse_of_any_role_runs_and_homing_comes_back(role: str) -> None:
    """A root lapse crashed the run: the simulated operator's signing saved a stale copy
    of the settings over the new root keys its own rotation had written."""
    run = _run(
        {
            "fleet": {"years": 3, "devices": 200, "manufacture_years": 1},
            "events": {"key_compromise": False},
            "lapse": [{"role": role, "at": 1.5, "days": 14}],
        },
        ["homing", "private-ca"],
    )
    homing = run["homing"]
    assert homing.bricked == 0
    assert sum(homing.reasons.values()) > 0  # the lapse did cut devices off, for a while
    assert homing.connected[-1] == 1.0


@pytest.mark.parametrize("years", [5, 10])
def test_the_shipped_lapse_scenario_runs_at_longer_lengths(years: int) -> None:
    """docs/scenarios/metadata-lapse.toml exited 1 at 5 and 10 years: the public root's
    successor, due in the lapse's first week, was never published for homing-public-ca."""
    scenario = load_scenario(SCENARIOS / "metadata-lapse.toml").with_fleet(devices=200, years=years)
    results = simulate(scenario, ["homing", "homing-public-ca"])
    for strategy in results.strategies:
        assert strategy.bricked == 0, strategy.name
        assert Cause.METADATA_EXPIRED in strategy.reasons, strategy.name
        assert strategy.connected[-1] == 1.0, strategy.name


def test_a_ceremony_scheduled_in_a_lapse_happens_at_its_end() -> None:
    """An issuing-CA rotation and a root rotation scheduled inside a lapse were dropped for
    homing while the baselines took them; now they are held back to the lapse's end."""
    run = _run(
        {
            "fleet": {"years": 3, "devices": 200, "manufacture_years": 1},
            "events": {
                "key_compromise": False,
                "issuing_ca_rotations": [1.52],
                "root_rotations": [1.52],
            },
            "lapse": [{"role": "timestamp", "at": 1.5, "days": 28}],
        },
        ["homing", "private-ca"],
    )
    events = [text for _, text in run["results"].events]
    held = [text for text in events if "held back by the lapse" in text]
    assert any("issuing CA rotated" in text for text in held), events
    assert any("root keys rotated" in text for text in held), events
    assert run["homing"].bricked == 0


def test_devices_that_die_during_a_lapse_are_not_counted_bricked() -> None:
    """254 homing devices were counted bricked that had only died during a 90-day lapse:
    they would have come back once it was re-signed. A baseline's device bricked before
    it died is still counted."""
    run = _run(
        {
            "fleet": {"years": 3, "devices": 1000, "manufacture_years": 0.5},
            "events": {"key_compromise": False},
            "population": [
                {"name": "always-on", "share": 0.5, "pattern": "always-on"},
                {
                    "name": "dying",
                    "share": 0.5,
                    "pattern": "dead",
                    "lifetime_years": [1.0, 2.0],
                },
            ],
            "lapse": [{"role": "timestamp", "at": 1.2, "days": 90}],
        },
        ["homing", "leaf-fingerprint"],
    )
    homing, fingerprint = run["homing"], run["leaf-fingerprint"]
    assert homing.retired_cut_off > 0  # some did die cut off by the lapse
    assert homing.bricked == 0
    assert homing.to_json()["died_cut_off_not_bricked"] == homing.retired_cut_off
    # A fingerprint that no longer matches never comes back: dead or alive, bricked.
    assert fingerprint.bricked == 1000
    assert fingerprint.retired_cut_off == 0


def test_the_x509_root_ca_rotates_through_the_real_ceremony_and_nobody_is_cut_off() -> None:
    """The world used to give homing a root that outlived the run; now a scenario replaces
    it (``root_ca_rotations``) with ``homing rotate root-ca``, as often as it likes."""
    scenario = load_scenario(SCENARIOS / "root-ca-rotation.toml").with_fleet(devices=300)
    results = simulate(scenario, ["homing", "private-ca"])
    homing = results.strategies[0]
    replaced = [t for t, text in results.events if "X.509 root CA replaced" in text]
    assert len(replaced) == 3
    assert homing.bricked == 0
    assert homing.why == "never cut off"
    assert homing.end_states["healthy"] + homing.end_states["not made"] == 300


def test_the_devices_per_state_counts_kept_as_states_move_equal_a_recount(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The run keeps how many devices hold each state as contacts move them, instead of
    counting the fleet again each week; after every week of every strategy, through
    catch-ups, refusals at the certificate step, a lapse and clocks re-keyed at each
    start, the kept counts equal a recount."""
    from homing.fleet.run import StrategyRun

    checked = []
    week = StrategyRun.week

    def checked_week(self: StrategyRun, *args: object, **kwargs: object) -> None:
        week(self, *args, **kwargs)  # type: ignore[arg-type]
        if self._held is not None:
            size = len(self.states.values)
            kept = padded_counts(self._held, size)
            recount = np.bincount(self.ids[self.ids >= 0], minlength=size)
            assert np.array_equal(kept, recount), self.strategy.name
            checked.append(self.strategy.name)

    monkeypatch.setattr(StrategyRun, "week", checked_week)
    scenario = scenario_from_dict({
        "fleet": {"devices": 400, "years": 3, "manufacture_years": 1},
        "events": {"key_compromise": 1.5, "issuing_ca_rotations": [1.0]},
        "policy": {"homing_device_cert_days": 30, "baseline_device_cert_days": 60},
        "lapse": [{"role": "timestamp", "at": 2.0, "days": 21}],
        "ca_compromise": [{"ca": "device", "at": 2.5}],
        "population": [
            {"pattern": "daily", "share": 0.5, "clock_resets_at_boot": True},
            {"pattern": "seasonal", "share": 0.5},
        ],
    })  # fmt: skip
    simulate(scenario)
    assert {"homing", "private-ca", "announce-next"} <= set(checked)
    assert len(checked) > 8 * 100
