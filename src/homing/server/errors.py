"""HTTP problems: one JSON body shape and status for every refused request."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from homing.errors import (
    AuthError,
    ChainError,
    ConflictError,
    HomingError,
    NotFoundError,
    PolicyError,
    RevokedError,
)

__all__ = ["HTTPProblem", "problem_response", "status_for"]


class HTTPProblem(Exception):
    """A request refused with a status, a short code and a message for humans."""

    def __init__(
        self, status: int, code: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


def status_for(error: HomingError) -> tuple[int, str]:
    if isinstance(error, RevokedError):
        return 403, "revoked"
    if isinstance(error, AuthError):
        return 403, "forbidden"
    if isinstance(error, ChainError):
        return 401, "bad_client_certificate"
    if isinstance(error, PolicyError):
        return 400, "policy"
    if isinstance(error, ConflictError):
        return 409, "conflict"
    if isinstance(error, NotFoundError):
        return 404, "not_found"
    return 400, "refused"


def problem_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> web.Response:
    body: dict[str, Any] = {"error": code, "message": message}
    return web.json_response(body, status=status, headers=headers)
