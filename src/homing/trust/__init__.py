"""The trust repository (TUF metadata) and the device-side refresh.

Names are imported on first use (PEP 562): a device never loads the
repository-writing code.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from homing.trust.client import DirectoryFetcher, TrustState, refresh_trust
    from homing.trust.pins import PIN_POLICY_TARGET, PinPolicy
    from homing.trust.repository import FIRMWARE_ROLE, RoleKeys, TrustRepository

_EXPORTS = {
    "DirectoryFetcher": "client",
    "TrustState": "client",
    "refresh_trust": "client",
    "PIN_POLICY_TARGET": "pins",
    "PinPolicy": "pins",
    "FIRMWARE_ROLE": "repository",
    "RoleKeys": "repository",
    "TrustRepository": "repository",
}

__all__ = [
    "FIRMWARE_ROLE",
    "PIN_POLICY_TARGET",
    "DirectoryFetcher",
    "PinPolicy",
    "RoleKeys",
    "TrustRepository",
    "TrustState",
    "refresh_trust",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'homing.trust' has no attribute {name!r}")
    return getattr(importlib.import_module(f"homing.trust.{module}"), name)
