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

import base64
import contextlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import pkcs7

from homing.agent.fetcher import HTTPSFetcher
from homing.agent.state import DeviceState
from homing.agent.transport import open_connection
from homing.config import Limits
from homing.errors import (
    ChainError,
    HomingError,
    MetadataError,
    RevokedError,
    TransportError,
)
from homing.pki.profiles import device_csr
from homing.pki.proof import sign_recovery_proof
from homing.trust.client import DirectoryFetcher, TrustState, refresh_trust
from homing.trust.pins import PinPolicy

__all__ = ["Agent", "CycleReport", "certificate_action"]

log = logging.getLogger(__name__)

FAR_AHEAD = timedelta(days=1)


@dataclass
class CycleReport:
    checked_in: bool = False
    steps: list[str] = field(default_factory=list)
    error: str | None = None
    trust: dict[str, int] = field(default_factory=dict)
    # Seconds the server asked the device to wait (HTTP Retry-After).
    retry_after: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "checked_in": self.checked_in,
            "steps": self.steps,
            "error": self.error,
            "trust": self.trust,
        }


class Agent:
    def __init__(
        self,
        state: DeviceState,
        *,
        server: str | None = None,
        clock: Callable[[], datetime] | None = None,
        limits: Limits | None = None,
        firmware_version: str | None = None,
        fetcher: Callable[[PinPolicy | None, datetime], HTTPSFetcher] = HTTPSFetcher,
    ) -> None:
        """``fetcher`` makes the metadata fetcher for a source (pinned or bootstrap);
        the fleet simulator passes one that serves its simulated network."""
        self._fetcher = fetcher
        self.state = state
        self.config = state.config()
        self.server_override = server or self.config.server
        self.clock = clock or (lambda: datetime.now(UTC))
        self.limits = limits or Limits()
        self.firmware_version = firmware_version
        self.clock_skew: float | None = None
        self.retry_after: float | None = None

    # -- time ----------------------------------------------------------------

    def now(self) -> datetime:
        """The wall clock, raised to the secure time floor (a clock behind it is not trusted)."""
        clock = self.clock()
        floor = max(
            filter(None, [self.state.time_floor(), datetime.fromisoformat(self.config.released_at)])
        )
        if clock < floor:
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
        report.trust = {
            "root": trust.root_version,
            "timestamp": trust.timestamp_version,
            "snapshot": trust.snapshot_version,
            "targets": trust.targets_version,
        }
        return trust

    # -- certificate ---------------------------------------------------------

    def _client_cert(self) -> tuple[Any, Any]:
        return (self.state.cert_path, self.state.key_path)

    def _server(self, policy: PinPolicy) -> str:
        return (self.server_override or policy.primary).rstrip("/")

    def _csr(self) -> bytes:
        return device_csr(self.state.key(), self.config.device_id)

    def _post(
        self,
        policy: PinPolicy,
        now: datetime,
        path: str,
        body: bytes,
        content_type: str,
        *,
        mutual: bool,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, bytes, list[x509.Certificate]]:
        conn = open_connection(
            self._server(policy),
            policy=policy,
            now=now,
            client_cert=self._client_cert() if mutual else None,
        )
        try:
            conn.request(
                "POST", path, body=body, headers={"Content-Type": content_type, **(headers or {})}
            )
            response = conn.getresponse()
            retry_after = response.getheader("Retry-After")
            if response.status in (429, 503) and retry_after:
                self.retry_after = _retry_after_seconds(retry_after, now)
            return response.status, response.read(), conn.verified_chain
        except OSError as e:
            raise TransportError(f"request to {path} failed: {e}") from e
        finally:
            conn.close()

    def _post_json(
        self, policy: PinPolicy, now: datetime, path: str, doc: dict[str, Any], *, mutual: bool
    ) -> tuple[int, bytes, list[x509.Certificate]]:
        """POST a JSON object; fields that are None are left out."""
        body = json.dumps({k: v for k, v in doc.items() if v is not None}).encode()
        return self._post(policy, now, path, body, "application/json", mutual=mutual)

    def _expect_ok(self, status: int, body: bytes, what: str) -> None:
        """A 200, or the one error that says why not (a revoked device stops for good)."""
        if status == 403 and b'"revoked"' in body:
            raise RevokedError(f"device {self.config.device_id} is revoked")
        if status != 200:
            raise TransportError(f"{what} refused: HTTP {status} {body[:200]!r}")

    def renew(self, policy: PinPolicy, now: datetime) -> None:
        """EST simplereenroll (RFC 7030 4.2.2) with the same key, over pinned mTLS."""
        status, body, _ = self._post(
            policy,
            now,
            "/.well-known/est/simplereenroll",
            base64.b64encode(self._csr()),
            "application/pkcs10",
            mutual=True,
        )
        self._expect_ok(status, body, "re-enrollment")
        certs = pkcs7.load_der_pkcs7_certificates(base64.b64decode(body))
        self._save_certificate(certs[0], policy)

    def recover(self, policy: PinPolicy, now: datetime) -> None:
        """Key-proof recovery: prove the registered key over a fresh nonce (no client cert)."""
        status, body, _ = self._post_json(
            policy, now, "/v1/recover/challenge", {"device_id": self.config.device_id}, mutual=False
        )
        self._expect_ok(status, body, "recovery challenge")
        nonce = json.loads(body)["nonce"]
        csr = self._csr()
        proof = sign_recovery_proof(self.state.key(), nonce, csr)
        status, body, _ = self._post_json(
            policy,
            now,
            "/v1/recover",
            {
                "device_id": self.config.device_id,
                "nonce": nonce,
                "csr": base64.b64encode(csr).decode(),
                "signature": base64.b64encode(proof).decode(),
            },
            mutual=False,
        )
        self._expect_ok(status, body, "recovery")
        answer = json.loads(body)
        cert = x509.load_pem_x509_certificate(answer["certificate"].encode())
        self._save_certificate(cert, policy)

    def _save_certificate(self, cert: x509.Certificate, policy: PinPolicy) -> None:
        if cert.public_key() != self.state.key().public_key():
            raise TransportError("the server returned a certificate for another key")
        self.state.save_certificate([cert])

    # -- check-in ------------------------------------------------------------

    def check_in(self, policy: PinPolicy, now: datetime, report: CycleReport) -> dict[str, Any]:
        health: dict[str, Any] = {}
        if self.clock_skew is not None:
            health["clock_skew_seconds"] = self.clock_skew
        manual = self.state.root / "manual-update.json"
        if manual.exists():
            with contextlib.suppress(ValueError):
                health["manual_update"] = json.loads(manual.read_bytes())
        from homing.agent.update import installer_for

        running = installer_for(self).active_version() or self.firmware_version
        body = {
            "firmware_version": running,
            "hardware": self.config.hardware,
            "trust": report.trust,
            "health": health,
        }
        status, raw, chain = self._post_json(policy, now, "/v1/device/checkin", body, mutual=True)
        self._expect_ok(status, raw, "check-in")
        answer: dict[str, Any] = json.loads(raw)
        # The server has recorded the manual update with this check-in.
        manual.unlink(missing_ok=True)
        # Evidence for the time floor: the server's certificate was valid now.
        newest = max((c.not_valid_before_utc for c in chain), default=None)
        self.state.raise_time_floor(max(filter(None, [now, newest])))
        server_time = datetime.fromisoformat(answer["server_time"])
        skew = (self.clock() - server_time).total_seconds()
        if abs(skew) > FAR_AHEAD.total_seconds():
            log.warning("device clock differs from the server's by %.0f s", skew)
            self.clock_skew = skew
        return answer

    # -- the cycle -----------------------------------------------------------

    def run_once(self) -> CycleReport:
        report = CycleReport()
        self.retry_after = None
        try:
            self._cycle(report)
        except RevokedError as e:
            report.error = f"revoked: {e}"
            log.error("%s: this device has been revoked and stops", e)
        except HomingError as e:
            report.error = str(e)
            log.warning("cycle incomplete: %s", e)
        report.retry_after = self.retry_after
        self.state.save_last_run({"at": self.clock().isoformat(), **report.to_json()})
        return report

    def _cycle(self, report: CycleReport) -> None:
        now = self.now()
        # Fails closed: an expired timestamp or root raises MetadataError here,
        # and nothing but metadata requests has been sent.
        trust = self.refresh_trust(now, report)
        policy = trust.pin_policy
        action = certificate_action(self.state.certificate(), now)
        if action == "recover":
            self.recover(policy, now)
            report.steps.append("certificate recovered by key proof")
        elif action == "renew":
            try:
                self.renew(policy, now)
                report.steps.append("certificate renewed (EST simplereenroll)")
            except TransportError as e:
                report.steps.append(f"renewal postponed: {e}")
        from homing.agent import update

        update.finish_pending(self, policy, now, report)
        try:
            answer = self.check_in(policy, now, report)
        except TransportError as e:
            if "certificate_expired" not in str(e):
                raise
            self.recover(policy, now)
            report.steps.append("certificate recovered by key proof")
            answer = self.check_in(policy, now, report)
        report.checked_in = True
        report.steps.append("checked in")
        assigned = answer.get("update")
        if isinstance(assigned, dict):
            update.apply_update(self, policy, now, assigned, report)


def certificate_action(cert: x509.Certificate | None, now: datetime) -> str | None:
    """What a cycle does with the device certificate: "recover", "renew" or nothing.

    Missing or expired: key-proof recovery. From two thirds of its lifetime:
    renewal, early enough that a device online now and then renews in time.
    The fleet simulator applies this same rule.
    """
    if cert is None or now >= cert.not_valid_after_utc:
        return "recover"
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    if now >= cert.not_valid_before_utc + lifetime * 2 / 3:
        return "renew"
    return None


def _retry_after_seconds(value: str, now: datetime) -> float | None:
    """RFC 9110 10.2.3: delay-seconds or an HTTP-date; capped at a day."""
    from email.utils import parsedate_to_datetime

    try:
        seconds = float(int(value.strip()))
    except ValueError:
        try:
            seconds = (parsedate_to_datetime(value) - now).total_seconds()
        except (TypeError, ValueError):
            return None
    return max(0.0, min(seconds, 86400.0))
