"""`/readyz` takes no credential and is never turned away: a stranger repeating it gets one
probe at a time per process, never a pool of database threads, and the answers stay true.

On the real server (SQLite and PostgreSQL). The probe is made slow (it waits 50 ms
before doing its real work) so that requests overlap whatever the machine's load.
That an answer follows the database going away and coming back is
``tests/test_database_outage.py``'s; each answer comes from a probe begun after
its request arrived.
"""

from __future__ import annotations

import asyncio
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


def test_a_request_that_arrives_during_a_probe_gets_the_next_ones_answer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The probe a request is answered from began after it arrived: a database that went
    away while an earlier probe ran is seen, and every request that waited shares one probe."""
    world = {"problems": []}
    gate: asyncio.Event
    begun: list[list[str]] = []

    class Runner:
        async def run(self, fn: Any, *args: Any) -> list[str]:
            return await fn(*args)

    async def probe_at_its_start(state: Any) -> list[str]:
        seen = list(world["problems"])  # what the world is when the probe begins
        begun.append(seen)
        if len(begun) == 1:
            await gate.wait()
        return seen

    monkeypatch.setattr(readiness, "problems", probe_at_its_start)

    async def scenario() -> tuple[list[str], list[list[str]]]:
        nonlocal gate
        gate = asyncio.Event()
        probe = readiness.ReadinessProbe(Runner())  # type: ignore[arg-type]
        first = asyncio.create_task(probe.problems())
        await asyncio.sleep(0)  # the first probe has begun and holds
        assert begun == [[]]
        later = [asyncio.create_task(probe.problems()) for _ in range(REQUESTS)]
        await asyncio.sleep(0)  # they have arrived and wait
        world["problems"] = ["the database is unreachable"]
        gate.set()
        return await first, list(await asyncio.gather(*later))

    first, later = asyncio.run(scenario())
    assert first == []
    assert later == [["the database is unreachable"]] * REQUESTS
    assert len(begun) == 2  # forty requests, one probe between them
