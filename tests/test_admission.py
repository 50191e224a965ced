"""Admission control from outside: 429 past capacity in a stated order, per-device and
per-station rates, and an agent that backs off when told to.

Requests are held in flight for real (bodies the client has not finished
sending), so the server's capacity is reached the way a storm reaches it.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from homing import ceremonies
from homing.agent.agent import Agent
from homing.agent.runner import run_forever
from homing.operations import fleet as operations
from homing.server.admission import ADMISSION, Kind
from homing.server.metrics import METRICS
from tests.fleet import device, url
from tests.harness import Clock, RunningServer, est_csr, raw_tls, wait_until

CAPACITY = 10


def _server(tmp_path: Path, **config: object) -> RunningServer:
    data = tmp_path / "site"
    ceremonies.init(data, datetime.now(UTC))
    return RunningServer(
        data, f"sqlite:///{tmp_path / 'test.db'}", Clock(), body_timeout=600.0, **config
    ).start()


@pytest.fixture
def busy_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[RunningServer]:
    monkeypatch.delenv("HOMING_KEY_PASSPHRASE", raising=False)
    with _server(tmp_path, max_in_flight=CAPACITY) as server:
        yield server


@contextmanager
def _held(server: RunningServer, count: int, stack: ExitStack) -> Iterator[None]:
    """``count`` more requests in flight: recovery challenges whose bodies never finish."""
    admission = server.app[ADMISSION]
    target = admission.in_flight + count
    for _ in range(count):
        tls = stack.enter_context(raw_tls(server))
        tls.sendall(
            b"POST /v1/recover/challenge HTTP/1.1\r\nHost: localhost\r\n"
            b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"
        )
    wait_until(f"{target} in flight", lambda: admission.in_flight == target)
    yield


def _enroll(server: RunningServer, station: tuple[str, str], device_id: str) -> int:
    token = base64.b64encode(f"{station[0]}:{station[1]}".encode()).decode()
    csr = est_csr(ec.generate_private_key(ec.SECP256R1()), device_id)
    return server.request(
        "POST",
        "/.well-known/est/simpleenroll",
        base64.b64encode(csr),
        headers={"Content-Type": "application/pkcs10", "Authorization": f"Basic {token}"},
    ).status


def test_past_capacity_operators_go_first_and_trust_last(
    busy_server: RunningServer, tmp_path: Path
) -> None:
    server = busy_server
    now = datetime.now(UTC)
    station = ("station-1", operations.add_factory(server.state.db, "test", now, "station-1"))
    token = operations.add_token(server.state.db, "test", now, "ops", "operator")
    admin = {"Authorization": f"Bearer {token}"}
    dev = server.enroll("dev-1", station, tmp_path)
    checkin = {"firmware_version": "1.0"}

    def statuses() -> dict[str, int]:
        return {
            "operator": server.request("GET", "/v1/admin/rollouts", headers=admin).status,
            "device": server.request("POST", "/v1/device/checkin", checkin, device=dev).status,
            "trust": server.request("GET", "/tuf/metadata/timestamp.json").status,
            "healthz": server.request("GET", "/healthz").status,
        }

    assert set(statuses().values()) == {200}
    with ExitStack() as stack:
        with _held(server, 5, stack):  # half the capacity: operators wait
            seen = statuses()
            assert seen == {"operator": 429, "device": 200, "trust": 200, "healthz": 200}
            assert _enroll(server, station, "dev-2") == 200
        with _held(server, 2, stack):  # 7 of 10: enrollment waits too
            assert _enroll(server, station, "dev-3") == 429
            assert statuses()["device"] == 200
        with _held(server, 2, stack):  # 9 of 10: only trust and health are answered
            seen = statuses()
            assert seen == {"operator": 429, "device": 429, "trust": 200, "healthz": 200}
            assert server.request("GET", "/readyz").status == 200
            challenge = server.request("POST", "/v1/recover/challenge", {"device_id": "dev-1"})
            assert challenge.status == 200
            # Turned-away devices are told to come back at different times.
            waits = []
            for _ in range(20):
                answer = server.request("POST", "/v1/device/checkin", checkin, device=dev)
                assert answer.status == 429
                assert answer.json()["error"] == "overloaded"
                waits.append(int(answer.headers["retry-after"]))
            low, high = Kind.DEVICE.retry_window
            assert all(low <= w <= high for w in waits), waits
            assert len(set(waits)) > 1, waits
    # The held requests ended with their connections: everything is answered again.
    wait_until("nothing in flight", lambda: server.app[ADMISSION].in_flight == 0)
    assert set(statuses().values()) == {200}
    registry = server.app[METRICS].registry
    for kind, least in (("operator", 2), ("enrollment", 1), ("device", 21)):
        shed = registry.get_sample_value("homing_requests_shed_total", {"kind": kind})
        assert shed is not None
        assert shed >= least, (kind, shed)


def test_a_device_checking_in_too_often_is_turned_away_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HOMING_KEY_PASSPHRASE", raising=False)
    with _server(tmp_path, checkin_limit=(3, 600.0)) as server:
        now = datetime.now(UTC)
        station = ("station-1", operations.add_factory(server.state.db, "test", now, "station-1"))
        chatty = server.enroll("dev-chatty", station, tmp_path)
        calm = server.enroll("dev-calm", station, tmp_path)
        body = {"firmware_version": "1.0"}
        answers = [
            server.request("POST", "/v1/device/checkin", body, device=chatty) for _ in range(5)
        ]
        assert [a.status for a in answers] == [200, 200, 200, 429, 429]
        assert answers[3].json()["error"] == "too_often"
        assert 590 <= int(answers[3].headers["retry-after"]) <= 600
        # Its neighbour checks in as usual.
        assert server.request("POST", "/v1/device/checkin", body, device=calm).status == 200


def test_a_station_enrolling_too_fast_is_turned_away_and_a_wrong_secret_spends_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HOMING_KEY_PASSPHRASE", raising=False)
    with _server(tmp_path, enroll_limit=(2, 600.0)) as server:
        now = datetime.now(UTC)
        line_a = ("line-a", operations.add_factory(server.state.db, "test", now, "line-a"))
        line_b = ("line-b", operations.add_factory(server.state.db, "test", now, "line-b"))
        # Someone who knows only the name cannot use up the station's allowance.
        for n in range(5):
            assert _enroll(server, ("line-a", "wrong-secret"), f"x-{n}") == 401
        assert [_enroll(server, line_a, f"a-{n}") for n in range(3)] == [200, 200, 429]
        assert _enroll(server, line_b, "b-0") == 200


def test_the_agent_waits_as_long_as_the_server_asks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real agent against the real server's 429: its next cycle waits at least
    the Retry-After, not its own short backoff."""
    monkeypatch.delenv("HOMING_KEY_PASSPHRASE", raising=False)
    with _server(tmp_path, checkin_limit=(1, 900.0)) as server:
        state = device(server, tmp_path, "dev-1", "board-a")
        agent = Agent(state, server=url(server), firmware_version="1.0.0")
        slept: list[float] = []
        reports = []
        run_once = agent.run_once

        def recorded() -> object:
            report = run_once()
            reports.append(report)
            return report

        monkeypatch.setattr(agent, "run_once", recorded)

        class Stop(Exception):
            """Ends the agent's loop after its second wait."""

        def sleep(seconds: float) -> None:
            slept.append(seconds)
            if len(slept) == 2:
                raise Stop

        with pytest.raises(Stop):
            run_forever(agent, interval=60.0, sleep=sleep)
    assert reports[0].checked_in
    assert not reports[1].checked_in
    assert reports[1].retry_after is not None
    assert 890 <= reports[1].retry_after <= 900
    # First a normal interval (jittered around 60 s), then at least what was asked.
    assert 30 <= slept[0] <= 90
    assert slept[1] >= reports[1].retry_after
