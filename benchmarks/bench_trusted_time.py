"""What trusted time costs a device: nothing with a good clock, one round trip in doubt.

The same provisioned device, copied, runs one agent cycle against ``homing
serve`` with a good clock (the baseline, measured in the same run), with a
clock at 1970 (behind its floor) and with a clock ten years ahead (past every
expiry it holds). Reported: the cycle time and the requests the server
answered per cycle (from its own ``homing_http_requests_total``), so the
figure is the extra requests and the ratio of cycle times.
"""

from __future__ import annotations

import os
import re
import shutil
import ssl
import tempfile
import time
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from benchmarks._server import homing_server
from homing import ceremonies
from homing.agent.agent import Agent
from homing.agent.state import DeviceState
from homing.operations.provisioning import provision
from homing.site import DataDir

ROUNDS = 7
_REQUESTS = re.compile(r"^homing_http_requests_total\{[^}]*\} ([0-9.e+]+)$", re.MULTILINE)


def _requests(url: str, ca: Path) -> float:
    """Requests the server has answered so far (every route and status)."""
    context = ssl.create_default_context(cafile=str(ca))
    context.check_hostname = False
    with urllib.request.urlopen(f"{url}/metrics", context=context, timeout=30) as answer:
        text = answer.read().decode()
    return sum(float(v) for v in _REQUESTS.findall(text))


def _cycles(
    url: str, ca: Path, template: Path, work: Path, name: str, clock: Callable[[], datetime]
) -> tuple[float, float]:
    """The fastest of ``ROUNDS`` cycles in ms, and the requests one cycle makes."""
    times, requests = [], []
    for i in range(ROUNDS):
        state_dir = work / f"{name}-{i}"
        shutil.copytree(template, state_dir)
        before = _requests(url, ca)
        t0 = time.perf_counter()
        report = Agent(DeviceState(state_dir), server=url, clock=clock).run_once()
        times.append(time.perf_counter() - t0)
        assert report.checked_in, report
        # The /metrics read itself is one request.
        requests.append(_requests(url, ca) - before - 1)
    return min(times) * 1000, min(requests)


def run(quick: bool = False) -> dict[str, Any]:
    os.environ.pop("HOMING_KEY_PASSPHRASE", None)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data = work / "data"
        now = datetime.now(UTC)
        ceremonies.init(data, now)
        dd = DataDir(data)
        template = provision(dd, work / "template", now, device_id="bench-dev").root
        dd.close()
        ca = data / "pki" / "root-ca.pem"
        with homing_server(data, extra=("--checkin-limit", "off")) as url:
            # One cycle first, so every copy holds a floor and fresh trust.
            assert Agent(DeviceState(template), server=url).run_once().checked_in
            good = _cycles(url, ca, template, work, "good", lambda: datetime.now(UTC))
            dead = _cycles(
                url, ca, template, work, "dead", lambda: datetime(1970, 1, 1, tzinfo=UTC)
            )
            ahead = _cycles(
                url, ca, template, work, "ahead", lambda: datetime.now(UTC) + timedelta(days=3653)
            )
    results = {
        "good_clock_cycle_ms": good[0],
        "good_clock_requests": good[1],
        "dead_clock_cycle_ms": dead[0],
        "dead_clock_requests": dead[1],
        "ten_years_ahead_cycle_ms": ahead[0],
        "ten_years_ahead_requests": ahead[1],
        "dead_clock_ratio": dead[0] / good[0],
        "ten_years_ahead_ratio": ahead[0] / good[0],
    }
    print("trusted time: one agent cycle (lower is better; baseline: a good clock, same run)")
    print(f"  good clock            {good[0]:7.1f} ms  {good[1]:.0f} requests")
    for label, (ms, count), ratio in (
        ("clock at 1970", dead, results["dead_clock_ratio"]),
        ("ten years ahead", ahead, results["ten_years_ahead_ratio"]),
    ):
        print(
            f"  {label:<20s}  {ms:7.1f} ms  {count:.0f} requests"
            f"  (+{count - good[1]:.0f}, ratio {ratio:.2f}; goal: one extra request)"
        )
    return results
