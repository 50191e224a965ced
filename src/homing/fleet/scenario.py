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
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from homing.errors import ConfigError

__all__ = [
    "CA_KINDS",
    "LAPSE_ROLES",
    "PATTERNS",
    "CACompromise",
    "Events",
    "FirmwareKeyRotation",
    "Fleet",
    "Lapse",
    "Outage",
    "Population",
    "Revocation",
    "Scenario",
    "Server",
    "load_scenario",
]

# How a population is online. Each is described in docs/simulator.md.
PATTERNS = ("always-on", "daily", "seasonal", "warehouse", "outage", "dead")
# The TUF roles an operator can let lapse, and the CAs whose key can be stolen.
LAPSE_ROLES = ("timestamp", "snapshot", "targets", "root")
# Days between the end of one lapse and the start of the next, at least.
LAPSE_GAP_DAYS = 28
CA_KINDS = ("server", "device")


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
    name: str = "default ten-year fleet"
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
            if not 7 <= lapse.days <= 3650:
                raise ConfigError(f"lapse[{i}].days must be between 7 and 3650")
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
    for name in ("warehouse_years", "outage_years", "lifetime_years"):
        low, high = getattr(p, name)
        if not 0 <= low <= high:
            raise ConfigError(
                f"population {p.name!r}: {name} must be [low, high] with 0 <= low <= high"
            )


# -- TOML ----------------------------------------------------------------------

# The dated events, each an array of tables: [[outage]], [[revocation]], ...
_DATED: dict[str, tuple[str, type]] = {
    "outage": ("outages", Outage),
    "revocation": ("revocations", Revocation),
    "lapse": ("lapses", Lapse),
    "ca_compromise": ("ca_compromises", CACompromise),
    "firmware_key_rotation": ("firmware_key_rotations", FirmwareKeyRotation),
}
_TABLES = {"name", "fleet", "population", "server", "events", "policy", *_DATED}


def load_scenario(path: Path) -> Scenario:
    """Read a scenario file; every omitted field keeps its default."""
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise ConfigError(f"scenario file {path} does not exist") from e
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read scenario file {path}: {e}") from e
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"scenario file {path} is not valid TOML: {e}") from e
    return scenario_from_dict(doc, str(path))


def scenario_from_dict(doc: dict[str, Any], where: str = "scenario") -> Scenario:
    unknown = set(doc) - _TABLES
    if unknown:
        raise ConfigError(f"{where}: unknown table or key {sorted(unknown)[0]!r}")
    base = Scenario()
    name = doc.get("name", base.name)
    if not isinstance(name, str):
        raise ConfigError(f"{where}: name must be a string")
    populations = base.populations
    if "population" in doc:
        raw = doc["population"]
        if not isinstance(raw, list) or not all(isinstance(p, dict) for p in raw):
            raise ConfigError(f"{where}: population must be an array of tables ([[population]])")
        populations = tuple(_population(p, where) for p in raw)
    dated: dict[str, tuple[Any, ...]] = {}
    for table, (attribute, kind) in _DATED.items():
        raw = doc.get(table, [])
        if not isinstance(raw, list) or not all(isinstance(t, dict) for t in raw):
            raise ConfigError(f"{where}: {table} must be an array of tables ([[{table}]])")
        for entry in raw:
            missing = [
                f.name for f in fields(kind) if f.name not in entry and _required(kind, f.name)
            ]
            if missing:
                raise ConfigError(f"{where}: every [[{table}]] needs {', '.join(missing)}")
        dated[attribute] = tuple(_table(kind, t, table, where) for t in raw)
    scenario = Scenario(
        name=name,
        fleet=_table(Fleet, doc.get("fleet", {}), "fleet", where),
        populations=populations,
        server=_table(Server, doc.get("server", {}), "server", where),
        events=_table(Events, doc.get("events", {}), "events", where),
        policy=_table(Policy, doc.get("policy", {}), "policy", where),
        **dated,
    )
    scenario.check()
    return scenario


def _required(kind: Any, name: str) -> bool:
    from dataclasses import MISSING

    spec = kind.__dataclass_fields__[name]
    return spec.default is MISSING and spec.default_factory is MISSING


def _population(raw: dict[str, Any], where: str) -> Population:
    if "pattern" not in raw or "share" not in raw:
        raise ConfigError(f"{where}: every [[population]] needs a pattern and a share")
    raw = {"name": raw.get("name", raw["pattern"]), **raw}
    population: Population = _table(Population, raw, "population", where)
    return population


def _table(kind: Any, raw: Any, table: str, where: str) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: [{table}] must be a table")
    known = {f.name: f for f in fields(kind)}
    values: dict[str, Any] = {}
    defaults = kind.__dataclass_fields__
    for key, value in raw.items():
        if key not in known:
            raise ConfigError(f"{where}: unknown key {table}.{key}")
        values[key] = _coerce(value, defaults[key].type, f"{table}.{key}", where)
    try:
        return kind(**values)
    except TypeError as e:
        raise ConfigError(f"{where}: [{table}] {e}") from e


def _coerce(value: Any, annotation: str, name: str, where: str) -> Any:
    """Check a TOML value against the field's annotation (the dataclass's string form)."""

    def fail(expected: str) -> ConfigError:
        return ConfigError(f"{where}: {name} must be {expected}, not {value!r}")

    number = (int, float)
    if annotation == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise fail("an integer")
        return value
    if annotation == "float":
        if isinstance(value, bool) or not isinstance(value, number):
            raise fail("a number")
        return float(value)
    if annotation == "float | None":
        if value is False:
            return None
        if isinstance(value, bool) or not isinstance(value, number):
            raise fail("a number (or false for never)")
        return float(value)
    if annotation == "str":
        if not isinstance(value, str):
            raise fail("a string")
        return value
    if annotation == "tuple[float, float]":
        if (
            not isinstance(value, list)
            or len(value) != 2
            or not all(isinstance(v, number) and not isinstance(v, bool) for v in value)
        ):
            raise fail("[low, high]")
        return (float(value[0]), float(value[1]))
    if annotation == "tuple[float, ...]":
        if not isinstance(value, list) or not all(
            isinstance(v, number) and not isinstance(v, bool) for v in value
        ):
            raise fail("a list of years")
        return tuple(float(v) for v in value)
    raise ConfigError(f"{where}: {name} cannot be set from a scenario file")
