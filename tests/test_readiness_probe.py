"""`/readyz` takes no credential and is never turned away: a stranger repeating it gets one
probe at a time per process, never a pool of database threads, and the answers stay true.

On the real server (SQLite and PostgreSQL). The probe is made slow (it waits 50 ms
before doing its real work) so that requests overlap whatever the machine's load.
That an answer follows the database going away and coming back is
``tests/test_database_outage.py``'s; each answer comes from a probe begun after
its request arrived.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from homing.server import readiness
from tests.harness import RunningServer

REQUESTS = 40


def test_concurrent_readiness_requests_share_one_probe_at_a_time(
    server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = readiness.problems
    lock = threading.Lock()
    seen = {"running": 0, "most": 0, "probes": 0}

    def slow_probe(state: Any) -> list[str]:
        with lock:
            seen["running"] += 1
            seen["probes"] += 1
            seen["most"] = max(seen["most"], seen["running"])
        try:
            time.sleep(0.05)
            return real(state)
        finally:
            with lock:
                seen["running"] -= 1

    monkeypatch.setattr(readiness, "problems", slow_probe)
    with ThreadPoolExecutor(REQUESTS) as pool:
        answers = list(pool.map(lambda _: server.request("GET", "/readyz"), range(REQUESTS)))
    assert [a.status for a in answers] == [200] * REQUESTS
    assert {a.json()["status"] for a in answers} == {"ready"}
    assert seen["most"] == 1
    assert 1 <= seen["probes"] <= REQUESTS
