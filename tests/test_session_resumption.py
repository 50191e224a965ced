"""A resumed TLS session is a shortcut for the handshake, never for a check.

The home server hands out TLS 1.3 session tickets (sealed with the site's key
of the day: homing.server.session_tickets). A device that resumes skips the
certificate exchange, so these attack the shortcut: a device revoked since
its last session, a ticket presented on another day or after the site's
ticket secret was replaced.
"""

from __future__ import annotations

import json
import ssl
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from homing import ceremonies
from homing.server.session_tickets import ticket_keys
from homing.site import DataDir
from homing.store import devices as device_store
from homing.store.audit import audit_entries
from tests.harness import (
    DeviceCredentials,
    RunningServer,
    request_on_a_new_connection,
    run_homing,
)

sqlite_only = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)

_BODY = json.dumps({"firmware_version": "1.0", "trust": {"root": 1}}).encode()


def _check_in(
    server: RunningServer, context: ssl.SSLContext, session: ssl.SSLSession | None
) -> tuple[int, bool, ssl.SSLSession | None]:
    """One check-in on a new connection offering ``session``: (status, resumed, new session)."""
    status, resumed, new_session, _ = _answered(server, context, session)
    return status, resumed, new_session


def _answered(
    server: RunningServer, context: ssl.SSLContext, session: ssl.SSLSession | None
) -> tuple[int, bool, ssl.SSLSession | None, bytes]:
    """``_check_in``, and the body of the answer."""
    head, body, resumed, new_session = request_on_a_new_connection(
        server.port,
        context,
        session,
        b"POST /v1/device/checkin HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
        b"Content-Type: application/json\r\nContent-Length: "
        + str(len(_BODY)).encode()
        + b"\r\n\r\n"
        + _BODY,
    )
    return int(head.split(b" ", 2)[1]), resumed, new_session, body


def _device_context(server: RunningServer, device: DeviceCredentials) -> ssl.SSLContext:
    context = server.client_context(device)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    return context


def _resuming(
    server: RunningServer, name: str, factory: tuple[str, str], tmp_path: Path
) -> tuple[ssl.SSLContext, ssl.SSLSession | None]:
    """A device enrolled now, and a session it has resumed once: the shortcut works for a
    device in good standing."""
    device = server.enroll(name, factory, tmp_path)
    context = _device_context(server, device)
    status, resumed, session = _check_in(server, context, None)
    assert (status, resumed) == (200, False)
    status, resumed, session = _check_in(server, context, session)
    assert (status, resumed) == (200, True)
    return context, session


@sqlite_only
def test_a_device_revoked_since_its_last_session_is_refused_on_resumption(
    server: RunningServer, factory: tuple[str, str], tmp_path: Path
) -> None:
    context, session = _resuming(server, "dev-resume", factory, tmp_path)

    with server.state.db.begin() as conn:
        device_store.revoke_device(conn, "dev-resume", datetime.now(UTC), "key_compromise")
    status, resumed, _ = _check_in(server, context, session)
    assert resumed  # the handshake was skipped ...
    assert status in (401, 403)  # ... and the revocation still holds


@sqlite_only
def test_a_device_of_a_ca_distrusted_since_its_last_session_is_refused_on_resumption(
    server: RunningServer, factory: tuple[str, str], tmp_path: Path
) -> None:
    """The device CA's key was stolen after the session began: the resumed connection
    skips the certificate exchange, and the certificate is refused all the same."""
    context, session = _resuming(server, "dev-distrusted", factory, tmp_path)
    ceremonies.rotate_issuing_ca(server.state.dd, "device", datetime.now(UTC), compromised=True)
    server.settle()
    status, resumed, _, body = _answered(server, context, session)
    assert resumed  # the server certificate did not change: the ticket still opens ...
    assert (status, json.loads(body)["error"]) == (401, "certificate_distrusted")  # ... no more


@sqlite_only
def test_a_ticket_from_another_day_is_not_resumed(
    server: RunningServer, factory: tuple[str, str], tmp_path: Path
) -> None:
    device = server.enroll("dev-day", factory, tmp_path)
    context = _device_context(server, device)
    _, _, session = _check_in(server, context, None)
    # The day turns: every worker moves to the next day's key at its next reload (taken
    # on the server's loop, as its own watch does: a reload from this thread could race
    # the watch's, which read the clock before it moved, and seal with the old day).
    server.clock.advance(timedelta(days=1))
    server.settle()
    status, resumed, _ = _check_in(server, context, session)
    assert status == 200
    assert not resumed


@sqlite_only
def test_a_new_server_certificate_is_met_in_a_full_handshake(
    server: RunningServer, factory: tuple[str, str], tmp_path: Path
) -> None:
    """A device must see (and check) the certificate the home serves now: a session made
    under the old one is not resumed."""
    device = server.enroll("dev-rotated", factory, tmp_path)
    context = _device_context(server, device)
    _, _, session = _check_in(server, context, None)
    assert _check_in(server, context, session)[1]
    ceremonies.rotate_server_cert(server.state.dd, datetime.now(UTC))
    server.settle()
    status, resumed, _ = _check_in(server, context, session)
    assert status == 200
    assert not resumed


def test_the_keys_are_one_per_day_and_chain_and_the_same_for_every_worker() -> None:
    secret = bytes(range(32))
    monday = datetime(2026, 12, 7, 0, 0, tzinfo=UTC)
    chain = b"-----BEGIN CERTIFICATE-----"
    keys = ticket_keys(secret, monday, chain)
    assert keys == ticket_keys(secret, monday + timedelta(hours=23), chain)
    assert keys != ticket_keys(secret, monday + timedelta(days=1), chain)
    assert keys != ticket_keys(bytes(32), monday, chain)
    assert keys != ticket_keys(secret, monday, chain + b"renewed")
    assert len(keys) == 80
    # Thirty days, thirty renewals: never a key twice.
    days = {ticket_keys(secret, monday + timedelta(days=d), chain) for d in range(30)}
    renewals = {ticket_keys(secret, monday, chain + str(n).encode()) for n in range(30)}
    assert len(days | renewals) == 60


@sqlite_only
def test_rotating_the_ticket_secret_ends_every_session_and_ten_rotations_stay_apart(
    server: RunningServer, factory: tuple[str, str], tmp_path: Path
) -> None:
    """`homing rotate session-tickets` (the installed CLI): a session sealed before is
    not resumed once the server has taken the new secret up, and the device checks in
    with a full handshake; ten rotations, ten secrets."""
    device = server.enroll("dev-ticket-rotation", factory, tmp_path)
    context = _device_context(server, device)
    secret_path = server.state.dd.keys_dir / "session-tickets.secret"
    secrets = {secret_path.read_bytes()}
    _, _, session = _check_in(server, context, None)
    for _ in range(10):
        status, resumed, session = _check_in(server, context, session)
        assert (status, resumed) == (200, True)
        done = run_homing("rotate", "session-tickets", "--data", str(server.state.dd.root))
        assert done.returncode == 0, done.stderr
        assert "session-ticket secret replaced" in done.stdout
        assert secret_path.stat().st_mode & 0o777 == 0o600
        secrets.add(secret_path.read_bytes())
        server.settle()  # the reload check every worker runs within its interval
        status, resumed, session = _check_in(server, context, session)
        assert (status, resumed) == (200, False)
    assert len(secrets) == 11
    site = DataDir(server.state.dd.root)  # the data directory's own database: the CLI's
    try:
        with site.database().begin() as conn:
            entries = audit_entries(conn, limit=1000)
    finally:
        site.close()
    assert sum(e["action"] == "rotate_session_tickets" for e in entries) == 10
