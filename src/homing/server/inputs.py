"""What a client sends, bounded before it is parsed or reaches the database.

JSON is refused beyond ``Limits.max_json_depth`` levels of nesting before
the parser sees it (Python's parser recurses: 20,000 levels exhaust its
stack). Every id a client names is range-checked against the widest column
that holds ids on either backend (PostgreSQL's ``integer``), so a number the
database cannot store is a 404 or a 400, never a database error.
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

from aiohttp import web

from homing.config import Limits
from homing.server.errors import HTTPProblem

__all__ = ["BODY_SECONDS", "MAX_ID", "json_object", "object_id", "read_body"]

# How long a client may take to send a whole body (``ServerConfig.body_timeout``).
BODY_SECONDS: web.AppKey[float] = web.AppKey("body_seconds", float)

_LIMITS = Limits()

# PostgreSQL's integer, the narrowest id column homing keeps on either backend.
MAX_ID = 2**31 - 1
_ID = re.compile(r"[0-9]{1,10}")


async def read_body(request: web.Request) -> bytes:
    """The whole body, or 408 when the client has not sent it in time.

    A body sent a byte at a time, or a chunked body never finished, would
    otherwise hold a connection and a handler for as long as the client
    likes (nginx: ``client_body_timeout``).
    """
    seconds = request.app.get(BODY_SECONDS, 30.0)
    try:
        # A deadline on this task, not a task of its own (as wait_for would make)
        # for every request.
        async with asyncio.timeout(seconds):
            return await request.read()
    except TimeoutError as e:
        raise HTTPProblem(
            408,
            "body_timeout",
            f"the request body did not arrive within {seconds:g} s",
            {"Connection": "close"},
        ) from e


def _nesting_within(raw: bytes, limit: int) -> bool:
    """Whether no array or object in ``raw`` nests deeper than ``limit`` (strings skipped)."""
    # Nesting never exceeds the number of openers (those in strings only add to
    # it): a body with few of them, as every device sends, needs no scan.
    if raw.count(b"[") + raw.count(b"{") <= limit:
        return True
    depth = 0
    in_string = escaped = False
    for byte in raw:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):  # [ {
            depth += 1
            if depth > limit:
                return False
        elif byte in (0x5D, 0x7D):  # ] }
            depth -= 1
    return True


def json_object(raw: bytes, limits: Limits | None = None) -> dict[str, Any]:
    """A request body as a JSON object; 400 for anything else, nesting checked first."""
    limits = limits or _LIMITS
    if not _nesting_within(raw, limits.max_json_depth):
        raise HTTPProblem(
            400, "bad_request", f"the body nests deeper than {limits.max_json_depth} levels"
        )
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise HTTPProblem(400, "bad_request", "the body is not valid JSON") from e
    if not isinstance(body, dict):
        raise HTTPProblem(400, "bad_request", "the body must be a JSON object")
    return body


def object_id(raw: object) -> int | None:
    """An id a client named (a path segment or a JSON number), or None if no row can have it."""
    if isinstance(raw, bool):
        return None
    if isinstance(raw, int):
        value = raw
    elif isinstance(raw, str) and _ID.fullmatch(raw):
        value = int(raw)
    else:
        return None
    return value if 0 < value <= MAX_ID else None
