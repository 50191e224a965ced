"""The operator's view without a browser: trust reports, gauges, the retirement guard, deploy files.

Gauges are parsed with prometheus_client's own parser and checked against
the fleet the test built through real check-ins; the guard is attacked with
a device that was enrolled and seen yesterday.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from homing import ceremonies
from homing.errors import CeremonyError, StrandingError
from homing.operations import fleet as operations
from homing.pki.keys import spki_pin
from homing.store import audit, pin_history
from homing.store import devices as device_store
from tests.fleet import QUIET_DAYS, build_fleet, check_in, device, device_context, move_server_clock
from tests.harness import RunningServer, run_homing

ROOT = Path(__file__).resolve().parents[1]


def _gauges(server: RunningServer) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    answer = server.request("GET", "/metrics")
    assert answer.status == 200
    values = {}
    for family in text_string_to_metric_families(answer.body.decode()):
        for sample in family.samples:
            values[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return values


def test_check_in_records_the_trust_the_device_holds(server: RunningServer, tmp_path: Path) -> None:
    state = device(server, tmp_path, "dev-1", "board-a")
    check_in(server, state)
    with server.state.db.engine.connect() as conn:
        row = device_store.device(conn, "dev-1")
        known = pin_history.policies(conn)
    assert row is not None
    held = json.loads((state.root / "pins.json").read_bytes())
    (policy,) = [p for p in known.values() if p.sha256 == row.pin_policy_sha256]
    assert list(policy.pins) == held["spki_pins"]
    # The server's chain was validated through the active server CA's pin.
    active = spki_pin(server.state.dd.certificate("server-ca.pem"))
    assert row.pins_matched == (active,)


@pytest.mark.parametrize(
    ("trust", "why"),
    [
        ({"pin_policy": "ABC"}, "pin_policy"),
        ({"pin_policy": "0" * 63 + "G"}, "pin_policy"),
        ({"pin_policy": 5}, "pin_policy"),
        ({"pins_matched": "x" * 44}, "pins_matched"),
        ({"pins_matched": ["short"]}, "pins_matched"),
        ({"pins_matched": ["A" * 44] * 5}, "pins_matched"),
    ],
)
def test_malformed_trust_reports_are_refused_and_change_nothing(
    server: RunningServer, tmp_path: Path, trust: dict[str, object], why: str
) -> None:
    state = device(server, tmp_path, "dev-1", "board-a")
    answer = server.request(
        "POST", "/v1/device/checkin", {"trust": trust}, context=device_context(server, state)
    )
    assert answer.status == 400
    assert why in answer.json()["message"]
    with server.state.db.engine.connect() as conn:
        row = device_store.device(conn, "dev-1")
    assert row is not None
    assert row.last_seen is None
    assert row.pin_policy_sha256 is None


def test_gauges_match_the_fleet(server: RunningServer, tmp_path: Path) -> None:
    fleet = build_fleet(server, tmp_path)
    # A revoked device that tries again is a failed last contact.
    operations.revoke_device(
        server.state.dd, server.state.db, "test", server.clock(), "dev-a2", "stolen"
    )
    answer = server.request(
        "POST",
        "/v1/device/checkin",
        {"trust": {}},
        context=device_context(server, fleet.devices["dev-a2"]),
    )
    assert answer.status == 403
    g = _gauges(server)
    now = server.clock()
    repo = server.state.dd.repository(server.state.dd.settings())
    timestamp_left = (repo.timestamp().signed.expires - now).total_seconds()
    got = g[("homing_metadata_expiry_seconds", (("role", "timestamp"),))]
    assert abs(got - timestamp_left) < 120
    root_left = (repo.root().signed.expires - now).total_seconds()
    assert abs(g[("homing_metadata_expiry_seconds", (("role", "root"),))] - root_left) < 120
    leaf = server.state.dd.certificates("server-chain.pem")[0]
    server_left = g[
        (
            "homing_certificate_expiry_seconds",
            (("certificate", "server certificate"), ("kind", "server")),
        )
    ]
    assert abs(server_left - (leaf.not_valid_after_utc - now).total_seconds()) < 120
    ca_names = {labels for name, labels in g if name == "homing_certificate_expiry_seconds"}
    assert (("certificate", "homing root CA"), ("kind", "ca")) in ca_names
    # Active devices: dev-a1 and dev-quiet on root 1, dev-b1 on root 2 (dev-a2 is revoked).
    assert g[("homing_devices_active", ())] == 3
    assert g[("homing_devices_revoked", ())] == 1
    assert g[("homing_devices_by_root_version", (("root_version", "1"),))] == 2
    assert g[("homing_devices_by_root_version", (("root_version", "2"),))] == 1
    assert g[("homing_devices_by_pin_policy_version", (("pin_policy_version", "1"),))] == 3
    assert g[("homing_devices_by_server_ca_generation", (("generation", "1"),))] == 3
    assert g[("homing_devices_not_seen", (("days", "7"),))] == 1
    # dev-a2 is revoked, so not counted among active devices that failed.
    assert g[("homing_devices_last_contact_failed", ())] == 0
    with server.state.db.engine.connect() as conn:
        row = device_store.device(conn, "dev-a2")
    assert row is not None
    assert row.last_failure is not None
    assert "revoked" in row.last_failure
    halted = (("hardware", "board-b"), ("rollout", str(fleet.halted)), ("version", "2.0.0"))
    rolling = (("hardware", "board-a"), ("rollout", str(fleet.rolling)), ("version", "2.0.0"))
    assert g[("homing_rollout_halted", halted)] == 1
    assert g[("homing_rollout_halted", rolling)] == 0
    assert g[("homing_rollout_state", (*rolling[:2], ("state", "active"), rolling[2]))] == 1
    assert g[("homing_rollout_stage_percent", rolling)] == 50


def test_a_refused_device_in_good_standing_counts_as_failed(
    server: RunningServer, tmp_path: Path
) -> None:
    """A device re-keyed elsewhere presents its old certificate: refused, and counted."""
    from cryptography.hazmat.primitives import serialization

    from homing.pki.keys import generate_tls_key

    state = device(server, tmp_path, "dev-1", "board-a")
    check_in(server, state)
    other = generate_tls_key().public_key()
    spki = other.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    with server.state.db.begin() as conn:
        device_store.set_device_key(conn, "dev-1", spki, server.clock())
    answer = server.request(
        "POST", "/v1/device/checkin", {"trust": {}}, context=device_context(server, state)
    )
    assert answer.status == 403
    assert _gauges(server)[("homing_devices_last_contact_failed", ())] == 1


# -- the retirement guard -----------------------------------------------------------------------


def test_guard_refuses_a_rotation_that_strands_a_device_seen_yesterday(
    server: RunningServer, tmp_path: Path
) -> None:
    state = device(server, tmp_path, "dev-1", "board-a")
    check_in(server, state)  # holds pins v1: server CA 1 and its backup, 2
    move_server_clock(server, timedelta(days=1))
    dd = server.state.dd
    # Promoting the backup (2) is safe: the device already pins it.
    assert ceremonies.rotate_issuing_ca(dd, "server", server.clock()) == 2
    before = dd.settings().server_ca_generation
    pins_before = (dd.repository_dir / "metadata" / "timestamp.json").read_bytes()
    # Promoting 3 would strand it: it was seen yesterday and holds only 1 and 2.
    with pytest.raises(StrandingError) as refused:
        ceremonies.rotate_issuing_ca(dd, "server", server.clock())
    assert refused.value.device_ids == ("dev-1",)
    assert "1 of 1 live devices" in str(refused.value)
    assert "dev-1" in str(refused.value)
    # Refused before anything changed.
    assert dd.settings().server_ca_generation == before
    assert (dd.repository_dir / "metadata" / "timestamp.json").read_bytes() == pins_before
    # A window that excludes yesterday lets it through; a forced rotation is audited.
    with pytest.raises(CeremonyError, match="reason"):
        ceremonies.rotate_issuing_ca(dd, "server", server.clock(), force_reason="  ")
    assert (
        ceremonies.rotate_issuing_ca(
            dd, "server", server.clock(), force_reason="server CA key 2 leaked"
        )
        == 3
    )
    with server.state.db.engine.connect() as conn:
        (entry,) = [e for e in audit.audit_entries(conn) if e["target"] == "generation 3"]
    assert entry["detail"]["forced"] == "server CA key 2 leaked"
    assert entry["detail"]["stranded"] == ["dev-1"]


def test_guard_lets_a_rotation_through_once_devices_caught_up(
    server: RunningServer, tmp_path: Path
) -> None:
    state = device(server, tmp_path, "dev-1", "board-a")
    check_in(server, state)
    dd = server.state.dd
    ceremonies.rotate_issuing_ca(dd, "server", server.clock())
    server.settle()
    check_in(server, state)  # now holds pins v2: server CA 2 and its backup, 3
    assert ceremonies.rotate_issuing_ca(dd, "server", server.clock()) == 3


def test_guard_ignores_devices_outside_the_live_window(
    server: RunningServer, tmp_path: Path
) -> None:
    state = device(server, tmp_path, "dev-1", "board-a")
    check_in(server, state)
    move_server_clock(server, timedelta(days=QUIET_DAYS))
    dd = server.state.dd
    ceremonies.rotate_issuing_ca(dd, "server", server.clock())
    with pytest.raises(StrandingError):
        ceremonies.rotate_issuing_ca(dd, "server", server.clock(), live_within=timedelta(days=30))
    assert (
        ceremonies.rotate_issuing_ca(
            dd, "server", server.clock(), live_within=timedelta(days=QUIET_DAYS - 1)
        )
        == 3
    )


def test_guard_through_the_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The installed CLI refuses in one line, then forces with a reason."""
    from tests.harness import Clock

    monkeypatch.delenv("HOMING_KEY_PASSPHRASE", raising=False)
    data = tmp_path / "site"
    ceremonies.init(data, datetime.now(UTC))
    from homing.site import DataDir

    running = RunningServer(data, DataDir(data).default_db_url(), Clock()).start()
    try:
        state = device(running, tmp_path, "dev-1", "board-a")
        check_in(running, state)
        first = run_homing("rotate", "server-ca", "--data", str(data))
        assert first.returncode == 0, first.stderr
        refused = run_homing("rotate", "server-ca", "--data", str(data))
        assert refused.returncode != 0
        assert "dev-1" in refused.stderr
        assert "Traceback" not in refused.stderr
        errors = [line for line in refused.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1
        assert "dev-1" in errors[0]
        no_reason = run_homing("rotate", "server-ca", "--force", "--data", str(data))
        assert no_reason.returncode != 0
        assert "--reason" in no_reason.stderr
        forced = run_homing(
            "rotate", "server-ca", "--force", "--reason", "drill", "--data", str(data)
        )
        assert forced.returncode == 0, forced.stderr
        assert "generation 3" in forced.stdout
    finally:
        running.stop()


# -- files shipped for operators -----------------------------------------------------------------


def _tool(name: str) -> str:
    from tests.harness import system_tool

    return system_tool(name)


def test_alert_rules_pass_promtool() -> None:
    promtool = _tool("promtool")
    rules = ROOT / "deploy" / "prometheus" / "homing-alerts.yml"
    result = subprocess.run(
        [promtool, "check", "rules", str(rules)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 12 rules found" in result.stdout


def test_every_shipped_alert_rule_has_a_promtool_test_that_fires_it() -> None:
    """promtool's unit tests feed series and assert each alert fires (and stays quiet)."""
    import re

    promtool = _tool("promtool")
    folder = ROOT / "deploy" / "prometheus"
    result = subprocess.run(
        [promtool, "test", "rules", "homing-alerts.test.yml"],
        capture_output=True,
        text=True,
        check=False,
        cwd=folder,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    alerts = set(re.findall(r"- alert: (\w+)", (folder / "homing-alerts.yml").read_text()))
    tests = (folder / "homing-alerts.test.yml").read_text()
    # A test that expects the alert to fire names it right before its exp_alerts with labels.
    fired = set(re.findall(r"alertname: (\w+)\n\s+exp_alerts:\n\s+- exp_labels", tests))
    assert len(alerts) == 12
    assert alerts == fired, alerts ^ fired


def test_alert_rules_name_only_gauges_the_server_exports(server: RunningServer) -> None:
    import re

    answer = server.request("GET", "/metrics")
    exported = {f.name for f in text_string_to_metric_families(answer.body.decode())}
    rules = (ROOT / "deploy" / "prometheus" / "homing-alerts.yml").read_text()
    used = set(re.findall(r"\bhoming_[a-z_]+\b", rules))
    assert used
    assert used <= exported, used - exported


def test_systemd_units_verify(tmp_path: Path) -> None:
    analyze = _tool("systemd-analyze")
    entry = shutil.which("homing") or str(Path(__import__("sys").executable).with_name("homing"))
    units = sorted(u for u in (ROOT / "deploy" / "systemd").glob("homing-*") if u.is_file())
    assert {u.name for u in units} >= {
        "homing-serve.service",
        "homing-agent.service",
        "homing-backup.service",
        "homing-backup.timer",
    }
    for unit in units:
        text = unit.read_text()
        if unit.suffix == ".service":
            assert "/opt/homing/venv/bin/homing" in text
        # The unit names where a package installs homing; verify against this install.
        (tmp_path / unit.name).write_text(text.replace("/opt/homing/venv/bin/homing", entry))
    result = subprocess.run(
        [analyze, "verify", *(str(p) for p in sorted(tmp_path.glob("homing-*")))],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert not result.stderr.strip(), result.stderr


def test_the_server_units_readiness_probe_waits_for_readyz(server: RunningServer) -> None:
    """The unit's ExecStartPost, run as shipped against a real server: 0 when it is
    ready, non-zero when nothing answers (systemd then fails the start)."""
    import shlex

    text = (ROOT / "deploy" / "systemd" / "homing-serve.service").read_text()
    joined = text.replace("\\\n", " ")
    line = next(x for x in joined.splitlines() if x.startswith("ExecStartPost="))
    probe = shlex.split(line.removeprefix("ExecStartPost="))
    assert "https://127.0.0.1:8443/readyz" in probe
    ready = [a.replace(":8443/", f":{server.port}/") for a in probe]
    result = subprocess.run(ready, capture_output=True, text=True, check=False, timeout=300)
    assert result.returncode == 0, result.stderr
    from tests.harness import free_port

    nobody = [
        a.replace(":8443/", f":{free_port()}/").replace("60", "1")
        if "8443" in a or a == "60"
        else a
        for a in probe
    ]
    result = subprocess.run(nobody, capture_output=True, text=True, check=False, timeout=300)
    assert result.returncode != 0
    assert "Failed to connect" in result.stderr or "Could not connect" in result.stderr


def test_a_fleet_view_session_ends_when_its_token_is_revoked(server: RunningServer) -> None:
    """The session cookie outlives nothing: revoking the token shuts the open session out."""
    from homing.store.schema import ui_sessions

    token = operations.add_token(server.state.db, "test", server.clock(), "eve", "operator")
    cookie = server.log_in(token)
    value = cookie.split("=", 1)[1]
    assert server.request("GET", "/ui", headers={"Cookie": cookie}).status == 200
    # The database holds only the cookie's hash.
    with server.state.db.engine.connect() as conn:
        stored = [r.session_hash for r in conn.execute(ui_sessions.select())]
    assert stored
    assert value not in stored
    operations.revoke_token(server.state.db, "test", server.clock(), "eve")
    browser = {"Cookie": cookie, "Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}
    after = server.request("GET", "/ui", headers=browser)
    assert after.status == 303
    assert after.headers["location"] == "/ui/login"
    # A client that is not a browser is told, not redirected.
    plain = server.request("GET", "/ui", headers={"Cookie": cookie})
    assert plain.status == 401
    assert b"log in first" in plain.body


def _exposure(analyze: str, unit: Path) -> float:
    """systemd's own exposure score of the agent's unit file as written (0 to 10)."""
    import re

    scored = subprocess.run(
        [analyze, "security", "--offline=true", "--no-pager", str(unit)],
        capture_output=True,
        text=True,
        check=False,
    )
    found = re.search(r"Overall exposure level for homing-agent\.service: ([0-9.]+)", scored.stdout)
    assert found is not None, scored.stdout + scored.stderr
    return float(found[1])


def test_the_agent_unit_runs_as_its_own_user_and_scores_at_most_3(tmp_path: Path) -> None:
    """The device's agent never runs as root; systemd's own exposure score of the shipped
    unit (offline: the unit file as written) is at most 3.0 of 10."""
    import re

    analyze = _tool("systemd-analyze")
    unit = ROOT / "deploy" / "systemd" / "homing-agent.service"
    text = unit.read_text()
    user = re.search(r"^User=(\S+)$", text, re.M)
    assert user is not None, "the agent unit names no user"
    assert user[1] not in ("root", "0")
    assert re.search(r"^CapabilityBoundingSet=$", text, re.M), "the agent keeps no capability"
    assert _exposure(analyze, unit) <= 3.0


def test_the_agent_units_tpm_drop_in_opens_the_tpm_and_nothing_more(tmp_path: Path) -> None:
    """With the TPM drop-in (deploy/systemd/homing-agent.service.d/tpm2.conf) merged, as
    systemd merges it, the agent reaches /dev/tpmrm0 only, its OpenSSL configuration is
    the shipped one, and the unit still scores at most 3.0."""
    import re

    analyze = _tool("systemd-analyze")
    unit = ROOT / "deploy" / "systemd" / "homing-agent.service"
    drop_in = ROOT / "deploy" / "systemd" / "homing-agent.service.d" / "tpm2.conf"
    text = drop_in.read_text()
    assert re.findall(r"^DeviceAllow=(.*)$", text, re.M) == ["/dev/tpmrm0 rw"]
    assert re.search(r"^DevicePolicy=closed$", text, re.M)
    conf = re.search(r"^Environment=OPENSSL_CONF=/opt/homing/(\S+)$", text, re.M)
    assert conf is not None
    assert (ROOT / conf[1]).is_file()
    merged = tmp_path / "homing-agent.service"
    merged.write_text(unit.read_text() + "\n" + text)
    assert _exposure(analyze, merged) <= 3.0


def test_the_agent_units_pkcs11_drop_in_reads_the_pin_and_opens_no_device(
    tmp_path: Path,
) -> None:
    """With the PKCS#11 drop-in merged, the token's PIN comes from a root-only environment
    file (never the unit), no device is opened unless the operator names it, and the unit
    still scores at most 3.0."""
    import re

    analyze = _tool("systemd-analyze")
    unit = ROOT / "deploy" / "systemd" / "homing-agent.service"
    text = (ROOT / "deploy" / "systemd" / "homing-agent.service.d" / "pkcs11.conf").read_text()
    assert re.findall(r"^EnvironmentFile=(.*)$", text, re.M) == ["/etc/homing/agent-pkcs11.env"]
    assert not re.search(r"^(DeviceAllow|PrivateDevices|Environment)=", text, re.M)
    assert "HOMING_PKCS11_PIN" in text
    merged = tmp_path / "homing-agent.service"
    merged.write_text(unit.read_text() + "\n" + text)
    assert _exposure(analyze, merged) <= 3.0
