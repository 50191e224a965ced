"""Requests that write, gathered into shared transactions (group commit).

On SQLite one process writes at a time, and a transaction's own start and
durable commit cost about as much as a small request's work: requests that
arrive while a batch is being written wait for the next batch and share its
transaction instead of queueing for the write lock one by one. Each request
still gets its own answer: a refusal is one item's (its writes rolled back to
its savepoint by the writer), a failed commit is every item's in the batch.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

from prometheus_client import Counter, Gauge

__all__ = ["BatchedWrites"]

Item = TypeVar("Item")
Result = TypeVar("Result")


class BatchedWrites(Generic[Item, Result]):
    """Items submitted on the event loop, written ``limit`` at a time by ``write`` on a thread.

    ``write`` returns one outcome an item, in order: its result, or the
    exception its request raises.

    No task runs while nothing is pending: the first item starts a drain that
    ends when the queue is empty, so there is nothing to start or stop with
    the server. The first item of a quiet moment is written alone, at once.
    """

    def __init__(
        self,
        run: Callable[..., Awaitable[list[Result | Exception]]],
        write: Callable[[list[Item]], list[Result | Exception]],
        limit: int,
        *,
        waiting: Gauge | None = None,
        batches: Counter | None = None,
    ) -> None:
        """``waiting`` follows how many items wait; ``batches`` counts the batches written."""
        if limit < 1:
            raise ValueError("a batch holds at least one item")
        self._run = run
        self._write = write
        self._limit = limit
        self._pending: list[tuple[Item, asyncio.Future[Result]]] = []
        self._drain: asyncio.Task[None] | None = None
        self._waiting = waiting
        self._batches = batches

    async def submit(self, item: Item) -> Result:
        """The item's result once its batch is committed, or the exception it raised."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Result] = loop.create_future()
        self._pending.append((item, future))
        self._count_waiting()
        if self._drain is None or self._drain.done():
            self._drain = loop.create_task(self._drain_all())
        return await future

    async def _drain_all(self) -> None:
        while self._pending:
            batch, self._pending = self._pending[: self._limit], self._pending[self._limit :]
            self._count_waiting()
            if self._batches is not None:
                self._batches.inc()
            try:
                outcomes = await self._run(self._write, [item for item, _ in batch])
                if len(outcomes) != len(batch):
                    raise RuntimeError(f"{len(outcomes)} outcomes for a batch of {len(batch)}")
            except Exception as e:  # the batch did not commit: every request learns why
                for _, future in batch:
                    if not future.done():
                        future.set_exception(e)
                continue
            for (_, future), outcome in zip(batch, outcomes, strict=True):
                if future.done():  # its request went away meanwhile
                    continue
                if isinstance(outcome, Exception):
                    future.set_exception(outcome)
                else:
                    future.set_result(outcome)

    def _count_waiting(self) -> None:
        if self._waiting is not None:
            self._waiting.set(len(self._pending))
