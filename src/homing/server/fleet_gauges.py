"""Prometheus gauges of the fleet's trust and of everything that expires.

Read from the database and the data directory at scrape time (at most once
per ``_CACHE_SECONDS``, whatever the scrape rate), so every worker process
reports the same values and nothing has to be kept in step by hand. The
alert rules shipped in ``deploy/prometheus/homing-alerts.yml`` read these.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import datetime

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from homing.operations.clock import clock_doubt
from homing.operations.overview import FleetOverview, fleet_overview
from homing.site import DataDir
from homing.store import Database

__all__ = ["FleetGauges"]

_CACHE_SECONDS = 5.0


class _AuditCollector(Collector):
    """The fleet audit's findings (``homing audit``, default thresholds) as counts."""

    def __init__(self, found: dict[str, list[str]]) -> None:
        self.found = found

    def collect(self) -> Iterator[GaugeMetricFamily]:
        gauge = GaugeMetricFamily(
            "homing_fleet_audit_devices",
            "Active devices the fleet audit flags, by finding (homing audit)",
            labels=["finding"],
        )
        for kind, device_ids in sorted(self.found.items()):
            gauge.add_metric([kind], len(device_ids))
        yield gauge


class _ClockCollector(Collector):
    """Whether the server's clock is believable enough to sign at (homing.operations.clock)."""

    def __init__(self, doubt: str | None) -> None:
        self.doubt = doubt

    def collect(self) -> Iterator[GaugeMetricFamily]:
        yield GaugeMetricFamily(
            "homing_clock_in_doubt",
            "1 when the server's clock is in doubt and it signs nothing (homing clock status)",
            value=1 if self.doubt else 0,
        )


class _OverviewCollector(Collector):
    def __init__(self, overview: FleetOverview) -> None:
        self.overview = overview

    def collect(self) -> Iterator[GaugeMetricFamily]:
        o = self.overview
        c = o.counts
        expiry = GaugeMetricFamily(
            "homing_metadata_expiry_seconds",
            "Seconds until the role's current metadata expires (negative: expired)",
            labels=["role"],
        )
        certificate = GaugeMetricFamily(
            "homing_certificate_expiry_seconds",
            "Seconds until the certificate expires (the server's and each CA's)",
            labels=["certificate", "kind"],
        )
        for e in o.timeline:
            if e.kind == "metadata":
                expiry.add_metric([e.name.removesuffix(" metadata")], e.seconds_left)
            else:
                kind = "server" if e.name == "server certificate" else "ca"
                certificate.add_metric([e.name, kind], e.seconds_left)
        yield expiry
        yield certificate
        for name, help_text, label, values in (
            (
                "homing_devices_by_root_version",
                "Active devices by root version",
                "root_version",
                c.by_root_version,
            ),
            (
                "homing_devices_by_pin_policy_version",
                "Active devices by pin policy version held",
                "pin_policy_version",
                c.by_pin_policy_version,
            ),
            (
                "homing_devices_by_server_ca_generation",
                "Active devices by the server-CA generation their pins matched",
                "generation",
                c.by_server_ca_generation,
            ),
            (
                "homing_devices_by_firmware",
                "Active devices by firmware version",
                "firmware",
                c.by_firmware,
            ),
        ):
            family = GaugeMetricFamily(name, help_text, labels=[label])
            for key, count in sorted(values.items()):
                family.add_metric([key], count)
            yield family
        for name, help_text, total in (
            ("homing_devices_active", "Devices enrolled and not revoked", c.active),
            ("homing_devices_revoked", "Devices revoked", c.revoked),
            (
                "homing_devices_last_contact_failed",
                "Active devices whose last contact the server refused",
                c.last_contact_failed,
            ),
            ("homing_devices_never_seen", "Active devices that never checked in", c.never_seen),
            (
                "homing_devices_behind_pin_policy",
                "Active devices not known to hold the newest published pin policy",
                c.behind_pin_policy,
            ),
        ):
            yield GaugeMetricFamily(name, help_text, value=total)
        quiet = GaugeMetricFamily(
            "homing_devices_not_seen",
            "Active devices not seen for the given number of days",
            labels=["days"],
        )
        quiet.add_metric([f"{o.not_seen_days:g}"], c.not_seen)
        yield quiet
        state = GaugeMetricFamily(
            "homing_rollout_state",
            "1 for the rollout's current state",
            labels=["rollout", "hardware", "version", "state"],
        )
        halted = GaugeMetricFamily(
            "homing_rollout_halted",
            "1 when the rollout halted itself on failures",
            labels=["rollout", "hardware", "version"],
        )
        stage = GaugeMetricFamily(
            "homing_rollout_stage_percent",
            "Share of the hardware class the rollout's current stage covers",
            labels=["rollout", "hardware", "version"],
        )
        for r in o.rollouts:
            labels = [str(r.id), r.hardware, r.version]
            state.add_metric([*labels, r.status], 1)
            halted.add_metric(labels, 1 if r.status == "halted" else 0)
            stage.add_metric(labels, r.percent)
        yield state
        yield halted
        yield stage


class FleetGauges:
    """The fleet's gauges as Prometheus text, cached for a few seconds."""

    def __init__(self, dd: DataDir, db: Database) -> None:
        self.dd = dd
        self.db = db
        self._cached: tuple[float, bytes] | None = None

    def _findings(self, now: datetime) -> dict[str, list[str]]:
        from homing.operations.fleet_audit import distrusted_pins
        from homing.store.fleet_audit import findings

        with self.db.engine.connect() as conn:
            return findings(conn, now, distrusted_pins=distrusted_pins(self.dd))

    def render(self, now: datetime) -> bytes:
        """Called on a thread: it reads the database and the data directory."""
        cached = self._cached
        if cached is not None and time.monotonic() - cached[0] < _CACHE_SECONDS:
            return cached[1]
        registry = CollectorRegistry()
        registry.register(_OverviewCollector(fleet_overview(self.dd, self.db, now)))
        registry.register(_AuditCollector(self._findings(now)))
        registry.register(_ClockCollector(clock_doubt(self.db, now)))
        body = generate_latest(registry)
        self._cached = (time.monotonic(), body)
        return body
