"""Firmware update on the device: find, download, verify, install, boot, commit or roll back.

The image is a TUF target of the delegated firmware role: its length,
hashes, hardware class and sequence number are signed, and python-tuf
checks the file against them before anything is installed, whatever
channel brought it. Progress is reported once per stage; every step is
recorded atomically so a power cut resumes or rolls back.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import subprocess
import time
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tuf.api import exceptions as tuf_errors
from tuf.api.metadata import TargetFile

from homing.agent.fetcher import HTTPSFetcher
from homing.agent.installer import MAX_BOOT_ATTEMPTS, CommandInstaller, SlotInstaller
from homing.agent.transport import open_connection
from homing.errors import HomingError, MetadataExpiredError, TransportError
from homing.fsutil import atomic_write
from homing.trust.client import target_info
from homing.trust.pins import PinPolicy

if TYPE_CHECKING:
    from homing.agent.agent import Agent, CycleReport

__all__ = [
    "apply_update",
    "finish_pending",
    "in_window",
    "install_from_bundle",
    "installer_for",
]

log = logging.getLogger(__name__)
_CHUNK = 256 * 1024


def installer_for(agent: Agent) -> SlotInstaller:
    root = agent.state.root / "slots"
    command = agent.config.install_command
    return CommandInstaller(root, command) if command else SlotInstaller(root)


def _progress_path(agent: Agent) -> Path:
    return agent.state.root / "update.json"


def _report(
    agent: Agent,
    policy: PinPolicy,
    now: datetime,
    rollout: int,
    state: str,
    reason: str | None = None,
    version: str | None = None,
) -> None:
    body = {"rollout": rollout, "state": state, "reason": reason, "version": version}
    try:
        status, raw, _ = agent._post_json(policy, now, "/v1/device/update", body, mutual=True)
        if status != 200:
            log.warning("progress report refused: HTTP %s %r", status, raw[:200])
    except HomingError as e:
        log.warning("progress report not delivered: %s", e)


def _download(agent: Agent, policy: PinPolicy, now: datetime, info: TargetFile) -> Path:
    """Download with resume (HTTP Range), bounded by the signed length."""
    digest = info.hashes["sha256"]
    directory, _, base = info.path.rpartition("/")
    downloads = agent.state.root / "downloads"
    downloads.mkdir(exist_ok=True)
    partial = downloads / f"{digest}.partial"
    have = partial.stat().st_size if partial.exists() else 0
    if have > info.length:
        partial.unlink()
        have = 0
    if have < info.length:
        conn = open_connection(agent._server(policy), policy=policy, now=now)
        try:
            headers = {"Range": f"bytes={have}-"} if have else {}
            conn.request("GET", f"/tuf/targets/{directory}/{digest}.{base}", headers=headers)
            response = conn.getresponse()
            if response.status == 200 and have:
                have = 0  # the server ignored the range: start again
                partial.unlink()
            elif response.status not in (200, 206):
                raise TransportError(f"image download refused: HTTP {response.status}")
            limit = agent.config.bandwidth_kib_s
            started, start_have = time.monotonic(), have
            with partial.open("ab") as out:
                while have < info.length:
                    chunk = response.read(min(_CHUNK, info.length - have))
                    if not chunk:
                        break
                    out.write(chunk)
                    have += len(chunk)
                    if limit:
                        # Sleep until the average rate is back under the cap.
                        ahead = (have - start_have) / (limit * 1024) - (time.monotonic() - started)
                        if ahead > 0:
                            time.sleep(ahead)
                out.flush()
                os.fsync(out.fileno())
        except OSError as e:
            raise TransportError(f"image download interrupted: {e}") from e
        finally:
            conn.close()
    if have < info.length:
        raise TransportError(f"image download incomplete ({have} of {info.length} bytes)")
    return partial


def _healthy(agent: Agent, policy: PinPolicy, now: datetime, report: CycleReport) -> str | None:
    """None when healthy, or why not: the health command, then a pinned check-in."""
    command = agent.config.health_command
    if command:
        # The command comes from the device's own configuration, never from the network.
        result = subprocess.run(  # noqa: S603
            shlex.split(command), capture_output=True, text=True, timeout=600, check=False
        )
        if result.returncode != 0:
            return f"health check failed ({result.returncode}): {result.stderr.strip()[-200:]}"
    try:
        agent.check_in(policy, now, report)
    except HomingError as e:
        return f"cannot check in after the update: {e}"
    return None


def finish_pending(agent: Agent, policy: PinPolicy, now: datetime, report: CycleReport) -> None:
    """After a restart: a booted, uncommitted slot is checked, then committed or rolled back."""
    installer = installer_for(agent)
    if not installer.pending():
        return
    progress = _read_progress(agent)
    rollout = int(progress.get("rollout", 0))
    version = installer.active_version()
    reason: str | None
    if installer.count_boot() > MAX_BOOT_ATTEMPTS:
        reason = "the new slot did not come up healthy in time"
    else:
        reason = _healthy(agent, policy, now, report)
    if reason is None:
        installer.commit()
        report.steps.append(f"firmware {version} committed")
        _report(agent, policy, now, rollout, "committed", version=version)
    else:
        installer.rollback()
        report.steps.append(f"firmware {version} rolled back: {reason}")
        _report(agent, policy, now, rollout, "rolled_back", reason, installer.active_version())
    _progress_path(agent).unlink(missing_ok=True)


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


def _read_progress(agent: Agent) -> dict[str, Any]:
    try:
        doc = json.loads(_progress_path(agent).read_bytes())
        return doc if isinstance(doc, dict) else {}
    except (FileNotFoundError, ValueError):
        return {}


def apply_update(
    agent: Agent, policy: PinPolicy, now: datetime, assignment: dict[str, Any], report: CycleReport
) -> None:
    rollout = int(assignment["rollout"])
    name = str(assignment["target"])
    installer = installer_for(agent)
    fetcher = HTTPSFetcher(policy, now)
    try:
        info = target_info(
            agent.state.trust_dir,
            f"{agent._server(policy)}/tuf/metadata/",
            name,
            now,
            fetcher=fetcher,
            bootstrap_root=agent.state.factory_root(),
            limits=agent.limits,
        )
    finally:
        fetcher.close()
    custom = info.custom if isinstance(info.custom, dict) else {}
    version = str(custom.get("version", ""))
    sequence = int(custom.get("sequence", 0))
    if custom.get("hardware") != agent.config.hardware:
        reason = f"image is for hardware {custom.get('hardware')!r}, not {agent.config.hardware!r}"
        _report(agent, policy, now, rollout, "failed", reason)
        report.steps.append(f"update refused: {reason}")
        return
    if sequence <= installer.active_sequence():
        reason = (
            f"anti-rollback: sequence {sequence} is not above the installed "
            f"{installer.active_sequence()}"
        )
        _report(agent, policy, now, rollout, "failed", reason)
        report.steps.append(f"update refused: {reason}")
        return
    progress = _read_progress(agent)
    if progress.get("target") != name:
        atomic_write(
            _progress_path(agent), json.dumps({"rollout": rollout, "target": name}).encode()
        )
        _report(agent, policy, now, rollout, "downloading")
    path = _download(agent, policy, now, info)
    try:
        with path.open("rb") as f:
            info.verify_length_and_hashes(f)
    except tuf_errors.LengthOrHashMismatchError as e:
        path.unlink(missing_ok=True)
        reason = f"image does not match its signed hashes: {e}"
        _report(agent, policy, now, rollout, "failed", reason)
        report.steps.append(f"update refused: {reason}")
        _progress_path(agent).unlink(missing_ok=True)
        return
    if not in_window(agent.config.maintenance_window, now):
        report.steps.append(
            f"firmware {version} downloaded and verified; installing waits for the "
            f"maintenance window {agent.config.maintenance_window}"
        )
        return
    installer.install(path, version, sequence)
    _report(agent, policy, now, rollout, "installed", version=version)
    installer.boot_new()
    path.unlink(missing_ok=True)
    _report(agent, policy, now, rollout, "booted", version=version)
    report.steps.append(f"firmware {version} installed and booted")
    finish_pending(agent, policy, now, report)


def install_from_bundle(agent: Agent, directory: Path, names: list[str], now: datetime) -> str:
    """Install, by hand, an image carried in a recovery bundle; returns what happened.

    Trust has just been refreshed from the same bundle, so the image is
    checked against signed metadata exactly as an online update is. The
    result is reported at the next check-in.
    """
    from homing.trust.client import DirectoryFetcher

    installer = installer_for(agent)
    candidates = []
    for name in names:
        info = target_info(
            agent.state.trust_dir,
            (directory / "metadata").as_uri() + "/",
            name,
            now,
            fetcher=DirectoryFetcher(),
            bootstrap_root=agent.state.factory_root(),
            limits=agent.limits,
        )
        custom = info.custom if isinstance(info.custom, dict) else {}
        if custom.get("hardware") == agent.config.hardware:
            candidates.append((int(custom.get("sequence", 0)), str(custom.get("version")), info))
    if not candidates:
        return f"the bundle holds no image for hardware {agent.config.hardware!r}"
    sequence, version, info = max(candidates, key=lambda c: c[0])
    if sequence <= installer.active_sequence():
        return f"anti-rollback: sequence {sequence} is not above {installer.active_sequence()}"
    sub, _, base = info.path.rpartition("/")
    image = directory / "targets" / sub / f"{info.hashes['sha256']}.{base}"
    try:
        with image.open("rb") as f:
            info.verify_length_and_hashes(f)
    except (OSError, tuf_errors.LengthOrHashMismatchError) as e:
        return f"the image in the bundle does not match its signed hashes: {e}"
    installer.install(image, version, sequence)
    installer.boot_new()
    command = agent.config.health_command
    if command:
        result = subprocess.run(  # noqa: S603 - the device's own configuration
            shlex.split(command), capture_output=True, text=True, timeout=600, check=False
        )
        if result.returncode != 0:
            installer.rollback()
            return f"firmware {version} rolled back: health check failed"
    installer.commit()
    atomic_write(
        agent.state.root / "manual-update.json",
        json.dumps({"version": version, "sequence": sequence, "at": now.isoformat()}).encode(),
    )
    return f"firmware {version} installed by hand and committed"


def apply_bundle(agent: Agent, bundle: Path) -> list[str]:
    """Verify and apply an offline recovery bundle; returns what happened, line by line.

    A bundle past the validity chosen at its creation is refused with that
    date and what to do, not python-tuf's bare "timestamp.json is expired".
    """
    from homing.trust.bundle import bundle_images, bundle_valid_until, extracted

    lines = []
    with extracted(bundle) as directory:
        now = agent.now()
        try:
            trust = agent.refresh_from_directory(directory.as_uri(), now)
        except MetadataExpiredError as e:
            until = bundle_valid_until(directory)
            when = f" on {until.isoformat()}" if until else ""
            raise MetadataExpiredError(
                f"this recovery bundle expired{when} (the device's time is {now.isoformat()}): "
                "ask the operator for a new one, made with 'homing recovery-bundle "
                "--valid-days N' for the time it takes to reach the device"
            ) from e
        lines.append(
            f"trust updated to root v{trust.root_version}, targets v{trust.targets_version}"
        )
        images = bundle_images(directory)
        if images:
            lines.append(install_from_bundle(agent, directory, images, now))
    return lines
