"""Firmware install memory: the agent's peak resident set against the image's size.

Each size: one released image, a rollout, and one ``homing agent run --once``
that downloads, verifies, writes the slot and boots it, measured by a small
parent of its own (``os.wait4``). Baseline, same run: the same agent's cycle
with nothing to install. The ratio (peak with the image / peak without) stays
near 1 whatever the size: every step streams.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks._server import homing_server
from benchmarks._size import sized
from homing import ceremonies
from homing.agent.agent import Agent
from homing.agent.state import DeviceState
from homing.agent.update import installer_for
from homing.ceremonies.releases import release
from homing.operations import rollouts
from homing.operations.provisioning import provision
from homing.site import DataDir

_MEASURE = (
    "import os, subprocess, sys\n"
    "child = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL)\n"
    "_, status, usage = os.wait4(child.pid, 0)\n"
    "print(usage.ru_maxrss)\n"
    "sys.exit(os.waitstatus_to_exitcode(status))\n"
)


def _agent_peak_mib(state: Path, url: str, version: str) -> float:
    homing = str(Path(sys.executable).with_name("homing"))
    done = subprocess.run(
        [sys.executable, "-c", _MEASURE, homing, "agent", "run", "--state", str(state),
         "--once", "--server", url, "--firmware-version", version],
        capture_output=True,
        text=True,
        check=True,
        env={k: v for k, v in os.environ.items() if not k.startswith("HOMING_")},
    )  # fmt: skip
    return int(done.stdout.split()[-1]) / 1024


def run(quick: bool = False) -> dict[str, Any]:
    sizes_mib = sized(quick, (32, 128, 512), (16, 64), (4,))
    os.environ.pop("HOMING_KEY_PASSPHRASE", None)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data = work / "data"
        now = datetime.now(UTC)
        ceremonies.init(data, now)
        dd = DataDir(data)
        device = provision(dd, work / "dev", now, device_id="bench", hardware="board-a")
        dd.close()
        with homing_server(data, extra=("--checkin-limit", "off")) as url:
            idle = _agent_peak_mib(device.root, url, "1.0.0")
            running = "1.0.0"
            for n, size in enumerate(sizes_mib, start=2):
                image = work / f"fw-{size}.img"
                with image.open("wb") as out:
                    for _ in range(size):
                        out.write(os.urandom(1 << 20))
                version = f"{n}.0.0"
                dd = DataDir(data)
                release(dd, image, version, "board-a", datetime.now(UTC))
                for ro in rollouts.list_rollouts(dd.database()):
                    if ro.status == "active":
                        rollouts.set_paused(dd.database(), "bench", datetime.now(UTC), ro.id, True)
                rollouts.create(
                    dd.database(), "bench", datetime.now(UTC), version, "board-a",
                    rollouts.RolloutPlan(stages=(100,)),
                )  # fmt: skip
                dd.close()
                image.unlink()
                # The server takes a new rollout within a second: cycles until one installs.
                for _ in range(30):
                    peak = _agent_peak_mib(device.root, url, running)
                    installed = installer_for(Agent(DeviceState(device.root))).active_version()
                    if installed == version:
                        break
                else:
                    raise RuntimeError(f"the agent did not install {version} ({installed})")
                running = version
                rows.append({"image_mib": size, "peak_rss_mib": peak, "ratio_to_idle": peak / idle})
    print(f"firmware install memory: agent idle cycle {idle:.0f} MiB peak")
    for row in rows:
        print(
            f"  {row['image_mib']} MiB image: peak {row['peak_rss_mib']:.0f} MiB "
            f"({row['ratio_to_idle']:.2f}x the idle cycle)"
        )
    return {"idle_peak_rss_mib": idle, "installs": rows}


if __name__ == "__main__":
    run(quick="--quick" in sys.argv)
