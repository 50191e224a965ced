"""The web fleet view under /ui: log in with an operator token, read, pause, revoke.

Security, in the order a request meets it:

1. Log in: the operator pastes a token (``homing token add``); the server
   checks it as the admin API does and opens a session in the database. The
   cookie is random, ``Secure; HttpOnly; SameSite=Strict; Path=/ui``; the
   database keeps only its hash, so a copy of the database opens nothing.
2. Every page looks the session up (expiry, and the token not revoked).
3. Every POST carries the session's CSRF value in a hidden field, compared in
   constant time, and, when the browser sends ``Origin``, it must be this
   server (OWASP CSRF cheat sheet: synchroniser token plus origin check).
4. Changes (pause, resume, revoke, a batch revocation after its preview)
   need the operator role, go through ``homing.operations`` like the CLI
   and the admin API, and are audited with the actor ``ui:<token name>``.
5. Answers carry a strict Content-Security-Policy (no script at all), no
   caching and no framing.
"""

from __future__ import annotations

import hmac
import importlib.resources
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any
from urllib.parse import quote, urlsplit

import jinja2
from aiohttp import web

from homing.errors import AuthError, HomingError
from homing.operations import fleet as operations
from homing.operations.overview import fleet_overview
from homing.server.inputs import object_id
from homing.server.state import ServerState
from homing.server.web.batch import FIELD_LIMITS, selection_from_form
from homing.server.web.charts import bar_chart, timeline_chart
from homing.store import audit, credentials, pin_history, ui_sessions
from homing.store.ui_sessions import Session

__all__ = ["COOKIE", "SESSION_LIFETIME", "routes"]

COOKIE = "homing_session"
SESSION_LIFETIME = timedelta(hours=8)
_MAX_FORM_FIELD = 512
_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    # Not no-referrer: with it, browsers send "Origin: null" on our own forms.
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# The checked form of a POST, handed from the session check to the handler.
_FORM: web.RequestKey[dict[str, str]] = web.RequestKey("form", dict)
SessionHandler = Callable[[web.Request, Session], Awaitable[web.StreamResponse]]


def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.PackageLoader("homing.server.web", "templates"),
        autoescape=jinja2.select_autoescape(["html"], default=True),
        undefined=jinja2.StrictUndefined,
    )


def _css() -> bytes:
    return (
        importlib.resources.files("homing.server.web").joinpath("templates/style.css").read_bytes()
    )


class _Page:
    """Renders templates and the few answers every handler gives."""

    def __init__(self) -> None:
        self.env = _environment()

    def html(self, name: str, code: int = 200, **context: Any) -> web.Response:
        context.setdefault("session", None)
        context.setdefault("notice", None)
        context.setdefault("page", None)
        body = self.env.get_template(name).render(**context)
        return web.Response(
            text=body, status=code, content_type="text/html", charset="utf-8", headers=_HEADERS
        )

    def error(self, status: int, message: str, session: Session | None) -> web.Response:
        return self.html("error.html", status, status=status, message=message, session=session)


def _wants_html(request: web.Request) -> bool:
    """Whether the client is a browser: it names HTML among what it accepts."""
    return "text/html" in request.headers.get("Accept", "").lower()


def _see_other(location: str) -> web.Response:
    return web.Response(status=303, headers={"Location": location, **_HEADERS})


def routes(state: ServerState) -> list[web.RouteDef]:
    page = _Page()
    css = _css()

    async def current(request: web.Request) -> Session | None:
        value = request.cookies.get(COOKIE)
        if not value or len(value) > 128:
            return None

        def look() -> Session | None:
            with state.db.engine.connect() as conn:
                return ui_sessions.session(conn, value, state.now())

        return await state.run(look)

    async def form(request: web.Request) -> dict[str, str]:
        content_type = request.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if content_type != "application/x-www-form-urlencoded":
            raise web.HTTPUnsupportedMediaType(reason="send a form")
        data = await request.post()
        fields: dict[str, str] = {}
        for key, value in data.items():
            limit = FIELD_LIMITS.get(key, _MAX_FORM_FIELD)
            if not isinstance(value, str) or len(value) > limit:
                raise web.HTTPBadRequest(reason=f"form field {key!r} is not a short text")
            fields[key] = value
        return fields

    def same_origin(request: web.Request) -> bool:
        origin = request.headers.get("Origin")
        if origin is None:
            return True  # SameSite=Strict and the CSRF value still stand guard
        return urlsplit(origin).netloc == request.host

    def page_for(role: str | None = None) -> Callable[[SessionHandler], Handler]:
        """Wrap a handler: a live session (else the login page), and for POSTs CSRF and role."""

        def wrap(
            handler: Callable[[web.Request, Session], Awaitable[web.StreamResponse]],
        ) -> Handler:
            async def wrapped(request: web.Request) -> web.StreamResponse:
                session = await current(request)
                if session is None:
                    # A browser is sent to the log-in form; any other client is
                    # told plainly that it is not logged in.
                    if request.method == "GET" and _wants_html(request):
                        return _see_other("/ui/login")
                    return page.error(401, "log in first (/ui/login)", None)
                if request.method == "POST":
                    fields = await form(request)
                    sent = fields.get("csrf", "")
                    if not same_origin(request) or not hmac.compare_digest(
                        sent.encode(), session.csrf.encode()
                    ):
                        return page.error(403, "the form is stale or not from this site", session)
                    request[_FORM] = fields
                if role == "operator" and session.role != "operator":
                    return page.error(
                        403, f"role {session.role!r} may not do this; it needs 'operator'", session
                    )
                try:
                    return await handler(request, session)
                except HomingError as e:
                    from homing.server.errors import status_for

                    status, _ = status_for(e)
                    return page.error(status, str(e), session)

            return wrapped

        return wrap

    def actor(session: Session) -> str:
        return f"ui:{session.token_name}"

    async def root(request: web.Request) -> web.Response:
        return _see_other("/ui")

    async def style(request: web.Request) -> web.Response:
        return web.Response(body=css, content_type="text/css", headers=_HEADERS)

    async def login_form(request: web.Request) -> web.Response:
        return page.html("login.html", error=None)

    async def login(request: web.Request) -> web.Response:
        if not same_origin(request):
            return page.error(403, "the form is not from this site", None)
        token = (await form(request)).get("token", "").strip()
        now = state.now()

        def open_session() -> str:
            with state.db.begin() as conn:
                name, _ = credentials.verify_token(conn, token)
                value, _ = ui_sessions.open_session(conn, name, now, SESSION_LIFETIME)
                audit.audit(conn, now, f"ui:{name}", "ui_login")
            return value

        try:
            value = await state.run(open_session)
        except AuthError:
            return page.html("login.html", 401, error="That token is not valid.")
        response = _see_other("/ui")
        response.set_cookie(
            COOKIE,
            value,
            max_age=int(SESSION_LIFETIME.total_seconds()),
            path="/ui",
            secure=True,
            httponly=True,
            samesite="Strict",
        )
        return response

    @page_for()
    async def logout(request: web.Request, session: Session) -> web.Response:
        value = request.cookies.get(COOKIE, "")
        now = state.now()

        def end() -> None:
            with state.db.begin() as conn:
                ui_sessions.end_session(conn, value)
                audit.audit(conn, now, actor(session), "ui_logout")

        await state.run(end)
        response = _see_other("/ui/login")
        response.del_cookie(COOKIE, path="/ui")
        return response

    @page_for()
    async def overview(request: web.Request, session: Session) -> web.Response:
        raw = request.query.get("days", "7")
        try:
            days = float(raw)
        except ValueError:
            days = -1
        if not 0 < days <= 3650:
            return page.error(400, "'days' must be a number of days from 1 to 3650", session)
        now = state.now()
        o = await state.run(lambda: fleet_overview(state.dd, state.db, now, not_seen_days=days))
        c = o.counts

        def ordered(values: dict[str, int], prefix: str) -> list[tuple[str, int]]:
            def key(item: tuple[str, int]) -> tuple[int, float | str]:
                return (0, float(item[0])) if item[0].isdigit() else (1, item[0])

            return [
                (f"{prefix}{k}" if k.isdigit() else k, v)
                for k, v in sorted(values.items(), key=key)
            ]

        charts = {
            "root": bar_chart("devices by root version", ordered(c.by_root_version, "root v")),
            "pins": bar_chart(
                "devices by pin policy held", ordered(c.by_pin_policy_version, "pins v")
            ),
            "generation": bar_chart(
                "devices by server-CA generation reached",
                ordered(c.by_server_ca_generation, "server CA "),
            ),
            "device_ca": bar_chart(
                "device certificates by issuing CA", sorted(o.by_device_ca.items())
            ),
            "firmware": bar_chart("devices by firmware", sorted(c.by_firmware.items())),
            "expiry": bar_chart("device certificates by time left", o.certificate_expiry),
            "timeline": timeline_chart(
                now, [(e.name, e.expires, e.warning is not None) for e in o.timeline]
            ),
        }
        return page.html(
            "overview.html", session=session, page="overview", overview=o, c=c, charts=charts
        )

    def policy_names() -> dict[str, str]:
        with state.db.engine.connect() as conn:
            return {k: f"v{p.version}" for k, p in pin_history.policies(conn).items()}

    @page_for()
    async def device_list(request: web.Request, session: Session) -> web.Response:
        search = request.query.get("search") or None
        if search is not None and len(search) > 64:
            return page.error(400, "the search is longer than 64 characters", session)
        now = state.now()
        rows = await state.run(
            lambda: operations.list_devices(state.db, actor(session), now, search=search, limit=500)
        )
        names = await state.run(policy_names)
        return page.html(
            "devices.html",
            session=session,
            page="devices",
            devices=rows,
            search=search,
            policy_names=names,
        )

    @page_for()
    async def device_page(request: web.Request, session: Session) -> web.Response:
        device_id = request.match_info["device_id"]
        now = state.now()
        detail = await state.run(operations.device_detail, state.db, actor(session), now, device_id)
        names = await state.run(policy_names)
        notice = "Device revoked." if request.query.get("revoked") == "1" else None
        return page.html(
            "device.html",
            session=session,
            page="devices",
            d=detail,
            policy_name=names.get(detail["trust"]["pin_policy"] or "", "not reported"),
            notice=notice,
        )

    @page_for("operator")
    async def device_revoke(request: web.Request, session: Session) -> web.Response:
        device_id = request.match_info["device_id"]
        reason = request[_FORM].get("reason", "").strip() or "unspecified"
        if len(reason) > 256:
            return page.error(400, "the reason is longer than 256 characters", session)
        who, now = actor(session), state.now()
        await state.run(
            state.change_site,
            lambda: operations.revoke_device(state.dd, state.db, who, now, device_id, reason),
            who,
        )
        return _see_other(f"/ui/devices/{quote(device_id, safe='')}?revoked=1")

    @page_for()
    async def rollout_page(request: web.Request, session: Session) -> web.Response:
        from homing.operations import rollouts

        now = state.now()

        def read() -> list[dict[str, Any]]:
            return [rollouts.status(state.db, r.id, now) for r in rollouts.list_rollouts(state.db)]

        listed = await state.run(read)
        notice = {"paused": "Rollout paused.", "resumed": "Rollout resumed."}.get(
            request.query.get("done", "")
        )
        return page.html(
            "rollouts.html", session=session, page="rollouts", rollouts=listed, notice=notice
        )

    def pause_or_resume(paused: bool) -> Handler:
        @page_for("operator")
        async def handler(request: web.Request, session: Session) -> web.Response:
            from homing.operations import rollouts

            rollout_id = object_id(request.match_info["rollout_id"])
            if rollout_id is None:
                return page.error(404, "no such rollout", session)
            await state.run(
                rollouts.set_paused, state.db, actor(session), state.now(), rollout_id, paused
            )
            state.forget_rollouts()
            return _see_other(f"/ui/rollouts?done={'paused' if paused else 'resumed'}")

        return handler

    @page_for()
    async def audit_page(request: web.Request, session: Session) -> web.Response:
        def read() -> list[dict[str, Any]]:
            with state.db.engine.connect() as conn:
                return audit.audit_entries(conn, 200)

        entries = await state.run(read)
        return page.html("audit.html", session=session, page="audit", entries=entries)

    @page_for()
    async def findings_page(request: web.Request, session: Session) -> web.Response:
        from homing.operations.fleet_audit import fleet_audit

        thresholds: dict[str, float] = {}
        for key, default in (("never_seen_days", 30.0), ("max_certificate_age_days", 365.0)):
            try:
                thresholds[key] = float(request.query.get(key, default))
            except ValueError:
                thresholds[key] = -1
            if not 0 < thresholds[key] <= 36500:
                return page.error(400, f"'{key}' must be a number of days up to 36500", session)
        who, now = actor(session), state.now()
        report = await state.run(
            lambda: fleet_audit(
                state.dd,
                state.db,
                who,
                now,
                never_seen_days=thresholds["never_seen_days"],
                max_certificate_age_days=thresholds["max_certificate_age_days"],
            )
        )
        return page.html("findings.html", session=session, page="findings", report=report)

    @page_for()
    async def revocations_form(request: web.Request, session: Session) -> web.Response:
        return page.html(
            "revocations.html", session=session, page="revocations", preview=None, fields={}
        )

    @page_for("operator")
    async def revocations(request: web.Request, session: Session) -> web.Response:
        """Without ``confirm``: a preview (nothing changes). With it: revoke, if the
        selection still takes the previewed count."""
        from homing import ceremonies

        fields = request[_FORM]
        selection = selection_from_form(fields)
        reason = fields.get("reason", "").strip() or "unspecified"
        who, now = actor(session), state.now()
        confirm = fields.get("confirm")
        if confirm is None:
            chosen, _ = await state.run(
                lambda: ceremonies.revoke_batch(state.dd, now, selection, actor=who, dry_run=True)
            )
            return page.html(
                "revocations.html",
                session=session,
                page="revocations",
                preview=chosen,
                fields={**fields, "reason": reason},
            )
        if not confirm.isdigit():
            return page.error(400, "'confirm' must be the previewed count", session)

        def run() -> tuple[list[str], int]:
            return ceremonies.revoke_batch(
                state.dd, now, selection, reason=reason, actor=who, expect=int(confirm)
            )

        chosen, certificates = await state.run(state.change_site, run, who)
        return page.html(
            "revocations.html",
            session=session,
            page="revocations",
            preview=None,
            fields={},
            notice=f"Revoked {len(chosen)} devices ({certificates} certificates).",
        )

    return [
        web.get("/", root),
        web.get("/ui/style.css", style),
        web.get("/ui/login", login_form),
        web.post("/ui/login", login),
        web.post("/ui/logout", logout),
        web.get("/ui", overview),
        web.get("/ui/devices", device_list),
        web.get("/ui/devices/{device_id}", device_page),
        web.post("/ui/devices/{device_id}/revoke", device_revoke),
        web.get("/ui/rollouts", rollout_page),
        web.post("/ui/rollouts/{rollout_id}/pause", pause_or_resume(True)),
        web.post("/ui/rollouts/{rollout_id}/resume", pause_or_resume(False)),
        web.get("/ui/audit", audit_page),
        web.get("/ui/findings", findings_page),
        web.get("/ui/revocations", revocations_form),
        web.post("/ui/revocations", revocations),
    ]
