"""A scenario file: TOML read strictly into a homing.fleet.scenario.Scenario.

An unknown table or key, a missing required field or a value of the wrong
type is a ConfigError naming the field: a typo in a scenario would
otherwise silently simulate something else.
"""

from __future__ import annotations

import tomllib
from dataclasses import fields
from pathlib import Path
from typing import Any

from homing.errors import ConfigError
from homing.fleet.scenario import (
    CACompromise,
    CompromiseResponse,
    EmergencyRotation,
    Events,
    FirmwareKeyRotation,
    Fleet,
    Lapse,
    Outage,
    Policy,
    Population,
    Revocation,
    Scenario,
    Server,
)

__all__ = ["load_scenario", "scenario_from_dict"]

# The dated events, each an array of tables: [[outage]], [[revocation]], ...
_DATED: dict[str, tuple[str, type]] = {
    "outage": ("outages", Outage),
    "revocation": ("revocations", Revocation),
    "lapse": ("lapses", Lapse),
    "ca_compromise": ("ca_compromises", CACompromise),
    "firmware_key_rotation": ("firmware_key_rotations", FirmwareKeyRotation),
    "emergency_rotation": ("emergency_rotations", EmergencyRotation),
}
_TABLES = {"name", "fleet", "population", "server", "events", "policy", "compromise", *_DATED}


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
        compromise=_table(CompromiseResponse, doc.get("compromise", {}), "compromise", where),
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
    if annotation == "bool":
        if not isinstance(value, bool):
            raise fail("true or false")
        return value
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
