"""Key-proof recovery for a device whose certificate expired while it was offline.

1. ``POST /v1/recover/challenge`` ``{"device_id"}`` → a fresh single-use nonce.
2. ``POST /v1/recover`` ``{"device_id", "nonce", "csr", "signature"}``: the
   CSR (base64 DER) carries the *registered* key, and ``signature`` (base64)
   is that key's ECDSA signature over the nonce and the CSR
   (``homing.pki.proof``). A revoked device never recovers; a device silent
   for longer than the policy's maximum does not either.

No client certificate is needed (the device's has expired); the device pins
the server as usual, so the nonce and proof go only to the real server.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from homing.errors import AuthError
from homing.server import rules
from homing.server.device_api import json_body
from homing.server.errors import HTTPProblem
from homing.server.metrics import METRICS
from homing.server.state import ServerState
from homing.site.ledger import DatabaseLedger
from homing.store import audit
from homing.store import devices as device_store
from homing.store import recovery as nonces

__all__ = ["routes"]


def _b64(body: dict[str, Any], key: str, limit: int = 16384) -> bytes:
    value = body.get(key)
    if not isinstance(value, str) or len(value) > limit:
        raise HTTPProblem(400, "bad_request", f"{key!r} must be a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as e:
        raise HTTPProblem(400, "bad_request", f"{key!r} is not valid base64") from e


def _device_id(body: dict[str, Any]) -> str:
    value = body.get("device_id")
    if not isinstance(value, str) or not 0 < len(value) <= 64:
        raise HTTPProblem(400, "bad_request", "'device_id' must be a string")
    return value


def routes(state: ServerState) -> list[web.RouteDef]:
    def _eligible(conn: Any, device_id: str) -> device_store.DeviceRow:
        row = device_store.device(conn, device_id)
        problem = rules.recovery_problem(row, device_id, state.config.max_offline, state.now())
        if problem is not None:
            raise problem
        assert row is not None
        return row

    async def challenge(request: web.Request) -> web.Response:
        body = await json_body(request)
        device_id = _device_id(body)
        now = state.now()

        def issue() -> str:
            with state.db.begin() as conn:
                _eligible(conn, device_id)
                return nonces.issue_nonce(conn, device_id, now, state.config.nonce_ttl)

        nonce = await state.run(issue)
        return web.json_response(
            {"nonce": nonce, "expires_at": (now + state.config.nonce_ttl).isoformat()}
        )

    async def recover(request: web.Request) -> web.Response:
        body = await json_body(request)
        device_id = _device_id(body)
        nonce = body.get("nonce")
        if not isinstance(nonce, str) or len(nonce) != 64:
            raise HTTPProblem(400, "bad_request", "'nonce' must be the 64-character challenge")
        csr_der = _b64(body, "csr")
        signature = _b64(body, "signature", 512)
        now = state.now()

        def run() -> x509.Certificate:
            # The nonce is spent first, in its own transaction: a failed proof burns it.
            with state.db.begin() as conn:
                _eligible(conn, device_id)
                try:
                    nonces.consume_nonce(conn, nonce, device_id, now)
                except AuthError as e:
                    raise HTTPProblem(403, "bad_nonce", str(e)) from e
            with state.db.begin() as conn:
                row = _eligible(conn, device_id)
                approved = rules.approve_recovery(
                    row.key_spki, device_id, nonce, csr_der, signature, state.device_leaf_profile
                )
                authority = state.device_authority(DatabaseLedger(state.db, conn, now))
                cert = authority.issue(approved, now)
                audit.audit(
                    conn,
                    now,
                    f"device:{device_id}",
                    "recover",
                    device_id,
                    {"serial": format(cert.serial_number, "x")},
                )
                return cert

        cert = await state.run(run)
        request.app[METRICS].recoveries.inc()
        pem = cert.public_bytes(serialization.Encoding.PEM).decode()
        issuer = state.device_ca
        return web.json_response(
            {
                "certificate": pem,
                "chain": [issuer.public_bytes(serialization.Encoding.PEM).decode()],
                "not_after": cert.not_valid_after_utc.isoformat(),
            }
        )

    return [
        web.post("/v1/recover/challenge", challenge),
        web.post("/v1/recover", recover),
    ]
