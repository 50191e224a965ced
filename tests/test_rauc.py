"""Firmware through RAUC: Debian's rauc installs homing's verified image into A/B slots.

A real RAUC service (on a private D-Bus session bus, as RAUC's own test suite
runs it) with two file-backed raw slots and a custom bootloader backend that
keeps its state in files. The release is a RAUC bundle signed by the vendor's
RAUC key; homing publishes it as a signed TUF target, and only once python-tuf
has verified it does the agent hand it to ``rauc install``. "Rebooting" restarts
the service on the slot the backend made primary. Health is confirmed with
RAUC's own ``rauc status mark-good booted`` or refused with ``mark-bad``.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from homing.agent.agent import Agent
from homing.agent.state import DeviceState
from homing.agent.update import installer_for
from homing.fsutil import atomic_write
from tests import fleet
from tests.harness import RunningServer, system_tool, wait_until

pytestmark = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)

SLOT_BYTES = 4 * 1024 * 1024

_BACKEND = """#!/bin/sh
# RAUC's custom bootloader backend, its state in files: the test's bootloader.
dir={boot}
case "$1" in
  get-primary) cat "$dir/primary" 2>/dev/null || echo A ;;
  set-primary) echo "$2" > "$dir/primary"; echo good > "$dir/state.$2" ;;
  get-state) cat "$dir/state.$2" 2>/dev/null || echo good ;;
  set-state) echo "$3" > "$dir/state.$2" ;;
  *) exit 1 ;;
esac
"""

_SYSTEM = """[system]
compatible=homing-board-a
bootloader=custom
data-directory={dir}/data

[keyring]
path={dir}/vendor-ca.pem

[handlers]
bootloader-custom-backend={dir}/backend.sh

[slot.rootfs.0]
device={dir}/slot-a.img
type=raw
bootname=A

[slot.rootfs.1]
device={dir}/slot-b.img
type=raw
bootname=B
"""


@dataclass
class Rauc:
    """A device's RAUC: its service, its slots, its bootloader's state."""

    dir: Path
    env: dict[str, str]
    service: subprocess.Popen[bytes] | None = None

    def start(self, booted: str) -> None:
        """Start the service as the system booted into ``booted`` (A or B) would."""
        self.stop()
        with (self.dir / "service.log").open("ab") as log:
            self.service = subprocess.Popen(
                [system_tool("rauc"), f"--conf={self.dir / 'system.conf'}",
                 f"--mount={self.dir / 'mnt'}", f"--override-boot-slot={booted}", "service"],
                stdout=subprocess.DEVNULL,
                stderr=log,
                env=self.env,
            )  # fmt: skip
        wait_until("the RAUC service answers", self._answers)

    def _answers(self) -> bool:
        assert self.service is not None
        assert self.service.poll() is None, self.log()
        return self.rauc("status").returncode == 0

    def stop(self) -> None:
        if self.service is not None and self.service.poll() is None:
            self.service.send_signal(signal.SIGTERM)
            self.service.wait(30)
        self.service = None

    def rauc(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [system_tool("rauc"), *args], capture_output=True, text=True, env=self.env, check=False
        )

    def boot(self, name: str) -> str:
        return (self.dir / "boot" / name).read_text().strip()

    def slot(self, bootname: str) -> bytes:
        return (self.dir / f"slot-{bootname.lower()}.img").read_bytes()

    def log(self) -> str:
        path = self.dir / "service.log"
        return path.read_text() if path.exists() else ""


@pytest.fixture
def rauc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Rauc]:
    """The device's RAUC, its bus in this process's environment (the agent's commands
    run with it)."""
    d = tmp_path / "rauc"
    for sub in ("data", "mnt", "boot"):
        (d / sub).mkdir(parents=True)
    (d / "system.conf").write_text(_SYSTEM.format(dir=d))
    backend = d / "backend.sh"
    backend.write_text(_BACKEND.format(boot=d / "boot"))
    backend.chmod(0o755)
    for slot in ("a", "b"):
        with (d / f"slot-{slot}.img").open("wb") as f:
            f.truncate(SLOT_BYTES)
    # The vendor's RAUC signing key and the keyring the device trusts.
    subprocess.run(
        [system_tool("openssl"), "req", "-x509", "-newkey", "ec", "-pkeyopt",
         "ec_paramgen_curve:P-256", "-nodes", "-keyout", str(d / "vendor.key"),
         "-out", str(d / "vendor-ca.pem"), "-days", "30", "-subj", "/CN=board-a vendor"],
        check=True, capture_output=True,
    )  # fmt: skip
    # A D-Bus of its own, as RAUC's tests run the service outside a booted system.
    bus = subprocess.run(
        [system_tool("dbus-daemon"), "--session", "--fork", "--print-address=1",
         "--print-pid=1"],
        check=True, capture_output=True, text=True,
    ).stdout.split()  # fmt: skip
    address, bus_pid = bus[0], int(bus[1])
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("DBUS_")},
        "DBUS_SESSION_BUS_ADDRESS": address,
        "DBUS_STARTER_BUS_TYPE": "session",
    }
    for name, value in env.items():
        if name.startswith("DBUS_"):
            monkeypatch.setenv(name, value)
    device = Rauc(d, env)
    device.start("A")
    # What "reboot" is on this device: the service comes back on the primary slot.
    reboot = d / "reboot.sh"
    reboot.write_text(
        "#!/bin/sh\n"
        f"pkill -f -- '--mount={d / 'mnt'}'\n"
        # The old service gone (its bus name released) before the new one starts.
        f"while pgrep -f -- '--mount={d / 'mnt'}' >/dev/null; do sleep 0.1; done\n"
        f"exec {system_tool('rauc')} --conf={d / 'system.conf'} --mount={d / 'mnt'} "
        f'--override-boot-slot="$(cat {d / "boot" / "primary"})" service '
        f">>{d / 'service.log'} 2>&1 &\n"
    )
    reboot.chmod(0o755)
    try:
        yield device
    finally:
        subprocess.run(["pkill", "-f", f"--mount={d / 'mnt'}"], check=False)
        device.stop()
        os.kill(bus_pid, signal.SIGTERM)


def _bundle(rauc: Rauc, tmp_path: Path, payload: bytes, version: str) -> Path:
    content = tmp_path / f"bundle-{version}"
    content.mkdir()
    (content / "rootfs.img").write_bytes(payload)
    (content / "manifest.raucm").write_text(
        f"[update]\ncompatible=homing-board-a\nversion={version}\n\n"
        "[bundle]\nformat=plain\n\n[image.rootfs]\nfilename=rootfs.img\n"
    )
    out = tmp_path / f"board-a-{version}.raucb"
    made = rauc.rauc(
        "bundle", f"--cert={rauc.dir / 'vendor-ca.pem'}", f"--key={rauc.dir / 'vendor.key'}",
        str(content), str(out),
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    return out


def _device(server: RunningServer, tmp_path: Path, rauc: Rauc, health: str | None) -> DeviceState:
    state = fleet.device(server, tmp_path, "rauc-1", "board-a")
    config = state.config()
    config.install_command = "rauc install {path}"
    # The service restarted on the new primary: the test's reboot, waited for by the
    # next command's retry (the agent's health and commit run after it).
    config.boot_command = f"{rauc.dir / 'reboot.sh'}"
    # Each waits for the rebooted service (a bounded wait: a service that never comes back
    # fails the command, and the agent retries at its next cycle).
    wait = "for i in $(seq 600); do rauc status {} booted && exit 0; sleep 0.1; done; exit 1"
    config.commit_command = f"sh -c '{wait.format('mark-good')}'"
    config.rollback_command = f"sh -c '{wait.format('mark-bad')}'"
    config.health_command = health
    atomic_write(state.config_path, config.to_json())
    return state


def test_rauc_installs_the_verified_bundle_and_marks_the_new_slot_good(
    server: RunningServer, tmp_path: Path, rauc: Rauc
) -> None:
    payload = os.urandom(1024 * 1024)
    bundle = _bundle(rauc, tmp_path, payload, "2.0.0")
    state = _device(server, tmp_path, rauc, health=None)
    fleet.roll_out(server, bundle, "2.0.0")
    report = Agent(state, firmware_version="1.0.0").run_once()
    assert "firmware 2.0.0 committed" in report.steps, (report, rauc.log()[-2000:])
    # RAUC wrote the inactive slot, made it primary, and marked it good when booted.
    assert rauc.slot("B")[: len(payload)] == payload
    assert rauc.boot("primary") == "B"
    assert rauc.boot("state.B") == "good"
    assert installer_for(Agent(state)).active_version() == "2.0.0"


def test_a_failed_health_check_marks_the_rauc_slot_bad(
    server: RunningServer, tmp_path: Path, rauc: Rauc
) -> None:
    bundle = _bundle(rauc, tmp_path, os.urandom(512 * 1024), "2.0.0")
    state = _device(server, tmp_path, rauc, health="false")
    fleet.roll_out(server, bundle, "2.0.0")
    report = Agent(state, firmware_version="1.0.0").run_once()
    assert any("rolled back" in step for step in report.steps), report
    assert rauc.boot("state.B") == "bad"
    assert installer_for(Agent(state)).active_version() is None


def test_a_tampered_bundle_never_reaches_rauc(
    server: RunningServer, tmp_path: Path, rauc: Rauc
) -> None:
    bundle = _bundle(rauc, tmp_path, os.urandom(512 * 1024), "2.0.0")
    state = _device(server, tmp_path, rauc, health=None)
    fleet.roll_out(server, bundle, "2.0.0")
    # The published file changes under the signed metadata (same length, other bytes).
    served = next((server.data / "repository" / "targets" / "firmware").glob("*board-a-2.0.0*"))
    data = bytearray(served.read_bytes())
    data[len(data) // 2] ^= 0xFF
    served.write_bytes(bytes(data))
    report = Agent(state, firmware_version="1.0.0").run_once()
    assert report.update_refused is not None
    assert "does not match its signed hashes" in report.update_refused
    assert "installing" not in rauc.log()
    assert not (rauc.dir / "boot" / "primary").exists()
    shutil.rmtree(rauc.dir / "mnt", ignore_errors=True)
