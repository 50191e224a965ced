"""The OpenAPI description of the device, recovery, EST, trust and admin APIs.

Every route the server answers is described here, and every JSON request
body has a schema; ``tests/test_openapi.py`` walks the application's router
so a new route without its entry fails.
"""

from __future__ import annotations

from typing import Any

from homing.server.inputs import MAX_ID
from homing.store.firmware import STATES as UPDATE_STATES

__all__ = ["openapi_document"]

_ADMIN: list[dict[str, list[str]]] = [{"bearer": []}]
_DEVICE: list[dict[str, list[str]]] = [{"device": []}]


def _error() -> dict[str, Any]:
    return {
        "description": "refused",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Problem"}}},
    }


def _json(schema: str) -> dict[str, Any]:
    return {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}}


def _path_param(name: str, kind: str = "string") -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": kind}}


def _name_param(name: str) -> dict[str, Any]:
    """A device id, station or token name in the path (homing.fsutil.safe_name)."""
    return {"name": name, "in": "path", "required": True, "schema": _NAME}


def _id_param(name: str) -> dict[str, Any]:
    """A row id in the path: what either database can hold (homing.server.inputs.MAX_ID)."""
    schema = {"type": "integer", "minimum": 1, "maximum": MAX_ID}
    return {"name": name, "in": "path", "required": True, "schema": schema}


def _operation(
    summary: str,
    ok: str,
    *,
    status: str = "200",
    security: list[dict[str, list[str]]] | None = None,
    body: str | None = None,
    params: list[dict[str, Any]] | None = None,
    errors: bool = True,
    answer: str | None = None,
    raw_body: dict[str, Any] | None = None,
) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "responses": {status: {"description": ok}}}
    if answer is not None:
        op["responses"][status]["content"] = _json(answer)
    if errors:
        # 408: the body came too slowly; 429: past capacity or the caller's rate
        # (with Retry-After); 503: the database is unreachable or its disk full
        # (with Retry-After).
        for code in (400, 401, 403, 404, 408, 409, 413, 415, 429, 503):
            op["responses"][str(code)] = _error()
    if security is not None:
        op["security"] = security
    if body is not None:
        op["requestBody"] = {"required": True, "content": _json(body)}
    if raw_body is not None:
        op["requestBody"] = raw_body
    if params:
        op["parameters"] = params
    return op


def _object(
    properties: dict[str, Any], required: tuple[str, ...] = (), *, closed: bool = False
) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        schema["required"] = list(required)
    if closed:
        schema["additionalProperties"] = False
    return schema


_STRING = {"type": "string"}
_NAME = {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"}
_BASE64 = {"type": "string", "pattern": "^[A-Za-z0-9+/]*={0,2}$", "contentEncoding": "base64"}
_VERSION_NUMBER = {"type": "integer", "minimum": 0, "maximum": MAX_ID}
# A base64 PKCS#10 request (EST, RFC 7030 4.2.1).
_CSR_BODY = {
    "required": True,
    "content": {"application/pkcs10": {"schema": _BASE64}},
}

_SCHEMAS: dict[str, Any] = {
    "Problem": _object({"error": _STRING, "message": _STRING}, ("error", "message")),
    "CheckIn": _object(
        {
            "firmware_version": {"type": "string", "maxLength": 64},
            "hardware": {"type": "string", "maxLength": 64},
            "trust": _object(
                {
                    **{k: _VERSION_NUMBER for k in ("root", "timestamp", "snapshot", "targets")},
                    "pin_policy": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
                    "pins_matched": {
                        "type": "array",
                        "maxItems": 4,
                        "items": {"type": "string", "minLength": 44, "maxLength": 44},
                    },
                }
            ),
            "health": {"type": "object"},
        }
    ),
    "CheckInAnswer": _object(
        {
            "device_id": _STRING,
            "server_time": {"type": "string", "format": "date-time"},
            "metadata": {"type": "object"},
            "refresh_metadata": {"type": "boolean"},
            "certificate": {"type": "object"},
            "update": {"type": ["object", "null"]},
        },
        ("device_id", "server_time", "metadata", "refresh_metadata"),
    ),
    "UpdateProgress": _object(
        {
            "rollout": {"type": "integer", "minimum": 1, "maximum": MAX_ID},
            "state": {"type": "string", "enum": list(UPDATE_STATES)},
            "reason": {"type": "string", "maxLength": 500},
            "version": {"type": "string", "maxLength": 64},
        },
        ("rollout", "state"),
    ),
    "Challenge": _object({"device_id": _NAME}, ("device_id",)),
    "Recover": _object(
        {
            "device_id": _NAME,
            "nonce": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
            "csr": _BASE64,
            "signature": _BASE64,
        },
        ("device_id", "nonce", "csr", "signature"),
    ),
    "Revoke": _object({"reason": {"type": "string", "maxLength": 256}}),
    "RevokeBatch": _object(
        {
            "device_ids": {"type": "array", "items": _NAME},
            "station": _NAME,
            "since": {"type": "string", "format": "date-time"},
            "until": {"type": "string", "format": "date-time"},
            "issuer_pin": {"type": "string", "minLength": 44, "maxLength": 44},
            "reason": {"type": "string", "maxLength": 256},
            "dry_run": {"type": "boolean"},
        },
        closed=True,
    ),
    "LoginForm": _object({"token": _STRING}, ("token",)),
    "CsrfForm": _object({"csrf": _STRING}, ("csrf",)),
    "RevokeForm": _object(
        {"csrf": _STRING, "reason": {"type": "string", "maxLength": 256}}, ("csrf",)
    ),
    "BatchRevokeForm": _object(
        {
            "csrf": _STRING,
            "ids": {"type": "string", "maxLength": 4000},
            "station": {"type": "string", "maxLength": 64},
            "since": {"type": "string", "maxLength": 64},
            "until": {"type": "string", "maxLength": 64},
            "issuer_pin": {"type": "string", "maxLength": 44},
            "reason": {"type": "string", "maxLength": 256},
            "confirm": {"type": "string", "pattern": "^[0-9]{1,9}$"},
        },
        ("csrf",),
    ),
    "TimeAnswer": _object(
        {
            "payload": {"type": "string", "description": "base64 of {nonce, time}"},
            "payloadType": {"type": "string", "enum": ["application/vnd.homing.time+json"]},
            "signatures": {
                "type": "array",
                "items": _object({"keyid": _STRING, "sig": _STRING}, ("keyid", "sig")),
            },
        },
        ("payload", "payloadType", "signatures"),
    ),
    "FactoryCreate": _object({"name": _NAME}, ("name",)),
    "TokenCreate": _object(
        {"name": _NAME, "role": {"type": "string", "enum": ["read-only", "operator"]}},
        ("name",),
    ),
    "RolloutCreate": _object(
        {
            "version": _STRING,
            "hardware": _STRING,
            "stages": {"type": "array", "items": {"type": "integer", "minimum": 1, "maximum": 100}},
            "max_failure_ratio": {"type": "number", "minimum": 0, "exclusiveMaximum": 1},
            "success_ratio": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
            "soak_minutes": {"type": "number", "minimum": 0, "maximum": 365 * 24 * 60},
            "deadline_hours": {"type": "number", "exclusiveMinimum": 0, "maximum": 365 * 24},
            "group": _NAME,
        },
        ("version", "hardware"),
        closed=True,
    ),
}


def _page(
    summary: str, *, form: str | None = None, params: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """A page of the web fleet view: HTML, or a form POST answered with 303 See Other."""
    op: dict[str, Any] = {
        "summary": summary,
        "security": [{"session": []}],
        "responses": {
            "200": {"description": "HTML page", "content": {"text/html": {}}},
            "303": {
                "description": "redirect: after a form, or to the log-in form for a browser "
                "(Accept: text/html) without a session"
            },
            "400": {"description": "bad input (HTML page)"},
            "401": {"description": "not logged in, to a client that is not a browser (HTML page)"},
            "403": {"description": "stale form, other origin or role too low (HTML page)"},
            "404": {"description": "no such device or rollout (HTML page)"},
        },
    }
    if form is not None:
        op["responses"]["415"] = {"description": "not a form (HTML page)"}
        op["responses"]["413"] = {"description": "the form is larger than the server takes"}
        op["requestBody"] = {
            "required": True,
            "content": {
                "application/x-www-form-urlencoded": {
                    "schema": {"$ref": f"#/components/schemas/{form}"}
                }
            },
        }
    if params:
        op["parameters"] = params
    return op


def _fleet_view_paths() -> dict[str, Any]:
    device = [_name_param("device_id")]
    batch = _page(
        "Revoke a batch (operator role): without 'confirm' a preview that changes nothing; "
        "with the previewed count, the revocation (409 if the selection changed)",
        form="BatchRevokeForm",
    )
    batch["responses"]["409"] = {"description": "the selection changed since the preview"}
    rollout = [_id_param("rollout_id")]
    public: dict[str, Any] = {"security": []}
    return {
        "/": {"get": {**_page("Redirect to the fleet view"), **public}},
        "/ui/style.css": {
            "get": {
                "summary": "The fleet view's style sheet",
                "security": [],
                "responses": {"200": {"description": "CSS", "content": {"text/css": {}}}},
            }
        },
        "/ui/login": {
            "get": {**_page("Log-in form"), **public},
            "post": {
                **_page("Log in with an operator token; sets the session cookie", form="LoginForm"),
                **public,
            },
        },
        "/ui/logout": {"post": _page("Log out", form="CsrfForm")},
        "/ui": {
            "get": _page(
                "Fleet overview: trust spread, firmware, expiries, warnings",
                params=[
                    {
                        "name": "days",
                        "in": "query",
                        "schema": {"type": "number", "exclusiveMinimum": 0, "maximum": 3650},
                    }
                ],
            )
        },
        "/ui/devices": {
            "get": _page(
                "Device list", params=[{"name": "search", "in": "query", "schema": _STRING}]
            )
        },
        "/ui/devices/{device_id}": {"get": _page("One device", params=device)},
        "/ui/devices/{device_id}/revoke": {
            "post": _page("Revoke the device (operator role)", form="RevokeForm", params=device)
        },
        "/ui/rollouts": {"get": _page("Rollouts with stages and halt reasons")},
        "/ui/rollouts/{rollout_id}/pause": {
            "post": _page("Pause the rollout (operator role)", form="CsrfForm", params=rollout)
        },
        "/ui/rollouts/{rollout_id}/resume": {
            "post": _page("Resume the rollout (operator role)", form="CsrfForm", params=rollout)
        },
        "/ui/audit": {"get": _page("The audit log")},
        "/ui/findings": {
            "get": _page(
                "The fleet audit's findings: shared keys, clones, never seen, old or "
                "distrusted certificates",
                params=[
                    {"name": key, "in": "query", "schema": {"type": "number"}}
                    for key in ("never_seen_days", "max_certificate_age_days")
                ],
            )
        },
        "/ui/revocations": {
            "get": _page("The batch revocation form"),
            "post": batch,
        },
    }


def openapi_document(version: str) -> dict[str, Any]:
    rollout_id = [_id_param("rollout_id")]
    device_id = [_name_param("device_id")]
    name = [_name_param("name")]
    query = [
        {"name": n, "in": "query", "schema": {"type": t}}
        for n, t in (
            ("search", "string"),
            ("status", "string"),
            ("limit", "integer"),
            ("offset", "integer"),
        )
    ]
    paths: dict[str, Any] = {
        "/v1/device/checkin": {
            "post": _operation(
                "Device check-in (mutual TLS)",
                "recorded",
                security=_DEVICE,
                body="CheckIn",
                answer="CheckInAnswer",
            )
        },
        "/v1/device/update": {
            "post": _operation(
                "Report update progress (mutual TLS)",
                "recorded",
                security=_DEVICE,
                body="UpdateProgress",
            )
        },
        "/v1/time": {
            "get": _operation(
                "The home's time with the caller's nonce, in a DSSE envelope signed by the "
                "online timestamp key its TUF root names (no credential: it authenticates "
                "itself)",
                "signed time",
                answer="TimeAnswer",
                params=[
                    {
                        "name": "nonce",
                        "in": "query",
                        "required": True,
                        "schema": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
                    }
                ],
            )
        },
        "/v1/recover/challenge": {
            "post": _operation("Get a single-use recovery nonce", "nonce", body="Challenge")
        },
        "/v1/recover": {
            "post": _operation(
                "Recover an expired certificate by proving the registered key",
                "new certificate",
                body="Recover",
            )
        },
        "/.well-known/est/cacerts": {
            "get": _operation(
                "EST CA certificates (RFC 7030 4.1)", "application/pkcs7-mime", errors=False
            )
        },
        "/.well-known/est/simpleenroll": {
            "post": _operation(
                "EST enrollment (RFC 7030 4.2) vouched for by a factory station's secret (HTTP "
                "Basic) or by the device's manufacturer certificate, an IDevID presented as the "
                "TLS client certificate (RFC 7030 3.3.2); body: base64 PKCS#10",
                "certs-only PKCS#7",
                security=[{"factory": []}, {"idevid": []}],
                raw_body=_CSR_BODY,
            )
        },
        "/.well-known/est/simplereenroll": {
            "post": _operation(
                "EST re-enrollment (mutual TLS); a new key supersedes the old certificates",
                "certs-only PKCS#7",
                security=_DEVICE,
                raw_body=_CSR_BODY,
            )
        },
        "/tuf/metadata/{name}": {
            "get": _operation(
                "TUF metadata (static, cacheable)", "metadata", params=[_path_param("name")]
            )
        },
        "/tuf/targets/{path}": {
            "get": _operation(
                "TUF target file by consistent-snapshot name (hash-prefixed, immutable)",
                "target bytes",
                params=[_path_param("path")],
            )
        },
        "/v1/admin/devices": {
            "get": _operation("List and search devices", "devices", security=_ADMIN, params=query)
        },
        "/v1/admin/devices/{device_id}": {
            "get": _operation(
                "One device and its certificates", "device", security=_ADMIN, params=device_id
            )
        },
        "/v1/admin/devices/{device_id}/revoke": {
            "post": _operation(
                "Revoke a device and its certificates (operator role)",
                "revoked",
                security=_ADMIN,
                params=device_id,
                body="Revoke",
            )
        },
        "/v1/admin/revocations": {
            "post": _operation(
                "Revoke a batch of devices (operator role): a list of ids, a factory "
                "station's devices (in a time window), or an issuing CA's; one transaction, "
                "one CRL; dry_run only counts",
                "revoked (or, with dry_run, counted)",
                security=_ADMIN,
                body="RevokeBatch",
            )
        },
        "/v1/admin/status": {"get": _operation("Fleet summary", "summary", security=_ADMIN)},
        "/v1/admin/fleet-audit": {
            "get": _operation(
                "The fleet audit: devices sharing a key, never seen, holding an old or a "
                "distrusted certificate",
                "findings",
                security=_ADMIN,
                params=[
                    {
                        "name": n,
                        "in": "query",
                        "schema": {"type": "integer", "minimum": 0, "maximum": 36500},
                    }
                    for n in ("never_seen_days", "max_certificate_age_days")
                ],
            )
        },
        "/v1/admin/audit": {"get": _operation("Audit log", "entries", security=_ADMIN)},
        "/v1/admin/factories": {
            "get": _operation("Factory stations", "stations", security=_ADMIN),
            "post": _operation(
                "Create a factory station credential (operator role)",
                "secret, shown once",
                status="201",
                security=_ADMIN,
                body="FactoryCreate",
            ),
        },
        "/v1/admin/factories/{name}/disable": {
            "post": _operation(
                "Disable a factory station for good (operator role)",
                "disabled",
                security=_ADMIN,
                params=name,
            )
        },
        "/v1/admin/tokens": {
            "get": _operation("Operator tokens (operator role)", "tokens", security=_ADMIN),
            "post": _operation(
                "Create an operator token (operator role)",
                "token, shown once",
                status="201",
                security=_ADMIN,
                body="TokenCreate",
            ),
        },
        "/v1/admin/tokens/{name}/revoke": {
            "post": _operation(
                "Revoke an operator token (operator role)", "revoked", security=_ADMIN, params=name
            )
        },
        "/v1/admin/rollouts": {
            "get": _operation("List rollouts", "rollouts", security=_ADMIN),
            "post": _operation(
                "Create a rollout (operator role)",
                "created",
                status="201",
                security=_ADMIN,
                body="RolloutCreate",
            ),
        },
        "/v1/admin/rollouts/{rollout_id}": {
            "get": _operation("Rollout progress", "progress", security=_ADMIN, params=rollout_id)
        },
        "/v1/admin/rollouts/{rollout_id}/pause": {
            "post": _operation(
                "Pause a rollout (operator role)", "paused", security=_ADMIN, params=rollout_id
            )
        },
        "/v1/admin/rollouts/{rollout_id}/resume": {
            "post": _operation(
                "Resume a rollout (operator role)", "resumed", security=_ADMIN, params=rollout_id
            )
        },
        **_fleet_view_paths(),
        "/healthz": {"get": _operation("Liveness", "ok", errors=False)},
        "/readyz": {
            "get": {
                "summary": "Readiness: the database, a writable data directory, a fresh timestamp",
                "responses": {"200": {"description": "ready"}, "503": _error()},
            }
        },
        "/metrics": {"get": _operation("Prometheus metrics", "text format", errors=False)},
        "/openapi.json": {"get": _operation("This document", "OpenAPI 3.1", errors=False)},
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "homing home server", "version": version},
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "factory": {"type": "http", "scheme": "basic"},
                "device": {"type": "mutualTLS"},
                "idevid": {
                    "type": "mutualTLS",
                    "description": "an IDevID from a manufacturer CA the operator imported",
                },
                "session": {"type": "apiKey", "in": "cookie", "name": "homing_session"},
            },
            "schemas": _SCHEMAS,
        },
        "paths": paths,
    }
