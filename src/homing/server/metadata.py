"""TUF metadata and targets as static, cacheable files (no client certificate).

The same directory can be served by any mirror or CDN; these routes only
map safe names onto it. Versioned files never change, so they are cached
for a year; ``timestamp.json`` changes and must always be revalidated.
"""

from __future__ import annotations

import re
from pathlib import Path

from aiohttp import web

from homing.server.errors import HTTPProblem
from homing.server.state import ServerState

__all__ = ["routes"]

_METADATA_NAME = re.compile(r"^(?:[0-9]{1,10}\.)?[A-Za-z0-9_-]{1,64}\.json$")
_TARGET_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,254}$")
IMMUTABLE = "public, max-age=31536000, immutable"
REVALIDATE = "public, max-age=0, must-revalidate"


def _serve(path: Path, cache: str) -> web.FileResponse:
    if not path.is_file():
        raise HTTPProblem(404, "not_found", "no such file")
    return web.FileResponse(path, headers={"Cache-Control": cache})


def routes(state: ServerState) -> list[web.RouteDef]:
    repository = state.dd.repository_dir

    async def metadata(request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if not _METADATA_NAME.fullmatch(name):
            raise HTTPProblem(404, "not_found", "no such metadata")
        cache = REVALIDATE if name == "timestamp.json" else IMMUTABLE
        path = repository / "metadata" / name
        if state.shared and (name == "timestamp.json" or not path.is_file()):
            await state.run(state.follow_site)
        response = _serve(path, cache)
        response.content_type = "application/json"
        return response

    async def target(request: web.Request) -> web.StreamResponse:
        parts = request.match_info["path"].split("/")
        if len(parts) > 8 or not all(_TARGET_SEGMENT.fullmatch(p) and ".." not in p for p in parts):
            raise HTTPProblem(404, "not_found", "no such target")
        path = repository.joinpath("targets", *parts)
        if state.shared and not path.is_file():
            await state.run(state.follow_site)
        response = _serve(path, IMMUTABLE)
        response.content_type = "application/octet-stream"
        return response

    return [
        web.get("/tuf/metadata/{name}", metadata),
        web.get("/tuf/targets/{path:.+}", target),
    ]
