"""Agent catch-up time and idle memory.

Catch-up: a device three root versions and two server-CA rotations behind
reconnects; homing's cycle (pinned attempt, bootstrap refresh, new pins,
pinned check-in) is timed against python-tuf alone refreshing the same chain
from the same server over TLS (a stock ``Updater`` with a urllib3 fetcher
trusting the private root CA), in the same run.

Idle memory: the resident set of ``homing agent run`` after its first cycle.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import urllib3
from tuf.ngclient import FetcherInterface, Updater

from benchmarks._server import homing_server
from homing import ceremonies
from homing.agent.agent import Agent
from homing.agent.state import DeviceState
from homing.operations.provisioning import provision
from homing.site import DataDir

ROUNDS = 5


class _TLSFetcher(FetcherInterface):
    def __init__(self, ca: Path) -> None:
        self.pool = urllib3.PoolManager(ca_certs=str(ca), cert_reqs="CERT_REQUIRED")

    def _fetch(self, url: str) -> Iterator[bytes]:
        from tuf.api import exceptions

        response = self.pool.request("GET", url, preload_content=False)
        if response.status != 200:
            raise exceptions.DownloadHTTPError(f"HTTP {response.status}", response.status)
        return response.stream(65536)


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run(quick: bool = False) -> dict[str, Any]:
    os.environ.pop("HOMING_KEY_PASSPHRASE", None)
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data = work / "data"
        start = datetime.now(UTC)
        ceremonies.init(data, start)
        dd = DataDir(data)
        template = provision(dd, work / "template", start, device_id="bench-dev")
        factory_root = (data / "repository" / "metadata" / "1.root.json").read_bytes()
        for _ in range(3):
            ceremonies.rotate_root(dd, start)
        ceremonies.rotate_issuing_ca(dd, "server", start)
        ceremonies.rotate_issuing_ca(dd, "server", start)
        dd.close()
        # One device identity, copied, checks in every round: no per-device limit.
        with homing_server(data, extra=("--checkin-limit", "off")) as url:
            homing_times, tuf_times = [], []
            for i in range(ROUNDS):
                state_dir = work / f"dev-{i}"
                shutil.copytree(template.root, state_dir)
                t0 = time.perf_counter()
                report = Agent(DeviceState(state_dir), server=url).run_once()
                homing_times.append(time.perf_counter() - t0)
                assert report.checked_in, report
                assert report.trust["root"] == 4, report
                client = work / f"tuf-{i}"
                client.mkdir()
                t0 = time.perf_counter()
                updater = Updater(
                    str(client),
                    f"{url}/tuf/metadata/",
                    str(client),
                    f"{url}/tuf/targets/",
                    fetcher=_TLSFetcher(data / "pki" / "root-ca.pem"),
                    bootstrap=factory_root,
                )
                updater.refresh()
                info = updater.get_targetinfo("pins.json")
                assert info is not None
                updater.download_target(info)
                tuf_times.append(time.perf_counter() - t0)
            results["catch_up_ms"] = min(homing_times) * 1000
            results["python_tuf_refresh_ms"] = min(tuf_times) * 1000
            results["ratio"] = min(homing_times) / min(tuf_times)
            state_dir = work / "idle"
            shutil.copytree(template.root, state_dir)
            agent = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "homing.cli",
                    "agent",
                    "run",
                    "--state",
                    str(state_dir),
                    "--server",
                    url,
                    "--interval",
                    "3600",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            deadline = time.monotonic() + 60
            while not (state_dir / "last-run.json").exists() and time.monotonic() < deadline:
                time.sleep(0.2)
            time.sleep(1.0)
            results["idle_rss_mb"] = _rss_mb(agent.pid)
            agent.send_signal(signal.SIGTERM)
            agent.wait(10)
    print("agent catch-up, 3 root versions and 2 server-CA rotations behind (lower is better)")
    print(f"  python-tuf refresh alone   {results['python_tuf_refresh_ms']:7.1f} ms")
    print(
        f"  homing full catch-up       {results['catch_up_ms']:7.1f} ms"
        f"  ratio {results['ratio']:.2f}"
        "  (goal: under 1 s and at most 2x)"
    )
    print(
        f"  agent resident memory idle {results['idle_rss_mb']:7.1f} MB"
        "  (goal: at most 30 MB; each cycle runs in a process of its own)"
    )
    return results
