"""EST enrollment (RFC 7030) with the base64 rules of RFC 8951.

- ``GET  /.well-known/est/cacerts``: the device CAs, certs-only PKCS#7.
- ``POST /.well-known/est/simpleenroll``: a new device enrolls, vouched for
  by a factory station's secret (HTTP Basic) or, with no secret on the
  factory line, by its manufacturer certificate (IDevID) presented as the TLS
  client certificate (RFC 7030 §3.3.2; ``homing.pki.idevid``). The CSR names
  the device by ``urn:homing:device:<id>`` (or, for outside EST clients, by
  its CN); with an IDevID, the id is the one the IDevID names.
- ``POST /.well-known/est/simplereenroll``: a device (mTLS) renews, with the
  same key or a new one.
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
from dataclasses import dataclass
from datetime import datetime

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import NameOID
from sqlalchemy import Connection

from homing.errors import (
    AuthError,
    ChainError,
    ConfigError,
    ConflictError,
    NotFoundError,
    PolicyError,
    RevokedError,
)
from homing.pki.idevid import FactoryIdentity, Manufacturer, verify_idevid
from homing.pki.keys import spki_der
from homing.pki.profiles import ApprovedRequest, Profile, approve_csr, device_id_from_uri
from homing.pki.validate import load_certificate
from homing.server.admission import RateLimiter
from homing.server.auth import authenticate_device, peer_certificate_der
from homing.server.batching import BatchedWrites
from homing.server.enroll_hook import EnrollHook
from homing.server.errors import HTTPProblem, problem_response
from homing.server.inputs import read_body
from homing.server.metrics import METRICS, Metrics
from homing.server.state import ServerState
from homing.site.ledger import DatabaseLedger
from homing.store import allowlist, audit, credentials, manufacturers
from homing.store import devices as device_store

__all__ = ["routes"]

PKCS10 = "application/pkcs10"
PKCS7_CERTS = "application/pkcs7-mime; smime-type=certs-only"
_BASIC_CHALLENGE = {"WWW-Authenticate": 'Basic realm="homing EST", charset="UTF-8"'}
log = logging.getLogger(__name__)
_HARDWARE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")

# Enrollments written in one transaction at most: enough for a factory floor's
# burst, few enough that one batch holds the write lock for well under a second.
_ENROLL_BATCH_MAX = 64


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


@dataclass(frozen=True)
class _Station:
    """Who vouches for an enrollment: a station by its secret, or a manufacturer by an IDevID."""

    name: str
    secret: str | None = None
    identity: FactoryIdentity | None = None

    @property
    def actor(self) -> str:
        return f"factory:{self.name}"

    def prove(self, conn: Connection) -> None:
        """Checked in the enrollment's own transaction: a disabling takes effect at once."""
        try:
            if self.identity is not None:
                manufacturers.require_active(conn, self.name)
            else:
                credentials.verify_factory(conn, self.name, self.secret or "")
        except (AuthError, NotFoundError) as e:
            raise HTTPProblem(401, "authentication_required", str(e), _BASIC_CHALLENGE) from e

    def device_id(self, csr_der: bytes) -> str | None:
        """The id to enroll: the IDevID's (a CSR naming another is refused), or the CSR's CN."""
        requested = _requested_device_id(csr_der)
        if self.identity is None:
            return _cn_device_id(csr_der)
        if requested is not None and requested != self.identity.device_id:
            raise HTTPProblem(
                403,
                "not_allowed",
                f"the IDevID names device {self.identity.device_id!r}; "
                f"the CSR asks for {requested!r}",
            )
        return self.identity.device_id


@dataclass(frozen=True)
class _Enrollment:
    """One simpleenroll request, waiting for its batch."""

    station: _Station
    csr_der: bytes
    hardware: str | None
    now: datetime


_Approval = ApprovedRequest | Exception


def _approval(station: _Station, csr_der: bytes, profile: Profile) -> _Approval:
    """The CSR approved for ``station``, or the refusal to raise once the station is proven.

    Any exception is kept for its own request: one CSR never fails the batch it is in.
    """
    try:
        return approve_csr(csr_der, profile, device_id=station.device_id(csr_der))
    except Exception as e:
        return e


def _requested_device_id(csr_der: bytes) -> str | None:
    """The id a CSR names (URI SAN, else CN), or None; its full checks come later."""
    try:
        csr = x509.load_der_x509_csr(csr_der)
        sans = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return _cn_device_id(csr_der)
    except ValueError:
        return None
    uris = sans.get_values_for_type(x509.UniformResourceIdentifier)
    try:
        return device_id_from_uri(uris[0]) if len(uris) == 1 else None
    except PolicyError:
        return None


def routes(state: ServerState, metrics: Metrics) -> list[web.RouteDef]:
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

    async def _ask_hook(station: _Station, csr_der: bytes, hardware: str | None) -> None:
        """The operator's decision, asked only for a station that proved itself."""

        def proven() -> ApprovedRequest:
            with state.db.engine.connect() as conn:
                station.prove(conn)
            return approve_csr(
                csr_der, state.device_leaf_profile, device_id=station.device_id(csr_der)
            )

        approved = await state.run(proven)
        spki = spki_der(approved.public_key)
        why = await hook.refusal(
            {
                "station": station.name,
                "device_id": approved.subject_id,
                "key_sha256": device_store.key_fingerprint(spki),
                "hardware": hardware,
                "idevid": station.identity.audit_detail if station.identity else None,
            }
        )
        if why is not None:
            await state.run(_audit_refusal, station.actor, approved.subject_id, why)
            raise HTTPProblem(403, "not_allowed", why)

    def _audit_refusal(actor: str, device_id: str, reason: str) -> None:
        with state.db.begin() as conn:
            audit.audit(conn, state.now(), actor, "enroll_refused", device_id, {"reason": reason})

    def _factory_identity(der: bytes) -> FactoryIdentity:
        """The factory identity an IDevID (DER) proves now, or the refusal that says why."""
        try:
            leaf = load_certificate(der)
            with state.db.engine.connect() as conn:
                rows = manufacturers.active_manufacturers(conn)
            known = [Manufacturer.from_pem(r.name, r.cas_pem, r.crls_pem, r.id_from) for r in rows]
            return verify_idevid(leaf, known, state.now())
        except RevokedError as e:
            raise HTTPProblem(403, "revoked", str(e)) from e
        except ChainError as e:
            raise HTTPProblem(401, "bad_client_certificate", str(e)) from e
        except PolicyError as e:
            raise HTTPProblem(403, "not_allowed", str(e)) from e
        except ConfigError as e:
            raise HTTPProblem(503, "crl_out_of_date", str(e), {"Retry-After": "3600"}) from e

    async def _station(request: web.Request) -> _Station:
        """HTTP Basic names a secret station; otherwise the client's IDevID must vouch."""
        if "Authorization" in request.headers:
            name, secret = _basic_credentials(request)
            return _Station(name, secret=secret)
        # Read on the event loop (the connection's TLS state), checked on a thread.
        der = peer_certificate_der(request, state)
        if der is not None:
            try:
                identity = await state.run(_factory_identity, der)
            except HTTPProblem as e:
                log.warning("refused an IDevID from %s (%s): %s", request.remote, e.code, e.message)
                raise
            return _Station(identity.station, identity=identity)
        raise HTTPProblem(
            401,
            "authentication_required",
            "enroll with factory credentials (HTTP Basic) or a manufacturer certificate "
            "(TLS client certificate)",
            _BASIC_CHALLENGE,
        )

    async def require_auth_first(request: web.Request) -> web.StreamResponse | None:
        """RFC 7030 §3.2.3 / RFC 9110 §10.1.1: refuse before the body is sent.

        The credentials are checked, not only looked for: a wrong secret or
        IDevID is answered at once instead of ``100 Continue`` and a wait for
        a body the server would refuse anyway.
        """
        try:
            station = await _station(request)

            def check() -> None:
                with state.db.engine.connect() as conn:
                    station.prove(conn)

            await state.run(check)
        except HTTPProblem as e:
            return problem_response(e.status, e.code, e.message, e.headers)
        expect = request.headers.get("Expect", "").lower()
        if expect != "100-continue":
            raise web.HTTPExpectationFailed(text=f"unknown Expect: {expect}")
        if request.version >= (1, 1):
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            request.writer.output_size = 0
        return None

    async def cacerts(request: web.Request) -> web.Response:
        return _pkcs7_response([*state.device_cas, *state.root_cas], "application/pkcs7-mime")

    def _enroll(conn: Connection, request: _Enrollment, approval: _Approval) -> x509.Certificate:
        """One enrollment in a batch's transaction (the caller holds its savepoint)."""
        station, now = request.station, request.now
        station.prove(conn)
        # Counted once the station proved itself: a wrong secret spends nothing.
        wait = stations.take(station.name) if stations else None
        if wait is not None:
            raise HTTPProblem(
                429,
                "too_often",
                f"factory station {station.name!r} enrolls more often than allowed",
                {"Retry-After": RateLimiter.retry_after(wait)},
            )
        if isinstance(approval, Exception):
            raise approval
        # One id, one key, one device: refused before anything is issued.
        spki = spki_der(approval.public_key)
        try:
            device_store.require_new(conn, approval.subject_id, spki)
        except device_store.KeyTaken:
            raise
        except ConflictError as e:
            raise ConflictError(
                f"{e}: renew with simplereenroll, or recover with /v1/recover"
            ) from e
        # The station's manifest, quota and expiry, and blocked ids.
        try:
            allowlist.check_enrollment(
                conn, station.name, approval.subject_id, device_store.key_fingerprint(spki), now
            )
        except allowlist.NotAllowed as e:
            raise _Refused(approval.subject_id, str(e)) from e
        authority = state.device_authority(DatabaseLedger(state.db, conn, now))
        cert = authority.issue(approval, now)
        device_store.insert_new_device(
            conn, approval.subject_id, spki, now, station.actor, request.hardware
        )
        detail = {"serial": format(cert.serial_number, "x")}
        if station.identity is not None:
            detail |= station.identity.audit_detail
        audit.audit(conn, now, station.actor, "enroll", approval.subject_id, detail)
        return cert

    def _write_enrollments(batch: list[_Enrollment]) -> list[x509.Certificate | Exception]:
        """A batch of enrollments in one write transaction, each in its own savepoint.

        The CSRs are judged before the write lock is taken (CPU only, while
        another process writes); each verdict is given where it was always
        given: after its station proved itself and was counted.
        """
        state.check_clock()
        profile = state.device_leaf_profile
        approvals = [_approval(r.station, r.csr_der, profile) for r in batch]
        outcomes: list[x509.Certificate | Exception] = []
        with state.db.write_lock(), state.db.begin() as conn:
            for request, approval in zip(batch, approvals, strict=True):
                try:
                    with conn.begin_nested():
                        outcomes.append(_enroll(conn, request, approval))
                except Exception as e:  # this request's answer; its savepoint is rolled back
                    outcomes.append(e)
        # A commit that fails (the database itself gone) fails every request here.
        return outcomes

    enrollments: BatchedWrites[_Enrollment, x509.Certificate] = BatchedWrites(
        state.run,
        _write_enrollments,
        _ENROLL_BATCH_MAX,
        waiting=metrics.enrollments_waiting,
        batches=metrics.enrollment_batches,
    )

    async def simpleenroll(request: web.Request) -> web.Response:
        station = await _station(request)
        csr_der = await _csr_body(request)
        hardware = request.query.get("hardware")
        if hardware is not None and not _HARDWARE.fullmatch(hardware):
            raise HTTPProblem(400, "bad_request", f"invalid hardware class {hardware!r}")
        if hook.active:
            await _ask_hook(station, csr_der, hardware)
        try:
            cert = await enrollments.submit(_Enrollment(station, csr_der, hardware, state.now()))
        except device_store.KeyTaken as e:
            await state.run(_audit_key_refusal, station.actor, e.wanted, e)
            raise
        except _Refused as e:
            await state.run(_audit_refusal, station.actor, e.device_id, e.reason)
            raise HTTPProblem(403, "not_allowed", e.reason) from e
        request.app[METRICS].enrollments.inc()
        return _pkcs7_response([cert], PKCS7_CERTS)

    async def simplereenroll(request: web.Request) -> web.Response:
        identity = await authenticate_device(request, state)
        csr_der = await _csr_body(request)
        now = state.now()

        def reenroll() -> x509.Certificate:
            state.check_clock()
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
