"""Applying an offline recovery bundle by hand: new roots, pins and images without a network."""

from __future__ import annotations

from pathlib import Path

from homing.agent.agent import Agent
from homing.agent.update import install_from_bundle
from homing.errors import MetadataExpiredError
from homing.trust.bundle import bundle_images, bundle_valid_until, extracted

__all__ = ["apply_bundle"]


def apply_bundle(agent: Agent, bundle: Path) -> list[str]:
    """Verify and apply an offline recovery bundle; returns what happened, line by line.

    A bundle past the validity chosen at its creation is refused with that
    date and what to do, not python-tuf's bare "timestamp.json is expired".
    """
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
            lines.append(install_from_bundle(agent, agent.limits, directory, images, now))
    return lines
