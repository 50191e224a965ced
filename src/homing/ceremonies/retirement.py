"""The retirement guard: no rotation retires the only key live devices trust.

The root zone's first key rollover taught it: a share of the resolvers held
only the old key when it was retired. Here each device reports, at every
check-in, the SHA-256 of the pin policy it holds; the pin history turns that
into the pins it holds. Before the server-issuing CA's backup key is
promoted, every device seen within the live window must hold the pin of the
key that will sign the server's certificate from now on. A device that does
not would lose its pinned channel and depend on the unpinned bootstrap
channel to catch up, a path a network that blocks or intercepts unpinned
TLS takes away. The guard refuses and names the devices, unless the
operator forces it with a reason, which goes to the audit log.

Devices that never reported their trust (agents older than this report)
cannot be judged; they are counted and named as unknown, not refused on.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from homing.errors import CeremonyError, StrandingError
from homing.site import DataDir
from homing.store import pin_history
from homing.trust.pins import PIN_POLICY_TARGET, PinPolicy

__all__ = [
    "DEFAULT_LIVE_WINDOW",
    "GuardVerdict",
    "check_pin_retirement",
    "record_published_pins",
    "stranding_refusal",
]

# A device seen within this window is live: it is expected back on its pins.
DEFAULT_LIVE_WINDOW = timedelta(days=30)
_NAMED = 20


@dataclass(frozen=True)
class GuardVerdict:
    """Who a rotation would strand (refused unless forced) and whose trust is unknown."""

    stranded: tuple[str, ...]
    unknown: tuple[str, ...]
    live: int


def record_published_pins(dd: DataDir, policy_bytes: bytes, generation: int, now: datetime) -> None:
    """Add a published pin policy to the history devices' reports are read against."""
    policy = PinPolicy.from_bytes(policy_bytes)
    with dd.database().begin() as conn:
        pin_history.record_policy(conn, policy_bytes, policy.spki_pins, generation, now)


def check_pin_retirement(
    dd: DataDir,
    new_active_pin: str,
    now: datetime,
    *,
    live_within: timedelta = DEFAULT_LIVE_WINDOW,
    force_reason: str | None = None,
) -> GuardVerdict:
    """Raise ``StrandingError`` when a live device does not hold ``new_active_pin``.

    With ``force_reason`` the verdict is returned instead; the caller audits it.
    """
    if live_within <= timedelta(0):
        raise CeremonyError("the live window must be positive")
    if force_reason is not None and not force_reason.strip():
        raise CeremonyError("forcing a rotation needs a reason (it is audited)")
    settings = dd.settings()
    repo = dd.repository(settings)
    # The policy published now is in the history even for sites older than it.
    record_published_pins(
        dd, repo.target_bytes(PIN_POLICY_TARGET), settings.server_ca_generation, now
    )
    with dd.database().begin() as conn:
        known = pin_history.policies(conn)
        held = pin_history.live_device_trust(conn, now - live_within)
    stranded, unknown = [], []
    for device in held:
        policy = known.get(device.pin_policy_sha256 or "")
        if policy is None:
            unknown.append(device.device_id)
        elif new_active_pin not in policy.pins:
            stranded.append(device.device_id)
    verdict = GuardVerdict(tuple(stranded), tuple(unknown), len(held))
    if stranded and force_reason is None:
        raise stranding_refusal(
            stranded,
            len(held),
            live_within,
            "hold pins that do not include the key this rotation activates, so they would "
            "lose their pinned path home",
            "Let them check in on the current pins first",
        )
    return verdict


def stranding_refusal(
    stranded: list[str], live: int, live_within: timedelta, why: str, wait: str
) -> StrandingError:
    """The one-line refusal of every guard: how many of the live devices, why, and who."""
    named = ", ".join(stranded[:_NAMED]) + (" ..." if len(stranded) > _NAMED else "")
    days = live_within.total_seconds() / 86400
    return StrandingError(
        f"refusing: {len(stranded)} of {live} live devices (seen within {days:g} days) "
        f"{why}: {named}. {wait}, or force with a reason",
        tuple(stranded),
    )
