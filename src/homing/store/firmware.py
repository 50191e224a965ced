"""Releases and rollouts: what exists, who is assigned what, and how it went."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, insert, select, update
from sqlalchemy.exc import IntegrityError

from homing.errors import ConflictError, NotFoundError
from homing.store.schema import device_groups, devices, releases, rollout_devices, rollouts

__all__ = [
    "FAILED",
    "IN_PROGRESS",
    "Release",
    "Rollout",
    "active_rollout",
    "add_release",
    "add_rollout",
    "bucket",
    "latest_release",
    "list_rollouts",
    "record_progress",
    "release",
    "rollout",
    "set_rollout_status",
    "stage_counts",
    "stage_cutoff",
]

IN_PROGRESS = ("assigned", "downloading", "installed", "booted")
FAILED = ("failed", "rolled_back")
STATES = (*IN_PROGRESS, "committed", *FAILED)


@dataclass(frozen=True)
class Release:
    target: str
    hardware: str
    version: str
    sequence: int
    length: int
    sha256: str
    downgrade: bool
    notes: str | None
    created_at: datetime


@dataclass(frozen=True)
class Rollout:
    id: int
    target: str
    hardware: str
    version: str
    stages: tuple[int, ...]
    stage_index: int
    stage_started_at: datetime
    max_failure_ratio: float
    success_ratio: float
    soak: timedelta
    deadline: timedelta
    status: str
    halt_reason: str | None
    created_at: datetime
    group: str | None = None
    cutoff: float | None = None

    def covers(self, device_id: str, groups: frozenset[str] = frozenset()) -> bool:
        """Whether the device is in the current stage (or in the rollout's group)."""
        if self.group is not None:
            return self.group in groups
        return bucket(device_id, self.id) < self.threshold

    @property
    def threshold(self) -> float:
        """The current stage holds the devices whose bucket is below this."""
        return self.percent if self.cutoff is None else max(self.cutoff, self.percent)

    @property
    def percent(self) -> int:
        return self.stages[min(self.stage_index, len(self.stages) - 1)]

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "target": self.target,
            "hardware": self.hardware,
            "version": self.version,
            "stages": list(self.stages),
            "stage": self.stage_index,
            "percent": self.percent,
            "status": self.status,
            "halt_reason": self.halt_reason,
            "max_failure_ratio": self.max_failure_ratio,
            "success_ratio": self.success_ratio,
            "soak_minutes": self.soak.total_seconds() / 60,
            "deadline_hours": self.deadline.total_seconds() / 3600,
            "group": self.group,
            "stage_cutoff": self.threshold,
        }


def bucket(device_id: str, rollout_id: int) -> float:
    """A device's fixed place in [0, 100) for one rollout: it never flips in and out."""
    digest = hashlib.sha256(f"{rollout_id}:{device_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % 10000 / 100


def stage_cutoff(conn: Connection, hardware: str, rollout_id: int, percent: int) -> float:
    """The bucket below which a stage of ``percent`` holds its devices.

    At least the percentage, raised so that the stage holds at least one device
    and ``percent`` of the class rounded up: a 1 % stage of eight devices holds
    one, not (by the hash alone) most likely none. Fixed when the stage starts,
    so a device never flips out as the fleet grows; a later stage's cutoff is
    never lower, so a device in a stage stays in every later one.
    """
    if percent >= 100:
        return 100.0
    buckets = sorted(
        bucket(d, rollout_id)
        for d in conn.execute(
            select(devices.c.device_id).where(
                devices.c.hardware == hardware, devices.c.status == "active"
            )
        ).scalars()
    )
    if not buckets:
        return float(percent)
    wanted = max(1, math.ceil(percent * len(buckets) / 100))
    # Buckets are multiples of 0.01: halfway to the next takes in the wanted-th device.
    return max(float(percent), buckets[wanted - 1] + 0.005)


def _release(r: Any) -> Release:
    m = dict(r._mapping)
    m["downgrade"] = bool(m["downgrade"])
    return Release(**m)


def _rollout(r: Any) -> Rollout:
    m = dict(r._mapping)
    return Rollout(
        id=m["id"],
        target=m["target"],
        hardware=m["hardware"],
        version=m["version"],
        stages=tuple(json.loads(m["stages"])),
        stage_index=m["stage_index"],
        stage_started_at=m["stage_started_at"],
        max_failure_ratio=m["max_failure_ratio"],
        success_ratio=m["success_ratio"],
        soak=timedelta(seconds=m["soak_seconds"]),
        deadline=timedelta(seconds=m["deadline_seconds"]),
        status=m["status"],
        halt_reason=m["halt_reason"],
        created_at=m["created_at"],
        group=m.get("group_name"),
        cutoff=m.get("stage_cutoff"),
    )


def add_release(conn: Connection, rel: Release) -> None:
    try:
        with conn.begin_nested():
            conn.execute(
                insert(releases).values(
                    target=rel.target,
                    hardware=rel.hardware,
                    version=rel.version,
                    sequence=rel.sequence,
                    length=rel.length,
                    sha256=rel.sha256,
                    downgrade=int(rel.downgrade),
                    notes=rel.notes,
                    created_at=rel.created_at,
                )
            )
    except IntegrityError as e:
        raise ConflictError(
            f"a release of {rel.hardware} with sequence {rel.sequence} "
            f"or target {rel.target} exists already"
        ) from e


def latest_release(conn: Connection, hardware: str) -> Release | None:
    r = conn.execute(
        select(releases)
        .where(releases.c.hardware == hardware)
        .order_by(releases.c.sequence.desc())
        .limit(1)
    ).first()
    return _release(r) if r else None


def release(conn: Connection, hardware: str, version: str) -> Release:
    r = conn.execute(
        select(releases)
        .where(releases.c.hardware == hardware, releases.c.version == version)
        .order_by(releases.c.sequence.desc())
        .limit(1)
    ).first()
    if r is None:
        raise NotFoundError(f"no release {version} for hardware {hardware}")
    return _release(r)


def releases_in_use(conn: Connection, hardware: str) -> set[str]:
    """Targets of ``hardware`` still needed: an active rollout's, or one devices run.

    A release leaves the signed firmware role only when no active rollout
    hands it out and no active device reports running it. A paused rollout
    does not hold its release: rollouts of one class are paused one after
    another over the years, and each would otherwise keep its image in the
    role every device downloads for good. Resuming one whose release has
    left the role hands out a target devices refuse (and report): roll out
    a current release instead.
    """
    rolling = conn.execute(
        select(rollouts.c.target).where(
            rollouts.c.hardware == hardware, rollouts.c.status == "active"
        )
    ).scalars()
    running = conn.execute(
        select(releases.c.target)
        .join(
            devices,
            (devices.c.hardware == releases.c.hardware)
            & (devices.c.firmware_version == releases.c.version),
        )
        .where(releases.c.hardware == hardware, devices.c.status == "active")
        .distinct()
    ).scalars()
    return {*rolling, *running}


def add_rollout(
    conn: Connection,
    rel: Release,
    stages: Sequence[int],
    max_failure_ratio: float,
    success_ratio: float,
    soak: timedelta,
    deadline: timedelta,
    now: datetime,
    group: str | None = None,
) -> int:
    result = conn.execute(
        insert(rollouts).values(
            target=rel.target,
            hardware=rel.hardware,
            version=rel.version,
            stages=json.dumps(list(stages)),
            stage_index=0,
            stage_started_at=now,
            max_failure_ratio=max_failure_ratio,
            success_ratio=success_ratio,
            soak_seconds=int(soak.total_seconds()),
            deadline_seconds=int(deadline.total_seconds()),
            status="active",
            created_at=now,
            group_name=group,
        )
    )
    key = result.inserted_primary_key
    assert key is not None
    rollout_id = int(key[0])
    if group is None:
        cutoff = stage_cutoff(conn, rel.hardware, rollout_id, stages[0])
        conn.execute(
            update(rollouts).where(rollouts.c.id == rollout_id).values(stage_cutoff=cutoff)
        )
    return rollout_id


def rollout(conn: Connection, rollout_id: int) -> Rollout:
    r = conn.execute(select(rollouts).where(rollouts.c.id == rollout_id)).first()
    if r is None:
        raise NotFoundError(f"no rollout {rollout_id}")
    return _rollout(r)


def list_rollouts(conn: Connection) -> list[Rollout]:
    return [_rollout(r) for r in conn.execute(select(rollouts).order_by(rollouts.c.id))]


def active_rollout(conn: Connection, hardware: str) -> Rollout | None:
    """The newest rollout for a hardware class that is handing out its image.

    A finished ("done") rollout keeps handing it out: a device that was off,
    or enrolled later, still catches up.
    """
    r = conn.execute(
        select(rollouts)
        .where(rollouts.c.hardware == hardware, rollouts.c.status.in_(("active", "done")))
        .order_by(rollouts.c.id.desc())
        .limit(1)
    ).first()
    return _rollout(r) if r else None


def set_rollout_status(
    conn: Connection,
    rollout_id: int,
    status: str,
    *,
    reason: str | None = None,
    stage_index: int | None = None,
    now: datetime | None = None,
) -> None:
    values: dict[str, Any] = {"status": status}
    if reason is not None:
        values["halt_reason"] = reason
    if stage_index is not None:
        values["stage_index"] = stage_index
        values["stage_started_at"] = now
        ro = rollout(conn, rollout_id)
        if ro.group is None:
            percent = ro.stages[min(stage_index, len(ro.stages) - 1)]
            # Never below the stage before: a device in a stage stays in the next.
            values["stage_cutoff"] = max(
                ro.threshold, stage_cutoff(conn, ro.hardware, rollout_id, percent)
            )
    conn.execute(update(rollouts).where(rollouts.c.id == rollout_id).values(**values))


def device_state(conn: Connection, rollout_id: int, device_id: str) -> str | None:
    return conn.execute(
        select(rollout_devices.c.state).where(
            rollout_devices.c.rollout_id == rollout_id, rollout_devices.c.device_id == device_id
        )
    ).scalar_one_or_none()


def record_progress(
    conn: Connection,
    rollout_id: int,
    device_id: str,
    state: str,
    now: datetime,
    reason: str | None = None,
    version: str | None = None,
) -> None:
    if state not in STATES:
        raise ConflictError(f"unknown update state {state!r}")
    current = device_state(conn, rollout_id, device_id)
    values = {"state": state, "reason": reason, "version": version, "updated_at": now}
    if current is None:
        conn.execute(
            insert(rollout_devices).values(rollout_id=rollout_id, device_id=device_id, **values)
        )
    else:
        conn.execute(
            update(rollout_devices)
            .where(
                rollout_devices.c.rollout_id == rollout_id, rollout_devices.c.device_id == device_id
            )
            .values(**values)
        )


def stage_counts(conn: Connection, ro: Rollout, now: datetime) -> dict[str, Any]:
    """Size of the current stage and how its devices fared (stalled ones count as failed)."""
    grouped = set(groups_members(conn, ro.group)) if ro.group else set()
    everyone = list(
        conn.execute(
            select(devices.c.device_id).where(
                devices.c.hardware == ro.hardware, devices.c.status == "active"
            )
        ).scalars()
    )
    members = [
        d for d in everyone if (d in grouped if ro.group else bucket(d, ro.id) < ro.threshold)
    ]
    states = dict(
        conn.execute(
            select(rollout_devices.c.device_id, rollout_devices.c.state).where(
                rollout_devices.c.rollout_id == ro.id
            )
        ).all()
    )
    updated = dict(
        conn.execute(
            select(rollout_devices.c.device_id, rollout_devices.c.updated_at).where(
                rollout_devices.c.rollout_id == ro.id
            )
        ).all()
    )
    committed = failed = stalled = 0
    reasons: list[str] = []
    for d in members:
        state = states.get(d)
        if state == "committed":
            committed += 1
        elif state in FAILED:
            failed += 1
        elif state in IN_PROGRESS and now - updated[d] > ro.deadline:
            stalled += 1
    reasons = [
        str(r)
        for r in conn.execute(
            select(rollout_devices.c.reason)
            .where(rollout_devices.c.rollout_id == ro.id, rollout_devices.c.reason.is_not(None))
            .limit(5)
        ).scalars()
    ]
    return {
        "size": len(members),
        "class_size": len(everyone),
        # Who is in the stage (the first hundred, by name): an operator can see them.
        "devices": sorted(members)[:100],
        "committed": committed,
        "failed": failed,
        "stalled": stalled,
        "reasons": reasons,
    }


def set_group(conn: Connection, name: str, device_ids: Sequence[str]) -> None:
    """Make ``name`` exactly these devices."""
    from sqlalchemy import delete

    known = set(
        conn.execute(
            select(devices.c.device_id).where(devices.c.device_id.in_(list(device_ids)))
        ).scalars()
    )
    missing = sorted(set(device_ids) - known)
    if missing:
        raise NotFoundError(f"no devices {', '.join(missing)}")
    conn.execute(delete(device_groups).where(device_groups.c.name == name))
    if device_ids:
        conn.execute(insert(device_groups), [{"name": name, "device_id": d} for d in device_ids])


def groups_members(conn: Connection, name: str) -> list[str]:
    return list(
        conn.execute(
            select(device_groups.c.device_id).where(device_groups.c.name == name)
        ).scalars()
    )


def groups_of(conn: Connection, device_id: str) -> frozenset[str]:
    return frozenset(
        conn.execute(
            select(device_groups.c.name).where(device_groups.c.device_id == device_id)
        ).scalars()
    )
