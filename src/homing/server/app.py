"""The aiohttp application: routes, bounded bodies, one error shape, metrics, logs."""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable

from aiohttp import ClientPayloadError, web
from aiohttp.http_exceptions import PayloadEncodingError
from sqlalchemy.exc import SQLAlchemyError

from homing import __version__
from homing.errors import HomingError
from homing.server import admin_api, device_api, est, metadata, readiness, recovery, time_api
from homing.server import web as fleet_view
from homing.server.admission import ADMISSION, Admission, kind_of
from homing.server.availability import DatabaseAvailability
from homing.server.connections import CONNECTIONS, ConnectionGuard, ConnectionLimits
from homing.server.errors import HTTPProblem, problem_response, status_for
from homing.server.fleet_gauges import FleetGauges
from homing.server.inputs import BODY_SECONDS
from homing.server.metrics import CONTENT_TYPE_LATEST, METRICS, Metrics
from homing.server.openapi import openapi_document
from homing.server.state import ServerState

__all__ = ["build_app"]

log = logging.getLogger("homing.server")
access = logging.getLogger("homing.access")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
AVAILABILITY: web.AppKey[DatabaseAvailability] = web.AppKey("availability", DatabaseAvailability)


@web.middleware
async def _errors_and_metrics(request: web.Request, handler: Handler) -> web.StreamResponse:
    started = time.perf_counter()
    route = (
        request.match_info.route.resource.canonical
        if request.match_info.route.resource
        else "unmatched"
    )
    guard = request.app[CONNECTIONS]
    admission = request.app[ADMISSION]
    kind = kind_of(request.method, request.path)
    guard.request_started(request.transport)
    try:
        if kind is None or admission.admit(kind):
            try:
                response = await _answer(request, handler)
            finally:
                if kind is not None:
                    admission.done()
        else:
            request.app[METRICS].shed.labels(kind.label).inc()
            response = problem_response(
                429,
                "overloaded",
                f"the server is at capacity for {kind.label} requests; retry later",
                {"Retry-After": str(admission.retry_after(kind))},
            )
    finally:
        guard.request_finished(request.transport)
    if 200 <= response.status < 300 and request.path.startswith(("/v1/", "/readyz")):
        # Every such answer read or wrote the database: it is back, if it was gone.
        request.app[AVAILABILITY].answered()
    elapsed = time.perf_counter() - started
    metrics: Metrics = request.app[METRICS]
    metrics.requests.labels(route, str(response.status)).inc()
    metrics.latency.labels(route).observe(elapsed)
    if access.isEnabledFor(logging.INFO):
        access.info(
            json.dumps(
                {
                    "method": request.method,
                    "path": request.path,
                    "status": response.status,
                    "ms": round(elapsed * 1000, 2),
                    "peer": request.remote,
                }
            )
        )
    return response


async def _answer(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The handler's answer, or the problem answer for what it raised."""
    try:
        return await handler(request)
    except HTTPProblem as e:
        response = problem_response(e.status, e.code, e.message, e.headers)
    except HomingError as e:
        status, code = status_for(e)
        response = problem_response(status, code, str(e))
    except web.HTTPRequestEntityTooLarge:
        response = problem_response(413, "too_large", "the request body is larger than allowed")
    except web.HTTPException as e:
        if e.status < 400:
            raise
        # A 405 names the methods the path takes (RFC 9110 15.5.6).
        kept = {k: e.headers[k] for k in ("Allow",) if k in e.headers}
        response = problem_response(e.status, "http", e.reason, kept)
    except asyncio.CancelledError:
        raise
    except SQLAlchemyError as e:
        # The database is gone or full: say so, once in the log, and when to retry.
        availability = request.app[AVAILABILITY]
        reason = availability.failed(e)
        full = "disk full" in reason
        response = problem_response(
            503,
            "disk_full" if full else "database_unavailable",
            f"the server cannot store or read this now: {reason}",
            {"Retry-After": availability.retry_after()},
        )
    except (ConnectionError, ClientPayloadError, PayloadEncodingError) as e:
        # The client went away mid-request (a reset, or a body it never
        # finished): its doing, not a fault here, and nobody reads the answer.
        log.info(
            "client %s closed the connection during %s %s (%s)",
            request.remote,
            request.method,
            request.path,
            e,
        )
        response = problem_response(499, "client_closed", "the client closed the connection")
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
            log.exception("internal error on %s %s", request.method, request.path)
            response = problem_response(500, "internal", "internal error; see the server log")
        else:
            # The data directory's disk is full (or read-only): say so, not "internal".
            log.warning("cannot write the data directory: %s", e)
            response = problem_response(
                503,
                "disk_full",
                f"the server cannot write its data directory: {e.strerror}",
                {"Retry-After": request.app[AVAILABILITY].retry_after()},
            )
    except Exception:
        log.exception("internal error on %s %s", request.method, request.path)
        response = problem_response(500, "internal", "internal error; see the server log")
    return response


def build_app(state: ServerState) -> web.Application:
    app = web.Application(
        client_max_size=state.config.max_body_bytes, middlewares=[_errors_and_metrics]
    )
    app[METRICS] = Metrics(state.config.metrics_dir)
    app[AVAILABILITY] = state.database
    app[BODY_SECONDS] = state.config.body_timeout
    config = state.config
    app[ADMISSION] = Admission(config.max_in_flight)
    app[CONNECTIONS] = ConnectionGuard(
        ConnectionLimits(
            handshake_timeout=config.handshake_timeout,
            header_timeout=config.header_timeout,
            idle_timeout=config.idle_timeout,
            send_timeout=config.send_timeout,
            max_connections=config.max_connections,
            max_handshakes=config.max_handshakes,
        ),
        app[METRICS],
    )
    writer = device_api.CheckinWriter(state, app[METRICS])
    document = openapi_document(__version__)

    async def healthz(request: web.Request) -> web.Response:
        """Liveness: this process answers. It holds while the database is away."""
        return web.json_response(
            {"status": "ok", "worker": os.getpid(), "metadata": state.metadata_versions().to_json()}
        )

    probe = readiness.ReadinessProbe(state)

    async def readyz(request: web.Request) -> web.Response:
        """Readiness: send devices here. The database answers, the data directory takes a
        write, the timestamp devices fetch has not expired; else 503 with every reason."""
        reasons = await probe.problems()
        if reasons:
            return problem_response(
                503,
                "not_ready",
                "; ".join(reasons),
                {"Retry-After": state.database.retry_after()},
            )
        return web.json_response({"status": "ready", "worker": os.getpid()})

    gauges = FleetGauges(state.dd, state.db)

    async def metrics(request: web.Request) -> web.Response:
        fleet = await state.run(gauges.render, state.now())
        body = request.app[METRICS].render() + fleet
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def openapi(request: web.Request) -> web.Response:
        return web.json_response(document)

    async def reloader() -> None:
        while True:
            await asyncio.sleep(state.config.reload_interval)
            try:
                state.reload_if_changed()
            except Exception:
                log.exception("reload failed")

    async def lifecycle(app: web.Application):  # type: ignore[no-untyped-def]
        writer.start()
        loop = asyncio.get_running_loop()
        tasks = [loop.create_task(reloader()), loop.create_task(app[CONNECTIONS].watch())]
        yield
        for task in tasks:
            task.cancel()
        await writer.stop()

    app.cleanup_ctx.append(lifecycle)
    app.add_routes(
        [
            web.get("/healthz", healthz),
            web.get("/readyz", readyz),
            web.get("/metrics", metrics),
            web.get("/openapi.json", openapi),
            *metadata.routes(state),
            *est.routes(state, app[METRICS]),
            *device_api.routes(state, writer),
            *recovery.routes(state),
            *time_api.routes(state),
            *admin_api.routes(state),
            *fleet_view.routes(state),
        ]
    )
    return app
