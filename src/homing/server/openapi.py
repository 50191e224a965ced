"""The OpenAPI description of the device, recovery, EST, trust and admin APIs.

Every route the server answers is described here, and every JSON request
body has a schema; ``tests/test_outside_holes.py`` walks the application's router
so a new route without its entry fails.
"""

from __future__ import annotations

from typing import Any

from homing.server.openapi_parts import (
    ADMIN,
    CSR_BODY,
    DEVICE,
    SCHEMAS,
    STRING,
    error_response,
    id_param,
    name_param,
    operation,
    path_param,
)

__all__ = ["openapi_document"]


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
    device = [name_param("device_id")]
    batch = _page(
        "Revoke a batch (operator role): without 'confirm' a preview that changes nothing; "
        "with the previewed count, the revocation (409 if the selection changed)",
        form="BatchRevokeForm",
    )
    batch["responses"]["409"] = {"description": "the selection changed since the preview"}
    rollout = [id_param("rollout_id")]
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
                "Device list", params=[{"name": "search", "in": "query", "schema": STRING}]
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
    rollout_id = [id_param("rollout_id")]
    device_id = [name_param("device_id")]
    name = [name_param("name")]
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
            "post": operation(
                "Device check-in (mutual TLS)",
                "recorded",
                security=DEVICE,
                body="CheckIn",
                answer="CheckInAnswer",
            )
        },
        "/v1/device/update": {
            "post": operation(
                "Report update progress (mutual TLS)",
                "recorded",
                security=DEVICE,
                body="UpdateProgress",
            )
        },
        "/v1/time": {
            "get": operation(
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
            "post": operation("Get a single-use recovery nonce", "nonce", body="Challenge")
        },
        "/v1/recover": {
            "post": operation(
                "Recover an expired certificate by proving the registered key",
                "new certificate",
                body="Recover",
            )
        },
        "/.well-known/est/cacerts": {
            "get": operation(
                "EST CA certificates (RFC 7030 4.1)", "application/pkcs7-mime", errors=False
            )
        },
        "/.well-known/est/simpleenroll": {
            "post": operation(
                "EST enrollment (RFC 7030 4.2) vouched for by a factory station's secret (HTTP "
                "Basic) or by the device's manufacturer certificate, an IDevID presented as the "
                "TLS client certificate (RFC 7030 3.3.2); body: base64 PKCS#10",
                "certs-only PKCS#7",
                security=[{"factory": []}, {"idevid": []}],
                raw_body=CSR_BODY,
            )
        },
        "/.well-known/est/simplereenroll": {
            "post": operation(
                "EST re-enrollment (mutual TLS); a new key supersedes the old certificates",
                "certs-only PKCS#7",
                security=DEVICE,
                raw_body=CSR_BODY,
            )
        },
        "/tuf/metadata/{name}": {
            "get": operation(
                "TUF metadata (static, cacheable)", "metadata", params=[path_param("name")]
            )
        },
        "/tuf/targets/{path}": {
            "get": operation(
                "TUF target file by consistent-snapshot name (hash-prefixed, immutable)",
                "target bytes",
                params=[path_param("path")],
            )
        },
        "/v1/admin/devices": {
            "get": operation("List and search devices", "devices", security=ADMIN, params=query)
        },
        "/v1/admin/devices/{device_id}": {
            "get": operation(
                "One device and its certificates", "device", security=ADMIN, params=device_id
            )
        },
        "/v1/admin/devices/{device_id}/revoke": {
            "post": operation(
                "Revoke a device and its certificates (operator role)",
                "revoked",
                security=ADMIN,
                params=device_id,
                body="Revoke",
            )
        },
        "/v1/admin/revocations": {
            "post": operation(
                "Revoke a batch of devices (operator role): a list of ids, a factory "
                "station's devices (in a time window), or an issuing CA's; one transaction, "
                "one CRL; dry_run only counts",
                "revoked (or, with dry_run, counted)",
                security=ADMIN,
                body="RevokeBatch",
            )
        },
        "/v1/admin/status": {"get": operation("Fleet summary", "summary", security=ADMIN)},
        "/v1/admin/fleet-audit": {
            "get": operation(
                "The fleet audit: devices sharing a key, never seen, holding an old or a "
                "distrusted certificate",
                "findings",
                security=ADMIN,
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
        "/v1/admin/audit": {"get": operation("Audit log", "entries", security=ADMIN)},
        "/v1/admin/factories": {
            "get": operation("Factory stations", "stations", security=ADMIN),
            "post": operation(
                "Create a factory station credential (operator role)",
                "secret, shown once",
                status="201",
                security=ADMIN,
                body="FactoryCreate",
            ),
        },
        "/v1/admin/factories/{name}/disable": {
            "post": operation(
                "Disable a factory station for good (operator role)",
                "disabled",
                security=ADMIN,
                params=name,
            )
        },
        "/v1/admin/tokens": {
            "get": operation("Operator tokens (operator role)", "tokens", security=ADMIN),
            "post": operation(
                "Create an operator token (operator role)",
                "token, shown once",
                status="201",
                security=ADMIN,
                body="TokenCreate",
            ),
        },
        "/v1/admin/tokens/{name}/revoke": {
            "post": operation(
                "Revoke an operator token (operator role)", "revoked", security=ADMIN, params=name
            )
        },
        "/v1/admin/rollouts": {
            "get": operation("List rollouts", "rollouts", security=ADMIN),
            "post": operation(
                "Create a rollout (operator role)",
                "created",
                status="201",
                security=ADMIN,
                body="RolloutCreate",
            ),
        },
        "/v1/admin/rollouts/{rollout_id}": {
            "get": operation("Rollout progress", "progress", security=ADMIN, params=rollout_id)
        },
        "/v1/admin/rollouts/{rollout_id}/pause": {
            "post": operation(
                "Pause a rollout (operator role)", "paused", security=ADMIN, params=rollout_id
            )
        },
        "/v1/admin/rollouts/{rollout_id}/resume": {
            "post": operation(
                "Resume a rollout (operator role)", "resumed", security=ADMIN, params=rollout_id
            )
        },
        **_fleet_view_paths(),
        "/healthz": {"get": operation("Liveness", "ok", errors=False)},
        "/readyz": {
            "get": {
                "summary": "Readiness: the database, a writable data directory, a fresh timestamp",
                "responses": {"200": {"description": "ready"}, "503": error_response()},
            }
        },
        "/metrics": {"get": operation("Prometheus metrics", "text format", errors=False)},
        "/openapi.json": {"get": operation("This document", "OpenAPI 3.1", errors=False)},
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
            "schemas": SCHEMAS,
        },
        "paths": paths,
    }
