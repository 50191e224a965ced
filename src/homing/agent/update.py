"""Firmware update on the device: find, download, verify, install, boot, commit or roll back.

The image is a TUF target of the delegated firmware role: its length,
hashes, hardware class and sequence number are signed, and python-tuf
checks the file against them before anything is installed, whatever
channel brought it. Whether to accept it is decided by
``homing.agent.decide.accept_image``. Progress is reported once per stage;
every step is recorded atomically so a power cut resumes or rolls back.

This module knows nothing of the ``Agent``: the cycle hands it a
``FirmwareJob`` (the device's state and configuration, the client seam to
the home server, and how to check in), so the dependency points one way.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from tuf.api import exceptions as tuf_errors
from tuf.api.metadata import TargetFile

from homing.agent.client import HomeClient
from homing.agent.decide import Assignment, CycleReport, accept_image
from homing.agent.fetcher import HTTPSFetcher
from homing.agent.installer import MAX_BOOT_ATTEMPTS, CommandInstaller, SlotInstaller
from homing.agent.state import DeviceConfig, DeviceState
from homing.config import Limits
from homing.errors import HomingError, PolicyError, TransportError
from homing.fsutil import atomic_write
from homing.trust.client import DirectoryFetcher, target_info
from homing.trust.pins import PinPolicy


class _Device(Protocol):
    @property
    def state(self) -> DeviceState: ...

    @property
    def config(self) -> DeviceConfig: ...


@dataclass
class FirmwareJob:
    """What the firmware steps need of a cycle: the device, the seam home, a check-in."""

    state: DeviceState
    config: DeviceConfig
    limits: Limits
    client: HomeClient
    check_in: Callable[[], None]
    # How the image's signed metadata is fetched: the agent's own fetcher
    # factory (the fleet simulator's serves its simulated network).
    fetcher: Callable[[PinPolicy | None, datetime], HTTPSFetcher]

    @property
    def now(self) -> datetime:
        return self.client.now


__all__ = [
    "FirmwareJob",
    "apply_update",
    "download",
    "finish_pending",
    "in_window",
    "install_from_bundle",
    "installer_for",
]

log = logging.getLogger(__name__)
_CHUNK = 256 * 1024


def installer_for(device: _Device) -> SlotInstaller:
    root = device.state.root / "slots"
    config = device.config
    if not config.install_command:
        return SlotInstaller(root)
    return CommandInstaller(
        root,
        config.install_command,
        boot_command=config.boot_command,
        commit_command=config.commit_command,
        rollback_command=config.rollback_command,
    )


def _progress_path(device: _Device) -> Path:
    return device.state.root / "update.json"


def _report(
    job: FirmwareJob,
    rollout: int,
    state: str,
    reason: str | None = None,
    version: str | None = None,
) -> bool:
    """Tell the home how the update goes; False when it could not be reached (the report is
    worth sending again), True when it was delivered or answered with a refusal."""
    body = {"rollout": rollout, "state": state, "reason": reason, "version": version}
    try:
        job.client.post_json("/v1/device/update", body, mutual=True).expect_ok("progress report")
    except TransportError as e:
        log.warning("progress report not delivered: %s", e)
        return False
    except HomingError as e:
        log.warning("progress report refused: %s", e)
    return True


def download(job: FirmwareJob, info: TargetFile) -> Path:
    """Download with resume (HTTP Range), bounded by the signed length."""
    digest = info.hashes["sha256"]
    directory, _, base = info.path.rpartition("/")
    downloads = job.state.root / "downloads"
    downloads.mkdir(exist_ok=True)
    partial = downloads / f"{digest}.partial"
    have = partial.stat().st_size if partial.exists() else 0
    if have > info.length:
        partial.unlink()
        have = 0
    if have < info.length:
        path = f"/tuf/targets/{directory}/{digest}.{base}"
        with job.client.download(path, offset=have) as (status, read):
            if status == 200 and have:
                have = 0  # the server ignored the range: start again
                partial.unlink()
            elif status not in (200, 206):
                raise TransportError(f"image download refused: HTTP {status}")
            limit = job.config.bandwidth_kib_s
            started, start_have = time.monotonic(), have
            try:
                with partial.open("ab") as out:
                    while have < info.length:
                        chunk = read(min(_CHUNK, info.length - have))
                        if not chunk:
                            break
                        out.write(chunk)
                        have += len(chunk)
                        if limit:
                            # Sleep until the average rate is back under the cap.
                            elapsed = time.monotonic() - started
                            ahead = (have - start_have) / (limit * 1024) - elapsed
                            if ahead > 0:
                                time.sleep(ahead)
                    out.flush()
                    os.fsync(out.fileno())
            except OSError as e:
                raise TransportError(f"image download interrupted: {e}") from e
    if have < info.length:
        raise TransportError(f"image download incomplete ({have} of {info.length} bytes)")
    return partial


def _healthy(job: FirmwareJob) -> str | None:
    """None when healthy, or why not: the health command, then a pinned check-in."""
    command = job.config.health_command
    if command:
        # The command comes from the device's own configuration, never from the network.
        result = subprocess.run(  # noqa: S603
            shlex.split(command), capture_output=True, text=True, timeout=600, check=False
        )
        if result.returncode != 0:
            return f"health check failed ({result.returncode}): {result.stderr.strip()[-200:]}"
    try:
        job.check_in()
    except HomingError as e:
        return f"cannot check in after the update: {e}"
    return None


def finish_pending(job: FirmwareJob, report: CycleReport) -> None:
    """After a restart: a booted, uncommitted slot is checked, then committed or rolled back."""
    installer = installer_for(job)
    if not installer.pending():
        _deliver_outcome(job)
        return
    progress = _read_progress(job)
    version = installer.active_version()
    reason: str | None
    if installer.count_boot() > MAX_BOOT_ATTEMPTS:
        reason = "the new slot did not come up healthy in time"
    else:
        reason = _healthy(job)
    # The outcome is written before it is made, so a power cut between the two, or a home
    # out of reach, still reports it at a later cycle (_deliver_outcome).
    if reason is None:
        _save_outcome(job, progress, "committed", None, version)
        installer.commit()
        report.committed_version = version
        report.steps.append(f"firmware {version} committed")
    else:
        _save_outcome(job, progress, "rolled_back", reason, None)
        installer.rollback()
        _save_outcome(job, progress, "rolled_back", reason, installer.active_version())
        report.steps.append(f"firmware {version} rolled back: {reason}")
    _deliver_outcome(job)


def _save_outcome(
    job: FirmwareJob, progress: dict[str, Any], state: str, reason: str | None, version: str | None
) -> None:
    outcome = {"state": state, "reason": reason, "version": version}
    atomic_write(_progress_path(job), json.dumps({**progress, "outcome": outcome}).encode())


def _deliver_outcome(job: FirmwareJob) -> None:
    """Report a commit or rollback recorded before it happened; forgotten once delivered."""
    progress = _read_progress(job)
    outcome = progress.get("outcome")
    if not isinstance(outcome, dict):
        return
    rollout = progress.get("rollout", 0)
    version, reason = outcome.get("version"), outcome.get("reason")
    if _report(
        job,
        rollout if isinstance(rollout, int) else 0,
        str(outcome.get("state")),
        reason if isinstance(reason, str) else None,
        version if isinstance(version, str) else None,
    ):
        _progress_path(job).unlink(missing_ok=True)


def in_window(window: str | None, now: datetime) -> bool:
    """Whether the device's local hour is inside ``START-END`` (no window: always)."""
    if not window:
        return True
    try:
        start, end = (int(x) for x in window.split("-"))
    except ValueError:
        log.warning("ignoring malformed maintenance window %r", window)
        return True
    hour = now.astimezone().hour
    return start <= hour < end if start <= end else hour >= start or hour < end


def _read_progress(device: _Device) -> dict[str, Any]:
    try:
        doc = json.loads(_progress_path(device).read_bytes())
        return doc if isinstance(doc, dict) else {}
    except (FileNotFoundError, ValueError):
        return {}


def apply_update(job: FirmwareJob, assignment: Assignment, report: CycleReport) -> None:
    """Take an assigned image: verify it is for us and newer, download, install, boot."""
    rollout, name, now = assignment.rollout, assignment.target, job.now
    installer = installer_for(job)
    fetcher = job.fetcher(job.client.policy, now)
    fetcher.clock_behind_floor = job.client.clock_behind_floor
    try:
        info = target_info(
            job.state.trust_dir,
            f"{job.client.url}/tuf/metadata/",
            name,
            now,
            fetcher=fetcher,
            bootstrap_root=job.state.factory_root(),
            limits=job.limits,
        )
    finally:
        fetcher.close()
    try:
        image = accept_image(info.custom, job.config.hardware, installer.active_sequence())
    except PolicyError as e:
        _report(job, rollout, "failed", str(e))
        report.update_refused = str(e)
        report.steps.append(f"update refused: {e}")
        return
    progress = _read_progress(job)
    if progress.get("target") != name:
        atomic_write(_progress_path(job), json.dumps({"rollout": rollout, "target": name}).encode())
        _report(job, rollout, "downloading")
    path = download(job, info)
    try:
        with path.open("rb") as f:
            info.verify_length_and_hashes(f)
    except tuf_errors.LengthOrHashMismatchError as e:
        path.unlink(missing_ok=True)
        reason = f"image does not match its signed hashes: {e}"
        _report(job, rollout, "failed", reason)
        report.update_refused = reason
        report.steps.append(f"update refused: {reason}")
        _progress_path(job).unlink(missing_ok=True)
        return
    if not in_window(job.config.maintenance_window, now):
        report.steps.append(
            f"firmware {image.version} downloaded and verified; installing waits for the "
            f"maintenance window {job.config.maintenance_window}"
        )
        return
    installer.install(path, image.version, image.sequence)
    _report(job, rollout, "installed", version=image.version)
    installer.boot_new()
    path.unlink(missing_ok=True)
    _report(job, rollout, "booted", version=image.version)
    report.steps.append(f"firmware {image.version} installed and booted")
    finish_pending(job, report)


def install_from_bundle(
    device: _Device, limits: Limits, directory: Path, names: list[str], now: datetime
) -> str:
    """Install, by hand, an image carried in a recovery bundle; returns what happened.

    Trust has just been refreshed from the same bundle, so the image is
    checked against signed metadata exactly as an online update is. The
    result is reported at the next check-in.
    """
    installer = installer_for(device)
    candidates = []
    for name in names:
        info = target_info(
            device.state.trust_dir,
            (directory / "metadata").as_uri() + "/",
            name,
            now,
            fetcher=DirectoryFetcher(),
            bootstrap_root=device.state.factory_root(),
            limits=limits,
        )
        try:
            candidates.append((accept_image(info.custom, device.config.hardware, -1), info))
        except PolicyError:
            continue  # another device's image in a shared bundle
    if not candidates:
        return f"the bundle holds no image for hardware {device.config.hardware!r}"
    image, info = max(candidates, key=lambda c: c[0].sequence)
    version, sequence = image.version, image.sequence
    if sequence <= installer.active_sequence():
        return f"anti-rollback: sequence {sequence} is not above {installer.active_sequence()}"
    sub, _, base = info.path.rpartition("/")
    image_file = directory / "targets" / sub / f"{info.hashes['sha256']}.{base}"
    try:
        with image_file.open("rb") as f:
            info.verify_length_and_hashes(f)
    except (OSError, tuf_errors.LengthOrHashMismatchError) as e:
        return f"the image in the bundle does not match its signed hashes: {e}"
    installer.install(image_file, version, sequence)
    installer.boot_new()
    command = device.config.health_command
    if command:
        result = subprocess.run(  # noqa: S603 - the device's own configuration
            shlex.split(command), capture_output=True, text=True, timeout=600, check=False
        )
        if result.returncode != 0:
            installer.rollback()
            return f"firmware {version} rolled back: health check failed"
    installer.commit()
    atomic_write(
        device.state.root / "manual-update.json",
        json.dumps({"version": version, "sequence": sequence, "at": now.isoformat()}).encode(),
    )
    return f"firmware {version} installed by hand and committed"
