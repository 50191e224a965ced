"""The registry of strategies the simulator compares (names in ``homing.fleet.STRATEGY_NAMES``).

The interface and outcomes are in ``strategy_base``, the six baselines in
``baselines``, homing itself in ``homing_strategy``.
"""

from __future__ import annotations

from collections.abc import Callable

from homing.fleet.baselines import (
    HPKP,
    AnnounceNext,
    FirmwarePins,
    LeafFingerprint,
    PrivateCA,
    PublicCA,
)
from homing.fleet.homing_strategy import Homing, HomingPublicCA
from homing.fleet.scenario import Scenario
from homing.fleet.strategy_base import (
    CAUGHT_UP,
    CUT_OFF,
    MANUAL,
    NEVER,
    OK,
    REFUSED,
    Cause,
    Contact,
    Outcome,
    Strategy,
)
from homing.fleet.world import World

__all__ = [
    "CAUGHT_UP",
    "CUT_OFF",
    "MANUAL",
    "NEVER",
    "OK",
    "REFUSED",
    "STRATEGIES",
    "Cause",
    "Contact",
    "Homing",
    "HomingPublicCA",
    "Outcome",
    "PrivateCA",
    "Strategy",
    "make",
]

STRATEGIES: dict[str, Callable[[World, Scenario], Strategy]] = {
    cls.name: cls
    for cls in (
        LeafFingerprint,
        AnnounceNext,
        PublicCA,
        HPKP,
        PrivateCA,
        FirmwarePins,
        Homing,
        HomingPublicCA,
    )
}


def make(name: str, world: World, scenario: Scenario) -> Strategy:
    return STRATEGIES[name](world, scenario)
