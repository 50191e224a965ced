"""The admin API under /v1/admin/: bearer tokens with roles; every call is audited."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from aiohttp import web

from homing.errors import PolicyError
from homing.operations import fleet as operations
from homing.server.auth import authenticate_operator
from homing.server.device_api import json_body
from homing.server.errors import HTTPProblem
from homing.server.inputs import object_id
from homing.server.state import ServerState
from homing.store import audit
from homing.store.revocation import Selection

__all__ = ["routes"]


def _int_query(request: web.Request, key: str, default: int, maximum: int) -> int:
    raw = request.query.get(key)
    if raw is None:
        return default
    if not raw.isascii() or not raw.isdigit() or len(raw) > 12 or int(raw) > maximum:
        raise HTTPProblem(400, "bad_request", f"{key!r} must be an integer 0-{maximum}")
    return int(raw)


def _rollout_id(request: web.Request) -> int:
    rollout_id = object_id(request.match_info["rollout_id"])
    if rollout_id is None:
        raise HTTPProblem(404, "not_found", "no such rollout")
    return rollout_id


def _time(body: dict[str, Any], key: str) -> datetime | None:
    value = body.get(key)
    if value is None:
        return None
    try:
        when = datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        when = None
    if when is None or when.tzinfo is None:
        raise HTTPProblem(400, "bad_request", f"{key!r} must be an ISO 8601 time with its zone")
    return when


def _selection(body: dict[str, Any]) -> Selection:
    """The devices a batch revocation names, from its JSON body (400 when malformed)."""
    unknown = set(body) - {
        "device_ids",
        "station",
        "since",
        "until",
        "issuer_pin",
        "reason",
        "dry_run",
    }
    if unknown:
        raise HTTPProblem(400, "bad_request", f"unknown field(s): {', '.join(sorted(unknown))}")
    ids = body.get("device_ids", [])
    if not isinstance(ids, list) or not all(isinstance(i, str) and 0 < len(i) <= 64 for i in ids):
        raise HTTPProblem(400, "bad_request", "'device_ids' must be a list of device ids")
    station, pin = body.get("station"), body.get("issuer_pin")
    if station is not None and not isinstance(station, str):
        raise HTTPProblem(400, "bad_request", "'station' must be a station name")
    if pin is not None and (not isinstance(pin, str) or len(pin) != 44):
        raise HTTPProblem(400, "bad_request", "'issuer_pin' must be a base64 SHA-256 SPKI pin")
    try:
        return Selection(
            device_ids=tuple(ids),
            station=station,
            since=_time(body, "since"),
            until=_time(body, "until"),
            issuer_pin=pin,
        )
    except PolicyError as e:
        raise HTTPProblem(400, "bad_request", str(e)) from e


def routes(state: ServerState) -> list[web.RouteDef]:
    async def devices(request: web.Request) -> web.Response:
        op = await authenticate_operator(request, state, "read-only")
        search = request.query.get("search") or None
        status = request.query.get("status") or None
        if status not in (None, "active", "revoked"):
            raise HTTPProblem(400, "bad_request", "'status' must be active or revoked")
        limit = _int_query(request, "limit", 100, 1000)
        offset = _int_query(request, "offset", 0, 10**9)
        rows = await state.run(
            lambda: operations.list_devices(
                state.db,
                f"token:{op.name}",
                state.now(),
                search=search,
                status=status,
                limit=limit,
                offset=offset,
            )
        )
        return web.json_response({"devices": rows})

    async def device(request: web.Request) -> web.Response:
        op = await authenticate_operator(request, state, "read-only")
        device_id = request.match_info["device_id"]
        detail = await state.run(
            operations.device_detail, state.db, f"token:{op.name}", state.now(), device_id
        )
        return web.json_response(detail)

    async def revoke(request: web.Request) -> web.Response:
        op = await authenticate_operator(request, state, "operator")
        device_id = request.match_info["device_id"]
        body: dict[str, Any] = await json_body(request) if request.can_read_body else {}
        reason = body.get("reason", "unspecified")
        if not isinstance(reason, str) or len(reason) > 256:
            raise HTTPProblem(400, "bad_request", "'reason' must be a short string")
        who, now = f"token:{op.name}", state.now()
        count = await state.run(
            state.change_site,
            lambda: operations.revoke_device(state.dd, state.db, who, now, device_id, reason),
            who,
        )
        return web.json_response({"device_id": device_id, "revoked_certificates": count})

    async def revoke_batch(request: web.Request) -> web.Response:
        """Revoke a batch: ``device_ids``, or ``station`` (``since``, ``until``), or
        ``issuer_pin``; ``dry_run`` only counts. One transaction, one CRL."""
        from homing import ceremonies

        op = await authenticate_operator(request, state, "operator")
        body = await json_body(request)
        selection = _selection(body)
        reason = body.get("reason", "unspecified")
        if not isinstance(reason, str) or len(reason) > 256:
            raise HTTPProblem(400, "bad_request", "'reason' must be a short string")
        dry_run = body.get("dry_run", False)
        if not isinstance(dry_run, bool):
            raise HTTPProblem(400, "bad_request", "'dry_run' must be true or false")
        who, now = f"token:{op.name}", state.now()

        def run() -> tuple[list[str], int]:
            return ceremonies.revoke_batch(
                state.dd, now, selection, reason=reason, actor=who, dry_run=dry_run
            )

        if dry_run:
            chosen, certificates = await state.run(run)
        else:
            chosen, certificates = await state.run(state.change_site, run, who)
        return web.json_response(
            {
                "devices": len(chosen),
                "revoked_certificates": certificates,
                "dry_run": dry_run,
                "first": chosen[:10],
            }
        )

    async def fleet_audit(request: web.Request) -> web.Response:
        """The fleet audit's findings: shared keys, never seen, old or distrusted certificates."""
        from homing.operations.fleet_audit import fleet_audit as run_audit

        op = await authenticate_operator(request, state, "read-only")
        never_seen = _int_query(request, "never_seen_days", 30, 36500)
        max_age = _int_query(request, "max_certificate_age_days", 365, 36500)
        report = await state.run(
            lambda: run_audit(
                state.dd,
                state.db,
                f"token:{op.name}",
                state.now(),
                never_seen_days=never_seen,
                max_certificate_age_days=max_age,
            )
        )
        return web.json_response(report)

    async def status(request: web.Request) -> web.Response:
        op = await authenticate_operator(request, state, "read-only")
        summary = await state.run(
            operations.fleet_status, state.dd, state.db, f"token:{op.name}", state.now()
        )
        return web.json_response(summary)

    async def audit_log(request: web.Request) -> web.Response:
        await authenticate_operator(request, state, "read-only")
        limit = _int_query(request, "limit", 100, 1000)

        def read() -> list[dict[str, Any]]:
            with state.db.engine.connect() as conn:
                return audit.audit_entries(conn, limit)

        return web.json_response({"entries": await state.run(read)})

    async def add_factory(request: web.Request) -> web.Response:
        op = await authenticate_operator(request, state, "operator")
        body = await json_body(request)
        name = body.get("name")
        if not isinstance(name, str):
            raise HTTPProblem(400, "bad_request", "'name' must be a string")
        secret = await state.run(
            operations.add_factory, state.db, f"token:{op.name}", state.now(), name
        )
        return web.json_response({"name": name, "secret": secret}, status=201)

    async def list_factories(request: web.Request) -> web.Response:
        op = await authenticate_operator(request, state, "read-only")
        rows = await state.run(operations.list_factories, state.db, f"token:{op.name}", state.now())
        return web.json_response({"factories": rows})

    async def disable_factory(request: web.Request) -> web.Response:
        op = await authenticate_operator(request, state, "operator")
        name = request.match_info["name"]
        await state.run(operations.disable_factory, state.db, f"token:{op.name}", state.now(), name)
        return web.json_response({"name": name, "disabled": True})

    async def list_tokens(request: web.Request) -> web.Response:
        op = await authenticate_operator(request, state, "operator")
        rows = await state.run(operations.list_tokens, state.db, f"token:{op.name}", state.now())
        return web.json_response({"tokens": rows})

    async def add_token(request: web.Request) -> web.Response:
        op = await authenticate_operator(request, state, "operator")
        body = await json_body(request)
        name, role = body.get("name"), body.get("role", "read-only")
        if not isinstance(name, str) or not isinstance(role, str):
            raise HTTPProblem(400, "bad_request", "'name' and 'role' must be strings")
        token = await state.run(
            operations.add_token, state.db, f"token:{op.name}", state.now(), name, role
        )
        return web.json_response({"name": name, "role": role, "token": token}, status=201)

    async def revoke_token(request: web.Request) -> web.Response:
        op = await authenticate_operator(request, state, "operator")
        name = request.match_info["name"]
        await state.run(operations.revoke_token, state.db, f"token:{op.name}", state.now(), name)
        return web.json_response({"name": name, "revoked": True})

    async def rollout_list(request: web.Request) -> web.Response:
        await authenticate_operator(request, state, "read-only")

        def read() -> list[dict[str, Any]]:
            from homing.store import firmware

            with state.db.engine.connect() as conn:
                return [r.to_json() for r in firmware.list_rollouts(conn)]

        return web.json_response({"rollouts": await state.run(read)})

    async def rollout_create(request: web.Request) -> web.Response:
        from homing.operations import rollouts

        op = await authenticate_operator(request, state, "operator")
        body = await json_body(request)
        version, hardware = body.get("version"), body.get("hardware")
        if not isinstance(version, str) or not isinstance(hardware, str):
            raise HTTPProblem(400, "bad_request", "'version' and 'hardware' are required strings")
        plan = rollouts.plan_from_json(body)
        ro = await state.run(
            lambda: rollouts.create(
                state.db, f"token:{op.name}", state.now(), version, hardware, plan
            )
        )
        return web.json_response(ro.to_json(), status=201)

    async def rollout_show(request: web.Request) -> web.Response:
        from homing.operations import rollouts

        await authenticate_operator(request, state, "read-only")
        rollout_id = _rollout_id(request)
        return web.json_response(
            await state.run(rollouts.status, state.db, rollout_id, state.now())
        )

    def pause_or_resume(paused: bool) -> Any:
        async def handler(request: web.Request) -> web.Response:
            from homing.operations import rollouts

            op = await authenticate_operator(request, state, "operator")
            rollout_id = _rollout_id(request)
            await state.run(
                rollouts.set_paused, state.db, f"token:{op.name}", state.now(), rollout_id, paused
            )
            return web.json_response({"rollout": rollout_id, "paused": paused})

        return handler

    return [
        web.get("/v1/admin/rollouts", rollout_list),
        web.post("/v1/admin/rollouts", rollout_create),
        web.get("/v1/admin/rollouts/{rollout_id}", rollout_show),
        web.post("/v1/admin/rollouts/{rollout_id}/pause", pause_or_resume(True)),
        web.post("/v1/admin/rollouts/{rollout_id}/resume", pause_or_resume(False)),
        web.get("/v1/admin/devices", devices),
        web.get("/v1/admin/devices/{device_id}", device),
        web.post("/v1/admin/devices/{device_id}/revoke", revoke),
        web.post("/v1/admin/revocations", revoke_batch),
        web.get("/v1/admin/status", status),
        web.get("/v1/admin/fleet-audit", fleet_audit),
        web.get("/v1/admin/audit", audit_log),
        web.get("/v1/admin/factories", list_factories),
        web.post("/v1/admin/factories", add_factory),
        web.post("/v1/admin/factories/{name}/disable", disable_factory),
        web.get("/v1/admin/tokens", list_tokens),
        web.post("/v1/admin/tokens", add_token),
        web.post("/v1/admin/tokens/{name}/revoke", revoke_token),
    ]
