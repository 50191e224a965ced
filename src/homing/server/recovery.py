"""Key-proof recovery for a device whose certificate expired while it was offline.

1. ``POST /v1/recover/challenge`` ``{"device_id"}`` → a fresh single-use nonce
   (for an id nobody enrolled too, never stored: the answer does not tell).
2. ``POST /v1/recover`` ``{"device_id", "nonce", "csr", "signature"}``: the
   CSR (base64 DER) carries the *registered* key, and ``signature`` (base64)
   is that key's ECDSA signature over the nonce and the CSR
   (``homing.pki.proof``). A revoked device never recovers; a device silent
   for longer than the policy's maximum does not either; either is told so
   only once the key is proven.

No client certificate is needed (the device's has expired); the device pins
the server as usual, so the nonce and proof go only to the real server.
"""

from __future__ import annotations

import base64
import binascii
import logging
import secrets
from typing import Any

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from homing.errors import AuthError, PolicyError
from homing.pki.profiles import device_uri
from homing.server import rules
from homing.server.device_api import json_body
from homing.server.errors import HTTPProblem
from homing.server.metrics import METRICS
from homing.server.state import ServerState
from homing.site.ledger import DatabaseLedger
from homing.store import audit
from homing.store import devices as device_store
from homing.store import recovery as nonces

__all__ = ["REFUSED", "routes"]

log = logging.getLogger("homing.server")

REFUSED = "recovery_refused"
_REFUSED_MESSAGE = (
    "recovery refused: the nonce is unknown, expired or spent, or the proof does not "
    "match the device's registered key; ask for a new challenge and sign it with that key"
)


def _b64(body: dict[str, Any], key: str, limit: int = 16384) -> bytes:
    value = body.get(key)
    if not isinstance(value, str) or len(value) > limit:
        raise HTTPProblem(400, "bad_request", f"{key!r} must be a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as e:
        raise HTTPProblem(400, "bad_request", f"{key!r} is not valid base64") from e


def _device_id(body: dict[str, Any]) -> str:
    """A well-formed device id (whether anyone enrolled it is not told here)."""
    value = body.get("device_id")
    if not isinstance(value, str):
        raise HTTPProblem(400, "bad_request", "'device_id' must be a string")
    try:
        device_uri(value)
    except PolicyError as e:
        raise HTTPProblem(400, "bad_request", str(e)) from e
    return value


def routes(state: ServerState) -> list[web.RouteDef]:
    async def challenge(request: web.Request) -> web.Response:
        """A nonce for any well-formed id, known or not, in the same shape.

        Who is enrolled is not told to someone who asks without a credential:
        an unknown id gets a nonce that was never stored (its recovery then
        fails like a spent nonce), and a revoked or long-silent device learns
        its standing only after it proved its key.
        """
        body = await json_body(request)
        device_id = _device_id(body)
        now = state.now()

        def issue() -> str:
            with state.db.begin() as conn:
                if device_store.device(conn, device_id) is None:
                    return secrets.token_hex(32)
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
            state.check_clock()
            # The nonce is spent first, in its own transaction: a failed proof burns it.
            # An unknown device never had one stored, so it fails here like a spent one.
            with state.db.begin() as conn:
                try:
                    nonces.consume_nonce(conn, nonce, device_id, now)
                except AuthError as e:
                    raise HTTPProblem(403, "bad_nonce", str(e)) from e
            with state.db.begin() as conn:
                row = device_store.device(conn, device_id)
                if row is None:  # removed since its challenge: as if the nonce were spent
                    raise HTTPProblem(
                        403, "bad_nonce", "recovery nonce is unknown, expired or already used"
                    )
                # The key is proven before the device's standing is told.
                approved = rules.approve_recovery(
                    row.key_spki, device_id, nonce, csr_der, signature, state.device_leaf_profile
                )
                problem = rules.recovery_problem(
                    row, device_id, state.config.max_offline, state.now()
                )
                if problem is not None:
                    raise problem
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

        try:
            cert = await state.run(run)
        except HTTPProblem as e:
            if e.code not in ("bad_nonce", "bad_proof"):
                raise
            # One refusal for a spent nonce, a nonce never stored (an id nobody
            # enrolled) and a wrong proof, so the answer does not tell them apart;
            # the log keeps which it was.
            log.info("recovery of %r refused: %s", device_id, e.message)
            raise HTTPProblem(403, REFUSED, _REFUSED_MESSAGE) from e
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
