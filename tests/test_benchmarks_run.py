"""`make bench` still runs: every benchmark, each step once, in its smoke size.

A benchmark that nothing runs breaks quietly (one began to meet the per-device
check-in limit and died on its first 429). Here ``python -m benchmarks`` runs
whole with ``HOMING_BENCH_SMOKE=1`` (``benchmarks._size``): the smallest size
that still starts every server, phase and comparison. Its figures mean
nothing; that it finishes, reports every benchmark, and that what each did
answered, is what is checked.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.long

# benchmarks._size.SMOKE_ENV (the tests do not import the benchmarks).
SMOKE_ENV = "HOMING_BENCH_SMOKE"


def _numbers(value: Any) -> list[float]:
    if isinstance(value, bool):
        return []
    if isinstance(value, int | float):
        return [float(value)]
    if isinstance(value, dict):
        return [n for v in value.values() for n in _numbers(v)]
    if isinstance(value, list):
        return [n for v in value for n in _numbers(v)]
    return []


def test_every_benchmark_runs_in_its_smoke_size(tmp_path: Path) -> None:
    modules = sorted(p.stem for p in (ROOT / "benchmarks").glob("bench_*.py"))
    runner = (ROOT / "benchmarks" / "__main__.py").read_text()
    assert [m for m in modules if f"{m}.run(" not in runner] == [], "not run by make bench"
    out = tmp_path / "results.json"
    env = {k: v for k, v in os.environ.items() if k != "HOMING_KEY_PASSPHRASE"}
    ran = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--out", str(out)],
        cwd=ROOT,
        env={**env, SMOKE_ENV: "1"},
        capture_output=True,
        text=True,
        timeout=1200,
        check=False,
    )
    assert ran.returncode == 0, ran.stderr[-4000:]
    results = json.loads(out.read_text())
    assert len(results) == len(modules) + 2  # and the machine and the Python
    assert all(math.isfinite(n) and n >= 0 for n in _numbers(results))

    checkin = results["checkin"]
    phases = {k: v for k, v in checkin.items() if isinstance(v, dict) and "outcomes" in v}
    assert len(phases) >= 10
    for name, phase in phases.items():
        answered = phase["outcomes"].get("200", 0) + phase["outcomes"].get("handshake", 0)
        assert answered > 0, (name, phase["outcomes"])
    assert checkin["est"]["answered_200"] == 40
    assert checkin["est_postgresql"]["answered_200"] == 40
    assert results["replicas"]["replicas"]["ratio_to_1"]["1"] == 1.0
    assert results["simulate"]["homing_bricked"] == 0
    assert results["revocation"]["revoked_devices"] == results["revocation"]["devices"]
    assert results["storm"]["storm"]["attempts"]["200"] == results["storm"]["devices"]
    for server in ("homing", "nginx"):
        assert results["slow_clients"][server]["attacked"]["outcomes"].get("200", 0) > 0
