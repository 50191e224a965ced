"""The device API (mutual TLS): check-in.

Check-ins are recorded before they are answered, in batches: while one
batch is being written, the next accumulates, so throughput grows with load
without giving up "every answered check-in is stored".
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

from aiohttp import web
from sqlalchemy import Connection
from sqlalchemy.exc import OperationalError

from homing.server.admission import RateLimiter
from homing.server.auth import authenticate_device, verify_device_certificate
from homing.server.errors import HTTPProblem
from homing.server.inputs import json_object, object_id, read_body
from homing.server.metrics import METRICS, Metrics
from homing.server.rules import refusal_problem
from homing.server.state import ServerState
from homing.store import device_contacts as contacts
from homing.store.device_contacts import CheckIn
from homing.store.devices import Presented

__all__ = ["CheckinWriter", "routes"]

_MAX_HEALTH_BYTES = 4096
_MAX_PINS_MATCHED = 4


# How long a check-in batch written on the event loop may wait for a busy
# SQLite database before it hands the batch to a thread instead.
_INLINE_WAIT_MS = 20
_INLINE_ATTEMPTS = 5
_INLINE_RETRY_S = 0.0005


class CheckinWriter:
    """Records check-ins in batches, one transaction each.

    On SQLite, a batch is written on the event loop thread when the database
    is free at that moment: the write is local and takes about a millisecond,
    while on a thread it would wait for the interpreter lock with the
    database's write lock held, so every other server process would wait
    too (measured with 2 workers: about 1.9k check-ins/s on a thread, 2.5k
    to 3k inline). When the
    database is busy, or on PostgreSQL (a network round trip), the batch
    goes to a thread as every other database call does.
    """

    def __init__(self, state: ServerState, metrics: Metrics) -> None:
        self.state = state
        self._inline_batches = metrics.checkin_batches.labels("inline")
        self._thread_batches = metrics.checkin_batches.labels("thread")
        self._pending: list[tuple[CheckIn, Presented, asyncio.Future[str | None]]] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._inline: Connection | None = None

    def start(self) -> None:
        if self.state.db.dialect == "sqlite":
            self._inline = self.state.db.impatient_writer(_INLINE_WAIT_MS)
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._inline is not None:
            self._inline.close()
            self._inline = None

    def _write_inline(self, batch: list[tuple[CheckIn, Presented]]) -> list[str | None] | None:
        """The batch written right now on SQLite, or None when the database is busy."""
        conn = self._inline
        if conn is None:
            return None
        with self.state.db.write_lock_if_free() as held:
            if not held:
                return None
            try:
                transaction = conn.begin()
            except OperationalError:
                return None  # another writer holds the database: use a thread
            with transaction:
                return contacts.record_checkins(conn, [c for c, _ in batch], [p for _, p in batch])

    async def record(self, checkin: CheckIn, presented: Presented) -> str | None:
        """Authorise and record; returns None, or why the certificate may not check in."""
        future: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        self._pending.append((checkin, presented, future))
        self._wake.set()
        return await future

    def _write(self, batch: list[tuple[CheckIn, Presented]]) -> list[str | None]:
        with self.state.db.write_lock(), self.state.db.begin() as conn:
            return contacts.record_checkins(conn, [c for c, _ in batch], [p for _, p in batch])

    async def _write_soon(self, work: list[tuple[CheckIn, Presented]]) -> list[str | None]:
        """Inline when the database frees up within a few loop turns, else on a thread.

        Another process's batch holds the lock for about a millisecond, so a
        short wait (serving other requests meanwhile) usually beats the thread.
        """
        for _ in range(_INLINE_ATTEMPTS):
            refusals = self._write_inline(work)
            if refusals is not None:
                self._inline_batches.inc()
                return refusals
            if self._inline is None:
                break
            await asyncio.sleep(_INLINE_RETRY_S)
        self._thread_batches.inc()
        return await self.state.run(self._write, work)

    async def _run(self) -> None:
        limit = self.state.config.checkin_batch_max
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                batch, self._pending = self._pending[:limit], self._pending[limit:]
                work = [(c, n) for c, n, _ in batch]
                try:
                    refusals = await self._write_soon(work)
                except Exception as e:  # every waiting request learns the write failed
                    for _, _, future in batch:
                        if not future.done():
                            future.set_exception(e)
                else:
                    for (_, _, future), refusal in zip(batch, refusals, strict=True):
                        if not future.done():
                            future.set_result(refusal)


def _opt_str(body: dict[str, Any], key: str, limit: int = 64) -> str | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not 0 < len(value) <= limit:
        raise HTTPProblem(400, "bad_request", f"{key!r} must be a string of 1-{limit} characters")
    return value


def _opt_int(doc: dict[str, Any], key: str) -> int | None:
    value = doc.get(key)
    if value is None:
        return None
    # JSON does not tell 3 from 3.0; a number with no fraction is an integer.
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**31:
        raise HTTPProblem(400, "bad_request", f"trust.{key} must be a non-negative integer")
    return value


def _held_trust(trust: dict[str, Any]) -> tuple[str | None, tuple[str, ...]]:
    """The pin policy digest and matched pins a device reports (both optional)."""
    digest = trust.get("pin_policy")
    if digest is not None and (
        not isinstance(digest, str)
        or len(digest) != 64
        or any(ch not in "0123456789abcdef" for ch in digest)
    ):
        raise HTTPProblem(400, "bad_request", "trust.pin_policy must be a lower-case SHA-256 hex")
    matched = trust.get("pins_matched", [])
    if (
        not isinstance(matched, list)
        or len(matched) > _MAX_PINS_MATCHED
        or not all(isinstance(p, str) and len(p) == 44 for p in matched)
    ):
        raise HTTPProblem(
            400,
            "bad_request",
            f"trust.pins_matched must be a list of at most {_MAX_PINS_MATCHED} base64 SHA-256 pins",
        )
    return digest, tuple(matched)


async def json_body(request: web.Request) -> dict[str, Any]:
    content_type = request.headers.get("Content-Type", "").split(";")[0].strip().lower()
    if content_type != "application/json":
        raise HTTPProblem(415, "unsupported_media_type", "send application/json")
    return json_object(await read_body(request))


async def _assignment(state: ServerState, record: CheckIn) -> dict[str, Any] | None:
    """The assigned update; the database is asked only when a rollout could concern the device."""
    from homing.operations import rollouts
    from homing.store import firmware

    hardware = record.hardware
    ro = state.rollouts_by_hardware().get(hardware) if hardware else None
    if ro is None or record.firmware_version == ro.version:
        return None
    if ro.group is None and firmware.bucket(record.device_id, ro.id) >= ro.threshold:
        return None

    def assign() -> dict[str, Any] | None:
        with state.db.begin() as conn:
            return rollouts.assignment(
                conn, record.device_id, hardware, record.firmware_version, record.at
            )

    return await state.run(assign)


def _remember_failure(state: ServerState, device_id: str, reason: str) -> None:
    with state.db.begin() as conn:
        contacts.record_failure(conn, device_id, state.now(), reason)


def routes(state: ServerState, writer: CheckinWriter) -> list[web.RouteDef]:
    limiter = RateLimiter.of(state.config.checkin_limit)

    async def checkin(request: web.Request) -> web.Response:
        identity = verify_device_certificate(request, state)
        wait = limiter.take(identity.device_id) if limiter else None
        if wait is not None:
            request.app[METRICS].shed.labels("device_rate").inc()
            raise HTTPProblem(
                429,
                "too_often",
                f"device {identity.device_id!r} checks in more often than allowed",
                {"Retry-After": RateLimiter.retry_after(wait)},
            )
        body = await json_body(request)
        trust = body.get("trust", {})
        if not isinstance(trust, dict):
            raise HTTPProblem(400, "bad_request", "'trust' must be an object")
        health = body.get("health")
        if health is not None and (
            not isinstance(health, dict) or len(json.dumps(health)) > _MAX_HEALTH_BYTES
        ):
            raise HTTPProblem(
                400, "bad_request", f"'health' must be an object under {_MAX_HEALTH_BYTES} bytes"
            )
        now = state.now()
        pin_policy, pins_matched = _held_trust(trust)
        record = CheckIn(
            device_id=identity.device_id,
            at=now,
            firmware_version=_opt_str(body, "firmware_version"),
            root_version=_opt_int(trust, "root"),
            timestamp_version=_opt_int(trust, "timestamp"),
            targets_version=_opt_int(trust, "targets"),
            health=health,
            hardware=_opt_str(body, "hardware"),
            address=request.remote,
            pin_policy_sha256=pin_policy,
            pins_matched=pins_matched,
        )
        refusal = await writer.record(record, identity.presented)
        if refusal is not None:
            await state.run(_remember_failure, state, identity.device_id, refusal)
            raise refusal_problem(refusal)
        update = await _assignment(state, record)
        request.app[METRICS].checkins.inc()
        current = state.metadata_versions()
        reported = (record.root_version, record.timestamp_version, record.targets_version)
        stale = any(
            v is None or v < c
            for v, c in zip(
                reported, (current.root, current.timestamp, current.targets), strict=True
            )
        )
        lifetime = identity.not_valid_after - identity.not_valid_before
        return web.json_response(
            {
                "device_id": identity.device_id,
                "server_time": now.isoformat(),
                "metadata": current.to_json(),
                "refresh_metadata": stale,
                "certificate": {
                    "serial": format(identity.serial, "x"),
                    "not_after": identity.not_valid_after.isoformat(),
                    "renew_after": (identity.not_valid_before + lifetime * 2 / 3).isoformat(),
                },
                "update": update,
            }
        )

    async def update_progress(request: web.Request) -> web.Response:
        """A device reports where it is with its assigned image."""
        from homing.operations import rollouts
        from homing.store import firmware

        identity = await authenticate_device(request, state)
        body = await json_body(request)
        rollout_id = object_id(body.get("rollout"))
        progress = body.get("state")
        if not isinstance(rollout_id, int) or progress not in firmware.STATES:
            raise HTTPProblem(
                400, "bad_request", f"'rollout' must be an id and 'state' one of {firmware.STATES}"
            )
        reason = _opt_str(body, "reason", 500)
        version = _opt_str(body, "version")
        now = state.now()

        def record() -> dict[str, Any]:
            with state.db.begin() as conn:
                firmware.rollout(conn, rollout_id)
                firmware.record_progress(
                    conn, rollout_id, identity.device_id, progress, now, reason, version
                )
                return rollouts.evaluate(conn, rollout_id, now).to_json()

        return web.json_response({"rollout": await state.run(record)})

    return [
        web.post("/v1/device/checkin", checkin),
        web.post("/v1/device/update", update_progress),
    ]
