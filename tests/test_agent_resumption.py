"""The agent resumes its TLS session home, and a resumed session never skips a check.

Real server on loopback, real agent connections (homing.agent.transport):
the second connection of a cycle resumes; the next cycle, in a process of
its own, resumes the session the last one saved; a change of pins or of the
device certificate starts a full handshake; a session offered to a server
that is not home (another CA's certificate) buys nothing: the handshake is
full and the pins refuse it, whether the session was kept in memory or read
from the file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from homing.agent.agent import Agent, CycleReport
from homing.agent.resumption import SESSIONS, Sessions
from homing.agent.state import DeviceState
from homing.agent.transport import open_connection
from homing.errors import ChainError
from homing.operations.provisioning import provision
from homing.trust.pins import PinPolicy
from tests.harness import RunningServer, run_homing
from tests.mitm import foreign_tls_server

pytestmark = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


@pytest.fixture(autouse=True)
def _fresh_sessions() -> Iterator[None]:
    SESSIONS.forget()
    yield
    SESSIONS.forget()


def _url(server: RunningServer) -> str:
    return f"https://127.0.0.1:{server.port}"


def _provisioned(server: RunningServer, tmp_path: Path) -> DeviceState:
    return provision(
        server.state.dd,
        tmp_path / "dev",
        datetime.now(UTC),
        device_id="dev-1",
        hardware="board-a",
        server=_url(server),
    )


def _device(server: RunningServer, tmp_path: Path) -> tuple[DeviceState, PinPolicy]:
    """A device that has run one cycle, and the pins it holds."""
    state = _provisioned(server, tmp_path)
    agent = Agent(state, server=_url(server), firmware_version="1.0.0")
    assert agent.run_once().checked_in
    return state, agent.refresh_trust(datetime.now(UTC), CycleReport()).pin_policy


def _connect(url: str, state: DeviceState, policy: PinPolicy) -> tuple[bool, int]:
    """(resumed, validated chain length) of one pinned connection home, closed cleanly."""
    conn = open_connection(
        url, policy=policy, now=datetime.now(UTC), client_cert=(state.cert_path, state.key_path)
    )
    try:
        conn.request("GET", "/healthz")
        conn.getresponse().read()
        return conn.resumed, len(conn.verified_chain)
    finally:
        conn.close()


def test_a_cycle_resumes_and_still_checks_the_pins_each_time(
    server: RunningServer, tmp_path: Path
) -> None:
    state, policy = _device(server, tmp_path)
    # The cycle left a session: the next connection resumes it ...
    resumed, chain = _connect(_url(server), state, policy)
    assert resumed
    # ... and the pinned chain was validated all the same.
    assert chain >= 2
    assert _connect(_url(server), state, policy) == (True, chain)


def _kept(
    server: RunningServer, state: DeviceState, policy: PinPolicy
) -> tuple[object, object, list[bytes]]:
    """The context, session and chain the process keeps for home under ``policy``."""
    key = Sessions.key(
        "127.0.0.1", server.port, policy.to_bytes(), (state.cert_path, state.key_path)
    )
    return SESSIONS.offer(key, lambda: pytest.fail("no session was kept"))


def test_new_pins_or_a_renewed_certificate_start_a_full_handshake(
    server: RunningServer, tmp_path: Path
) -> None:
    state, policy = _device(server, tmp_path)
    assert _connect(_url(server), state, policy)[0]
    # Other pins: another key, nothing offered.
    cert = (state.cert_path, state.key_path)
    assert Sessions.key("127.0.0.1", server.port, policy.to_bytes() + b" ", cert) != Sessions.key(
        "127.0.0.1", server.port, policy.to_bytes(), cert
    )
    # A renewed certificate (the file rewritten): presented anew in a full handshake.
    renewed_at = state.cert_path.stat().st_mtime_ns + 1_000_000
    os.utime(state.cert_path, ns=(renewed_at, renewed_at))
    resumed, chain = _connect(_url(server), state, policy)
    assert not resumed
    assert chain >= 2
    assert _connect(_url(server), state, policy)[0]  # and resumes from then on


def test_a_session_offered_to_a_stranger_buys_nothing(
    server: RunningServer, tmp_path: Path
) -> None:
    state, policy = _device(server, tmp_path)
    assert _connect(_url(server), state, policy)[0]
    with foreign_tls_server(tmp_path) as (port, received):
        # The device's kept session, offered to whatever answers at another address.
        home = Sessions.key(
            "127.0.0.1", server.port, policy.to_bytes(), (state.cert_path, state.key_path)
        )
        stranger = Sessions.key(
            "127.0.0.1", port, policy.to_bytes(), (state.cert_path, state.key_path)
        )
        context, session, chain = SESSIONS.offer(home, lambda: pytest.fail("the session was kept"))
        SESSIONS.remember(stranger, context, session, chain)
        with pytest.raises(ChainError):
            _connect(f"https://127.0.0.1:{port}", state, policy)
        assert received == []  # refused before a request byte


def test_a_session_is_offered_for_its_lifetime_only(server: RunningServer, tmp_path: Path) -> None:
    state, policy = _device(server, tmp_path)
    context, session, chain = _kept(server, state, policy)
    now = [0.0]
    sessions = Sessions(lifetime=60, clock=lambda: now[0])
    key = Sessions.key("home", 443, b"policy", None)
    sessions.remember(key, context, session, chain)  # type: ignore[arg-type]
    now[0] = 59.0
    assert sessions.offer(key, lambda: pytest.fail("offered none"))[1] is session
    sessions.remember(key, context, session, chain)  # type: ignore[arg-type]  # no extension
    now[0] = 60.0
    fresh = object()
    assert sessions.offer(key, lambda: fresh) == (fresh, None, [])  # type: ignore[arg-type,return-value]


def test_thirty_endpoints_keep_the_newest_eight_sessions(
    server: RunningServer, tmp_path: Path
) -> None:
    """The store is bounded however many homes, pin policies and certificates a long-lived
    process meets: the oldest session goes first."""
    state, policy = _device(server, tmp_path)
    context, session, chain = _kept(server, state, policy)
    sessions = Sessions(limit=8)
    keys = [Sessions.key("home", 443, f"policy-{i}".encode(), None) for i in range(30)]
    for key in keys:
        sessions.remember(key, context, session, chain)  # type: ignore[arg-type]
    assert len(sessions._kept) == 8
    for key in keys[:22]:
        assert sessions.offer(key, lambda: "fresh")[1] is None  # type: ignore[arg-type,return-value]
    for key in keys[22:]:
        assert sessions.offer(key, lambda: pytest.fail("evicted"))[1] is session


def _cycle_in_a_process(server: RunningServer, state: DeviceState) -> dict[str, int]:
    """One cycle of the installed agent in a process of its own: its pinned handshakes."""
    done = run_homing(
        "agent", "run", "--once", "--state", str(state.root), "--server", _url(server)
    )
    assert done.returncode == 0, done.stderr
    handshakes: dict[str, int] = json.loads(state.last_run_path.read_bytes())["tls_handshakes"]
    return handshakes


def test_the_next_cycle_in_a_process_of_its_own_resumes(
    server: RunningServer, tmp_path: Path
) -> None:
    state = _provisioned(server, tmp_path)
    first = _cycle_in_a_process(server, state)
    # One full handshake per channel: metadata (no client certificate) and the check-in.
    assert first["full"] == 2, first
    # Saved for the next process, readable by the agent alone.
    assert state.sessions_path.stat().st_mode & 0o777 == 0o600
    for _ in range(3):
        later = _cycle_in_a_process(server, state)
        assert later.get("full", 0) == 0, later
        assert later["resumed"] >= 1
    saved = json.loads(state.sessions_path.read_bytes())
    assert len(saved["sessions"]) == 2  # one a channel: bounded, however many cycles


def test_a_saved_session_offered_to_a_stranger_buys_nothing(
    server: RunningServer, tmp_path: Path
) -> None:
    """An attacker who answers for home (DNS, routing) meets a saved session: it cannot
    open the ticket, so the handshake is full, and the pins refuse its certificate."""
    state, policy = _device(server, tmp_path)
    saved = json.loads(state.sessions_path.read_bytes())
    with foreign_tls_server(tmp_path) as (port, received):
        for entry in saved["sessions"]:
            entry["port"] = port
        state.sessions_path.write_text(json.dumps(saved))
        SESSIONS.forget()
        SESSIONS.use_file(state.sessions_path)
        SESSIONS.handshakes.clear()
        with pytest.raises(ChainError):
            _connect(f"https://127.0.0.1:{port}", state, policy)
        assert received == []
        assert SESSIONS.handshakes == {"full": 1}


@pytest.mark.parametrize(
    "damage",
    [
        b"",
        b"{not json",
        b"[]",
        b'{"schema": "homing.tls-sessions/1", "sessions": [{"host": 1}]}',
        b'{"schema": "homing.tls-sessions/1", "sessions": ["text"]}',
    ],
)
def test_a_damaged_sessions_file_costs_a_full_handshake_and_is_replaced(
    server: RunningServer, tmp_path: Path, damage: bytes
) -> None:
    state, _ = _device(server, tmp_path)
    state.sessions_path.write_bytes(damage)
    SESSIONS.forget()
    report = Agent(state, server=_url(server), firmware_version="1.0.0").run_once()
    assert report.checked_in
    assert report.tls_handshakes["full"] == 2  # as a new device's: one per channel
    assert json.loads(state.sessions_path.read_bytes())["sessions"]


def test_a_saved_session_is_offered_for_its_lifetime_and_never_after_a_clock_set_back(
    server: RunningServer, tmp_path: Path
) -> None:
    state, policy = _device(server, tmp_path)
    context, session, chain = _kept(server, state, policy)
    path = tmp_path / "sessions.json"
    now = [1_000_000.0]
    key = Sessions.key("home", 443, b"policy", None)

    def reopened() -> Sessions:
        """What the next cycle's process reads from ``path``."""
        sessions = Sessions(lifetime=60, clock=lambda: now[0])
        sessions.use_file(path)
        return sessions

    writer = Sessions(lifetime=60, clock=lambda: now[0])
    writer.use_file(path)
    writer.remember(key, context, session, chain)  # type: ignore[arg-type]
    writer.save()
    now[0] += 59
    offered = reopened().offer(key, lambda: context)  # type: ignore[arg-type,return-value]
    assert isinstance(offered[1], bytes)
    assert offered[2] == chain
    now[0] += 1
    assert reopened().offer(key, lambda: "fresh")[1] is None  # type: ignore[arg-type,return-value]
    # The clock set back an hour: the deadline lies further ahead than a lifetime.
    now[0] -= 3600
    assert reopened().offer(key, lambda: "fresh")[1] is None  # type: ignore[arg-type,return-value]


def test_thirty_endpoints_leave_eight_sessions_in_the_file(
    server: RunningServer, tmp_path: Path
) -> None:
    state, policy = _device(server, tmp_path)
    context, session, chain = _kept(server, state, policy)
    path = tmp_path / "sessions.json"
    sizes = []
    for i in range(30):
        sessions = Sessions(limit=8)
        sessions.use_file(path)  # each cycle a process of its own
        key = Sessions.key("home", 443, f"policy-{i}".encode(), None)
        sessions.remember(key, context, session, chain)  # type: ignore[arg-type]
        sessions.save()
        sizes.append(path.stat().st_size)
    assert len(json.loads(path.read_bytes())["sessions"]) == 8
    assert max(sizes[8:]) <= min(sizes[7:]) * 1.1  # bounded once full
