"""EST enrollment over real TLS: what RFC 7030 clients send, and what must be refused."""

from __future__ import annotations

import base64
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import func, select, text

from homing.pki import verify_client_chain
from homing.store import allowlist
from homing.store.schema import audit_log, certificates, devices
from tests.harness import (
    HTTPSConnection,
    RunningServer,
    certs_from_pkcs7,
    est_csr,
    raw_tls,
    wait_until,
)


def _basic(name: str, secret: str) -> str:
    return "Basic " + base64.b64encode(f"{name}:{secret}".encode()).decode()


def _counts(server: RunningServer) -> tuple[int, int]:
    with server.state.db.engine.connect() as conn:
        return (
            conn.execute(select(func.count()).select_from(devices)).scalar_one(),
            conn.execute(select(func.count()).select_from(certificates)).scalar_one(),
        )


def _enroll(
    server: RunningServer,
    body: bytes,
    auth: str | None,
    content_type: str = "application/pkcs10",
    query: str = "",
):  # type: ignore[no-untyped-def]
    headers = {"Content-Type": content_type}
    if auth:
        headers["Authorization"] = auth
    return server.request("POST", "/.well-known/est/simpleenroll" + query, body, headers=headers)


def test_cacerts_is_certs_only_pkcs7_of_device_ca_and_root(server: RunningServer) -> None:
    response = server.request("GET", "/.well-known/est/cacerts")
    assert response.status == 200
    assert response.headers["content-type"] == "application/pkcs7-mime"
    names = sorted(c.subject.rfc4514_string() for c in certs_from_pkcs7(response.body))
    assert names == ["CN=homing device-issuing CA 1,O=homing", "CN=homing root CA,O=homing"]


def test_enrollment_issues_a_device_certificate(
    server: RunningServer, factory: tuple[str, str]
) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    # RFC 8951: base64 with line breaks is accepted.
    body = base64.encodebytes(est_csr(key, "dev-1"))
    response = _enroll(server, body, _basic(*factory), query="?hardware=board-a")
    assert response.status == 200, response.body
    assert response.headers["content-type"] == "application/pkcs7-mime; smime-type=certs-only"
    assert int(response.headers["content-length"]) == len(response.body)
    (cert,) = certs_from_pkcs7(response.body)
    chain = verify_client_chain(
        cert, server.state.device_cas, server.state.root_cas, datetime.now(UTC)
    )
    assert chain.subjects[0] == x509.UniformResourceIdentifier("urn:homing:device:dev-1")
    assert _counts(server) == (1, 1)
    with server.state.db.engine.connect() as conn:
        row = conn.execute(select(devices)).one()
        assert row.hardware == "board-a"
        assert row.enrolled_by == "factory:station-1"
        assert conn.execute(select(audit_log.c.action)).scalars().all() == ["add_factory", "enroll"]


def test_no_credentials_get_401_with_basic_challenge(
    server: RunningServer, factory: tuple[str, str]
) -> None:
    response = _enroll(
        server, base64.b64encode(est_csr(ec.generate_private_key(ec.SECP256R1()), "d")), None
    )
    assert response.status == 401
    assert response.headers["www-authenticate"].startswith("Basic ")
    assert _counts(server) == (0, 0)


def _expect_continue(server: RunningServer, authorization: str | None) -> bytes:
    """The first answer to a simpleenroll that waits for 100 Continue before its body."""
    credentials = f"Authorization: {authorization}\r\n".encode() if authorization else b""
    with raw_tls(server) as tls:
        tls.sendall(
            b"POST /.well-known/est/simpleenroll HTTP/1.1\r\nHost: localhost\r\n"
            b"Content-Type: application/pkcs10\r\nContent-Length: 400\r\n"
            + credentials
            + b"Expect: 100-continue\r\n\r\n"
        )
        return tls.recv(4096)


def test_401_is_sent_before_the_body_with_expect_100_continue(
    server: RunningServer, factory: tuple[str, str]
) -> None:
    """An EST client that waits for 100 Continue learns it must authenticate first."""
    head = _expect_continue(server, None)
    assert head.startswith(b"HTTP/1.1 401")
    assert b"WWW-Authenticate: Basic" in head


def test_a_wrong_secret_is_refused_before_the_body_too(
    server: RunningServer, factory: tuple[str, str]
) -> None:
    """Attack: a leaked station name with a guessed secret gets 401, not 100 Continue."""
    name, secret = factory
    for authorization in (
        _basic(name, secret + "x"),
        _basic("nobody", secret),
        "Basic !!not-base64!!",
        "Bearer abc",
    ):
        head = _expect_continue(server, authorization)
        assert head.startswith(b"HTTP/1.1 401"), (authorization, head[:80])
        assert b"WWW-Authenticate: Basic" in head
    # The station's real secret is answered 100 Continue: it may send its body.
    assert _expect_continue(server, _basic(name, secret)).startswith(b"HTTP/1.1 100 Continue")
    assert _counts(server) == (0, 0)


@pytest.mark.parametrize(
    ("secret_change", "expected"),
    [(lambda n, s: (n, s + "x"), 401), (lambda n, s: ("nobody", s), 401)],
)
def test_wrong_factory_credentials_are_refused(
    server: RunningServer, factory: tuple[str, str], secret_change, expected: int
) -> None:
    name, secret = secret_change(*factory)
    response = _enroll(
        server,
        base64.b64encode(est_csr(ec.generate_private_key(ec.SECP256R1()), "d")),
        _basic(name, secret),
    )
    assert response.status == expected
    assert response.json()["error"] == "authentication_required"
    assert _counts(server) == (0, 0)


@pytest.mark.parametrize(
    ("body", "content_type", "status", "code"),
    [
        (b"!!!not base64!!!", "application/pkcs10", 400, "bad_request"),
        (base64.b64encode(b"not a csr"), "application/pkcs10", 400, "policy"),
        (b"", "application/pkcs10", 400, "policy"),
        (None, "application/json", 415, "unsupported_media_type"),
        (b"A" * 100_000, "application/pkcs10", 413, "too_large"),
    ],
)
def test_bad_requests_change_nothing(
    server: RunningServer,
    factory: tuple[str, str],
    body: bytes | None,
    content_type: str,
    status: int,
    code: str,
) -> None:
    if body is None:
        body = base64.b64encode(est_csr(ec.generate_private_key(ec.SECP256R1()), "d"))
    response = _enroll(server, body, _basic(*factory), content_type)
    assert response.status == status, response.body
    assert response.json()["error"] == code
    assert _counts(server) == (0, 0)


def test_csr_breaking_the_policy_is_refused_with_reason(
    server: RunningServer, factory: tuple[str, str]
) -> None:
    key = ec.generate_private_key(ec.SECP384R1())
    response = _enroll(server, base64.b64encode(est_csr(key, "d")), _basic(*factory))  # type: ignore[arg-type]
    assert response.status == 400
    assert "curve secp384r1 is not allowed" in response.json()["message"]
    assert _counts(server) == (0, 0)


def test_second_enrollment_of_a_device_is_a_conflict(
    server: RunningServer, factory: tuple[str, str], tmp_path: Path
) -> None:
    server.enroll("dev-1", factory, tmp_path)
    response = _enroll(
        server,
        base64.b64encode(est_csr(ec.generate_private_key(ec.SECP256R1()), "dev-1")),
        _basic(*factory),
    )
    assert response.status == 409
    assert _counts(server) == (1, 1)


def test_chunked_request_body_is_accepted(server: RunningServer, factory: tuple[str, str]) -> None:
    body = base64.encodebytes(est_csr(ec.generate_private_key(ec.SECP256R1()), "chunky"))
    conn = HTTPSConnection("127.0.0.1", server.port, context=server.client_context())
    conn.putrequest("POST", "/.well-known/est/simpleenroll")
    conn.putheader("Content-Type", "application/pkcs10")
    conn.putheader("Authorization", _basic(*factory))
    conn.putheader("Transfer-Encoding", "chunked")
    conn.endheaders()
    for i in range(0, len(body), 100):
        chunk = body[i : i + 100]
        conn.send(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
    conn.send(b"0\r\n\r\n")
    response = conn.getresponse()
    assert response.status == 200, response.read()
    conn.close()


def test_reenroll_with_a_new_key_and_same_device(
    server: RunningServer, factory: tuple[str, str], tmp_path: Path
) -> None:
    device = server.enroll("dev-1", factory, tmp_path)
    new_key = ec.generate_private_key(ec.SECP256R1())
    response = server.request(
        "POST",
        "/.well-known/est/simplereenroll",
        base64.b64encode(est_csr(new_key, "dev-1")),
        headers={"Content-Type": "application/pkcs10"},
        device=device,
    )
    assert response.status == 200, response.body
    (cert,) = certs_from_pkcs7(response.body)
    assert cert.public_key() == new_key.public_key()


def test_reenroll_cannot_take_another_device_name(
    server: RunningServer, factory: tuple[str, str], tmp_path: Path
) -> None:
    device = server.enroll("dev-1", factory, tmp_path)
    response = server.request(
        "POST",
        "/.well-known/est/simplereenroll",
        base64.b64encode(est_csr(ec.generate_private_key(ec.SECP256R1()), "dev-2")),
        headers={"Content-Type": "application/pkcs10"},
        device=device,
    )
    assert response.status == 400
    assert "names device 'dev-2' but the request is for 'dev-1'" in response.json()["message"]


def test_reenroll_needs_a_client_certificate(server: RunningServer) -> None:
    response = server.request(
        "POST",
        "/.well-known/est/simplereenroll",
        base64.b64encode(est_csr(ec.generate_private_key(ec.SECP256R1()), "dev-1")),
        headers={"Content-Type": "application/pkcs10"},
    )
    assert response.status == 401
    assert response.json()["error"] == "client_certificate_required"


@contextmanager
def _writers_held(server: RunningServer) -> Iterator[None]:
    """What another writer holding the database looks like to the server's enrollments."""
    db = server.state.db
    if db.dialect == "sqlite":
        with db.write_lock():  # the lock every SQLite writer of a batch takes first
            yield
    else:
        with db.begin() as conn:
            conn.execute(text("LOCK TABLE certificates IN EXCLUSIVE MODE"))
            yield


def test_enrollments_arriving_together_share_a_transaction_each_with_its_own_answer(
    server: RunningServer, factory: tuple[str, str], tmp_path: Path
) -> None:
    """Refusals in a shared batch roll back their own writes only; the rest are committed.

    The first enrollment's batch waits for another writer; 29 more arrive
    meanwhile and are written together in the next batch: good ones, three
    requests for one new id, a key another device holds, a broken CSR and
    blocked ids.
    """
    auth = _basic(*factory)
    held_key = ec.generate_private_key(ec.SECP256R1())
    assert _enroll(server, base64.b64encode(est_csr(held_key, "held")), auth).status == 200
    with server.state.db.begin() as conn:
        for name in ("blocked-0", "blocked-1"):
            allowlist.block(conn, name, datetime.now(UTC), "returned unit")
    broken = bytearray(est_csr(ec.generate_private_key(ec.SECP256R1()), "broken"))
    broken[-5] ^= 0x01  # the signature no longer verifies

    def fresh(name: str) -> tuple[str, bytes]:
        return name, est_csr(ec.generate_private_key(ec.SECP256R1()), name)

    bodies: list[tuple[str, bytes]] = [
        *[fresh(f"good-{i}") for i in range(20)],
        *[fresh("twin") for _ in range(3)],
        *[(f"taken-{i}", est_csr(held_key, f"taken-{i}")) for i in range(2)],
        *[("broken", bytes(broken)) for _ in range(2)],
        *[fresh(f"blocked-{i}") for i in range(2)],
    ]
    answers: dict[int, int] = {}
    context = server.client_context(None)

    def send(index: int, body: bytes) -> None:
        # Its own connection, with a bound for a busy machine: it waits for the held writer.
        conn = HTTPSConnection("127.0.0.1", server.port, context=context, timeout=300)
        try:
            headers = {"Content-Type": "application/pkcs10", "Authorization": auth}
            conn.request("POST", "/.well-known/est/simpleenroll", base64.b64encode(body), headers)
            response = conn.getresponse()
            response.read()
            answers[index] = response.status
        finally:
            conn.close()

    first_key = ec.generate_private_key(ec.SECP256R1())
    threads = [threading.Thread(target=send, args=(-1, est_csr(first_key, "first")))]
    with _writers_held(server):
        threads[0].start()
        wait_until("the first batch", lambda: server.metric("homing_enrollment_batches_total") == 2)
        for index, (_, body) in enumerate(bodies):
            threads.append(threading.Thread(target=send, args=(index, body)))
            threads[-1].start()
        wait_until("29 waiting", lambda: server.metric("homing_enrollments_waiting") == 29)
        assert answers == {}, "an enrollment was answered while the database was held"
    for thread in threads:
        thread.join(300)
    statuses = [answers[i] for i in range(len(bodies))]
    assert answers[-1] == 200
    assert statuses[:20] == [200] * 20
    assert sorted(statuses[20:23]) == [200, 409, 409]  # one id, one device
    assert statuses[23:25] == [409, 409]  # one key, one device
    assert statuses[25:27] == [400, 400]
    assert statuses[27:29] == [403, 403]
    # Two batches after the held one: the first enrollment alone, then the 29 together.
    assert server.metric("homing_enrollment_batches_total") == 3
    assert server.metric("homing_enrollments_waiting") == 0
    # Nothing of a refused enrollment was kept: every certificate is an enrolled device's.
    assert _counts(server) == (23, 23)
    with server.state.db.engine.connect() as conn:
        enrolled = set(conn.execute(select(devices.c.device_id)).scalars())
        assert enrolled == {"held", "first", "twin", *(f"good-{i}" for i in range(20))}
        refused = conn.execute(
            select(audit_log.c.target).where(audit_log.c.action == "enroll_refused")
        ).scalars()
        assert sorted(refused) == ["blocked-0", "blocked-1", "taken-0", "taken-1"]
