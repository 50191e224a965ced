"""Whether this replica should be sent devices now, and if not, why.

Liveness (``/healthz``) says the process answers; a supervisor restarts one
that does not. Readiness (``/readyz``) says it can do its job, so a load
balancer sends devices elsewhere while it cannot: its database answers, its
data directory takes a write (a full or read-only disk fails here first),
and the timestamp it serves has not expired (else every device refuses it).
"""

from __future__ import annotations

import asyncio
import json
import os
import tempfile

from sqlalchemy.exc import SQLAlchemyError

from homing.server.state import ServerState
from homing.store.db import database_reason

__all__ = ["ReadinessProbe", "problems"]


def problems(state: ServerState) -> list[str]:
    """Every reason this replica is not ready; empty when it is."""
    found: list[str] = []
    try:
        with state.db.engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
    except SQLAlchemyError as e:
        state.database.failed(e)
        found.append(f"the database is unreachable: {database_reason(e)}")
    run = state.dd.root / "run"
    try:
        run.mkdir(exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=run, prefix=".ready-") as probe:
            probe.write(b"ready")
            probe.flush()
            os.fsync(probe.fileno())
    except OSError as e:
        found.append(f"the data directory takes no write: {e.strerror or e}")
    try:
        raw = (state.dd.repository_dir / "metadata" / "timestamp.json").read_bytes()
        expires = json.loads(raw)["signed"]["expires"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        found.append(f"the timestamp cannot be read: {e}")
    else:
        from datetime import datetime

        if datetime.fromisoformat(expires.replace("Z", "+00:00")) <= state.now():
            found.append(f"the timestamp expired at {expires}: the signer has stopped")
    return found


class ReadinessProbe:
    """One probe at a time per process, shared by every request that arrived before it began.

    ``/readyz`` takes no credential and is never turned away, and each probe
    holds a database thread for a query and an fsync: a stranger repeating
    it could fill the pool the devices' requests wait on. Here at most one
    probe runs; the requests that arrive meanwhile wait for the next one and
    share its answer. Each answer still comes from a probe that began after
    the request arrived, so none is older than the request.
    """

    def __init__(self, state: ServerState) -> None:
        self.state = state
        self.started = 0  # probes begun
        self._finished = 0  # the newest probe finished, and its answer
        self._answer: list[str] = []
        self._lock = asyncio.Lock()

    async def problems(self) -> list[str]:
        wanted = self.started + 1  # the first probe to begin after this request arrived
        async with self._lock:
            if self._finished >= wanted:
                return list(self._answer)
            self.started += 1
            number = self.started
            answer = await self.state.run(problems, self.state)
            self._finished, self._answer = number, answer
            return list(answer)
