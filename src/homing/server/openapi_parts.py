"""The building blocks of homing's OpenAPI document: parameters, operations, request schemas.

``homing.server.openapi`` assembles the paths from these; every JSON request
body's schema is here, so the server's input rules and the document are read
side by side.
"""

from __future__ import annotations

from typing import Any

from homing.server.inputs import MAX_ID
from homing.store.firmware import STATES as UPDATE_STATES

__all__ = [
    "ADMIN",
    "BASE64",
    "CSR_BODY",
    "DEVICE",
    "NAME",
    "SCHEMAS",
    "STRING",
    "VERSION_NUMBER",
    "error_response",
    "id_param",
    "json_content",
    "name_param",
    "object_schema",
    "operation",
    "path_param",
]

ADMIN: list[dict[str, list[str]]] = [{"bearer": []}]
DEVICE: list[dict[str, list[str]]] = [{"device": []}]


def error_response() -> dict[str, Any]:
    return {
        "description": "refused",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Problem"}}},
    }


def json_content(schema: str) -> dict[str, Any]:
    return {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}}


def path_param(name: str, kind: str = "string") -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": kind}}


def name_param(name: str) -> dict[str, Any]:
    """A device id, station or token name in the path (homing.fsutil.safe_name)."""
    return {"name": name, "in": "path", "required": True, "schema": NAME}


def id_param(name: str) -> dict[str, Any]:
    """A row id in the path: what either database can hold (homing.server.inputs.MAX_ID)."""
    schema = {"type": "integer", "minimum": 1, "maximum": MAX_ID}
    return {"name": name, "in": "path", "required": True, "schema": schema}


def operation(
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
        op["responses"][status]["content"] = json_content(answer)
    if errors:
        # 408: the body came too slowly; 429: past capacity or the caller's rate
        # (with Retry-After); 503: the database is unreachable or its disk full
        # (with Retry-After).
        for code in (400, 401, 403, 404, 408, 409, 413, 415, 429, 503):
            op["responses"][str(code)] = error_response()
    if security is not None:
        op["security"] = security
    if body is not None:
        op["requestBody"] = {"required": True, "content": json_content(body)}
    if raw_body is not None:
        op["requestBody"] = raw_body
    if params:
        op["parameters"] = params
    return op


def object_schema(
    properties: dict[str, Any], required: tuple[str, ...] = (), *, closed: bool = False
) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        schema["required"] = list(required)
    if closed:
        schema["additionalProperties"] = False
    return schema


STRING = {"type": "string"}
NAME = {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"}
BASE64 = {"type": "string", "pattern": "^[A-Za-z0-9+/]*={0,2}$", "contentEncoding": "base64"}
VERSION_NUMBER = {"type": "integer", "minimum": 0, "maximum": MAX_ID}
# A base64 PKCS#10 request (EST, RFC 7030 4.2.1).
CSR_BODY = {
    "required": True,
    "content": {"application/pkcs10": {"schema": BASE64}},
}

SCHEMAS: dict[str, Any] = {
    "Problem": object_schema({"error": STRING, "message": STRING}, ("error", "message")),
    "CheckIn": object_schema(
        {
            "firmware_version": {"type": "string", "maxLength": 64},
            "hardware": {"type": "string", "maxLength": 64},
            "trust": object_schema(
                {
                    **{k: VERSION_NUMBER for k in ("root", "timestamp", "snapshot", "targets")},
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
    "CheckInAnswer": object_schema(
        {
            "device_id": STRING,
            "server_time": {"type": "string", "format": "date-time"},
            "metadata": {"type": "object"},
            "refresh_metadata": {"type": "boolean"},
            "certificate": {"type": "object"},
            "update": {"type": ["object", "null"]},
        },
        ("device_id", "server_time", "metadata", "refresh_metadata"),
    ),
    "UpdateProgress": object_schema(
        {
            "rollout": {"type": "integer", "minimum": 1, "maximum": MAX_ID},
            "state": {"type": "string", "enum": list(UPDATE_STATES)},
            "reason": {"type": "string", "maxLength": 500},
            "version": {"type": "string", "maxLength": 64},
        },
        ("rollout", "state"),
    ),
    "Challenge": object_schema({"device_id": NAME}, ("device_id",)),
    "Recover": object_schema(
        {
            "device_id": NAME,
            "nonce": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
            "csr": BASE64,
            "signature": BASE64,
        },
        ("device_id", "nonce", "csr", "signature"),
    ),
    "Revoke": object_schema({"reason": {"type": "string", "maxLength": 256}}),
    "RevokeBatch": object_schema(
        {
            "device_ids": {"type": "array", "items": NAME},
            "station": NAME,
            "since": {"type": "string", "format": "date-time"},
            "until": {"type": "string", "format": "date-time"},
            "issuer_pin": {"type": "string", "minLength": 44, "maxLength": 44},
            "reason": {"type": "string", "maxLength": 256},
            "dry_run": {"type": "boolean"},
        },
        closed=True,
    ),
    "LoginForm": object_schema({"token": STRING}, ("token",)),
    "CsrfForm": object_schema({"csrf": STRING}, ("csrf",)),
    "RevokeForm": object_schema(
        {"csrf": STRING, "reason": {"type": "string", "maxLength": 256}}, ("csrf",)
    ),
    "BatchRevokeForm": object_schema(
        {
            "csrf": STRING,
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
    "TimeAnswer": object_schema(
        {
            "payload": {"type": "string", "description": "base64 of {nonce, time}"},
            "payloadType": {"type": "string", "enum": ["application/vnd.homing.time+json"]},
            "signatures": {
                "type": "array",
                "items": object_schema({"keyid": STRING, "sig": STRING}, ("keyid", "sig")),
            },
        },
        ("payload", "payloadType", "signatures"),
    ),
    "FactoryCreate": object_schema({"name": NAME}, ("name",)),
    "TokenCreate": object_schema(
        {"name": NAME, "role": {"type": "string", "enum": ["read-only", "operator"]}},
        ("name",),
    ),
    "RolloutCreate": object_schema(
        {
            "version": STRING,
            "hardware": STRING,
            "stages": {"type": "array", "items": {"type": "integer", "minimum": 1, "maximum": 100}},
            "max_failure_ratio": {"type": "number", "minimum": 0, "exclusiveMaximum": 1},
            "success_ratio": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
            "soak_minutes": {"type": "number", "minimum": 0, "maximum": 365 * 24 * 60},
            "deadline_hours": {"type": "number", "exclusiveMinimum": 0, "maximum": 365 * 24},
            "group": NAME,
        },
        ("version", "hardware"),
        closed=True,
    ),
}
