"""The device agent's cycle: keep trust fresh, keep the certificate valid, check in.

One cycle (``Agent.run_once``):

1. **Time.** ``now`` is the wall clock, never below the secure time floor.
2. **Trust.** Refresh TUF metadata from the newest verified root: over the
   pinned connection first; if the pins no longer match (the device slept
   through rotations), over the bootstrap channel (the same host or a mirror
   without pin checks; the metadata authenticates itself). If the newest
   timestamp or root the device can verify has expired, the device fails
   closed: it sends nothing but metadata requests until new metadata exists.
3. **Certificate.** Expired: key-proof recovery. Past two thirds of its
   lifetime: EST re-enrollment with the same key.
4. **Check-in** over pinned mutual TLS; a revoked device stops and says so.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509

from homing.agent import trusted_time, update
from homing.agent.certificate_steps import CertificateSteps
from homing.agent.client import Answer, HomeClient
from homing.agent.decide import (
    CertificateAction,
    CheckInAnswer,
    CycleReport,
    TrustChannel,
    certificate_action,
    held_trust,
    recovers_after,
    retry_after_seconds,
)
from homing.agent.exports import SERVICES_FILE
from homing.agent.fetcher import HTTPSFetcher
from homing.agent.resumption import SESSIONS
from homing.agent.state import DeviceState
from homing.agent.time_steps import HomeTimeSteps
from homing.agent.transport import check_server_url
from homing.agent.update import FirmwareJob, installer_for
from homing.config import Limits
from homing.errors import (
    ChainError,
    HomingError,
    MetadataError,
    MetadataExpiredError,
    RefusedError,
    RevokedError,
    TransportError,
    UntrustedTimeError,
)
from homing.trust.client import DirectoryFetcher, TrustState, refresh_trust
from homing.trust.pins import PinPolicy

__all__ = ["Agent", "CycleReport", "certificate_action"]
# CycleReport and certificate_action live in the pure core (homing.agent.decide);
# they are named here too because callers have always found them here.

log = logging.getLogger(__name__)

FAR_AHEAD = timedelta(days=1)


class Agent(HomeTimeSteps, CertificateSteps):
    def __init__(
        self,
        state: DeviceState,
        *,
        server: str | None = None,
        clock: Callable[[], datetime] | None = None,
        limits: Limits | None = None,
        firmware_version: str | None = None,
        fetcher: Callable[[PinPolicy | None, datetime], HTTPSFetcher] | None = None,
        uptime: Callable[[], float] | None = None,
    ) -> None:
        """``fetcher`` makes the metadata fetcher for a source (pinned or bootstrap);
        the fleet simulator passes one that serves its simulated network.
        ``uptime``: seconds since boot, what a clock jump is judged against; by
        default the system's, but only with the system clock (an injected clock
        comes with its own uptime, or the jump rule is off)."""
        self._fetcher = fetcher or self._https
        self.state = state
        self.config = state.config()
        if server:
            check_server_url(server)
        self.server_override = server or self.config.server
        self.clock = clock or (lambda: datetime.now(UTC))
        self.uptime = uptime or (trusted_time.uptime if clock is None else None)
        self.limits = limits or Limits()
        self.firmware_version = firmware_version
        self.clock_skew: float | None = None
        self.retry_after: float | None = None
        # The clock read behind the time floor at the last ``now()``.
        self.clock_behind_floor = False
        # Why this cycle's clock is in doubt, when no trusted time came (trusted_now).
        self.untrusted_time: str | None = None
        # Whether this cycle runs at the time its home signed (trusted_now asked).
        self.time_from_home = False
        # The time the last cycle worked at (the home's, if it asked).
        self.time_used: datetime | None = None

    def _https(self, policy: PinPolicy | None, now: datetime) -> HTTPSFetcher:
        return HTTPSFetcher(policy, now, limits=self.limits)

    # -- time ----------------------------------------------------------------

    def floor(self) -> datetime:
        """The secure time floor: no time below it is ever used."""
        return max(
            filter(None, [self.state.time_floor(), datetime.fromisoformat(self.config.released_at)])
        )

    def now(self) -> datetime:
        """The wall clock, raised to the secure time floor (a clock behind it is not trusted)."""
        clock = self.clock()
        floor = self.floor()
        self.clock_behind_floor = clock < floor
        if self.clock_behind_floor:
            log.warning(
                "clock %s is behind the secure time floor %s; using the floor",
                clock.isoformat(),
                floor.isoformat(),
            )
            return floor
        return clock

    # -- trust ---------------------------------------------------------------

    def _cached_policy(self) -> PinPolicy | None:
        path = self.state.root / "pins.json"
        try:
            return PinPolicy.from_bytes(path.read_bytes(), self.limits)
        except (FileNotFoundError, MetadataError):
            return None

    def _sources(self, policy: PinPolicy | None) -> list[str]:
        urls: list[str] = []
        if self.server_override:
            urls.append(self.server_override.rstrip("/"))
        if policy is not None:
            urls.append(policy.primary.rstrip("/"))
            urls.extend(m.rstrip("/") for m in policy.mirrors)
        return list(dict.fromkeys(urls))

    def _refresh_from(self, url: str, policy: PinPolicy | None, now: datetime) -> TrustState:
        fetcher = self._fetcher(policy, now)
        fetcher.clock_behind_floor = self.clock_behind_floor
        try:
            return refresh_trust(
                self.state.trust_dir,
                f"{url}/tuf/metadata/",
                now,
                fetcher=fetcher,
                target_url=f"{url}/tuf/targets/",
                bootstrap_root=self.state.factory_root(),
                limits=self.limits,
            )
        except TransportError as e:
            if fetcher.pin_failure is not None:
                raise fetcher.pin_failure from e
            raise
        finally:
            fetcher.close()

    def refresh_trust(self, now: datetime, report: CycleReport) -> TrustState:
        """Newest verified trust: pinned first, then the bootstrap channel."""
        policy = self._cached_policy()
        errors: list[str] = []
        if policy is not None:
            for url in self._sources(policy):
                try:
                    trust = self._refresh_from(url, policy, now)
                    report.steps.append(f"trust refreshed over pinned TLS from {url}")
                    report.trust_channel = TrustChannel.PINNED
                    return self._adopt(trust, report)
                except ChainError as e:
                    errors.append(f"{url}: {e}")
                    report.steps.append(f"pins do not match at {url}: using the bootstrap channel")
                    break
                except TransportError as e:
                    errors.append(f"{url}: {e}")
        for url in self._sources(policy) or []:
            try:
                trust = self._refresh_from(url, None, now)
                report.steps.append(f"trust refreshed over the bootstrap channel from {url}")
                report.trust_channel = TrustChannel.BOOTSTRAP
                return self._adopt(trust, report)
            except TransportError as e:
                errors.append(f"{url}: {e}")
        if not self._sources(policy):
            raise TransportError("no server known: pass --server or apply a recovery bundle")
        raise TransportError("no metadata source reachable: " + "; ".join(errors))

    def refresh_from_directory(self, directory: str, now: datetime) -> TrustState:
        """Refresh from a local copy of the repository (USB stick, recovery bundle)."""
        trust = refresh_trust(
            self.state.trust_dir,
            f"{directory}/metadata/",
            now,
            fetcher=DirectoryFetcher(),
            target_url=f"{directory}/targets/",
            bootstrap_root=self.state.factory_root(),
            limits=self.limits,
        )
        return self._adopt(trust, CycleReport())

    def _adopt(self, trust: TrustState, report: CycleReport) -> TrustState:
        from homing.fsutil import atomic_write

        atomic_write(self.state.root / "pins.json", trust.pin_policy.to_bytes())
        # Verified with the pins; what the exports tell applications (homing.trust.services).
        atomic_write(self.state.root / SERVICES_FILE, trust.services.to_bytes())
        report.trust = {
            "root": trust.root_version,
            "timestamp": trust.timestamp_version,
            "snapshot": trust.snapshot_version,
            "targets": trust.targets_version,
        }
        return trust

    # -- the seam home ----------------------------------------------------------

    def server_url(self, policy: PinPolicy) -> str:
        """The server this device talks to: the override, or the pin policy's primary."""
        return (self.server_override or policy.primary).rstrip("/")

    def client(self, policy: PinPolicy, now: datetime) -> HomeClient:
        """The one client seam to the home server, pinned by ``policy`` at ``now``."""
        return HomeClient(
            self.server_url(policy),
            policy=policy,
            now=now,
            client_cert=(self.state.cert_path, self.state.key_path),
            limits=self.limits,
            clock_behind_floor=self.clock_behind_floor,
        )

    def _remember_retry_after(self, answer: Answer, now: datetime) -> Answer:
        if answer.status in (429, 503):
            self.retry_after = retry_after_seconds(answer.retry_after, now)
        return answer

    # -- check-in ------------------------------------------------------------

    def check_in(self, client: HomeClient, report: CycleReport) -> CheckInAnswer:
        now = client.now
        health: dict[str, Any] = {}
        if self.clock_skew is not None:
            health["clock_skew_seconds"] = self.clock_skew
        manual = self.state.root / "manual-update.json"
        if manual.exists():
            with contextlib.suppress(ValueError):
                health["manual_update"] = json.loads(manual.read_bytes())
        running = installer_for(self).active_version() or self.firmware_version
        policy = client.policy

        def body(chain: Sequence[x509.Certificate]) -> dict[str, Any]:
            # The trust this device holds, so the operator (and the retirement
            # guard) can see who still depends on a key before it is retired.
            return {
                "firmware_version": running,
                "hardware": self.config.hardware,
                "trust": {**report.trust, **held_trust(policy, chain)},
                "health": health,
            }

        answer = self._remember_retry_after(
            client.post_json("/v1/device/checkin", body, mutual=True), now
        ).expect_ok("check-in")
        parsed = CheckInAnswer.parse(answer.json("check-in"))
        # The server has recorded the manual update with this check-in.
        manual.unlink(missing_ok=True)
        # Evidence for the time floor: the server's certificate was valid now.
        newest = max((c.not_valid_before_utc for c in answer.chain), default=None)
        self.state.raise_time_floor(max(filter(None, [now, newest])))
        skew = (self.clock() - parsed.server_time).total_seconds()
        if abs(skew) > FAR_AHEAD.total_seconds():
            log.warning("device clock differs from the server's by %.0f s", skew)
            self.clock_skew = skew
        return parsed

    def firmware_job(self, client: HomeClient, report: CycleReport) -> FirmwareJob:
        """What the firmware steps need of this cycle, handed down (update.py never sees us)."""
        return FirmwareJob(
            state=self.state,
            config=self.config,
            limits=self.limits,
            client=client,
            check_in=lambda: self._check_in_only(client, report),
            fetcher=self._fetcher,
        )

    def _check_in_only(self, client: HomeClient, report: CycleReport) -> None:
        self.check_in(client, report)

    # -- the cycle -----------------------------------------------------------

    def run_once(self) -> CycleReport:
        """One whole cycle: trust, certificate, firmware, check-in.

        The cycle resumes the TLS sessions the last one saved and saves its own for the
        next (homing.agent.resumption); with the key in a TPM or on a token, nothing is saved.
        """
        file_key = self.config.key_store == "file"
        SESSIONS.use_file(self.state.sessions_path if file_key else None)
        SESSIONS.handshakes.clear()

        def cycle(report: CycleReport) -> None:
            try:
                self._cycle(report)
            finally:
                report.tls_handshakes = dict(SESSIONS.handshakes)

        try:
            return self._reported(cycle)
        finally:
            SESSIONS.save()

    def run_with(self, client: HomeClient) -> CycleReport:
        """The cycle after the trust refresh, over ``client``.

        The fleet simulator comes in here: its client answers by the home
        server's own rules, and everything the device decides is this code.
        """
        return self._reported(lambda report: self.converse(client, report))

    def _reported(self, cycle: Callable[[CycleReport], None]) -> CycleReport:
        report = CycleReport()
        self.retry_after = None
        self.time_used = None
        try:
            cycle(report)
        except RevokedError as e:
            report.error = f"revoked: {e}"
            report.revoked = True
            log.error("%s: this device has been revoked and stops", e)
        except HomingError as e:
            report.error = str(e)
            log.warning("cycle incomplete: %s", e)
        report.retry_after = self.retry_after
        self.state.save_last_run(
            {
                "at": self.clock().isoformat(),
                **(
                    trusted_time.boot_marks(self.uptime(), self.time_used or self.clock())
                    if self.uptime
                    else {}
                ),
                **report.to_json(),
            }
        )
        return report

    def _cycle(self, report: CycleReport) -> None:
        now = self.trusted_now(self.now(), report)
        self.time_used = now
        if self.untrusted_time is not None and self.uptime is not None:
            # Unverified, this cycle's time is no base for the next one's jump
            # rule: carry the last verified time on by the time since boot.
            carried = trusted_time.expected_now(
                self.uptime(), trusted_time.last_run(self.state.last_run_path)
            )
            self.time_used = carried or now
        # Fails closed: an expired timestamp or root raises MetadataError here,
        # and nothing but metadata requests has been sent.
        try:
            trust = self.refresh_trust(now, report)
        except MetadataExpiredError as expired:
            # The fourth doubt rule (ADR 0009), for metadata: expired by this clock,
            # perhaps because the clock is ahead by less than every expiry it holds.
            later = self._time_when_refused(now, f"metadata expired by it ({expired})", report)
            if later is None:
                raise
            now = self.time_used = later
            trust = self.refresh_trust(now, report)
        if self.untrusted_time is not None:
            raise UntrustedTimeError(
                f"{self.untrusted_time}, and no home answered with a signed time: sending "
                "nothing but metadata and time requests until one does"
            )
        try:
            try:
                self.converse(self.client(trust.pin_policy, now), report)
            except ChainError as refused:
                # The fourth doubt rule (ADR 0009): the home's chain does not validate
                # by this clock. A clock behind by less than the device slept is above
                # its floor and short of every expiry, so only this shows it.
                why = f"the home's certificate does not validate at it ({refused})"
                later = self._time_when_refused(now, why, report)
                if later is None:
                    raise
                now = self.time_used = later
                self.converse(self.client(trust.pin_policy, now), report)
        finally:
            self.export(trust.pin_policy, report)

    def export(self, policy: PinPolicy, report: CycleReport) -> None:
        """Keep the exported trust current for applications (when the device asks for it)."""
        if not self.config.export_dir:
            return
        from homing.agent.exports import export_trust

        if export_trust(self.state, policy, Path(self.config.export_dir), self.config.export_hook):
            report.steps.append(f"trust exported to {self.config.export_dir}")

    def converse(self, client: HomeClient, report: CycleReport) -> None:
        """With trust fresh: keep the certificate valid, finish firmware, check in, update."""
        action = certificate_action(self.state.certificate(), client.now)
        if action is CertificateAction.RECOVER:
            self._recover(client, report)
        elif action is CertificateAction.RENEW:
            try:
                self.renew(client)
                report.renewed = True
                report.steps.append("certificate renewed (EST simplereenroll)")
            except TransportError as e:
                report.steps.append(f"renewal postponed: {e}")
        job = self.firmware_job(client, report)
        update.finish_pending(job, report)
        try:
            answer = self.check_in(client, report)
        except RefusedError as e:
            if not recovers_after(e.code):
                raise
            self._recover(client, report)
            answer = self.check_in(client, report)
        report.checked_in = True
        report.steps.append("checked in")
        if answer.assignment is not None:
            update.apply_update(job, answer.assignment, report)

    def _recover(self, client: HomeClient, report: CycleReport) -> None:
        self.recover(client)
        report.recovered = True
        report.steps.append("certificate recovered by key proof")
