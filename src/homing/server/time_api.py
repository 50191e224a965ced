"""``GET /v1/time?nonce=``: the home's time, bound to the device's nonce, signed.

No credential: the answer authenticates itself (``homing.trust.time_answer``),
so it is served wherever metadata is, the unpinned bootstrap channel
included. It is signed with the online timestamp key of the current
generation, which the site's root names, and never cached.
"""

from __future__ import annotations

from aiohttp import web
from securesystemslib.signer import Signer

from homing.errors import KeyStoreError
from homing.server.errors import HTTPProblem
from homing.server.state import ServerState
from homing.trust.signing import signer_for
from homing.trust.time_answer import sign_time, valid_nonce

__all__ = ["routes"]


def routes(state: ServerState) -> list[web.RouteDef]:
    signers: dict[int, Signer] = {}

    def signer() -> Signer:
        """The timestamp signer of the current online-key generation (reloaded on rotation)."""
        generation = state.settings.online_key_generation
        if generation not in signers:
            signers.clear()
            key = state.store.load(f"timestamp-{generation}")
            signers[generation] = signer_for(key)
        return signers[generation]

    async def time_answer(request: web.Request) -> web.Response:
        nonce = request.query.get("nonce", "")
        if not valid_nonce(nonce):
            raise HTTPProblem(400, "bad_request", "'nonce' must be 64 lowercase hex digits")
        await state.run(state.check_clock)
        try:
            answer = await state.run(lambda: sign_time(signer(), nonce, state.now()))
        except KeyStoreError as e:
            # A replica without the online keys (homing replica import-keys) cannot vouch.
            raise HTTPProblem(
                503, "time_unavailable", f"this server cannot sign the time: {e}"
            ) from e
        return web.json_response(answer, headers={"Cache-Control": "no-store"})

    return [web.get("/v1/time", time_answer)]
