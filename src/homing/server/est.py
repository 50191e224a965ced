"""EST enrollment (RFC 7030) with the base64 rules of RFC 8951.

- ``GET  /.well-known/est/cacerts``: the device CAs, certs-only PKCS#7.
- ``POST /.well-known/est/simpleenroll``: a factory station (HTTP Basic)
  enrolls a new device; the CSR names it by ``urn:homing:device:<id>`` (or,
  for outside EST clients, by its CN).
- ``POST /.well-known/est/simplereenroll``: a device (mTLS) renews, with the
  same key or a new one.
"""

from __future__ import annotations

import base64
import binascii
import re

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import NameOID

from homing.errors import AuthError, ConflictError
from homing.pki.keys import spki_der
from homing.pki.profiles import ApprovedRequest, approve_csr
from homing.server.admission import RateLimiter
from homing.server.auth import authenticate_device
from homing.server.enroll_hook import EnrollHook
from homing.server.errors import HTTPProblem, problem_response
from homing.server.inputs import read_body
from homing.server.metrics import METRICS
from homing.server.state import ServerState
from homing.site.ledger import DatabaseLedger
from homing.store import allowlist, audit, credentials
from homing.store import devices as device_store

__all__ = ["routes"]

PKCS10 = "application/pkcs10"
PKCS7_CERTS = "application/pkcs7-mime; smime-type=certs-only"
_BASIC_CHALLENGE = {"WWW-Authenticate": 'Basic realm="homing EST", charset="UTF-8"'}
_HARDWARE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def _pkcs7_response(certs: list[x509.Certificate], content_type: str) -> web.Response:
    der = pkcs7.serialize_certificates(certs, serialization.Encoding.DER)
    encoded = base64.encodebytes(der)  # RFC 8951 §3: base64 of DER; line breaks allowed
    return web.Response(
        body=encoded,
        headers={
            "Content-Type": content_type,
            # RFC 7030 §4.1.3 named it; RFC 8951 says clients ignore it.
            "Content-Transfer-Encoding": "base64",
        },
    )


async def _csr_body(request: web.Request) -> bytes:
    content_type = request.headers.get("Content-Type", "").split(";")[0].strip().lower()
    if content_type != PKCS10:
        raise HTTPProblem(415, "unsupported_media_type", f"send the CSR as {PKCS10}")
    body = await read_body(request)
    try:
        # RFC 8951 §3: base64 with any whitespace; Content-Transfer-Encoding ignored.
        return base64.b64decode(re.sub(rb"\s+", b"", body), validate=True)
    except (binascii.Error, ValueError) as e:
        raise HTTPProblem(400, "bad_request", "the CSR is not base64 of DER") from e


def _basic_credentials(request: web.Request) -> tuple[str, str]:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic" or not value:
        raise HTTPProblem(
            401, "authentication_required", "factory credentials are required", _BASIC_CHALLENGE
        )
    try:
        name, sep, secret = (
            base64.b64decode(value.strip(), validate=True).decode("utf-8").partition(":")
        )
    except (binascii.Error, ValueError, UnicodeDecodeError) as e:
        raise HTTPProblem(
            401, "authentication_required", "malformed Basic credentials", _BASIC_CHALLENGE
        ) from e
    if not sep:
        raise HTTPProblem(
            401, "authentication_required", "malformed Basic credentials", _BASIC_CHALLENGE
        )
    return name, secret


def _cn_device_id(csr_der: bytes) -> str | None:
    """Outside EST clients may name the device by CN instead of a URI SAN."""
    try:
        csr = x509.load_der_x509_csr(csr_der)
        csr.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        return None
    except x509.ExtensionNotFound:
        names = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        return str(names[0].value) if names else None
    except ValueError:
        return None


class _Refused(Exception):
    """An enrollment the station's allow-list refuses (carried out of its transaction)."""

    def __init__(self, device_id: str, reason: str) -> None:
        super().__init__(reason)
        self.device_id = device_id
        self.reason = reason


def routes(state: ServerState) -> list[web.RouteDef]:
    stations = RateLimiter.of(state.config.enroll_limit)

    def _audit_key_refusal(actor: str, device_id: str | None, e: device_store.KeyTaken) -> None:
        """Kept apart from the refused transaction, which rolls back."""
        with state.db.begin() as conn:
            audit.audit(
                conn,
                state.now(),
                actor,
                "enroll_refused",
                device_id or "?",
                {"reason": "key registered to another device", "holder": e.holder},
            )

    hook = EnrollHook(
        state.config.enroll_hook, state.config.enroll_webhook, state.config.enroll_hook_timeout
    )

    async def _ask_hook(name: str, secret: str, csr_der: bytes, hardware: str | None) -> None:
        """The operator's decision, asked only for a station that proved its secret."""

        def proven() -> ApprovedRequest:
            with state.db.engine.connect() as conn:
                try:
                    credentials.verify_factory(conn, name, secret)
                except AuthError as e:
                    raise HTTPProblem(
                        401, "authentication_required", str(e), _BASIC_CHALLENGE
                    ) from e
            return approve_csr(csr_der, state.device_leaf_profile, device_id=_cn_device_id(csr_der))

        approved = await state.run(proven)
        spki = spki_der(approved.public_key)
        why = await hook.refusal(
            {
                "station": name,
                "device_id": approved.subject_id,
                "key_sha256": device_store.key_fingerprint(spki),
                "hardware": hardware,
            }
        )
        if why is not None:
            await state.run(_audit_refusal, f"factory:{name}", approved.subject_id, why)
            raise HTTPProblem(403, "not_allowed", why)

    def _audit_refusal(actor: str, device_id: str, reason: str) -> None:
        with state.db.begin() as conn:
            audit.audit(conn, state.now(), actor, "enroll_refused", device_id, {"reason": reason})

    async def require_auth_first(request: web.Request) -> web.StreamResponse | None:
        """RFC 7030 §3.2.3 / RFC 9110 §10.1.1: refuse before the body is sent.

        The credentials are checked, not only looked for: a wrong secret is
        answered 401 at once instead of ``100 Continue`` and a wait for a
        body the server would refuse anyway.
        """
        try:
            name, secret = _basic_credentials(request)

            def check() -> None:
                with state.db.engine.connect() as conn:
                    credentials.verify_factory(conn, name, secret)

            await state.run(check)
        except HTTPProblem as e:
            return problem_response(e.status, e.code, e.message, e.headers)
        except AuthError as e:
            return problem_response(401, "authentication_required", str(e), _BASIC_CHALLENGE)
        expect = request.headers.get("Expect", "").lower()
        if expect != "100-continue":
            raise web.HTTPExpectationFailed(text=f"unknown Expect: {expect}")
        if request.version >= (1, 1):
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            request.writer.output_size = 0
        return None

    async def cacerts(request: web.Request) -> web.Response:
        return _pkcs7_response([*state.device_cas, *state.root_cas], "application/pkcs7-mime")

    async def simpleenroll(request: web.Request) -> web.Response:
        name, secret = _basic_credentials(request)
        csr_der = await _csr_body(request)
        hardware = request.query.get("hardware")
        if hardware is not None and not _HARDWARE.fullmatch(hardware):
            raise HTTPProblem(400, "bad_request", f"invalid hardware class {hardware!r}")
        now = state.now()
        if hook.active:
            await _ask_hook(name, secret, csr_der, hardware)

        def enroll() -> x509.Certificate:
            with state.db.begin() as conn:
                try:
                    credentials.verify_factory(conn, name, secret)
                except AuthError as e:
                    raise HTTPProblem(
                        401, "authentication_required", str(e), _BASIC_CHALLENGE
                    ) from e
                # Counted once the station proved itself: a wrong secret spends nothing.
                wait = stations.take(name) if stations else None
                if wait is not None:
                    raise HTTPProblem(
                        429,
                        "too_often",
                        f"factory station {name!r} enrolls more often than allowed",
                        {"Retry-After": RateLimiter.retry_after(wait)},
                    )
                approved = approve_csr(
                    csr_der,
                    state.device_leaf_profile,
                    device_id=_cn_device_id(csr_der),
                )
                if device_store.device(conn, approved.subject_id) is not None:
                    raise ConflictError(
                        f"device {approved.subject_id!r} is already enrolled: renew with "
                        "simplereenroll, or recover with /v1/recover"
                    )
                # One key, one device: refused before anything is issued.
                spki = spki_der(approved.public_key)
                holder = device_store.key_holder(conn, spki)
                if holder is not None:
                    raise device_store.KeyTaken(holder, approved.subject_id)
                # The station's manifest, quota and expiry, and blocked ids.
                try:
                    allowlist.check_enrollment(
                        conn, name, approved.subject_id, device_store.key_fingerprint(spki), now
                    )
                except allowlist.NotAllowed as e:
                    raise _Refused(approved.subject_id, str(e)) from e
                authority = state.device_authority(DatabaseLedger(state.db, conn, now))
                cert = authority.issue(approved, now)
                device_store.enroll_device(
                    conn, approved.subject_id, spki_der(cert), now, f"factory:{name}", hardware
                )
                audit.audit(
                    conn,
                    now,
                    f"factory:{name}",
                    "enroll",
                    approved.subject_id,
                    {"serial": format(cert.serial_number, "x")},
                )
                return cert

        try:
            cert = await state.run(enroll)
        except device_store.KeyTaken as e:
            await state.run(_audit_key_refusal, f"factory:{name}", e.wanted, e)
            raise
        except _Refused as e:
            await state.run(_audit_refusal, f"factory:{name}", e.device_id, e.reason)
            raise HTTPProblem(403, "not_allowed", e.reason) from e
        request.app[METRICS].enrollments.inc()
        return _pkcs7_response([cert], PKCS7_CERTS)

    async def simplereenroll(request: web.Request) -> web.Response:
        identity = await authenticate_device(request, state)
        csr_der = await _csr_body(request)
        now = state.now()

        def reenroll() -> x509.Certificate:
            with state.db.begin() as conn:
                approved = approve_csr(
                    csr_der,
                    state.device_leaf_profile,
                    device_id=identity.device_id,
                )
                # A new key supersedes the old one before the new certificate
                # exists: every certificate of the old key is revoked with it.
                new_key = spki_der(approved.public_key)
                superseded = device_store.set_device_key(conn, identity.device_id, new_key, now)
                authority = state.device_authority(DatabaseLedger(state.db, conn, now))
                cert = authority.issue(approved, now)
                audit.audit(
                    conn,
                    now,
                    f"device:{identity.device_id}",
                    "reenroll",
                    identity.device_id,
                    {"serial": format(cert.serial_number, "x"), "superseded": superseded},
                )
                return cert

        try:
            cert = await state.run(reenroll)
        except device_store.KeyTaken as e:
            actor = f"device:{identity.device_id}"
            await state.run(_audit_key_refusal, actor, identity.device_id, e)
            raise
        request.app[METRICS].enrollments.inc()
        return _pkcs7_response([cert], PKCS7_CERTS)

    return [
        web.get("/.well-known/est/cacerts", cacerts),
        web.post("/.well-known/est/simpleenroll", simpleenroll, expect_handler=require_auth_first),
        web.post("/.well-known/est/simplereenroll", simplereenroll),
    ]
