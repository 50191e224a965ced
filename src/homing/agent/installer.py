"""Installers: put a verified image into the inactive slot, boot it, commit or roll back.

``SlotInstaller`` is homing's own A/B scheme on directories: two slots, a boot
pointer, a boot counter and a commit mark, all in one ``boot.json`` written
atomically. The old slot is untouched until the new one is committed, so a
power cut anywhere leaves a bootable slot. ``CommandInstaller`` hands the
verified file to a system updater (RAUC, SWUpdate, Mender; see docs/agent.md).
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

from homing.errors import ConfigError
from homing.fsutil import atomic_copy, atomic_write

__all__ = ["BootState", "CommandInstaller", "Installer", "SlotInstaller"]

MAX_BOOT_ATTEMPTS = 3


@dataclass
class BootState:
    active: str = "a"
    committed: bool = True
    previous: str | None = None
    boot_count: int = 0


class Installer(Protocol):
    def install(self, image: Path, version: str, sequence: int) -> None: ...

    def boot_new(self) -> None: ...

    def commit(self) -> None: ...

    def rollback(self) -> None: ...

    def pending(self) -> bool: ...

    def active_version(self) -> str | None: ...

    def active_sequence(self) -> int: ...


class SlotInstaller:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.boot_path = root / "boot.json"

    def _boot(self) -> BootState:
        try:
            return BootState(**json.loads(self.boot_path.read_bytes()))
        except FileNotFoundError:
            return BootState()
        except (ValueError, TypeError) as e:
            raise ConfigError(f"{self.boot_path} is damaged") from e

    def _save(self, boot: BootState) -> None:
        atomic_write(self.boot_path, json.dumps(asdict(boot)).encode())

    @staticmethod
    def _other(slot: str) -> str:
        return "b" if slot == "a" else "a"

    def _meta(self, slot: str) -> dict[str, object]:
        try:
            doc = json.loads((self.root / slot / "meta.json").read_bytes())
            return doc if isinstance(doc, dict) else {}
        except (FileNotFoundError, ValueError):
            return {}

    def slots(self) -> dict[str, dict[str, object]]:
        return {slot: self._meta(slot) for slot in ("a", "b")}

    def install(self, image: Path, version: str, sequence: int) -> None:
        boot = self._boot()
        if not boot.committed:
            raise ConfigError("an update is already pending commit")
        target = self.root / self._other(boot.active)
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True)
        self._write_image(image, target)
        atomic_write(
            target / "meta.json", json.dumps({"version": version, "sequence": sequence}).encode()
        )

    def _write_image(self, image: Path, target: Path) -> None:
        atomic_copy(image, target / "image")  # streamed: the image may outsize memory

    def boot_new(self) -> None:
        """Point the boot loader at the new slot, uncommitted (one attempt counted)."""
        boot = self._boot()
        new = self._other(boot.active)
        if not self._meta(new):
            raise ConfigError("the inactive slot holds no installed image")
        self._save(BootState(active=new, committed=False, previous=boot.active, boot_count=1))

    def count_boot(self) -> int:
        boot = self._boot()
        if not boot.committed:
            boot.boot_count += 1
            self._save(boot)
        return boot.boot_count

    def commit(self) -> None:
        boot = self._boot()
        self._save(BootState(active=boot.active, committed=True))

    def rollback(self) -> None:
        boot = self._boot()
        if boot.committed or boot.previous is None:
            return
        self._save(BootState(active=boot.previous, committed=True))

    def pending(self) -> bool:
        return not self._boot().committed

    def active_slot(self) -> str:
        return self._boot().active

    def active_version(self) -> str | None:
        version = self._meta(self._boot().active).get("version")
        return str(version) if version is not None else None

    def active_sequence(self) -> int:
        boot = self._boot()
        sequences = [self._meta(boot.active).get("sequence", 0)]
        if not boot.committed and boot.previous:
            sequences.append(self._meta(boot.previous).get("sequence", 0))
        return max(int(s) for s in sequences if isinstance(s, int | str))


class CommandInstaller(SlotInstaller):
    """Hands the verified file to the system's updater, e.g. ``rauc install {path}`` or
    ``swupdate -i {path}``, and its own good/bad marks to the commit and the rollback.

    The updater owns its slots (homing copies no image); homing keeps the versions,
    the boot attempts and its commit mark, so rollback reporting and anti-rollback
    work the same way. The commands come from the device's own configuration
    (``device.json``), never from the network:

    - ``install_command``: writes the inactive slot (``{path}``: the verified image,
      ``{slot}``: ``a`` or ``b``, e.g. ``swupdate -i {path} -e stable,copy-{slot}``);
    - ``boot_command``: boots the new slot (``systemctl reboot``; the agent finishes
      the job at its next start), or nothing when the updater switched already;
    - ``commit_command``: the updater's mark-good (``rauc status mark-good booted``),
      run before homing commits, so a failure is retried at the next cycle;
    - ``rollback_command``: the updater's mark-bad (``rauc status mark-bad booted``).
    """

    def __init__(
        self,
        root: Path,
        command: str,
        *,
        boot_command: str | None = None,
        commit_command: str | None = None,
        rollback_command: str | None = None,
    ) -> None:
        super().__init__(root)
        self.command = command
        self.boot_command = boot_command
        self.commit_command = commit_command
        self.rollback_command = rollback_command

    def _write_image(self, image: Path, target: Path) -> None:
        _run("install", self.command, image, slot=target.name)

    def boot_new(self) -> None:
        super().boot_new()
        if self.boot_command:
            _run("boot", self.boot_command)

    def commit(self) -> None:
        if self.pending() and self.commit_command:
            _run("commit", self.commit_command)
        super().commit()

    def rollback(self) -> None:
        if self.pending() and self.rollback_command:
            _run("rollback", self.rollback_command)
        super().rollback()


def _run(what: str, command: str, image: Path | None = None, slot: str = "") -> None:
    """A device-configured command; ``{path}`` becomes the verified image's path and
    ``{slot}`` the slot it goes to (``a`` or ``b``, for an updater told which to write)."""
    argv = [
        part.replace("{path}", str(image) if image else "").replace("{slot}", slot)
        for part in shlex.split(command)
    ]
    # The command comes from the device's own configuration, never from the network.
    result = subprocess.run(  # noqa: S603
        argv, capture_output=True, text=True, timeout=3600, check=False
    )
    if result.returncode != 0:
        raise ConfigError(
            f"{what} command failed ({result.returncode}): {result.stderr.strip()[-300:]}"
        )
