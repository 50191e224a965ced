"""An IPv6-only site: made with ``homing init --host ::1``, served on [::1], and a device
enrolled and checking in over [::1] through the installed entry point."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from homing.operations import fleet as operations
from homing.trust.pins import PIN_POLICY_TARGET, PinPolicy
from tests.harness import Clock, RunningServer, run_homing

pytestmark = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


def test_an_ipv6_only_site_enrolls_and_checks_in_over_ipv6(
    tmp_path: Path, db_url: str, clock: Clock
) -> None:
    data = tmp_path / "site"
    made = run_homing("init", "--data", str(data), "--host", "::1")
    assert made.returncode == 0, made.stderr
    from homing.site import DataDir

    dd = DataDir(data)
    policy = PinPolicy.from_bytes(dd.repository(dd.settings()).target_bytes(PIN_POLICY_TARGET))
    assert policy.primary == "https://[::1]:8443"  # the literal in brackets
    assert policy.hosts == ("::1",)
    with RunningServer(data, db_url, clock, listen=("::1",)).start() as server:
        secret = operations.add_factory(server.state.db, "test", datetime.now(UTC), "line-1")
        url = f"https://[::1]:{server.port}"
        state = tmp_path / "device"
        enrolled = run_homing(
            "agent", "enroll", "--state", str(state), "--server", url,
            "--factory", f"line-1:{secret}", "--root",
            str(data / "repository/metadata/1.root.json"), "--id", "v6-device",
            "--hardware", "board-a",
        )  # fmt: skip
        assert enrolled.returncode == 0, enrolled.stderr
        ran = run_homing("agent", "run", "--state", str(state), "--server", url, "--once")
        assert ran.returncode == 0, ran.stderr
        assert "checked in" in ran.stdout
        # Nothing answers on IPv4: the whole conversation was over [::1].
        assert server.listen == ("::1",)
