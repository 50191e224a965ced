"""What a simulation runs: the fleet, its online habits and the events of its life.

A scenario is a TOML file (documented with examples in docs/simulator.md);
every field has a default, and the defaults are a realistic ten-year fleet.
Parsing is strict: an unknown table or key, a share that does not add up, a
year outside the simulated span, each is a ConfigError naming the field,
because a typo in a scenario would otherwise silently simulate something
else.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field, replace
from typing import Any

from homing.errors import ConfigError

__all__ = [
    "CA_KINDS",
    "EMERGENCY_KINDS",
    "LAPSE_ROLES",
    "PATTERNS",
    "CACompromise",
    "CompromiseResponse",
    "EmergencyRotation",
    "Events",
    "FirmwareKeyRotation",
    "Fleet",
    "Lapse",
    "Outage",
    "Population",
    "Revocation",
    "Scenario",
    "Server",
]

# How a population is online. Each is described in docs/simulator.md.
PATTERNS = ("always-on", "daily", "seasonal", "warehouse", "outage", "dead")
# The TUF roles an operator can let lapse, and the CAs whose key can be stolen.
LAPSE_ROLES = ("timestamp", "snapshot", "targets", "root")
# Days between the end of one lapse and the start of the next, at least.
LAPSE_GAP_DAYS = 28
CA_KINDS = ("server", "device")
# What an operator can replace at once, without a theft and without announcing it.
EMERGENCY_KINDS = ("server-key", "server-ca", "device-ca", "root")


@dataclass(frozen=True)
class Population:
    """A share of the fleet with one online habit."""

    name: str
    share: float
    pattern: str
    # daily: chance of being online on a given day.
    online_probability: float = 0.8
    # seasonal: online from this day of the year for this many days.
    season_start_day: int = 120
    season_days: int = 120
    # warehouse: shipped this many years (uniform between the two) after assembly.
    warehouse_years: tuple[float, float] = (1.0, 4.0)
    # outage: one outage of this many years, starting in the first half of the run.
    outage_years: tuple[float, float] = (0.5, 4.0)
    # dead: stops for good this many years after assembly.
    lifetime_years: tuple[float, float] = (1.0, 8.0)
    # How far the devices' clocks are off, in days (-20,000: a dead RTC reading 1970).
    clock_offset_days: float = 0.0
    # No battery behind the clock: it reads 1970-01-01 at every start, so each
    # contact after the device was off (a week offline) is made at 1970.
    clock_resets_at_boot: bool = False
    # The year (from the start of the run) the devices' clocks are set right for
    # good (an NTP fix shipped, a new battery); None: never.
    clock_fixed_at: float | None = None


@dataclass(frozen=True)
class Outage:
    """A share of the fleet is offline from a date, for a while ([[outage]])."""

    at: float  # years from the start of the run
    days: float
    share: float


@dataclass(frozen=True)
class Revocation:
    """A share of the fleet is revoked on a date (stolen, returned, retired) ([[revocation]])."""

    at: float
    share: float


@dataclass(frozen=True)
class Lapse:
    """The operator lets one TUF role expire on a date and re-signs it days later ([[lapse]])."""

    role: str
    at: float
    days: float


@dataclass(frozen=True)
class CACompromise:
    """An issuing CA's key is stolen on a date ([[ca_compromise]]): "server" or "device"."""

    ca: str
    at: float


@dataclass(frozen=True)
class EmergencyRotation:
    """A key or CA replaced at once on a date, with nothing stolen and nothing announced
    ([[emergency_rotation]]): a weak key found, an auditor's finding, a vendor's advice.

    ``of``: "server-key" (the server's TLS key), "server-ca" (the issuing CA
    of the server's certificate), "device-ca" (the issuing CA of devices'
    certificates, its old certificates still trusted) or "root" (homing's
    TUF root keys).
    """

    of: str
    at: float


@dataclass(frozen=True)
class CompromiseResponse:
    """Who a theft reaches and how fast the operator answers it ([compromise]).

    Applies to every theft of the run (``events.key_compromise`` and each
    [[ca_compromise]]): the attacker sits in front of ``intercepted_share``
    of the fleet (drawn from the seed) for ``intercept_days`` after the
    theft; the operator rotates ``response_days`` after it, and until then
    the home keeps signing with the stolen key's pins, so the freshest
    metadata an attacker can replay is the last signed before the response.
    """

    response_days: float = 0.0
    intercepted_share: float = 1.0
    intercept_days: float = float("inf")


@dataclass(frozen=True)
class FirmwareKeyRotation:
    """The firmware signing key is replaced on a date ([[firmware_key_rotation]]).

    Firmware that verifies updates with a key it carries is signed by both
    keys for ``retire_after_days``, then by the new one only.
    """

    at: float
    retire_after_days: float = 90.0


@dataclass(frozen=True)
class Fleet:
    devices: int = 100_000
    years: float = 10.0
    seed: int = 1
    # Devices are assembled uniformly over the first years of the run.
    manufacture_years: float = 3.0
    # Days in one step of simulated time: a week, or finer (1 to 7) where a
    # scenario's events are days apart; a day costs about seven times a week.
    step_days: int = 7


@dataclass(frozen=True)
class Server:
    """How the server's own certificate and key change."""

    # Leaf certificates are renewed this often (public CAs: 90 days or less).
    leaf_days: int = 90
    # The TLS key changes this often; renewals in between keep the key.
    key_days: int = 365
    # announce-next: the next fingerprint is announced this long before it is used.
    announce_days: int = 30


@dataclass(frozen=True)
class Events:
    """The life of the company's PKI, in years from the start of the run."""

    issuing_ca_rotations: tuple[float, ...] = (3.0, 6.0, 9.0)
    public_intermediate_changes: tuple[float, ...] = (3.0, 7.0)
    # The public root the fleet was built on expires; its successor appears
    # ``public_new_root_lead_years`` earlier and is shipped from then on.
    public_root_expiry: float = 4.0
    public_new_root_lead_years: float = 2.0
    # The baseline private root CA's lifetime; a successor is made a year before.
    private_root_years: float = 8.0
    # homing's TUF root key ceremonies (also renew root metadata before it expires).
    root_rotations: tuple[float, ...] = (4.0, 8.0)
    # homing's X.509 root CA is replaced (``homing rotate root-ca``): a new root beside
    # the old, published in the pin policy; the old keeps its devices until it expires.
    root_ca_rotations: tuple[float, ...] = ()
    # The server's TLS key is stolen (None: never).
    key_compromise: float | None = 5.5
    firmware_release_days: int = 180


@dataclass(frozen=True)
class Policy:
    """Settings of the strategies themselves."""

    hpkp_max_age_days: int = 60
    # What fleets without key-proof recovery issue at the factory.
    baseline_device_cert_days: int = 7300
    # homing's short-lived device certificates (its default validity).
    homing_device_cert_days: int = 365
    # private-ca pins the "root" or the "issuing" CA certificate.
    private_ca_pins: str = "root"
    # firmware-pins: a device cut off is updated by hand this many days later.
    manual_update_days: int = 30


def _default_populations() -> tuple[Population, ...]:
    return (
        Population("always-on", 0.35, "always-on"),
        Population("daily", 0.25, "daily"),
        Population("seasonal", 0.10, "seasonal"),
        Population("warehouse", 0.10, "warehouse"),
        Population("long outage", 0.10, "outage"),
        Population("dead", 0.10, "dead"),
    )


@dataclass(frozen=True)
class Scenario:
    # The run's length is said next to the name wherever it is shown (--years changes it).
    name: str = "default fleet"
    fleet: Fleet = field(default_factory=Fleet)
    populations: tuple[Population, ...] = field(default_factory=_default_populations)
    server: Server = field(default_factory=Server)
    events: Events = field(default_factory=Events)
    policy: Policy = field(default_factory=Policy)
    outages: tuple[Outage, ...] = ()
    revocations: tuple[Revocation, ...] = ()
    lapses: tuple[Lapse, ...] = ()
    ca_compromises: tuple[CACompromise, ...] = ()
    firmware_key_rotations: tuple[FirmwareKeyRotation, ...] = ()
    emergency_rotations: tuple[EmergencyRotation, ...] = ()
    compromise: CompromiseResponse = field(default_factory=CompromiseResponse)

    def with_fleet(self, **changes: Any) -> Scenario:
        """The same scenario with command-line overrides (devices, years, seed).

        A shorter run also shortens the assembly period, so ``--years 1``
        works on any scenario.
        """
        if "years" in changes and "manufacture_years" not in changes:
            changes["manufacture_years"] = min(self.fleet.manufacture_years, changes["years"])
        scenario = replace(self, fleet=replace(self.fleet, **changes))
        scenario.check()
        return scenario

    def check(self) -> None:
        f = self.fleet
        if not 1 <= f.devices <= 10_000_000:
            raise ConfigError(f"fleet.devices must be between 1 and 10,000,000, not {f.devices}")
        if not 0 < f.years <= 50:
            raise ConfigError(f"fleet.years must be above 0 and at most 50, not {f.years}")
        if not 1 <= f.step_days <= 7:
            raise ConfigError(f"fleet.step_days must be between 1 and 7, not {f.step_days}")
        if not 0 <= f.manufacture_years <= f.years:
            raise ConfigError("fleet.manufacture_years must be between 0 and fleet.years")
        if not self.populations:
            raise ConfigError("a scenario needs at least one population")
        total = sum(p.share for p in self.populations)
        if abs(total - 1.0) > 1e-6:
            raise ConfigError(f"population shares must add up to 1, not {total:g}")
        for p in self.populations:
            _check_population(p)
        s = self.server
        for name in ("leaf_days", "key_days", "announce_days"):
            if getattr(s, name) < 1:
                raise ConfigError(f"server.{name} must be at least 1 day")
        if s.announce_days >= s.leaf_days:
            raise ConfigError("server.announce_days must be shorter than server.leaf_days")
        e = self.events
        for name in (
            "issuing_ca_rotations",
            "public_intermediate_changes",
            "root_rotations",
            "root_ca_rotations",
        ):
            for year in getattr(e, name):
                _check_year(f"events.{name}", year, f.years)
        if e.key_compromise is not None:
            _check_year("events.key_compromise", e.key_compromise, f.years)
        if e.public_root_expiry <= 0 or e.public_new_root_lead_years < 0:
            raise ConfigError(
                "events.public_root_expiry must be positive and the lead not negative"
            )
        if e.private_root_years <= 1:
            raise ConfigError("events.private_root_years must be more than 1")
        if e.firmware_release_days < 7:
            raise ConfigError("events.firmware_release_days must be at least 7")
        self._check_dated_events()
        response = self.compromise
        if not 0 <= response.response_days <= 3650:
            raise ConfigError("compromise.response_days must be between 0 and 3650")
        _check_share("compromise.intercepted_share", response.intercepted_share)
        if not response.intercept_days > 0:
            raise ConfigError("compromise.intercept_days must be positive (inf: for ever)")
        pol = self.policy
        if pol.private_ca_pins not in ("root", "issuing"):
            raise ConfigError("policy.private_ca_pins must be 'root' or 'issuing'")
        for name in (
            "hpkp_max_age_days",
            "baseline_device_cert_days",
            "homing_device_cert_days",
            "manual_update_days",
        ):
            if getattr(pol, name) < 1:
                raise ConfigError(f"policy.{name} must be at least 1 day")

    def _check_dated_events(self) -> None:
        years = self.fleet.years
        for i, o in enumerate(self.outages):
            _check_year(f"outage[{i}].at", o.at, years)
            _check_share(f"outage[{i}].share", o.share)
            if o.days <= 0:
                raise ConfigError(f"outage[{i}].days must be positive")
        for i, r in enumerate(self.revocations):
            _check_year(f"revocation[{i}].at", r.at, years)
            _check_share(f"revocation[{i}].share", r.share)
        for i, lapse in enumerate(self.lapses):
            _check_year(f"lapse[{i}].at", lapse.at, years)
            if lapse.role not in LAPSE_ROLES:
                raise ConfigError(f"lapse[{i}].role must be one of {', '.join(LAPSE_ROLES)}")
            step = self.fleet.step_days
            if not step <= lapse.days <= 3650:
                raise ConfigError(
                    f"lapse[{i}].days must be between {step} (fleet.step_days) and 3650"
                )
        ordered = sorted(enumerate(self.lapses), key=lambda item: item[1].at)
        for (i, first), (j, then) in itertools.pairwise(ordered):
            # A week is the simulator's step: closer lapses would share one.
            if then.at < first.at + (first.days + LAPSE_GAP_DAYS) / 365.25:
                raise ConfigError(
                    f"lapse[{j}] starts within {LAPSE_GAP_DAYS} days of the end of lapse[{i}]: "
                    f"one lapse at a time, at least {LAPSE_GAP_DAYS} days apart"
                )
        for i, c in enumerate(self.ca_compromises):
            _check_year(f"ca_compromise[{i}].at", c.at, years)
            if c.ca not in CA_KINDS:
                raise ConfigError(f"ca_compromise[{i}].ca must be one of {', '.join(CA_KINDS)}")
        for i, e in enumerate(self.emergency_rotations):
            _check_year(f"emergency_rotation[{i}].at", e.at, years)
            if e.of not in EMERGENCY_KINDS:
                raise ConfigError(
                    f"emergency_rotation[{i}].of must be one of {', '.join(EMERGENCY_KINDS)}"
                )
        for i, f in enumerate(self.firmware_key_rotations):
            _check_year(f"firmware_key_rotation[{i}].at", f.at, years)
            if f.retire_after_days < 0:
                raise ConfigError(f"firmware_key_rotation[{i}].retire_after_days must be >= 0")


def _check_share(what: str, share: float) -> None:
    if not 0 < share <= 1:
        raise ConfigError(f"{what} must be above 0 and at most 1")


def _check_year(what: str, year: float, years: float) -> None:
    """Events after the end of the run simply do not happen (``--years`` shortens a run)."""
    if year <= 0:
        raise ConfigError(f"{what}: year {year:g} must be after the start of the run")


def _check_population(p: Population) -> None:
    if p.pattern not in PATTERNS:
        raise ConfigError(f"population {p.name!r}: pattern must be one of {', '.join(PATTERNS)}")
    if not 0 < p.share <= 1:
        raise ConfigError(f"population {p.name!r}: share must be above 0 and at most 1")
    if not 0 < p.online_probability <= 1:
        raise ConfigError(f"population {p.name!r}: online_probability must be in (0, 1]")
    if not 0 <= p.season_start_day < 366 or not 1 <= p.season_days <= 366:
        raise ConfigError(f"population {p.name!r}: season must lie within a year")
    if abs(p.clock_offset_days) > 100 * 366:
        raise ConfigError(f"population {p.name!r}: clock_offset_days must be within 100 years")
    if p.clock_fixed_at is not None and p.clock_fixed_at <= 0:
        raise ConfigError(
            f"population {p.name!r}: clock_fixed_at must be a year after the start of the run"
        )
    for name in ("warehouse_years", "outage_years", "lifetime_years"):
        low, high = getattr(p, name)
        if not 0 <= low <= high:
            raise ConfigError(
                f"population {p.name!r}: {name} must be [low, high] with 0 <= low <= high"
            )
