"""Fleet simulator throughput: device-years per second and peak memory.

The run: ``homing simulate``'s engine on the default ten-year scenario with
1,000,000 devices (100,000 with --quick) and all eight strategies, in a
fresh process so its peak resident set is its own (goal: under 50 s and
under 700 MB; before the simulator ran its weeks as contiguous passes on both
cores it took 110 s and 807 MB on this machine, a figure recorded then, not
measured here).

Baseline, same run: python-tuf alone refreshing a device against the same
world's published metadata (a stock ``ngclient.Updater`` over the file
fetcher). If the simulator ran the real walk once per device contact instead
of once per distinct situation, that refresh rate would bound it; the ratio
says how much the caching of identical situations buys.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tuf.ngclient import Updater

from benchmarks._size import sized
from homing.fleet.scenario import Scenario
from homing.fleet.world import build_world
from homing.trust import DirectoryFetcher

_CHILD = """
import json, resource, sys, time
from homing.fleet.scenario import Scenario
from homing.fleet.simulate import simulate
scenario = Scenario().with_fleet(devices=int(sys.argv[1]))
started = time.perf_counter()
results = simulate(scenario)
elapsed = time.perf_counter() - started
print(json.dumps({
    "seconds": elapsed,
    "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    "homing_bricked": results.strategies[-1].bricked,
    "homing_requests": results.strategies[-1].requests,
}))
"""


def _python_tuf_refreshes_per_second(rounds: int) -> tuple[float, float]:
    """Stock python-tuf: a device from the first published state refreshing to the last."""
    with tempfile.TemporaryDirectory() as tmp:
        world = build_world(Scenario().with_fleet(devices=1), Path(tmp) / "world")
        last = world.homing_states[-1].directory
        bootstrap = (world.homing_states[0].directory / "metadata" / "1.root.json").read_bytes()
        timings = []
        for i in range(rounds):
            client = Path(tmp) / f"client-{i}"
            (client / "t").mkdir(parents=True)
            updater = Updater(
                str(client),
                (last / "metadata").as_uri() + "/",
                str(client / "t"),
                (last / "targets").as_uri() + "/",
                fetcher=DirectoryFetcher(),
                bootstrap=bootstrap,
            )
            started = time.perf_counter()
            # The world's metadata lies in the future, so it is fresh at wall-clock time.
            updater.refresh()
            timings.append(time.perf_counter() - started)
            shutil.rmtree(client)
        timings.sort()
        median = timings[len(timings) // 2]
        return 1.0 / median, median


def run(quick: bool = False) -> dict[str, Any]:
    devices = sized(quick, 1_000_000, 100_000, 2_000)
    years = Scenario().fleet.years
    child = subprocess.run(
        [sys.executable, "-c", _CHILD, str(devices)],
        capture_output=True,
        text=True,
        check=True,
        timeout=900,
    )
    measured = json.loads(child.stdout.strip().splitlines()[-1])
    device_years = devices * years
    rate = device_years / measured["seconds"]
    refreshes, refresh_seconds = _python_tuf_refreshes_per_second(sized(quick, 15, 5, 1))
    # One contact a week per online device: a real walk per contact would cost
    # 52 refreshes per device-year at best.
    naive_rate = refreshes / 52.0
    result = {
        "devices": devices,
        "years": years,
        "seconds": round(measured["seconds"], 1),
        "device_years_per_second": round(rate),
        "peak_rss_mb": round(measured["peak_rss_mb"], 1),
        "homing_bricked": measured["homing_bricked"],
        "python_tuf_refresh_ms": round(refresh_seconds * 1e3, 2),
        "naive_device_years_per_second": round(naive_rate, 2),
        "ratio_to_naive": round(rate / naive_rate, 1),
        "goal": "1,000,000 devices x 10 years under 50 s and 700 MB",
        "recorded_before": {"seconds": 110, "peak_rss_mb": 807},
    }
    print(
        f"simulate: {devices:,} devices x {years:g} years, 8 strategies in "
        f"{measured['seconds']:.1f} s = {rate:,.0f} device-years/s, "
        f"peak {result['peak_rss_mb']} MB; "
        f"python-tuf alone: {refresh_seconds * 1e3:.1f} ms per refresh, so a walk per contact "
        f"would manage {naive_rate:.1f} device-years/s ({result['ratio_to_naive']}x)"
    )
    return result


if __name__ == "__main__":
    run(quick="--quick" in sys.argv)
