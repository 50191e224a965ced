"""Who is asking: devices by verified client certificate, operators by token.

A device certificate is checked twice: the TLS layer proves the client holds
a key certified by a device CA; here cryptography's verifier validates the
chain again at the server's `now`, and the database says whether the
certificate and its device are still in good standing. That last lookup
runs on every request, so a revocation takes effect at once in every
server process.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import ipaddress
import logging
import ssl
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import unquote

from aiohttp import web
from cryptography.hazmat.primitives import serialization

from homing.errors import AuthError, ChainError
from homing.pki.validate import load_certificate
from homing.server import rules
from homing.server.errors import HTTPProblem
from homing.server.rules import VerifiedDevice, refusal_problem
from homing.server.state import ServerState
from homing.store import credentials
from homing.store import device_contacts as contacts

__all__ = [
    "DeviceIdentity",
    "Operator",
    "authenticate_device",
    "authenticate_operator",
    "peer_certificate_der",
    "verify_device_certificate",
]

# Devices whose verified certificate a server process remembers: a fleet up to this
# size comes back on new connections without its chains validated again (about 0.3 ms
# of CPU a check-in on two cores). About 580 bytes each: some 38 MB a process, full.
_CACHE_LIMIT = 65_536

log = logging.getLogger(__name__)


# The device a request's certificate speaks for: what validation found, as remembered.
DeviceIdentity = VerifiedDevice


@dataclass(frozen=True)
class Operator:
    name: str
    role: str


def peer_certificate_der(request: web.Request, state: ServerState) -> bytes | None:
    """The client certificate from TLS, or from a trusted proxy's header."""
    peer = request.remote
    config = state.config
    if config.proxy_networks and peer:
        try:
            address = ipaddress.ip_address(peer)
        except ValueError:
            address = None
        if address is not None and any(address in net for net in config.proxy_networks):
            header = request.headers.get(config.client_cert_header)
            if header:
                return _header_certificate(header)
            return None
    # A header from anyone else is ignored: only the TLS layer speaks for them.
    ssl_object = request.transport.get_extra_info("ssl_object") if request.transport else None
    if not isinstance(ssl_object, ssl.SSLObject):
        return None
    der = ssl_object.getpeercert(binary_form=True)
    return der or None


def _header_certificate(header: str) -> bytes:
    """The DER certificate a trusted proxy sent: URL-encoded PEM (nginx's
    ``$ssl_client_escaped_cert``) or base64 DER (HAProxy's ``%[ssl_c_der,base64]``)."""
    text = unquote(header).strip()
    try:
        if text.startswith("-----BEGIN"):
            data = text.encode("ascii")
        else:
            data = base64.b64decode(text, validate=True)
        cert = load_certificate(data)
    except (ChainError, UnicodeEncodeError, binascii.Error) as e:
        raise HTTPProblem(
            401, "bad_client_certificate", f"the proxy's certificate header: {e}"
        ) from e
    return cert.public_bytes(serialization.Encoding.DER)


class _VerifiedCache:
    """Chain validation results per certificate, valid until it expires or the CAs change.

    Full, it starts again empty: certificates renewed away leave with the rest.
    """

    def __init__(self, limit: int = _CACHE_LIMIT) -> None:
        self._entries: dict[bytes, tuple[int, VerifiedDevice]] = {}
        self.limit = limit

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, der: bytes, epoch: int) -> VerifiedDevice | None:
        found = self._entries.get(hashlib.sha256(der).digest())
        return found[1] if found is not None and found[0] == epoch else None

    def put(self, der: bytes, epoch: int, value: VerifiedDevice) -> None:
        if len(self._entries) >= self.limit:
            self._entries.clear()
        self._entries[hashlib.sha256(der).digest()] = (epoch, value)


_cache = _VerifiedCache()


def _verify(der: bytes, state: ServerState, now: datetime) -> VerifiedDevice:
    # A result holds only for the CAs it was checked against: a device CA
    # distrusted after a key theft stops its certificates at the next request.
    epoch = state.trust_epoch
    cached = _cache.get(der, epoch)
    if cached is not None and cached.not_valid_before <= now <= cached.not_valid_after:
        return cached
    try:
        cert = load_certificate(der)
    except ChainError as e:
        raise HTTPProblem(401, "bad_client_certificate", str(e)) from e
    try:
        verified = rules.verify_device_certificate(cert, state.device_trust, now)
    except HTTPProblem as e:
        # Another server process may have issued from a device CA this one has
        # not reloaded yet (rotations are complete on disk before any process
        # issues from them): look at the files once before refusing.
        if e.code != "bad_client_certificate" or not state.reload_if_changed():
            raise
        epoch = state.trust_epoch
        verified = rules.verify_device_certificate(cert, state.device_trust, now)
    _cache.put(der, epoch, verified)
    return verified


def verify_device_certificate(request: web.Request, state: ServerState) -> DeviceIdentity:
    """The validated device identity of the request, before its standing is checked.

    Callers must still check standing: ``authenticate_device`` does it, and
    the check-in path does it for a whole batch in the same transaction that
    records the check-ins.
    """
    der = peer_certificate_der(request, state)
    if der is None:
        raise HTTPProblem(
            401, "client_certificate_required", "this endpoint needs a device client certificate"
        )
    try:
        return _verify(der, state, state.now())
    except HTTPProblem as e:
        # Every refusal of a client certificate is decided here, so it is logged here.
        log.warning(
            "refused a client certificate from %s (%s): %s", request.remote, e.code, e.message
        )
        raise


async def authenticate_device(request: web.Request, state: ServerState) -> DeviceIdentity:
    """A device in good standing: valid certificate, enrolled, not revoked (checked now)."""
    identity = verify_device_certificate(request, state)

    def check() -> str | None:
        with state.db.engine.connect() as conn:
            return contacts.authorise_certificate(conn, identity.presented, identity.device_id)

    reason = await state.run(check)
    if reason is not None:
        raise refusal_problem(reason)
    return identity


async def authenticate_operator(request: web.Request, state: ServerState, need: str) -> Operator:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise HTTPProblem(
            401,
            "token_required",
            "send 'Authorization: Bearer <token>'",
            {"WWW-Authenticate": 'Bearer realm="homing admin"'},
        )

    def check() -> tuple[str, str]:
        with state.db.engine.connect() as conn:
            return credentials.verify_token(conn, token.strip())

    try:
        name, role = await state.run(check)
    except AuthError as e:
        raise HTTPProblem(
            401, "bad_token", str(e), {"WWW-Authenticate": 'Bearer realm="homing admin"'}
        ) from e
    if need == "operator" and role != "operator":
        raise HTTPProblem(403, "forbidden", f"role {role!r} may not do this; it needs 'operator'")
    return Operator(name=name, role=role)
