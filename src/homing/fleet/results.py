"""What a simulation found: per strategy, and for the whole run.

Counts are by typed cause (``Cause``), never by text; every device ends in
one class (``StrategyResult.end_states``), so a reader can tell a design
limit from a bug.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from homing.fleet.scenario import Scenario
from homing.fleet.strategies import (
    Cause,
)

__all__ = [
    "CAUSES",
    "CAUSE_CODES",
    "CERT_EXPIRED",
    "LAPSE_CAUSE_CODES",
    "Results",
    "StrategyResult",
]

CERT_EXPIRED = Cause.CERT_EXPIRED
# Each cause as a small integer, for a per-device array (and back).
CAUSES = tuple(Cause)
CAUSE_CODES = {cause: code for code, cause in enumerate(CAUSES)}
# What an operator's lapse cuts devices off with (homing.fleet.world).
LAPSE_CAUSE_CODES = [
    CAUSE_CODES[c] for c in (Cause.METADATA_EXPIRED, Cause.ROOT_EXPIRED, Cause.TARGETS_EXPIRED)
]
# Later than any tick of a run.


@dataclass
class StrategyResult:
    name: str
    summary: str
    bricked: int = 0
    manual_recoveries: int = 0
    manual_recovery_events: int = 0
    cut_off_devices: int = 0
    exposed_devices: int = 0
    exposure_device_days: float = 0.0
    exposure_max_days: float = 0.0
    # Every theft's exposure, by what was stolen (the fields above: the TLS key).
    exposures: dict[str, dict[str, Any]] = field(default_factory=dict)
    caught_up: int = 0
    catch_up_ms: float = 0.0
    catch_up_requests: float = 0.0
    returned_days: list[float] = field(default_factory=list)
    requests: int = 0
    key_proof_recoveries: int = 0
    certificate_renewals: int = 0
    reasons: Counter[Cause] = field(default_factory=Counter)
    # What the real check said, the first time each cause was met.
    details: dict[Cause, str] = field(default_factory=dict)
    connected: list[float] = field(default_factory=list)
    # Device-days spent cut off (deployed, last contact failed), per device class.
    cut_off_days: dict[str, float] = field(default_factory=dict)
    revoked: int = 0
    # Devices that died cut off but would have come back by themselves (not bricked).
    retired_cut_off: int = 0
    # Why the bricked devices were last cut off (None: a contact with no cause).
    bricked_causes: Counter[Cause | None] = field(default_factory=Counter)
    # Every device's state when the run stops, by class: they add up to the fleet.
    end_states: dict[str, int] = field(default_factory=dict)
    # homing's devices: firmware taken through the real agent's update.
    firmware_installs: int = 0
    firmware_refused: int = 0
    firmware_reasons: dict[str, int] = field(default_factory=dict)
    firmware_behind: int = 0
    takes_firmware: bool = False

    @property
    def why(self) -> str:
        """The one line that explains this strategy's failures."""
        if not self.reasons:
            return "never cut off"
        cause = self.reasons.most_common(1)[0][0]
        reason = cause.value
        if cause in self.details:
            reason = f"{reason}: {self.details[cause]}"
        return reason if len(self.reasons) == 1 else f"{reason} (and {len(self.reasons) - 1} more)"

    def to_json(self) -> dict[str, Any]:
        returned = sorted(self.returned_days)
        return {
            "name": self.name,
            "summary": self.summary,
            "bricked": self.bricked,
            "died_cut_off_not_bricked": self.retired_cut_off,
            "end_states": self.end_states,
            "bricked_by_cause": {
                (cause.name if cause is not None else "none"): count
                for cause, count in self.bricked_causes.most_common()
            },
            "manual_recoveries": self.manual_recoveries,
            "manual_recovery_events": self.manual_recovery_events,
            "devices_ever_cut_off": self.cut_off_devices,
            "compromises": self.exposures,
            "compromise": {
                "exposed_devices": self.exposed_devices,
                "exposed_device_days": round(self.exposure_device_days, 2),
                "longest_exposure_days": finite_or_none(self.exposure_max_days),
            },
            "catch_up": {
                "automatic": self.caught_up,
                "mean_walk_ms": round(self.catch_up_ms / self.caught_up, 2)
                if self.caught_up
                else 0,
                "mean_requests": (
                    round(self.catch_up_requests / self.caught_up, 2) if self.caught_up else 0
                ),
                "after_cut_off": len(returned),
                "median_days_cut_off": returned[len(returned) // 2] if returned else 0,
                "max_days_cut_off": returned[-1] if returned else 0,
            },
            "server_requests": self.requests,
            "key_proof_recoveries": self.key_proof_recoveries,
            "certificate_renewals": self.certificate_renewals,
            "reasons": {c.value: n for c, n in self.reasons.most_common()},
            "causes": {c.name.lower(): n for c, n in self.reasons.most_common()},
            "why": self.why,
            "revoked": self.revoked,
            # Only homing's devices take firmware through the simulated home.
            "firmware": {
                "installs": self.firmware_installs,
                "refused": self.firmware_refused,
                "reasons": dict(self.firmware_reasons),
                "devices_behind_what_they_were_offered": self.firmware_behind,
            }
            if self.takes_firmware
            else None,
            "cut_off_device_days": {
                "total": round(sum(self.cut_off_days.values()), 1),
                **{k: round(v, 1) for k, v in self.cut_off_days.items()},
            },
        }


def finite_or_none(value: float) -> float | None:
    return None if math.isinf(value) else round(value, 2)


@dataclass
class Results:
    scenario: Scenario
    devices: int
    years: float
    ticks: int
    events: list[tuple[int, str]]
    strategies: list[StrategyResult]
    compromise_day: float | None
    timestamp_expiry_days: float
    # Days in one step (tick) of the run: a week unless the scenario asked finer.
    step_days: int = 7

    def to_json(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario.name,
            "devices": self.devices,
            "years": self.years,
            "seed": self.scenario.fleet.seed,
            "steps": self.ticks,
            "step_days": self.step_days,
            "compromise_day": self.compromise_day,
            "timestamp_expiry_days": self.timestamp_expiry_days,
            "events": [{"day": t * self.step_days, "event": e} for t, e in self.events],
            "strategies": [s.to_json() for s in self.strategies],
            "connected_share": {
                s.name: [round(v, 5) for v in s.connected] for s in self.strategies
            },
        }
