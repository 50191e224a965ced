"""Twenty years of a fleet on the real server: every ceremony the docs name, no device lost.

The real app serves on two loopback addresses (the old and the new name of
the home) with an injected clock; real agents (the same ``Agent`` a device
runs) keep their state in real directories and follow their pin policy, not
a test override. Time moves in steps; at each step the operator does what
docs/ceremonies.md says is due, the server's maintenance runs as its
supervisor would, and every device that is awake then runs one cycle.

The fleet: always-on devices (a cycle at every step and after every
ceremony), daily and monthly ones, yearly ones, devices asleep five years
at a time, and warehouse stock enrolled in year 0 and first booted in
year 6. The twenty years hold: certificate renewals (maintenance and
agents), a device-CA and a server-CA rotation every year, a TUF root
rotation every two years, an X.509 root CA rotation, a firmware-key
rotation, two online-key rotations, a yearly release rolled out to the
fleet, a two-month lapse of the timestamp signer, a stolen device CA, a
backup in year 9 restored in year 10 (the host lost), and a move of the home
to a new name in year 12, the old name dropped a year later.

Outside the lapse, every cycle of every awake device must reach home; at
the end every device has come home by itself. Nothing touches a device's
state but its agent.

``HOMING_LIFETIME_AGENTS`` (default 8: one device of each kind that cycles at
every step, two monthly and two yearly ones, one of the others) and
``HOMING_LIFETIME_STEP_DAYS`` (default 30) set the size; the long run is,
e.g., 100 agents and 10 days.
The figures are written to ``test-artifacts/lifetime.json``.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from homing import ceremonies
from homing.agent.agent import Agent, CycleReport
from homing.agent.decide import TrustChannel
from homing.agent.state import DeviceState
from homing.ceremonies.endpoints import move_home
from homing.ceremonies.releases import release
from homing.ceremonies.restoration import publish_past_restore
from homing.errors import StrandingError
from homing.operations import rollouts
from homing.operations.provisioning import provision
from homing.server.maintenance import maintain
from homing.site import DataDir
from homing.site.backup import backup, restore
from tests.harness import Clock, RunningServer, free_port

AGENTS = int(os.environ.get("HOMING_LIFETIME_AGENTS", "8"))
STEP = timedelta(days=float(os.environ.get("HOMING_LIFETIME_STEP_DAYS", "30")))
YEARS = 20
YEAR = timedelta(days=365)
OLD, NEW = "127.0.0.1", "127.0.0.2"
HARDWARE = "board-a"

# How a device keeps in touch: None = at every step.
KINDS: dict[str, timedelta | None] = {
    "always": None,
    "daily": None,
    "monthly": timedelta(days=30),
    "yearly": YEAR,
    "asleep-5y": 5 * YEAR,
    "warehouse": None,  # first boot in year 6, then at every step
}
# The devices that cycle at every step cost the run's time: one each by default.
SHARE = {"always": 1, "daily": 1, "monthly": 2, "yearly": 2, "asleep-5y": 1, "warehouse": 1}
WAREHOUSE_BOOT = 6 * YEAR
LAPSE = (4.6 * YEAR, 4.6 * YEAR + timedelta(days=60))


@dataclass
class Member:
    name: str
    kind: str
    state: DeviceState
    next_due: timedelta = timedelta(0)
    cycles: int = 0
    recovered: int = 0
    bootstrapped: int = 0
    committed: list[str] = field(default_factory=list)
    update_refusals: list[str] = field(default_factory=list)
    refusals: list[str] = field(default_factory=list)
    lapse_misses: int = 0


@dataclass
class Life:
    """The home, its clock, its fleet, and what happened."""

    data: Path
    port: int
    clock: Clock
    server: RunningServer
    members: list[Member] = field(default_factory=list)
    ceremonies: Counter[str] = field(default_factory=Counter)
    events: list[str] = field(default_factory=list)
    archive: tuple[Path, datetime] | None = None
    drop_attempts: int = 0
    drop_refusals: list[str] = field(default_factory=list)
    dropped: bool = False

    @property
    def dd(self) -> DataDir:
        return self.server.state.dd

    def now(self) -> datetime:
        return self.clock()

    def start_server(self, data: Path) -> None:
        self.data = data
        self.server = RunningServer(
            data, DataDir(data).default_db_url(), self.clock, listen=(OLD, NEW), port=self.port
        ).start()


@pytest.fixture
def life(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Life]:
    monkeypatch.delenv("HOMING_KEY_PASSPHRASE", raising=False)
    port = free_port(OLD, NEW)
    data = tmp_path / "home-0"
    ceremonies.init(data, datetime.now(UTC), hosts=[OLD], primary=f"https://{OLD}:{port}")
    clock = Clock()
    server = RunningServer(
        data, DataDir(data).default_db_url(), clock, listen=(OLD, NEW), port=port
    ).start()
    lived = Life(data, port, clock, server)
    try:
        yield lived
    finally:
        lived.server.stop()


def _fleet(life: Life, tmp_path: Path) -> None:
    scale = max(AGENTS / sum(SHARE.values()), 1)
    for kind, share in SHARE.items():
        for i in range(max(round(share * scale), 1)):
            name = f"{kind}-{i}"
            state = provision(
                life.dd, tmp_path / "devices" / name, life.now(), device_id=name, hardware=HARDWARE
            )
            first = WAREHOUSE_BOOT if kind == "warehouse" else timedelta(0)
            life.members.append(Member(name, kind, state, next_due=first))


def _cycle(life: Life, member: Member, elapsed: timedelta, *, in_lapse: bool) -> CycleReport:
    report = Agent(member.state, clock=life.clock, firmware_version="1.0.0").run_once()
    member.cycles += 1
    member.recovered += int(report.recovered)
    member.bootstrapped += int(report.trust_channel is TrustChannel.BOOTSTRAP)
    if report.committed_version is not None:
        member.committed.append(report.committed_version)
    if report.update_refused is not None:
        member.update_refusals.append(f"year {elapsed / YEAR:.2f}: {report.update_refused}")
    if not report.checked_in:
        if in_lapse:
            member.lapse_misses += 1
        else:
            member.refusals.append(f"year {elapsed / YEAR:.2f}: {report.error}")
    return report


def _awake(member: Member, elapsed: timedelta) -> bool:
    if elapsed < member.next_due:
        return False
    period = KINDS[member.kind]
    member.next_due = elapsed + (period if period is not None else timedelta(0))
    return True


def _ceremony(life: Life, name: str, action: Callable[[], object], elapsed: timedelta) -> None:
    action()
    life.server.settle()
    life.ceremonies[name] += 1
    life.events.append(f"year {elapsed / YEAR:.2f}: {name}")
    # After every event, every always-on device checks in.
    for member in life.members:
        if member.kind == "always":
            _cycle(life, member, elapsed, in_lapse=False)


def _due(elapsed: timedelta, at: timedelta) -> bool:
    """Whether ``at`` falls in the step that ends at ``elapsed``."""
    return elapsed - STEP < at <= elapsed


def _operator(life: Life, elapsed: timedelta, tmp_path: Path) -> None:
    """What the docs say the operator does, when it is due."""
    dd, now = life.dd, life.now()
    for year in range(1, YEARS):
        if _due(elapsed, year * YEAR + YEAR / 10):
            image = tmp_path / "fw.img"
            image.write_bytes(f"homing firmware of year {year} ".encode() * 500)
            version = f"{year + 1}.0.0"

            def ship(version: str = version, image: Path = image) -> None:
                release(dd, image, version, HARDWARE, now)
                # The operator pauses what still rolls out before the next starts.
                for rolling in rollouts.list_rollouts(dd.database()):
                    if rolling.hardware == HARDWARE and rolling.status == "active":
                        rollouts.set_paused(dd.database(), "ops", now, rolling.id, True)
                plan = rollouts.RolloutPlan(stages=(100,))
                rollouts.create(dd.database(), "ops", now, version, HARDWARE, plan)

            _ceremony(life, "release and rollout", ship, elapsed)
        if _due(elapsed, year * YEAR + YEAR / 2):
            _ceremony(
                life,
                "rotate device-ca",
                lambda: ceremonies.rotate_issuing_ca(dd, "device", now),
                elapsed,
            )
            _ceremony(
                life,
                "rotate server-ca",
                lambda: ceremonies.rotate_issuing_ca(dd, "server", now),
                elapsed,
            )
        if year % 2 == 0 and _due(elapsed, year * YEAR + YEAR * 3 / 10):
            _ceremony(life, "rotate root", lambda: ceremonies.rotate_root(dd, now), elapsed)
    if _due(elapsed, 8 * YEAR + YEAR * 3 / 10):
        _ceremony(life, "rotate root-ca", lambda: ceremonies.rotate_root_ca(dd, now), elapsed)
    if _due(elapsed, 7 * YEAR + YEAR / 5):
        _ceremony(
            life, "rotate firmware-key", lambda: ceremonies.rotate_firmware_key(dd, now), elapsed
        )
    for year in (3, 13):
        if _due(elapsed, year * YEAR + YEAR / 5):
            _ceremony(
                life, "rotate online-keys", lambda: ceremonies.rotate_online_keys(dd, now), elapsed
            )
    if _due(elapsed, 11 * YEAR + YEAR * 3 / 10):
        _ceremony(
            life,
            "rotate device-ca --compromised",
            lambda: ceremonies.rotate_issuing_ca(dd, "device", now, compromised=True),
            elapsed,
        )
    if _due(elapsed, 9 * YEAR + YEAR * 55 / 100):
        archive = tmp_path / "backup-year-9.tar.gz"
        backup(dd, archive, now)
        life.archive = (archive, now)
        life.events.append(f"year {elapsed / YEAR:.2f}: backup")
    if _due(elapsed, 10 * YEAR + YEAR / 5):
        # The host is lost: a new one restores last backup, as docs/deployment.md says.
        assert life.archive is not None
        life.server.stop()
        archive, taken_at = life.archive
        restored = tmp_path / "home-restored"
        target = DataDir(restored)
        restore(archive, target)
        publish_past_restore(target, now, taken_at)
        target.close()
        life.start_server(restored)
        life.ceremonies["restore"] += 1
        life.events.append(f"year {elapsed / YEAR:.2f}: restore of the year-9 backup")
    primary = f"https://{NEW}:{life.port}"
    if _due(elapsed, 12 * YEAR + YEAR * 3 / 10):
        _ceremony(
            life,
            "move home (add the new name)",
            lambda: move_home(dd, now, hosts=[OLD, NEW], primary=primary),
            elapsed,
        )
    if elapsed >= 13 * YEAR + YEAR * 3 / 10 and not life.dropped:
        # The docs: drop the old name once no live device dials it; try each step.
        life.drop_attempts += 1
        try:
            _ceremony(
                life,
                "move home (drop the old name)",
                lambda: move_home(dd, now, hosts=[NEW], primary=primary),
                elapsed,
            )
            life.dropped = True
        except StrandingError as refusal:
            # Refused while a live device still dials the old name: wait, as the docs say.
            life.drop_refusals.append(str(refusal))


def _maintain(life: Life, in_lapse: bool) -> None:
    maintain(life.dd, life.now(), signer=not in_lapse)
    life.server.settle()


@pytest.mark.long
def test_twenty_years_of_ceremonies_and_no_device_is_lost(life: Life, tmp_path: Path) -> None:
    _fleet(life, tmp_path)
    elapsed = timedelta(0)
    while elapsed < YEARS * YEAR:
        elapsed += STEP
        life.clock.advance(STEP)
        in_lapse = LAPSE[0] <= elapsed <= LAPSE[1]
        # The server's own supervisor, which runs every few seconds: every
        # replica renews its certificate; the signer re-signs the online
        # roles, except through the lapse. Then what the operator does today.
        _maintain(life, in_lapse)
        _operator(life, elapsed, tmp_path)
        _maintain(life, in_lapse)
        for member in life.members:
            if _awake(member, elapsed):
                _cycle(life, member, elapsed, in_lapse=in_lapse)
    # The end: every device, whatever it slept through, comes home by itself.
    final = {m.name: _cycle(life, m, elapsed, in_lapse=False).checked_in for m in life.members}
    refused = {m.name: m.refusals for m in life.members if m.refusals}
    figures = {
        "agents": len(life.members),
        "step_days": STEP.days,
        "years": YEARS,
        "cycles": sum(m.cycles for m in life.members),
        "refused_outside_the_lapse": sum(len(r) for r in refused.values()),
        "missed_during_the_lapse": sum(m.lapse_misses for m in life.members),
        "recoveries_by_key_proof": sum(m.recovered for m in life.members),
        "cycles_over_the_bootstrap_channel": sum(m.bootstrapped for m in life.members),
        "ceremonies": dict(life.ceremonies),
        "attempts_to_drop_the_old_name": life.drop_attempts,
        "refusals_to_drop_the_old_name": len(life.drop_refusals),
        "home_at_the_end": sum(final.values()),
        "firmware_installs_committed": sum(len(m.committed) for m in life.members),
        "updates_refused": sum(len(m.update_refusals) for m in life.members),
    }
    artifacts = Path("test-artifacts")
    artifacts.mkdir(exist_ok=True)
    (artifacts / "lifetime.json").write_text(json.dumps(figures, indent=2))
    assert refused == {}, refused
    # Every yearly release reached the always-on devices, the last one included.
    newest = f"{YEARS}.0.0"
    for member in life.members:
        assert member.update_refusals == [], (member.name, member.update_refusals)
        if member.kind == "always":
            assert len(member.committed) == YEARS - 1, (member.name, member.committed)
        assert member.committed[-1:] == [newest], (member.name, member.committed)
    assert all(final.values()), {n: ok for n, ok in final.items() if not ok}
    # Everything the twenty years hold happened.
    assert life.ceremonies["rotate device-ca"] == YEARS - 1
    assert life.ceremonies["rotate server-ca"] == YEARS - 1
    assert life.ceremonies["rotate root"] >= 9
    assert life.ceremonies["restore"] == 1
    assert life.dropped
    assert life.drop_attempts == len(life.drop_refusals) + 1
    assert all("still dial" in refusal for refusal in life.drop_refusals)
    assert figures["missed_during_the_lapse"] > 0  # the lapse did cut devices off meanwhile
