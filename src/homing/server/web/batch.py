"""The fleet view's batch revocation form: what it selects, read as strictly as the API."""

from __future__ import annotations

import re
from datetime import datetime

from homing.errors import PolicyError
from homing.store.revocation import Selection

__all__ = ["FIELD_LIMITS", "selection_from_form"]

# Form fields longer than the default bound: a pasted list of ids (a few hundred;
# longer lists go through the CLI or the API). Even percent-encoded, a form this
# size stays under the 64 KiB body limit, so an over-long list is named, not cut off.
FIELD_LIMITS = {"ids": 4_000}
_SPLIT = re.compile(r"[\s,]+")


def _time(fields: dict[str, str], key: str) -> datetime | None:
    raw = fields.get(key, "").strip()
    if not raw:
        return None
    try:
        when = datetime.fromisoformat(raw)
    except ValueError:
        when = None
    if when is None or when.tzinfo is None:
        raise PolicyError(f"'{key}' must be an ISO 8601 time with its zone, e.g. 2026-12-01T00:00Z")
    return when


def selection_from_form(fields: dict[str, str]) -> Selection:
    """The devices the form names: ids, a station (and window), or an issuing CA's pin."""
    ids = tuple(i for i in _SPLIT.split(fields.get("ids", "")) if i)
    if any(len(i) > 64 for i in ids):
        raise PolicyError("a device id is longer than 64 characters")
    station = fields.get("station", "").strip() or None
    pin = fields.get("issuer_pin", "").strip() or None
    if pin is not None and len(pin) != 44:
        raise PolicyError("the issuing CA must be named by its base64 SHA-256 SPKI pin")
    return Selection(
        device_ids=ids,
        station=station,
        since=_time(fields, "since"),
        until=_time(fields, "until"),
        issuer_pin=pin,
    )
