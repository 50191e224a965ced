"""A reconnect storm: a whole fleet comes back at once after an outage.

``homing serve --workers 2`` with its default limits. Every device has its
own identity (key and certificate, made by the operator's own provisioning)
and checks in on a new TLS 1.3 connection, from one load generator in C
(``benchmarks/storm_client.c``: one epoll loop on OpenSSL, compiled by this
benchmark) on the same two cores; its CPU time is reported so the share it
took is visible (about a third of the server's per check-in: the client's
half of each handshake).

1. The storm: every device starts at the same instant and, when turned away
   (a 429, or a connection reset past the handshake bound), waits as the
   agent does, scaled by a tenth; time until all have checked in, each
   device's wait (p50, p99), 5xx answers (must be 0), and the server's peak
   memory (workers and supervisor, VmHWM).
2. Goodput under overload: the sustainable rate R is the highest arrival
   rate the server answers in full (at least 99 % answered 200, each device
   given 10 s): found by raising open-loop arrivals in 5 % steps (10 s each)
   from 90 % of a closed-loop probe (512 devices back to back, more than its
   handshake bounds take). Arrivals at 1x, 2x and 4x R (open loop, 30 s each,
   each device given 10 s) must keep goodput at or above 90 % of the best
   (shedding, never collapse). Each phase takes the next devices of the
   fleet, so none checks in more often than its per-device limit allows.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization

from benchmarks._server import cpu_seconds, homing_process, peak_memory_mib
from benchmarks._size import sized
from homing import ceremonies
from homing.operations.provisioning import register_device
from homing.pki.keys import generate_tls_key
from homing.site import DataDir

DEVICES = 20_000
MULTIPLES = (1, 2, 4)
# The search for R: 5 % steps of 10 s, from 90 % of the closed-loop probe.
RAMP_START, RAMP_STEP, RAMP_STEPS, RAMP_SECONDS = 0.9, 1.05, 8, 10.0
ANSWERED_IN_FULL = 0.99
ROOT = Path(__file__).resolve().parent.parent


def _fleet(data: Path, count: int, out: Path) -> list[tuple[str, str]]:
    logging.getLogger("homing.pki.keystore").setLevel(logging.ERROR)
    dd = DataDir(data)
    now = datetime.now(UTC)
    pairs = []
    try:
        for i in range(count):
            key = generate_tls_key()
            chain = register_device(dd, key, f"storm-{i}", now)
            cert_file, key_file = out / f"{i}.pem", out / f"{i}.key"
            cert_file.write_bytes(
                b"".join(c.public_bytes(serialization.Encoding.PEM) for c in chain)
            )
            key_file.write_bytes(
                key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                )
            )
            pairs.append((str(cert_file), str(key_file)))
    finally:
        dd.close()
    return pairs


def _build_client(work: Path) -> Path:
    """Compile the C load generator (gcc and OpenSSL's headers: scripts/install-system-tools.sh)."""
    binary = work / "storm_client"
    if not binary.exists():
        subprocess.run(
            [
                "cc",
                "-O2",
                "-o",
                str(binary),
                str(ROOT / "benchmarks" / "storm_client.c"),
                "-lssl",
                "-lcrypto",
            ],
            check=True,
        )
    return binary


class _Rotation:
    """The fleet taken in turn, phase after phase: the next devices each time."""

    def __init__(self, devices: list[tuple[str, str]]) -> None:
        self.devices = devices
        self.next = 0

    def take(self, count: int) -> list[tuple[str, str]]:
        """The next ``count`` devices, in order, wrapping around (all of them at most)."""
        count = min(max(count, 1), len(self.devices))
        start = self.next
        self.next = (start + count) % len(self.devices)
        return (self.devices[start:] + self.devices[:start])[:count]


def _generate(
    plan: dict[str, Any], work: Path, extra_lines: list[str] | None = None
) -> dict[str, Any]:
    """Run the C load generator on ``plan`` (see storm_client.c) and read its answer."""
    path = work / f"plan-{time.monotonic_ns()}.txt"
    lines = [f"{name} {value}" for name, value in plan.items() if name != "devices"]
    lines += extra_lines or []
    lines += [f"device {cert} {key}" for cert, key in plan["devices"]]
    path.write_text("\n".join(lines) + "\n")
    result = subprocess.run(
        [str(_build_client(work)), str(path)], capture_output=True, text=True, check=True
    )
    return dict(json.loads(result.stdout))


def run(quick: bool = False) -> dict[str, Any]:
    count = sized(quick, DEVICES, 2_000, 100)
    seconds = sized(quick, 30.0, 5.0, 1.0)
    os.environ.pop("HOMING_KEY_PASSPHRASE", None)
    results: dict[str, Any] = {"devices": count}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data = work / "data"
        ceremonies.init(data, datetime.now(UTC))
        (work / "fleet").mkdir()
        started = time.perf_counter()
        devices = _fleet(data, count, work / "fleet")
        results["provisioning_s"] = time.perf_counter() - started
        with homing_process(data, workers=2) as (url, server):
            base = {
                "port": int(url.rsplit(":", 1)[1]),
                "ca": str(data / "pki" / "root-ca.pem"),
                "devices": devices,
                # Retry-After and the agent's backoff are honoured at a tenth, to keep it short.
                "retry_scale": 0.1,
            }
            storm = _generate({**base, "mode": "storm", "concurrency": 4000, "timeout": 30}, work)
            storm["server_peak_memory_mib"] = peak_memory_mib(server)
            results["storm"] = storm
            closed = _generate(
                {**base, "mode": "closed", "concurrency": 512, "seconds": seconds, "timeout": 10},
                work,
            )
            results["closed_loop"] = closed
            fleet = _Rotation(devices)
            ramp = []
            rate = closed["rate_per_s"] * RAMP_START
            sustainable = None
            step_seconds = min(RAMP_SECONDS, seconds)
            for _ in range(RAMP_STEPS):
                plan = {"mode": "rate", "rate": rate, "seconds": step_seconds, "timeout": 10}
                step = _generate(
                    {**base, **plan, "devices": fleet.take(int(rate * step_seconds))}, work
                )
                answered = step["outcomes"].get("200", 0) / max(step["offered"], 1)
                ramp.append({"offered_per_s": rate, "answered": answered})
                if answered < ANSWERED_IN_FULL:
                    break
                sustainable = rate
                rate *= RAMP_STEP
            if sustainable is None:  # even 90 % of the probe was too much: the probe's own
                sustainable = closed["rate_per_s"] * RAMP_START / RAMP_STEP
            results["ramp"] = ramp
            results["sustainable_per_s"] = sustainable
            runs = []
            for multiple in MULTIPLES:
                before = cpu_seconds(server)
                offered = sustainable * multiple
                rate = _generate(
                    {
                        **base,
                        "mode": "rate",
                        "rate": offered,
                        "seconds": seconds,
                        "timeout": 10,
                        "devices": fleet.take(int(offered * seconds)),
                    },
                    work,
                )
                rate["multiple"] = multiple
                rate["server_cpu_s"] = cpu_seconds(server) - before
                answered = rate["outcomes"].get("200", 0)
                rate["server_cpu_ms_per_checkin"] = 1000 * rate["server_cpu_s"] / max(answered, 1)
                runs.append(rate)
            results["overload"] = runs
            results["server_peak_memory_mib"] = peak_memory_mib(server)
    best = max(r["goodput_per_s"] for r in results["overload"])
    for r in results["overload"]:
        r["goodput_of_best"] = r["goodput_per_s"] / best
    s = results["storm"]
    print(f"reconnect storm: {count} devices at once, new TLS connection each (2 workers)")
    print(
        f"  all checked in after {s['seconds_until_all']:.1f} s (p50 {s['p50_s']:.1f} s, "
        f"p99 {s['p99_s']:.1f} s); 5xx {s['server_errors_5xx']}; attempts {s['attempts']}"
    )
    print(
        f"  server peak memory {results['server_peak_memory_mib']:.0f} MiB; "
        f"load generator CPU {s['client_cpu_s']:.1f} s"
    )
    steps = ", ".join(f"{r['offered_per_s']:.0f}/s {r['answered']:.1%}" for r in results["ramp"])
    print(
        f"  sustainable rate R = {results['sustainable_per_s']:.0f} check-ins/s, the highest"
        f" arrival rate answered in full (closed-loop probe"
        f" {results['closed_loop']['rate_per_s']:.0f}/s; ramp, answered: {steps})"
    )
    for r in results["overload"]:
        print(
            f"  {r['multiple']}x R offered {r['offered_per_s']:.0f}/s: goodput "
            f"{r['goodput_per_s']:.0f}/s ({r['goodput_of_best']:.0%} of best), "
            f"outcomes {r['outcomes']}; CPU server {r['server_cpu_s']:.1f} s "
            f"({r['server_cpu_ms_per_checkin']:.2f} ms a check-in), "
            f"load generator {r['client_cpu_s']:.1f} s"
        )
    return results


if __name__ == "__main__":
    run(quick="--quick" in sys.argv)
