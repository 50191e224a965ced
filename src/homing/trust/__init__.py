"""The trust repository (TUF metadata) and the device-side refresh."""

from homing.trust.client import DirectoryFetcher, TrustState, refresh_trust
from homing.trust.pins import PIN_POLICY_TARGET, PinPolicy
from homing.trust.repository import FIRMWARE_ROLE, RoleKeys, TrustRepository

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
