"""Group commit for writing requests: who shares a batch, and who learns of which failure."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge

from homing.server.batching import BatchedWrites


class _Writer:
    """Records each batch; the first one waits for ``release`` (a writer holding the lock)."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.entered = threading.Event()
        self.release = threading.Event()

    def __call__(self, batch: list[int]) -> list[int | Exception]:
        self.batches.append(batch)
        if len(self.batches) == 1:
            self.entered.set()
            assert self.release.wait(120)
        return [ValueError(f"odd {n}") if n % 2 else n * 10 for n in batch]


def _run_on_threads() -> Any:
    """What the server passes: a function run on a thread (here the loop's own executor)."""

    async def run(fn: Any, *args: Any) -> Any:
        return await asyncio.to_thread(fn, *args)

    return run


async def _wait(condition: Any) -> None:
    """Yield to the loop until ``condition()`` holds (no fixed sleep: the writer thread sets it)."""
    while not condition():
        await asyncio.sleep(0.001)


def test_items_arriving_during_a_write_share_the_next_batch_each_with_its_own_answer() -> None:
    registry = CollectorRegistry()
    waiting = Gauge("waiting", "w", registry=registry)
    batches = Counter("batches", "b", registry=registry)
    writer = _Writer()

    async def scenario() -> list[Any]:
        writes = BatchedWrites(_run_on_threads(), writer, 64, waiting=waiting, batches=batches)
        first = asyncio.ensure_future(writes.submit(2))
        await _wait(writer.entered.is_set)
        rest = [asyncio.ensure_future(writes.submit(n)) for n in range(3, 13)]
        await _wait(lambda: registry.get_sample_value("waiting") == 10)
        writer.release.set()
        return await asyncio.gather(first, *rest, return_exceptions=True)

    outcomes = asyncio.run(scenario())
    assert writer.batches == [[2], list(range(3, 13))]
    assert registry.get_sample_value("batches_total") == 2
    assert registry.get_sample_value("waiting") == 0
    assert outcomes[0] == 20
    for n, outcome in zip(range(3, 13), outcomes[1:], strict=True):
        if n % 2:
            assert isinstance(outcome, ValueError)
            assert str(outcome) == f"odd {n}"
        else:
            assert outcome == n * 10


def test_a_batch_holds_at_most_its_limit() -> None:
    writer = _Writer()

    async def scenario() -> list[Any]:
        writes = BatchedWrites(_run_on_threads(), writer, 4)
        first = asyncio.ensure_future(writes.submit(0))
        await _wait(writer.entered.is_set)
        rest = [asyncio.ensure_future(writes.submit(n)) for n in range(2, 20, 2)]
        await asyncio.sleep(0)  # let every submit queue its item
        writer.release.set()
        return await asyncio.gather(first, *rest)

    assert asyncio.run(scenario()) == [n * 10 for n in [0, *range(2, 20, 2)]]
    assert [len(b) for b in writer.batches] == [1, 4, 4, 1]


def test_a_batch_that_fails_to_commit_fails_each_of_its_requests_and_the_next_batch_runs() -> None:
    calls: list[list[int]] = []

    def write(batch: list[int]) -> list[int | Exception]:
        calls.append(batch)
        if 13 in batch:
            raise OSError("disk is full")
        return list(batch)

    async def scenario() -> tuple[list[Any], int]:
        writes = BatchedWrites(_run_on_threads(), write, 64)
        failed = await asyncio.gather(writes.submit(13), writes.submit(14), return_exceptions=True)
        return failed, await writes.submit(15)

    failed, after = asyncio.run(scenario())
    assert [str(e) for e in failed] == ["disk is full", "disk is full"]
    assert all(isinstance(e, OSError) for e in failed)
    assert after == 15


def test_a_writer_that_answers_the_wrong_count_fails_the_batch() -> None:
    async def scenario() -> BaseException | int:
        writes = BatchedWrites(_run_on_threads(), lambda batch: [], 8)
        try:
            return await writes.submit(1)
        except RuntimeError as e:
            return e

    outcome = asyncio.run(scenario())
    assert isinstance(outcome, RuntimeError)
    assert "0 outcomes for a batch of 1" in str(outcome)


def test_a_batch_limit_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one"):
        BatchedWrites(_run_on_threads(), lambda batch: batch, 0)
