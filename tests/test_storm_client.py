"""The storm benchmark's load generator in C (benchmarks/storm_client.c), against a real server.

The benchmark's figures are only as good as its generator: these check that it
is built by the project's own install step, that it presents each device's
own certificate, verifies the server as a device does, and counts every
attempt exactly once in each of its modes.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from homing.store import device_contacts as contacts
from tests.harness import DeviceCredentials, RunningServer, system_tool
from tests.mitm import foreign_certificate

pytestmark = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)

SOURCE = Path(__file__).resolve().parent.parent / "benchmarks" / "storm_client.c"


@pytest.fixture(scope="module")
def generator(tmp_path_factory: pytest.TempPathFactory) -> Path:
    binary = tmp_path_factory.mktemp("storm") / "storm_client"
    subprocess.run(
        [
            system_tool("cc"),
            "-O2",
            "-Wall",
            "-Werror",
            "-o",
            str(binary),
            str(SOURCE),
            "-lssl",
            "-lcrypto",
        ],
        check=True,
    )
    return binary


def _run(
    generator: Path, tmp_path: Path, plan: dict[str, Any], devices: list[tuple[Path, Path]]
) -> dict[str, Any]:
    path = tmp_path / "plan.txt"
    lines = [f"{name} {value}" for name, value in plan.items()]
    lines += [f"device {cert} {key}" for cert, key in devices]
    path.write_text("\n".join(lines) + "\n")
    done = subprocess.run([str(generator), str(path)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout))


def _fleet(
    server: RunningServer, factory: tuple[str, str], tmp_path: Path, count: int
) -> list[DeviceCredentials]:
    return [server.enroll(f"gen-{i}", factory, tmp_path) for i in range(count)]


def _plan(server: RunningServer, **fields: Any) -> dict[str, Any]:
    return {"port": server.port, "ca": server.data / "pki" / "root-ca.pem", **fields}


def test_every_mode_counts_each_attempt_once(
    generator: Path, server: RunningServer, factory: tuple[str, str], tmp_path: Path
) -> None:
    fleet = _fleet(server, factory, tmp_path, 6)
    files = [(d.cert_file, d.key_file) for d in fleet]

    storm = _run(
        generator,
        tmp_path,
        _plan(server, mode="storm", concurrency=3, timeout=30, retry_scale=0.01),
        files,
    )
    assert storm["devices"] == 6
    assert storm["attempts"].get("200") == 6  # each device answered once, then done
    assert storm["server_errors_5xx"] == 0
    assert 0 < storm["p50_s"] <= storm["seconds_until_all"]

    closed = _run(
        generator,
        tmp_path,
        _plan(server, mode="closed", concurrency=2, seconds=1, timeout=30),
        files,
    )
    assert closed["outcomes"].get("200", 0) > 0
    assert closed["rate_per_s"] > 0
    assert closed["p99_ms"] >= closed["p50_ms"] > 0

    rate = _run(
        generator, tmp_path, _plan(server, mode="rate", rate=20, seconds=1, timeout=30), files
    )
    assert rate["offered"] == 20
    assert sum(rate["outcomes"].values()) == 20
    assert rate["outcomes"].get("200") == 20

    # The check-ins reached the server as the devices they claim to be.
    with server.state.db.begin() as conn:
        for device in fleet:
            assert contacts.count_checkins(conn, device.device_id) > 0


def test_resumed_and_kept_alive_check_ins_are_counted_as_such(
    generator: Path, server: RunningServer, factory: tuple[str, str], tmp_path: Path
) -> None:
    fleet = _fleet(server, factory, tmp_path, 4)
    files = [(d.cert_file, d.key_file) for d in fleet]
    resumed = _run(
        generator,
        tmp_path,
        _plan(server, mode="closed", concurrency=2, seconds=1, timeout=30, resume=1, warmup=1),
        files,
    )
    # Every device held a ticket from the warm-up: every measured handshake resumed.
    assert resumed["handshakes"]["full"] == 0
    assert resumed["handshakes"]["resumed"] == resumed["outcomes"]["200"] > 0
    kept = _run(
        generator,
        tmp_path,
        _plan(
            server, mode="closed", concurrency=2, seconds=1, timeout=30, requests_per_connection=5
        ),
        files,
    )
    answered = kept["outcomes"]["200"]
    assert answered >= 5
    # Five check-ins a connection: one handshake for every five answers (the last may be short).
    assert kept["handshakes"]["full"] * 5 >= answered > (kept["handshakes"]["full"] - 2) * 5


def test_handshakes_alone_send_no_request_and_resume(
    generator: Path, server: RunningServer, factory: tuple[str, str], tmp_path: Path
) -> None:
    """requests_per_connection 0: the handshake alone, ended once the ticket is in."""
    fleet = _fleet(server, factory, tmp_path, 3)
    files = [(d.cert_file, d.key_file) for d in fleet]
    plan = {"mode": "closed", "concurrency": 2, "seconds": 1, "timeout": 30}
    full = _run(generator, tmp_path, _plan(server, **plan, requests_per_connection=0), files)
    assert set(full["outcomes"]) == {"handshake"}
    assert full["handshakes"] == {"full": full["outcomes"]["handshake"], "resumed": 0}
    resumed = _run(
        generator,
        tmp_path,
        _plan(server, **plan, requests_per_connection=0, resume=1, warmup=1),
        files,
    )
    # The ticket of each warm-up handshake was waited for and kept: all resumed.
    assert resumed["handshakes"] == {"full": 0, "resumed": resumed["outcomes"]["handshake"]}
    assert resumed["outcomes"]["handshake"] > 0
    with server.state.db.begin() as conn:  # no request, so no check-in
        assert all(contacts.count_checkins(conn, d.device_id) == 0 for d in fleet)


def test_a_certificate_from_another_ca_is_turned_away(
    generator: Path, server: RunningServer, factory: tuple[str, str], tmp_path: Path
) -> None:
    cert, key = foreign_certificate(tmp_path)
    result = _run(
        generator,
        tmp_path,
        _plan(server, mode="rate", rate=5, seconds=1, timeout=30),
        [(cert, key)],
    )
    assert result["offered"] == 5
    assert "200" not in result["outcomes"], result


def test_a_server_outside_the_devices_trust_is_refused(
    generator: Path, server: RunningServer, factory: tuple[str, str], tmp_path: Path
) -> None:
    device = _fleet(server, factory, tmp_path, 1)[0]
    stranger_ca, _ = foreign_certificate(tmp_path)
    result = _run(
        generator,
        tmp_path,
        {**_plan(server, mode="rate", rate=5, seconds=1, timeout=30), "ca": stranger_ca},
        [(device.cert_file, device.key_file)],
    )
    assert result["outcomes"] == {"connection_error:SSLError": 5}, result
