"""Honest devices while thousands of slow connections hold on: homing next to nginx.

The attack needs no certificate: ``CONNECTIONS`` TLS connections, opened
over ten seconds, that each send a request head one header line every ten
seconds and never finish it, reopened as soon as the server cuts them
(slowloris); honest devices are measured once it holds them all. Meanwhile 16 enrolled
devices check in back to back, each on a new mutual-TLS connection; their
rate and p99 latency are measured without and with the attack, against
``homing serve --workers 2`` (default limits: the head cut at 15 s) and
against nginx (2 workers, the same certificates and TLS profile, its
default ``client_header_timeout`` of 60 s, answering a static body). The
honest devices come from the C load generator (``storm_client.c``), the
attack from one asyncio process, on the same two cores.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks._server import homing_process
from benchmarks._size import sized
from benchmarks.bench_checkin import _ensure_nginx, nginx_server
from benchmarks.bench_storm import _fleet, _generate
from homing import ceremonies

CONNECTIONS = 2000
HONEST = 16
ROOT = Path(__file__).resolve().parent.parent


@contextmanager
def _attack(
    port: int, ca: Path, count: int, seconds: float, work: Path, ramp: float
) -> Iterator[None]:
    plan = work / f"attack-{port}.json"
    plan.write_text(
        json.dumps(
            {
                "port": port,
                "ca": str(ca),
                "connections": count,
                "seconds": seconds,
                "drip": 10,
                "ramp": ramp,
            }
        )
    )
    attacker = subprocess.Popen(
        [sys.executable, "-m", "benchmarks._slowloris", str(plan)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(ramp + 2.0)  # the attack opens its connections over the ramp
        yield
    finally:
        attacker.send_signal(signal.SIGTERM)
        attacker.wait(60)


def _measure(
    port: int,
    ca: Path,
    devices: list[tuple[str, str]],
    seconds: float,
    work: Path,
    connections: int,
    ramp: float,
) -> dict[str, Any]:
    honest = {
        "mode": "closed",
        "port": port,
        "ca": str(ca),
        "devices": devices,
        "concurrency": HONEST,
        "seconds": seconds,
        "timeout": 30,
    }
    quiet = _generate(honest, work)
    with _attack(port, ca, connections, seconds + 30, work, ramp):
        attacked = _generate(honest, work)
    return {"quiet": quiet, "attacked": attacked}


def run(quick: bool = False) -> dict[str, Any]:
    seconds = sized(quick, 20.0, 10.0, 1.0)
    connections = sized(quick, CONNECTIONS, CONNECTIONS, 40)
    ramp = sized(quick, 10.0, 10.0, 0.5)
    os.environ.pop("HOMING_KEY_PASSPHRASE", None)
    results: dict[str, Any] = {"slow_connections": connections}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data = work / "data"
        ceremonies.init(data, datetime.now(UTC))
        (work / "fleet").mkdir()
        devices = _fleet(data, HONEST, work / "fleet")
        ca = data / "pki" / "root-ca.pem"
        # The honest devices check in far more often than a fleet does.
        with homing_process(data, workers=2, extra=("--checkin-limit", "off")) as (url, _):
            results["homing"] = _measure(
                int(url.rsplit(":", 1)[1]), ca, devices, seconds, work, connections, ramp
            )
        nginx = _ensure_nginx()
        if nginx:
            with nginx_server(nginx, work, data) as (port, _pid):
                results["nginx"] = _measure(port, ca, devices, seconds, work, connections, ramp)
    print(f"honest check-ins (16 devices, new connection each) beside {connections} slow heads")
    for server in ("homing", "nginx"):
        if server not in results:
            continue
        for when in ("quiet", "attacked"):
            r = results[server][when]
            print(
                f"  {server:6} {when:8} {r['rate_per_s']:7.0f}/s  p50 {r['p50_ms'] or 0:7.1f} ms"
                f"  p99 {r['p99_ms'] or 0:7.1f} ms  outcomes {r['outcomes']}"
            )
    if "nginx" in results:
        ratio = results["homing"]["attacked"]["p99_ms"] / results["nginx"]["attacked"]["p99_ms"]
        results["p99_attacked_ratio_homing_to_nginx"] = ratio
        print(f"  p99 under attack, homing / nginx: {ratio:.2f}")
    return results


if __name__ == "__main__":
    run(quick="--quick" in sys.argv)
