"""The agent's steps that take the time from home (ADR 0009, homing.agent.trusted_time).

A mixin of ``homing.agent.agent.Agent``: when the clock is in doubt at the start
of a cycle (``trusted_now``), or a refusal by the device's own clock puts it in
doubt (``_time_when_refused``), the agent asks its home for a signed time.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime

from homing.agent import trusted_time
from homing.agent.decide import CycleReport
from homing.agent.state import DeviceState
from homing.config import Limits
from homing.errors import MetadataError, TransportError
from homing.trust.client import TrustState
from homing.trust.pins import PinPolicy

__all__ = ["HomeTimeSteps"]

log = logging.getLogger("homing.agent.agent")


class HomeTimeSteps:
    """What the agent does with its home's time; the agent provides the rest."""

    state: DeviceState
    limits: Limits
    clock: Callable[[], datetime]
    uptime: Callable[[], float] | None
    untrusted_time: str | None
    time_from_home: bool
    clock_behind_floor: bool

    def floor(self) -> datetime:
        raise NotImplementedError

    def _cached_policy(self) -> PinPolicy | None:
        raise NotImplementedError

    def _sources(self, policy: PinPolicy | None) -> list[str]:
        raise NotImplementedError

    def _refresh_from(self, url: str, policy: PinPolicy | None, now: datetime) -> TrustState:
        raise NotImplementedError

    def trusted_now(self, now: datetime, report: CycleReport) -> datetime:
        """``now``, or the time from home when the clock is in doubt (homing.agent.trusted_time).

        Without an answer (home unreachable, an attacker in the path, a
        server without trusted time) the cycle goes on at ``now`` for trust
        metadata only: ``untrusted_time`` says so and the cycle stops before
        it talks to anyone (ADR 0009: a frozen dead-RTC device is exposed
        for no cycle).
        """
        self.untrusted_time = None
        self.time_from_home = False
        why = trusted_time.doubt(
            self.clock(),
            self.floor(),
            self.state.trust_dir,
            trusted_time.last_run(self.state.last_run_path),
            self.uptime() if self.uptime else None,
        )
        if why is None:
            return now
        report.steps.append(f"clock in doubt: {why}")
        errors: list[str] = []
        for url in self._sources(self._cached_policy()):
            try:
                trusted = self._ask_time(url, now)
            except (TransportError, MetadataError) as e:
                errors.append(f"{url}: {e}")
                continue
            report.steps.append(f"trusted time from {url}: {trusted.isoformat()}")
            self.clock_behind_floor = False
            self.time_from_home = True
            return trusted
        detail = "; ".join(errors) or "no server known"
        log.warning("no trusted time (%s); metadata only, at %s", detail, now.isoformat())
        report.steps.append(f"no trusted time: {detail}")
        self.untrusted_time = why
        return now

    def _ask_time(self, url: str, now: datetime) -> datetime:
        floor = self.floor()
        root = trusted_time.trusted_root(self.state.trust_dir)
        try:
            return trusted_time.ask_home(url, root, floor, now, self.limits)
        except MetadataError as refused:
            # Perhaps the answer is signed by an online key newer than this
            # device's root: walk the root chain (signed by the offline keys;
            # judged at the floor, a time this device knows has passed) and
            # check a new answer against the newest root. If there is no newer
            # root, the refusal stands as it was.
            try:
                self._refresh_from(url, None, floor)
            except (TransportError, MetadataError):
                raise refused from None
            newer = trusted_time.trusted_root(self.state.trust_dir)
            if newer.version == root.version:
                raise
            return trusted_time.ask_home(url, newer, floor, now, self.limits)

    def _time_when_refused(self, now: datetime, why: str, report: CycleReport) -> datetime | None:
        """The home's signed time, when something was refused at a clock that was not in
        doubt and the home's time differs from it; None otherwise (the refusal stands: a
        replay or a MITM meets a right clock, and a thief cannot sign the time)."""
        if self.time_from_home:
            return None  # this cycle already runs at the home's time
        for url in self._sources(self._cached_policy()):
            try:
                trusted = self._ask_time(url, now)
            except (TransportError, MetadataError):
                continue
            if abs(trusted - now) <= trusted_time.JUMP_TOLERANCE:
                return None  # the clock is right: the chain is what is wrong
            report.steps.append(
                f"clock in doubt: {now.isoformat()}, {why}; trusted time from {url}: "
                f"{trusted.isoformat()}"
            )
            self.clock_behind_floor = False
            return trusted
        return None
