"""A small real fleet for the operator-view tests: provisioned devices, real check-ins.

Every device is provisioned by the operator's own code and checks in through
the real agent over pinned mutual TLS, so what the fleet view, the gauges
and the retirement guard read is what devices really reported.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from homing import ceremonies
from homing.agent.agent import Agent, CycleReport
from homing.agent.state import DeviceState
from homing.ceremonies.releases import release
from homing.operations import rollouts
from homing.operations.provisioning import provision
from tests.harness import RunningServer

IMAGE = b"\x7fELF homing firmware image for the fleet view " * 100
QUIET_DAYS = 10


def url(server: RunningServer) -> str:
    return f"https://127.0.0.1:{server.port}"


def device(server: RunningServer, tmp_path: Path, name: str, hardware: str) -> DeviceState:
    return provision(
        server.state.dd,
        tmp_path / name,
        datetime.now(UTC),
        device_id=name,
        hardware=hardware,
        server=url(server),
    )


def check_in(server: RunningServer, state: DeviceState, via: str | None = None) -> CycleReport:
    """One full agent cycle at the server's current time; it must reach home.

    ``via``: the address the device dials instead (a balancer in front).
    """
    offset = server.clock.offset
    agent = Agent(
        state,
        server=via or url(server),
        clock=lambda: datetime.now(UTC) + offset,
        firmware_version="1.0.0",
    )
    report = agent.run_once()
    assert report.checked_in, report
    return report


def move_server_clock(server: RunningServer, delta: timedelta) -> None:
    """Advance the server's time and re-sign what expires (as its supervisor would)."""
    server.clock.advance(delta)
    ceremonies.refresh_snapshot(server.state.dd, server.clock())
    server.settle()


def roll_out(server: RunningServer, image: Path, version: str, hardware: str = "board-a") -> None:
    """Release ``image`` and roll it out to the whole class at once (a rollout already
    active for the class is paused first: one at a time), as the server sees it now."""
    now = datetime.now(UTC)
    release(server.state.dd, image, version, hardware, now)
    for active in rollouts.list_rollouts(server.state.db):
        if active.status == "active" and active.hardware == hardware:
            rollouts.set_paused(server.state.db, "test", now, active.id, True)
    rollouts.create(
        server.state.db, "test", now, version, hardware, rollouts.RolloutPlan(stages=(100,))
    )
    server.settle()


def device_context(server: RunningServer, state: DeviceState) -> ssl.SSLContext:
    context = server.client_context()
    context.load_cert_chain(state.cert_path, state.key_path)
    return context


@dataclass
class Fleet:
    """Who is who in the fleet ``build_fleet`` makes."""

    server: RunningServer
    devices: dict[str, DeviceState] = field(default_factory=dict)
    rolling: int = 0  # a board-a rollout, active, two stages
    halted: int = 0  # a board-b rollout that halted on a failure

    @property
    def quiet(self) -> str:
        return "dev-quiet"


def build_fleet(server: RunningServer, tmp_path: Path) -> Fleet:
    """Four devices: one quiet for ``QUIET_DAYS``, two on root 2, one on root 1; two rollouts.

    - dev-a1 (board-a): checked in today, before the root rotation: root 1
    - dev-a2 (board-a), dev-b1 (board-b): checked in today after it: root 2
    - dev-quiet (board-a): last seen ``QUIET_DAYS`` ago, root 1
    """
    fleet = Fleet(server)
    for name, hardware in (
        ("dev-a1", "board-a"),
        ("dev-a2", "board-a"),
        ("dev-b1", "board-b"),
        ("dev-quiet", "board-a"),
    ):
        fleet.devices[name] = device(server, tmp_path, name, hardware)
    check_in(server, fleet.devices["dev-quiet"])
    move_server_clock(server, timedelta(days=QUIET_DAYS))
    check_in(server, fleet.devices["dev-a1"])
    ceremonies.rotate_root(server.state.dd, server.clock())
    server.settle()
    check_in(server, fleet.devices["dev-a2"])
    check_in(server, fleet.devices["dev-b1"])
    now = server.clock()
    image = tmp_path / "fw.img"
    image.write_bytes(IMAGE)
    release(server.state.dd, image, "2.0.0", "board-a", now)
    release(server.state.dd, image, "2.0.0", "board-b", now)
    fleet.rolling = rollouts.create(
        server.state.db, "test", now, "2.0.0", "board-a", rollouts.RolloutPlan(stages=(50, 100))
    ).id
    fleet.halted = rollouts.create(
        server.state.db,
        "test",
        now,
        "2.0.0",
        "board-b",
        rollouts.RolloutPlan(stages=(100,), max_failure_ratio=0.2),
    ).id
    # dev-b1 reports a failed install over its own mutual TLS: the rollout halts.
    answer = server.request(
        "POST",
        "/v1/device/update",
        {"rollout": fleet.halted, "state": "failed", "reason": "health check failed: no network"},
        context=device_context(server, fleet.devices["dev-b1"]),
    )
    assert answer.status == 200, answer.body
    assert answer.json()["rollout"]["status"] == "halted"
    server.settle()
    return fleet
