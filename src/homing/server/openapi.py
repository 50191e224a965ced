"""The OpenAPI description of the device, recovery, EST and admin APIs."""

from __future__ import annotations

from typing import Any

__all__ = ["openapi_document"]


def _error() -> dict[str, Any]:
    return {
        "description": "refused",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Problem"}}},
    }


def _json(schema: str) -> dict[str, Any]:
    return {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}}


def openapi_document(version: str) -> dict[str, Any]:
    errors = {str(code): _error() for code in (400, 401, 403, 404, 409, 413, 415)}
    admin: list[dict[str, list[str]]] = [{"bearer": []}]
    return {
        "openapi": "3.1.0",
        "info": {"title": "homing home server", "version": version},
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "factory": {"type": "http", "scheme": "basic"},
                "device": {"type": "mutualTLS"},
            },
            "schemas": {
                "Problem": {
                    "type": "object",
                    "required": ["error", "message"],
                    "properties": {"error": {"type": "string"}, "message": {"type": "string"}},
                },
                "CheckIn": {
                    "type": "object",
                    "properties": {
                        "firmware_version": {"type": "string", "maxLength": 64},
                        "hardware": {"type": "string", "maxLength": 64},
                        "trust": {
                            "type": "object",
                            "properties": {
                                k: {"type": "integer", "minimum": 0}
                                for k in ("root", "timestamp", "snapshot", "targets")
                            },
                        },
                        "health": {"type": "object"},
                    },
                },
                "CheckInAnswer": {
                    "type": "object",
                    "required": ["device_id", "server_time", "metadata", "refresh_metadata"],
                    "properties": {
                        "device_id": {"type": "string"},
                        "server_time": {"type": "string", "format": "date-time"},
                        "metadata": {"type": "object"},
                        "refresh_metadata": {"type": "boolean"},
                        "certificate": {"type": "object"},
                        "update": {"type": ["object", "null"]},
                    },
                },
                "Challenge": {
                    "type": "object",
                    "required": ["device_id"],
                    "properties": {"device_id": {"type": "string"}},
                },
                "Recover": {
                    "type": "object",
                    "required": ["device_id", "nonce", "csr", "signature"],
                    "properties": {
                        "device_id": {"type": "string"},
                        "nonce": {"type": "string"},
                        "csr": {"type": "string", "contentEncoding": "base64"},
                        "signature": {"type": "string", "contentEncoding": "base64"},
                    },
                },
            },
        },
        "paths": {
            "/v1/device/checkin": {
                "post": {
                    "summary": "Device check-in (mutual TLS)",
                    "security": [{"device": []}],
                    "requestBody": {"required": True, "content": _json("CheckIn")},
                    "responses": {
                        "200": {"description": "recorded", "content": _json("CheckInAnswer")},
                        **errors,
                    },
                }
            },
            "/v1/recover/challenge": {
                "post": {
                    "summary": "Get a single-use recovery nonce",
                    "requestBody": {"required": True, "content": _json("Challenge")},
                    "responses": {"200": {"description": "nonce"}, **errors},
                }
            },
            "/v1/recover": {
                "post": {
                    "summary": "Recover an expired certificate by proving the registered key",
                    "requestBody": {"required": True, "content": _json("Recover")},
                    "responses": {"200": {"description": "new certificate"}, **errors},
                }
            },
            "/.well-known/est/cacerts": {
                "get": {
                    "summary": "EST CA certificates (RFC 7030 4.1)",
                    "responses": {"200": {"description": "application/pkcs7-mime"}},
                }
            },
            "/.well-known/est/simpleenroll": {
                "post": {
                    "summary": "EST enrollment with factory credentials (RFC 7030 4.2)",
                    "security": [{"factory": []}],
                    "responses": {"200": {"description": "certs-only PKCS#7"}, **errors},
                }
            },
            "/.well-known/est/simplereenroll": {
                "post": {
                    "summary": "EST re-enrollment (mutual TLS)",
                    "security": [{"device": []}],
                    "responses": {"200": {"description": "certs-only PKCS#7"}, **errors},
                }
            },
            "/v1/admin/devices": {
                "get": {
                    "summary": "List and search devices",
                    "security": admin,
                    "parameters": [
                        {"name": n, "in": "query", "schema": {"type": t}}
                        for n, t in (
                            ("search", "string"),
                            ("status", "string"),
                            ("limit", "integer"),
                            ("offset", "integer"),
                        )
                    ],
                    "responses": {"200": {"description": "devices"}, **errors},
                }
            },
            "/v1/admin/devices/{device_id}": {
                "get": {
                    "summary": "One device and its certificates",
                    "security": admin,
                    "parameters": [
                        {
                            "name": "device_id",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string"},
                        }
                    ],
                    "responses": {"200": {"description": "device"}, **errors},
                }
            },
            "/v1/admin/devices/{device_id}/revoke": {
                "post": {
                    "summary": "Revoke a device (operator role)",
                    "security": admin,
                    "parameters": [
                        {
                            "name": "device_id",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string"},
                        }
                    ],
                    "responses": {"200": {"description": "revoked"}, **errors},
                }
            },
            "/v1/admin/status": {
                "get": {
                    "summary": "Fleet summary",
                    "security": admin,
                    "responses": {"200": {"description": "summary"}, **errors},
                }
            },
            "/v1/admin/audit": {
                "get": {
                    "summary": "Audit log",
                    "security": admin,
                    "responses": {"200": {"description": "entries"}, **errors},
                }
            },
            "/v1/admin/factories": {
                "post": {
                    "summary": "Create a factory station credential (operator role)",
                    "security": admin,
                    "responses": {"201": {"description": "secret, shown once"}, **errors},
                }
            },
            "/tuf/metadata/{name}": {
                "get": {
                    "summary": "TUF metadata (static, cacheable)",
                    "parameters": [
                        {
                            "name": "name",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string"},
                        }
                    ],
                    "responses": {"200": {"description": "metadata"}, "404": _error()},
                }
            },
            "/v1/device/update": {
                "post": {
                    "summary": "Report update progress (mutual TLS)",
                    "security": [{"device": []}],
                    "responses": {"200": {"description": "recorded"}, **errors},
                }
            },
            "/v1/admin/rollouts": {
                "get": {
                    "summary": "List rollouts",
                    "security": admin,
                    "responses": {"200": {"description": "rollouts"}, **errors},
                },
                "post": {
                    "summary": "Create a rollout (operator role)",
                    "security": admin,
                    "responses": {"201": {"description": "created"}, **errors},
                },
            },
            "/v1/admin/rollouts/{rollout_id}": {
                "get": {
                    "summary": "Rollout progress",
                    "security": admin,
                    "parameters": [
                        {
                            "name": "rollout_id",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "integer"},
                        }
                    ],
                    "responses": {"200": {"description": "progress"}, **errors},
                }
            },
            "/v1/admin/rollouts/{rollout_id}/pause": {
                "post": {
                    "summary": "Pause a rollout (operator role)",
                    "security": admin,
                    "parameters": [
                        {
                            "name": "rollout_id",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "integer"},
                        }
                    ],
                    "responses": {"200": {"description": "paused"}, **errors},
                }
            },
            "/v1/admin/rollouts/{rollout_id}/resume": {
                "post": {
                    "summary": "Resume a rollout (operator role)",
                    "security": admin,
                    "parameters": [
                        {
                            "name": "rollout_id",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "integer"},
                        }
                    ],
                    "responses": {"200": {"description": "resumed"}, **errors},
                }
            },
            "/healthz": {
                "get": {"summary": "Liveness", "responses": {"200": {"description": "ok"}}}
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics",
                    "responses": {"200": {"description": "text format"}},
                }
            },
        },
    }
