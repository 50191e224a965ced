"""Offline recovery bundles with a validity chosen at creation."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from homing.ceremonies._common import (
    OPERATOR,
    _audit,
    _online_signers,
    _open,
)
from homing.errors import CeremonyError
from homing.site import DataDir

__all__ = ["BundleSummary", "recovery_bundle"]


@dataclass(frozen=True)
class BundleSummary:
    files: int
    valid_until: datetime


def recovery_bundle(
    data: Path | DataDir,
    out: Path,
    now: datetime,
    *,
    images: Sequence[str] = (),
    valid_for: timedelta | None = None,
    actor: str = OPERATOR,
) -> BundleSummary:
    """Write an offline recovery bundle valid for ``valid_for`` (default: the config's).

    The bundle carries its own snapshot and timestamp signed for that long
    (``TrustRepository.sign_bundle_state``): a device reached by hand weeks
    later still accepts it, and after ``valid_until`` it is refused as expired.
    """
    from homing.trust.bundle import write_bundle
    from homing.trust.repository import FIRMWARE_ROLE

    dd, settings, store = _open(data)
    valid_for = valid_for if valid_for is not None else settings.expiries.recovery_bundle
    if valid_for <= timedelta(0):
        raise CeremonyError("a recovery bundle's validity must be positive")
    valid_until = now + valid_for
    repo = dd.repository(settings)
    signed = repo.targets(FIRMWARE_ROLE).signed.targets
    unknown = [name for name in images if name not in signed]
    if unknown:
        offered = ", ".join(sorted(signed)[-5:]) or "none yet"
        raise CeremonyError(
            f"no signed firmware target {unknown[0]!r}: a device would refuse it "
            f"(the newest signed: {offered}; `homing release` signs one)"
        )
    snapshot_signer, timestamp_signer = _online_signers(store, settings)
    snapshot, timestamp = repo.sign_bundle_state(
        snapshot_signer, timestamp_signer, now, valid_until
    )
    files = write_bundle(
        dd.repository_dir,
        out,
        list(images),
        metadata={
            f"{snapshot.signed.version}.snapshot.json": repo.serialize(snapshot),
            "timestamp.json": repo.serialize(timestamp),
        },
        valid_until=valid_until,
    )
    _audit(
        dd,
        now,
        actor,
        "recovery_bundle",
        str(out),
        {"valid_until": valid_until.isoformat(), "images": list(images)},
    )
    return BundleSummary(files, valid_until)
