"""Rollouts: which device gets which image, in stages, halting by itself on failures.

- Membership of a stage is a fixed hash of device and rollout
  (``homing.store.firmware.bucket``): a device never flips in and out.
- Success counts only when a device has booted the new image and committed
  it, never at download or install.
- A stage advances when its committed share reaches the success ratio (and
  its soak time has passed); the rollout halts by itself when failed,
  rolled-back and stalled devices pass the failure ratio of the stage's size.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection

from homing.errors import ConflictError, PolicyError
from homing.store import Database, audit
from homing.store import firmware as store

__all__ = [
    "RolloutPlan",
    "assignment",
    "create",
    "evaluate",
    "list_rollouts",
    "list_with_stages",
    "plan_from_json",
    "set_group",
    "set_paused",
    "stage_summary",
    "status",
]

FINISHED = ("committed", *store.FAILED)

# The request fields of POST /v1/admin/rollouts beyond version and hardware.
_PLAN_FIELDS = {
    "stages",
    "max_failure_ratio",
    "success_ratio",
    "soak_minutes",
    "deadline_hours",
    "group",
}


@dataclass(frozen=True)
class RolloutPlan:
    """How a rollout proceeds: the same defaults for the CLI and the admin API."""

    stages: tuple[int, ...] = (1, 10, 50, 100)
    max_failure_ratio: float = 0.1
    success_ratio: float = 0.9
    soak: timedelta = timedelta(0)
    deadline: timedelta = timedelta(hours=24)
    group: str | None = None


_YEAR_MINUTES = 365 * 24 * 60


def _number(body: dict[str, Any], key: str, default: float, maximum: float) -> float:
    value = body.get(key, default)
    # bool is an int to Python, never a ratio or a duration to an operator.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise PolicyError(f"{key!r} must be a number")
    # Compared as given: an integer too large for a float is refused, not rounded.
    if value != value or not 0 <= value <= maximum:
        raise PolicyError(f"{key!r} must be a number from 0 to {maximum:g}")
    return float(value)


def plan_from_json(body: dict[str, Any]) -> RolloutPlan:
    """The plan of an admin API request; unknown fields are refused, not ignored."""
    unknown = set(body) - _PLAN_FIELDS - {"version", "hardware"}
    if unknown:
        raise PolicyError(f"unknown field(s): {', '.join(sorted(unknown))}")
    default = RolloutPlan()
    stages = body.get("stages", list(default.stages))
    if not isinstance(stages, list) or not all(
        isinstance(s, int) and not isinstance(s, bool) for s in stages
    ):
        raise PolicyError("'stages' must be a list of percentages")
    group = body.get("group")
    if group is not None and not isinstance(group, str):
        raise PolicyError("'group' must be a string")
    return RolloutPlan(
        stages=tuple(stages),
        max_failure_ratio=_number(body, "max_failure_ratio", default.max_failure_ratio, 1),
        success_ratio=_number(body, "success_ratio", default.success_ratio, 1),
        # Stored in seconds in an integer column: a year bounds both.
        soak=timedelta(minutes=_number(body, "soak_minutes", 0.0, _YEAR_MINUTES)),
        deadline=timedelta(hours=_number(body, "deadline_hours", 24.0, _YEAR_MINUTES / 60)),
        group=group,
    )


def create(
    db: Database,
    actor: str,
    now: datetime,
    version: str,
    hardware: str,
    plan: RolloutPlan | None = None,
) -> store.Rollout:
    """A rollout in stages of the hardware class, or (``group``) to one named device group."""
    plan = plan or RolloutPlan()
    stages: Sequence[int] = plan.stages
    max_failure_ratio, success_ratio = plan.max_failure_ratio, plan.success_ratio
    soak, deadline, group = plan.soak, plan.deadline, plan.group
    if group is not None:
        stages = (100,)
    if not stages or any(not 0 < s <= 100 for s in stages) or list(stages) != sorted(set(stages)):
        raise PolicyError("stages must be increasing percentages in (0, 100], e.g. 1,10,50,100")
    if stages[-1] != 100:
        raise PolicyError("the last stage must be 100 (%)")
    if not 0 <= max_failure_ratio < 1 or not 0 < success_ratio <= 1:
        raise PolicyError("max failure ratio must be in [0, 1) and success ratio in (0, 1]")
    if deadline <= timedelta(0):
        raise PolicyError("the stall deadline must be positive")
    with db.begin() as conn:
        rel = store.release(conn, hardware, version)
        current = store.active_rollout(conn, hardware)
        if current is not None and current.status == "active":
            raise ConflictError(f"a rollout for {hardware} is active: pause or finish it first")
        if group is not None and not store.groups_members(conn, group):
            raise PolicyError(f"device group {group!r} is empty or unknown")
        rollout_id = store.add_rollout(
            conn, rel, stages, max_failure_ratio, success_ratio, soak, deadline, now, group
        )
        audit.audit(
            conn,
            now,
            actor,
            "rollout_create",
            str(rollout_id),
            {
                "version": version,
                "hardware": hardware,
                "stages": list(stages),
                "group": group,
                "max_failure_ratio": max_failure_ratio,
                "success_ratio": success_ratio,
                "soak_minutes": soak.total_seconds() / 60,
                "deadline_hours": deadline.total_seconds() / 3600,
            },
        )
        return store.rollout(conn, rollout_id)


def set_paused(db: Database, actor: str, now: datetime, rollout_id: int, paused: bool) -> None:
    with db.begin() as conn:
        ro = store.rollout(conn, rollout_id)
        wanted, allowed = ("paused", ("active",)) if paused else ("active", ("paused", "halted"))
        if ro.status not in allowed:
            raise ConflictError(f"rollout {rollout_id} is {ro.status}")
        store.set_rollout_status(conn, rollout_id, wanted)
        audit.audit(
            conn, now, actor, "rollout_pause" if paused else "rollout_resume", str(rollout_id)
        )


def evaluate(conn: Connection, rollout_id: int, now: datetime) -> store.Rollout:
    """Apply the halt rule, then the advance rule, to the current stage."""
    ro = store.rollout(conn, rollout_id)
    if ro.status != "active":
        return ro
    counts = store.stage_counts(conn, ro, now)
    size = counts["size"]
    bad = counts["failed"] + counts["stalled"]
    if size and bad / size > ro.max_failure_ratio:
        reason = (
            f"halted at stage {ro.stage_index + 1} ({ro.percent}%): {counts['failed']} failed and "
            f"{counts['stalled']} stalled of {size} devices, above the allowed "
            f"{ro.max_failure_ratio:.0%}"
        )
        if counts["reasons"]:
            reason += "; reasons: " + "; ".join(counts["reasons"])
        store.set_rollout_status(conn, rollout_id, "halted", reason=reason)
        audit.audit(conn, now, "rollouts", "rollout_halt", str(rollout_id), {"reason": reason})
    elif (not size or counts["committed"] / size >= ro.success_ratio) and (
        now - ro.stage_started_at >= ro.soak
    ):
        if ro.stage_index + 1 < len(ro.stages):
            store.set_rollout_status(
                conn, rollout_id, "active", stage_index=ro.stage_index + 1, now=now
            )
        else:
            store.set_rollout_status(conn, rollout_id, "done")
    return store.rollout(conn, rollout_id)


def assignment(
    conn: Connection, device_id: str, hardware: str | None, running: str | None, now: datetime
) -> dict[str, Any] | None:
    """The update a checking-in device should install, or None."""
    if hardware is None:
        return None
    ro = store.active_rollout(conn, hardware)
    if ro is None or running == ro.version:
        return None
    if not ro.covers(device_id, store.groups_of(conn, device_id) if ro.group else frozenset()):
        return None
    state = store.device_state(conn, ro.id, device_id)
    if state in FINISHED:
        return None
    if state is None:
        store.record_progress(conn, ro.id, device_id, "assigned", now)
    rel = store.release(conn, hardware, ro.version)
    return {"rollout": ro.id, "target": ro.target, "version": ro.version, "sequence": rel.sequence}


def status(db: Database, rollout_id: int, now: datetime) -> dict[str, Any]:
    with db.engine.connect() as conn:
        ro = store.rollout(conn, rollout_id)
        return {**ro.to_json(), "stage_progress": store.stage_counts(conn, ro, now)}


def list_rollouts(db: Database) -> list[store.Rollout]:
    """Every rollout and its state."""
    with db.engine.connect() as conn:
        return store.list_rollouts(conn)


def stage_summary(ro: store.Rollout, counts: dict[str, Any]) -> str:
    """One line an operator reads: which stage, how many devices of the class, which.

    "stage 1 of 4 (1%): 1 of 8 board-a devices (lab-3)"
    """
    names = counts["devices"]
    shown = ", ".join(names[:5]) + (
        f", and {counts['size'] - 5} more" if counts["size"] > 5 else ""
    )
    who = f" ({shown})" if names else ""
    if ro.group is not None:
        where = f"group {ro.group!r}"
    else:
        stage = min(ro.stage_index, len(ro.stages) - 1) + 1
        where = f"stage {stage} of {len(ro.stages)} ({ro.percent}%)"
    return f"{where}: {counts['size']} of {counts['class_size']} {ro.hardware} devices{who}"


def list_with_stages(
    db: Database, now: datetime
) -> list[tuple[store.Rollout, dict[str, Any] | None]]:
    """Every rollout, with its current stage's devices unless it is done."""
    with db.engine.connect() as conn:
        return [
            (ro, None if ro.status == "done" else store.stage_counts(conn, ro, now))
            for ro in store.list_rollouts(conn)
        ]


def set_group(
    db: Database, actor: str, now: datetime, name: str, device_ids: Sequence[str]
) -> None:
    """Make the named device group exactly these devices (for rollouts to a group)."""
    from homing.fsutil import safe_name

    safe_name(name, "group name")
    with db.begin() as conn:
        store.set_group(conn, name, list(device_ids))
        audit.audit(conn, now, actor, "set_group", name, {"devices": list(device_ids)})
