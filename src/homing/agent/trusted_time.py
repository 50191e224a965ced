"""When the device's clock is in doubt, and the time it asks its home for.

The agent works at its wall clock, never below its secure time floor. Three
readings make the clock doubtful (docs/adr/0009-trusted-time.md):

- **behind the floor**: a dead RTC reads 1970, or the clock was set back;
- **past every expiry the device holds**: no root or targets metadata it has
  verified is still valid, which a device that was merely offline cannot
  reach in a normal life (roots live years), but a clock years ahead does;
- **jumped**: within one boot, wall time moved away from the time since
  boot (``CLOCK_BOOTTIME``, which counts suspend, so a sleepy device that
  wakes is no jump) by more than ``JUMP_TOLERANCE`` since the last cycle.

A fourth is known only by its effect: a refusal by the device's own clock (the
home's chain not valid at it, metadata expired by it) makes the agent ask once
and try again at the home's time (``Agent._time_when_refused``).

Then the agent asks home (``homing.trust.time_answer``): one request with a
fresh nonce, over the unpinned bootstrap channel (the answer authenticates
itself; the doubtful clock cannot judge a TLS certificate). The answer
becomes the cycle's time; it is never persisted as a floor by itself, so a
forged "far future" answer cannot lock a device out for good.
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from tuf.api import exceptions as tuf_errors
from tuf.api.metadata import Metadata, Root, Targets
from tuf.api.serialization import DeserializationError

from homing.agent.fetcher import HTTPSFetcher
from homing.config import Limits
from homing.errors import MetadataError, TransportError
from homing.trust.time_answer import MAX_ANSWER_BYTES, new_nonce, verify_time

__all__ = [
    "JUMP_TOLERANCE",
    "ask_home",
    "boot_id",
    "boot_marks",
    "doubt",
    "expected_now",
    "latest_expiry",
    "trusted_root",
    "uptime",
]

JUMP_TOLERANCE = timedelta(minutes=5)
_BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


def uptime() -> float:
    """Seconds since boot, suspend included (where the platform has CLOCK_BOOTTIME)."""
    clock = getattr(time, "CLOCK_BOOTTIME", time.CLOCK_MONOTONIC)
    return time.clock_gettime(clock)


def boot_id() -> str:
    try:
        return _BOOT_ID.read_text().strip()
    except OSError:
        return ""


def boot_marks(since_boot: float, used: datetime) -> dict[str, Any]:
    """What the next cycle compares against: this boot, the time since it, and the time
    this cycle used (the home's, when it asked: a clock still wrong stays in doubt)."""
    return {"boot_id": boot_id(), "uptime": since_boot, "time_used": used.isoformat()}


# Expiry of a metadata file by (path, mtime, size): the doubt rule runs every cycle,
# the files change only when trust does.
_expiries: dict[tuple[str, int, int], datetime] = {}


def _expiry(path: Path, kind: type[Root] | type[Targets]) -> datetime | None:
    try:
        stat = path.stat()
        key = (str(path), stat.st_mtime_ns, stat.st_size)
        if key not in _expiries:
            if len(_expiries) > 64:
                _expiries.clear()
            _expiries[key] = Metadata[kind].from_bytes(path.read_bytes()).signed.expires  # type: ignore[valid-type]
        return _expiries[key]
    except (OSError, DeserializationError):
        return None  # an unreadable file is no evidence either way


def latest_expiry(trust_dir: Path) -> datetime | None:
    """The latest expiry among the root and targets metadata this device verified."""
    found = [
        e
        for e in (
            _expiry(trust_dir / "root.json", Root),
            _expiry(trust_dir / "targets.json", Targets),
        )
        if e is not None
    ]
    return max(found) if found else None


def expected_now(since_boot: float | None, last_run: dict[str, Any] | None) -> datetime | None:
    """The time now by the last cycle's time and the time since boot (same boot only)."""
    if since_boot is None or not last_run or not last_run.get("boot_id"):
        return None
    if last_run["boot_id"] != boot_id():
        return None  # another boot: the time since boot restarted
    try:
        at = datetime.fromisoformat(str(last_run["time_used"]))
        return at + timedelta(seconds=since_boot - float(last_run["uptime"]))
    except (KeyError, ValueError, TypeError):
        return None


def _jumped(clock: datetime, since_boot: float | None, last_run: dict[str, Any] | None) -> bool:
    expected = expected_now(since_boot, last_run)
    return expected is not None and abs(clock - expected) > JUMP_TOLERANCE


def doubt(
    clock: datetime,
    floor: datetime,
    trust_dir: Path,
    last_run: dict[str, Any] | None,
    since_boot: float | None = None,
) -> str | None:
    """Why the wall clock cannot be trusted for this cycle, or None.

    ``since_boot``: this boot's uptime now, for the jump rule (None: no such
    clock to compare with, as for a simulated device on an injected clock).
    """
    if clock < floor:
        return f"the clock ({clock.isoformat()}) is behind the time floor ({floor.isoformat()})"
    latest = latest_expiry(trust_dir)
    if latest is not None and clock > latest:
        return (
            f"the clock ({clock.isoformat()}) is past every expiry this device holds "
            f"(the latest: {latest.isoformat()})"
        )
    if _jumped(clock, since_boot, last_run):
        return "the clock jumped since the last cycle"
    return None


def trusted_root(trust_dir: Path) -> Root:
    try:
        return Metadata[Root].from_bytes((trust_dir / "root.json").read_bytes()).signed
    except (OSError, DeserializationError) as e:
        raise MetadataError(f"no trusted root to check a time answer with: {e}") from e


def ask_home(
    url: str, root: Root, floor: datetime, now: datetime, limits: Limits | None = None
) -> datetime:
    """The home's time for a fresh nonce, checked against ``root``; the time now by it."""
    nonce = new_nonce()
    fetcher = HTTPSFetcher(None, now, limits=limits)
    try:
        answer = fetcher.download_bytes(f"{url}/v1/time?nonce={nonce}", MAX_ANSWER_BYTES)
    except tuf_errors.DownloadError as e:
        raise TransportError(f"cannot ask {url} for the time: {e}") from e
    finally:
        fetcher.close()
    received = time.monotonic()
    when = verify_time(answer, nonce, root, floor)
    return when + timedelta(seconds=time.monotonic() - received)


def last_run(path: Path) -> dict[str, Any] | None:
    try:
        doc = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None
