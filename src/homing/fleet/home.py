"""The home server, simulated: its own device rules over real certificates, without a socket.

A simulated device's certificate work (the check-in's certificate checks,
EST re-enrollment, key-proof recovery, revocation) is decided here by the
home server's own rules (``homing.server.rules``: the functions its request
handlers call), applied to real certificates that real CAs issued at the
simulated time. homing's devices meet it through the real agent
(``Agent.run_with``) and ``SimulatedHomeClient``, the agent's one client
seam with the socket replaced; a device of another strategy presents its
certificate to the same rules without an agent. Firmware rollouts are
served here too (``take_update``): the check-in assigns the newest release
and the image comes from the published targets. Only the database (a
record per device), the rollout (one to every device) and the network are
simulated.

Every device in the same certificate situation meets the server the same
way, so one real conversation answers for all of them (``Situation``).
"""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import secrets
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, cast
from urllib.parse import unquote, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs7
from tuf.api import exceptions as tuf_errors

from homing.agent.agent import Agent
from homing.agent.client import Answer, HomeClient
from homing.agent.decide import CertificateAction, certificate_action
from homing.agent.fetcher import HTTPSFetcher
from homing.agent.state import DeviceConfig, DeviceState
from homing.agent.transport import verify_pinned_chain
from homing.config import Validity
from homing.errors import ChainError, HomingError
from homing.fleet.strategy_base import CUT_OFF, OK, REFUSED, Cause, Situation, Step
from homing.fleet.world import HOST, START, Chain, FirmwareRelease
from homing.pki.authority import Authority, make_issuing_ca, make_root_ca
from homing.pki.keys import generate_tls_key, spki_der
from homing.pki.ledger import MemoryLedger
from homing.pki.profiles import approve_csr, device_csr, device_profile
from homing.server import rules
from homing.server.config import ServerConfig
from homing.server.errors import HTTPProblem
from homing.store.device_contacts import Standing
from homing.store.devices import DeviceRow
from homing.trust.pins import PinPolicy

__all__ = ["SimulatedHome", "SimulatedHomeClient", "SimulatedNetwork", "take_update"]

# When every conversation takes place: the certificates are dated around it.
_MOMENT = START + timedelta(days=400)
# The server's own default: how long a device may be silent and still recover.
_MAX_OFFLINE = cast(
    "timedelta | None",
    next(f.default for f in dataclasses.fields(ServerConfig) if f.name == "max_offline"),
)
# What a refusal of the device's certificate means for a device that cannot recover.
_CAUSES = {
    "certificate_expired": Cause.CERT_EXPIRED,
    "certificate_distrusted": Cause.DEVICE_CA_DISTRUSTED,
}


@dataclass
class _Record:
    """The server's database, for one device: its row and its certificates' standing."""

    row: DeviceRow
    standing: dict[str, Standing]


class SimulatedHome:
    """A root, the active device CA and one whose key was stolen (distrusted), and the records."""

    def __init__(self, device_cert_days: int) -> None:
        validity = Validity(root_ca=timedelta(days=100 * 365), issuing_ca=timedelta(days=50 * 365))
        born = START - timedelta(days=1)
        root_key = generate_tls_key()
        root = make_root_ca(root_key, born, validity=validity)

        def authority(generation: int) -> Authority:
            key = generate_tls_key()
            cert = make_issuing_ca(
                "device",
                key.public_key(),
                root,
                root_key,
                born,
                generation=generation,
                validity=validity,
            )
            return Authority(cert, key, MemoryLedger(), validity)

        self.stolen = authority(1)
        self.active = authority(2)
        self.profile = device_profile(timedelta(days=device_cert_days))
        self.trust = rules.DeviceTrust(
            [self.active.certificate], [self.stolen.certificate], [root], self.profile
        )
        self.records: dict[str, _Record] = {}

    # -- the factory and the operator ----------------------------------------

    def enroll(
        self,
        device_id: str,
        key: ec.EllipticCurvePrivateKey,
        s: Situation,
        moment: datetime = _MOMENT,
    ) -> x509.Certificate:
        """A device whose certificate is in situation ``s`` at ``moment``."""
        lifetime = self.profile.validity
        age = {
            CertificateAction.KEEP: timedelta(days=1),
            CertificateAction.RENEW: lifetime * 0.8,
            CertificateAction.RECOVER: lifetime + timedelta(days=1),
        }[s.phase]
        issued = moment - age
        authority = self.stolen if s.distrusted else self.active
        cert = authority.issue(
            approve_csr(device_csr(key, device_id), self.profile, device_id=device_id), issued
        )
        if certificate_action(cert, moment) is not s.phase:
            raise HomingError(f"simulated certificate is not in phase {s.phase.value}")
        spki = spki_der(cert)
        status = "revoked" if s.revoked else "active"
        row = DeviceRow(
            device_id=device_id,
            status=status,
            hardware=None,
            key_spki=spki,
            enrolled_at=issued,
            enrolled_by="factory:simulated",
            last_seen=issued,
            firmware_version=None,
            root_version=None,
            timestamp_version=None,
            targets_version=None,
            health=None,
            revoked_at=moment if s.revoked else None,
            revoke_reason=None,
        )
        self.records[device_id] = _Record(row, {})
        self._register(device_id, cert)
        return cert

    def _register(self, device_id: str, cert: x509.Certificate) -> None:
        record = self.records[device_id]
        serial = format(cert.serial_number, "x")
        record.standing[serial] = Standing(
            serial, None, None, device_id, record.row.status, record.row.key_spki
        )

    # -- the server's answers --------------------------------------------------

    def _device(self, cert: x509.Certificate | None, now: datetime) -> rules.VerifiedDevice:
        """authenticate_device: the certificate's rules, then its standing."""
        if cert is None:
            raise HTTPProblem(401, "client_certificate_required", "no client certificate")
        device = rules.verify_device_certificate(cert, self.trust, now)
        record = self.records.get(device.device_id)
        standing = None if record is None else record.standing.get(format(cert.serial_number, "x"))
        problem = rules.standing_problem(standing, device)
        if problem is not None:
            raise problem
        return device

    def _eligible(self, device_id: str, now: datetime) -> DeviceRow:
        record = self.records.get(device_id)
        row = None if record is None else record.row
        problem = rules.recovery_problem(row, device_id, _MAX_OFFLINE, now)
        if problem is not None:
            raise problem
        assert row is not None
        return row

    def answer(
        self,
        path: str,
        body: bytes,
        cert: x509.Certificate | None,
        now: datetime,
        nonces: set[str],
        rollout: FirmwareRelease | None = None,
    ) -> bytes:
        """The body of a 200 answer to ``path``; HTTPProblem when the server refuses.

        ``rollout``: the release a rollout to every device offers (the server
        assigns it to a device that runs another version).
        """
        if path == "/v1/device/checkin":
            self._device(cert, now)
            answer: dict[str, Any] = {"server_time": now.isoformat()}
            running = json.loads(body).get("firmware_version")
            if rollout is not None and running != rollout.version:
                answer["update"] = {"rollout": 1, "target": rollout.target}
            return json.dumps(answer).encode()
        if path == "/v1/device/update":
            self._device(cert, now)
            return json.dumps({"rollout": {"id": 1}}).encode()
        if path == "/.well-known/est/simplereenroll":
            device = self._device(cert, now)
            approved = approve_csr(base64.b64decode(body), self.profile, device_id=device.device_id)
            issued = self.active.issue(approved, now)
            self._register(device.device_id, issued)
            der = pkcs7.serialize_certificates([issued], serialization.Encoding.DER)
            return base64.encodebytes(der)
        doc = json.loads(body)
        device_id = str(doc.get("device_id"))
        if path == "/v1/recover/challenge":
            # As the server: a nonce for any id, stored only for an enrolled one.
            nonce = secrets.token_hex(32)
            if device_id in self.records:
                nonces.add(nonce)
            return json.dumps({"nonce": nonce}).encode()
        if path == "/v1/recover":
            nonce = str(doc.get("nonce"))
            if nonce not in nonces:
                raise HTTPProblem(403, "recovery_refused", "unknown or spent nonce")
            nonces.discard(nonce)
            record = self.records.get(device_id)
            if record is None:
                raise HTTPProblem(403, "recovery_refused", "unknown or spent nonce")
            # The key is proven before the device's standing is told, and a wrong
            # proof is refused like a spent nonce, as the server does.
            try:
                approved = rules.approve_recovery(
                    record.row.key_spki,
                    device_id,
                    nonce,
                    base64.b64decode(doc["csr"]),
                    base64.b64decode(doc["signature"]),
                    self.profile,
                )
            except HTTPProblem as e:
                raise HTTPProblem(403, "recovery_refused", e.message) from e
            self._eligible(device_id, now)
            issued = self.active.issue(approved, now)
            self._register(device_id, issued)
            pem = issued.public_bytes(serialization.Encoding.PEM).decode()
            return json.dumps({"certificate": pem}).encode()
        raise HTTPProblem(404, "not_found", f"no {path} here")

    # -- a device meets it -----------------------------------------------------

    def presented(self, s: Situation) -> Step:
        """A device without homing's agent: the server's rules decide, nothing recovers."""
        key = generate_tls_key()
        device_id = f"baseline-{len(self.records)}"
        cert = self.enroll(device_id, key, s)
        try:
            self._device(cert, _MOMENT)
        except HTTPProblem as p:
            outcome = REFUSED if p.code == "revoked" else CUT_OFF
            return Step(
                outcome, 1, cause=_CAUSES.get(p.code, Cause.CERTIFICATE_REFUSED), refusals=(p.code,)
            )
        renewed = s.phase is not CertificateAction.KEEP
        return Step(OK, 2 if renewed else 1, renewed=renewed)

    def converse(self, s: Situation, scratch: Path, policy: PinPolicy) -> Step:
        """homing's device: the real agent's cycle after its trust refresh, over the seam."""
        key = generate_tls_key()
        device_id = f"device-{len(self.records)}"
        root = Path(tempfile.mkdtemp(dir=scratch)) / "state"
        state = DeviceState.create(
            root, DeviceConfig(device_id, None, START.isoformat()), key, b"{}"
        )
        state.save_certificate([self.enroll(device_id, key, s)])
        client = SimulatedHomeClient(
            self, policy=policy, now=_MOMENT, client_cert=(state.cert_path, state.key_path)
        )
        report = Agent(state, clock=lambda: _MOMENT).run_with(client)
        refusals = tuple(client.refusals)
        if report.revoked:
            return Step(REFUSED, client.posts, refusals=refusals)
        if not report.checked_in:
            code = refusals[-1] if refusals else ""
            cause = _CAUSES.get(code, Cause.CERTIFICATE_REFUSED)
            return Step(CUT_OFF, client.posts, cause=cause, refusals=refusals)
        return Step(OK, client.posts, report.renewed, report.recovered, refusals=refusals)


def take_update(
    home: SimulatedHome,
    state: DeviceState,
    release: FirmwareRelease,
    now: datetime,
    policy: PinPolicy,
    network: Callable[[PinPolicy | None, datetime], SimulatedNetwork],
    repository: Path,
) -> Step:
    """homing's device meets a rollout of ``release``: the real agent's whole update.

    The check-in is answered with the assignment; the agent verifies the
    image's signed target through the delegated firmware role over
    ``network`` (python-tuf, the published metadata), downloads it from the
    published targets, checks its length and hashes, installs it in its
    inactive slot, boots it and commits it after a healthy check-in.
    """
    device_id = f"device-{len(home.records)}"
    state.save_certificate(
        [home.enroll(device_id, state.key(), Situation(CertificateAction.KEEP), now)]
    )
    client = SimulatedHomeClient(
        home,
        policy=policy,
        now=now,
        client_cert=(state.cert_path, state.key_path),
        rollout=release,
        repository=repository,
    )
    fetchers: list[SimulatedNetwork] = []

    def counted(p: PinPolicy | None, at: datetime) -> SimulatedNetwork:
        fetchers.append(network(p, at))
        return fetchers[-1]

    report = Agent(state, clock=lambda: now, fetcher=counted).run_with(client)
    requests = client.posts + client.downloads + sum(f.requests for f in fetchers)
    outcome = OK if report.checked_in else CUT_OFF
    return Step(
        outcome,
        requests,
        refusals=tuple(client.refusals),
        committed=report.committed_version,
        update_refused=report.update_refused or report.error,
    )


class SimulatedNetwork(HTTPSFetcher):
    """The metadata network, simulated: the home's repository as published at one moment.

    It is the agent's own fetcher with the socket replaced: a pinned fetch
    first puts the server's real chain through the agent's pinned-connection
    rule (``verify_pinned_chain``) and fails the way a real handshake check
    fails; then files come from the published repository copy.
    """

    def __init__(
        self, policy: PinPolicy | None, now: datetime, chain: Chain, repository: Path
    ) -> None:
        super().__init__(policy, now)
        self._chain = chain
        self._repository = repository
        self._checked = False

    def _fetch(self, url: str) -> Iterator[bytes]:
        parts = urlsplit(url)
        if self.policy is not None and not self._checked:
            try:
                verify_pinned_chain(
                    self._chain.leaf,
                    self._chain.intermediates,
                    self.policy,
                    parts.hostname or "",
                    self.now,
                    clock_behind_floor=self.clock_behind_floor,
                )
            except ChainError as e:
                self.pin_failure = e
                raise tuf_errors.DownloadError(str(e)) from e
            self._checked = True
        prefix = "/tuf/"
        if not parts.path.startswith(prefix):
            raise tuf_errors.DownloadHTTPError(f"{url}: HTTP 404", 404)
        path = self._repository.joinpath(*unquote(parts.path[len(prefix) :]).split("/"))
        self.requests += 1  # a 404 (python-tuf probing for the next root) is a request too
        try:
            data = path.read_bytes()
        except FileNotFoundError as e:
            raise tuf_errors.DownloadHTTPError(f"{url}: HTTP 404", 404) from e
        return iter([data])

    def close(self) -> None:
        pass


class SimulatedHomeClient(HomeClient):
    """The agent's client seam, answered by ``SimulatedHome`` instead of a socket.

    The pinned connection's checks ran before (the strategy's contact puts
    the served chain through the agent's pinned rule); here the body is
    built, the client certificate presented and the server's answer returned
    as the wire would carry it, refusals as problem documents.
    """

    def __init__(
        self,
        home: SimulatedHome,
        *,
        policy: PinPolicy,
        now: datetime,
        client_cert: tuple[Path, Path],
        rollout: FirmwareRelease | None = None,
        repository: Path | None = None,
    ) -> None:
        super().__init__(f"https://{HOST}", policy=policy, now=now, client_cert=client_cert)
        self._home = home
        self._nonces: set[str] = set()
        self._rollout = rollout
        self._repository = repository
        self.posts = 0
        self.downloads = 0
        self.refusals: list[str] = []

    def _certificate(self) -> x509.Certificate | None:
        assert self.client_cert is not None
        try:
            return x509.load_pem_x509_certificate(self.client_cert[0].read_bytes())
        except (FileNotFoundError, ValueError):
            return None

    def post(
        self,
        path: str,
        body: bytes | Callable[[Sequence[x509.Certificate]], bytes],
        content_type: str,
        *,
        mutual: bool,
        headers: dict[str, str] | None = None,
    ) -> Answer:
        self.posts += 1
        sent = body([]) if callable(body) else body
        cert = self._certificate() if mutual else None
        try:
            data = self._home.answer(path, sent, cert, self.now, self._nonces, self._rollout)
        except HTTPProblem as p:
            self.refusals.append(p.code)
            problem: dict[str, Any] = {"error": p.code, "message": p.message}
            return Answer(p.status, json.dumps(problem).encode())
        return Answer(200, data)

    @contextmanager
    def download(self, path: str, *, offset: int) -> Iterator[tuple[int, Callable[[int], bytes]]]:
        """GET a published target: the bytes the repository holds, from ``offset``."""
        self.downloads += 1
        prefix = "/tuf/"
        found = None
        if self._repository is not None and path.startswith(prefix):
            found = self._repository.joinpath(*path[len(prefix) :].split("/"))
        if found is None or not found.is_file():
            yield 404, lambda n: b""
            return
        stream = io.BytesIO(found.read_bytes()[offset:])
        yield (206 if offset else 200), stream.read
