"""Firmware through SWUpdate: Debian's swupdate writes homing's verified image into A/B slots.

The release is an ``.swu`` (a cpio archive: sw-description, its CMS signature by
the vendor's key, the image), published by homing as a signed TUF target; only
once python-tuf has verified it does the agent run ``swupdate -i`` on it, telling
it which slot to write (``-e stable,copy-{slot}``). Two file-backed raw slots.
SWUpdate keeps no good/bad mark of its own: a device's bootloader environment
does (U-Boot's ``ustate`` through ``fw_setenv``); here that environment is a
file, set by the device's commit and rollback commands.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from homing.agent.agent import Agent
from homing.agent.state import DeviceState
from homing.agent.update import installer_for
from homing.fsutil import atomic_write
from tests import fleet
from tests.harness import RunningServer, system_tool

pytestmark = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)

SLOT_BYTES = 4 * 1024 * 1024

_DESCRIPTION = """software =
{{
    version = "{version}";
    hardware-compatibility = [ "1.0" ];
    stable = {{
        copy-a = {{
            images: ( {{ filename = "rootfs.img"; device = "{dir}/slot-a.img"; type = "raw";
                         sha256 = "{sha256}"; }} );
        }};
        copy-b = {{
            images: ( {{ filename = "rootfs.img"; device = "{dir}/slot-b.img"; type = "raw";
                         sha256 = "{sha256}"; }} );
        }};
    }};
}}
"""


@dataclass
class Board:
    """The device's side: its two slots, the vendor's certificate, its bootloader env."""

    dir: Path

    def slot(self, name: str) -> bytes:
        return (self.dir / f"slot-{name}.img").read_bytes()

    def ustate(self) -> str:
        env = self.dir / "bootenv"
        return env.read_text().strip() if env.exists() else ""


@pytest.fixture
def board(tmp_path: Path) -> Board:
    d = tmp_path / "board"
    (d / "tmp").mkdir(parents=True)
    for slot in ("a", "b"):
        with (d / f"slot-{slot}.img").open("wb") as f:
            f.truncate(SLOT_BYTES)
    subprocess.run(
        [system_tool("openssl"), "req", "-x509", "-newkey", "rsa:2048", "-nodes",
         "-keyout", str(d / "vendor.key"), "-out", str(d / "vendor.pem"), "-days", "30",
         "-subj", "/CN=board-a vendor", "-addext", "extendedKeyUsage=emailProtection",
         "-addext", "keyUsage=digitalSignature,keyCertSign"],
        check=True, capture_output=True,
    )  # fmt: skip
    return Board(d)


def _swu(board: Board, tmp_path: Path, payload: bytes, version: str) -> Path:
    """The vendor's .swu: sw-description, its CMS signature, the image (cpio, crc)."""
    work = tmp_path / f"swu-{version}"
    work.mkdir()
    (work / "rootfs.img").write_bytes(payload)
    (work / "sw-description").write_text(
        _DESCRIPTION.format(
            version=version, dir=board.dir, sha256=hashlib.sha256(payload).hexdigest()
        )
    )
    subprocess.run(
        [system_tool("openssl"), "cms", "-sign", "-in", "sw-description",
         "-out", "sw-description.sig", "-signer", str(board.dir / "vendor.pem"),
         "-inkey", str(board.dir / "vendor.key"), "-outform", "DER", "-nosmimecap", "-binary"],
        cwd=work, check=True, capture_output=True,
    )  # fmt: skip
    out = tmp_path / f"board-a-{version}.swu"
    with out.open("wb") as archive:
        subprocess.run(
            [system_tool("cpio"), "-o", "-H", "crc"],
            input=b"sw-description\nsw-description.sig\nrootfs.img\n",
            stdout=archive, stderr=subprocess.DEVNULL, cwd=work, check=True,
        )  # fmt: skip
    return out


def _device(server: RunningServer, tmp_path: Path, board: Board, health: str | None) -> DeviceState:
    state = fleet.device(server, tmp_path, "swu-1", "board-a")
    config = state.config()
    config.install_command = (
        f"{system_tool('swupdate')} -H board-a:1.0 -k {board.dir / 'vendor.pem'} "
        "-i {path} -e stable,copy-{slot}"
    )
    # fw_setenv ustate 0 (good) / 3 (bad), the bootloader environment here a file.
    config.commit_command = f"sh -c 'echo ustate=0 > {board.dir / 'bootenv'}'"
    config.rollback_command = f"sh -c 'echo ustate=3 > {board.dir / 'bootenv'}'"
    config.health_command = health
    atomic_write(state.config_path, config.to_json())
    return state


@pytest.fixture(autouse=True)
def _own_tmpdir(board: Board, monkeypatch: pytest.MonkeyPatch) -> None:
    """SWUpdate's control sockets live in $TMPDIR: this test's own."""
    monkeypatch.setenv("TMPDIR", str(board.dir / "tmp"))


def test_swupdate_writes_each_update_to_the_other_slot_and_marks_it_good(
    server: RunningServer, tmp_path: Path, board: Board
) -> None:
    state = _device(server, tmp_path, board, health=None)
    first = os.urandom(512 * 1024)
    fleet.roll_out(server, _swu(board, tmp_path, first, "2.0.0"), "2.0.0")
    report = Agent(state, firmware_version="1.0.0").run_once()
    assert "firmware 2.0.0 committed" in report.steps, report
    assert board.slot("b")[: len(first)] == first
    assert board.ustate() == "ustate=0"
    # The next release goes to the slot that is not running now: a.
    second = os.urandom(512 * 1024)
    fleet.roll_out(server, _swu(board, tmp_path, second, "3.0.0"), "3.0.0")
    report = Agent(state, firmware_version="2.0.0").run_once()
    assert "firmware 3.0.0 committed" in report.steps, report
    assert board.slot("a")[: len(second)] == second
    assert board.slot("b")[: len(first)] == first
    assert installer_for(Agent(state)).active_version() == "3.0.0"


def test_a_failed_health_check_rolls_the_swupdate_slot_back(
    server: RunningServer, tmp_path: Path, board: Board
) -> None:
    state = _device(server, tmp_path, board, health="false")
    fleet.roll_out(server, _swu(board, tmp_path, os.urandom(256 * 1024), "2.0.0"), "2.0.0")
    report = Agent(state, firmware_version="1.0.0").run_once()
    assert any("rolled back" in step for step in report.steps), report
    assert board.ustate() == "ustate=3"
    assert installer_for(Agent(state)).active_version() is None


def test_a_tampered_swu_never_reaches_swupdate(
    server: RunningServer, tmp_path: Path, board: Board
) -> None:
    state = _device(server, tmp_path, board, health=None)
    fleet.roll_out(server, _swu(board, tmp_path, os.urandom(256 * 1024), "2.0.0"), "2.0.0")
    served = next((server.data / "repository" / "targets" / "firmware").glob("*board-a-2.0.0*"))
    data = bytearray(served.read_bytes())
    data[-100] ^= 0xFF
    served.write_bytes(bytes(data))
    report = Agent(state, firmware_version="1.0.0").run_once()
    assert report.update_refused is not None
    assert "does not match its signed hashes" in report.update_refused
    assert board.slot("b") == bytes(SLOT_BYTES)  # untouched
    assert board.ustate() == ""
