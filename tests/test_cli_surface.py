"""Every CLI command, through the installed ``homing`` entry point: once working, once refused.

The table below holds, for each command, a successful call and a bad input
(which must fail with exactly one ``error:`` line, a non-zero exit and no
traceback). ``test_every_command_is_in_the_table`` walks the click tree, so a
new command without its two calls fails the suite. Where a success needs a
running fleet or several processes, the case names the test that runs it
through the same entry point instead.
"""

from __future__ import annotations

import inspect
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import click
import pytest

from homing import ceremonies
from homing.ceremonies.releases import release
from homing.cli import cli
from homing.operations import fleet as operations
from homing.operations import rollouts as rollout_ops
from homing.site import DataDir
from tests.conftest import device_csr
from tests.harness import Clock, RunningServer, run_homing


@dataclass
class Site:
    """One data directory, its database, and a home server running on both."""

    data: Path
    tmp: Path
    server: RunningServer
    factory: str

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.server.port}"

    def path(self, name: str) -> Path:
        return self.tmp / name

    def provisioned(self, device_id: str) -> Path:
        """A provisioned device state directory (made once)."""
        state = self.path(f"state-{device_id}")
        if not state.exists():
            result = run_homing(
                "device",
                "provision",
                "--data",
                str(self.data),
                "--out",
                str(state),
                "--id",
                device_id,
                "--hardware",
                "board-a",
                "--server",
                self.url,
            )
            assert result.returncode == 0, result.stderr
        return state

    def released(self, version: str, hardware: str = "board-a") -> str:
        image = self.path(f"fw-{hardware}-{version}.bin")
        if not image.exists():
            image.write_bytes(f"firmware {hardware} {version}".encode())
            return release(self.data, image, version, hardware, datetime.now(UTC)).target
        return f"firmware/{hardware}-{version}"

    def rollout(self) -> int:
        """An active rollout id (a fresh release each time so none is left active)."""
        version = f"3.0.{len(list(self.tmp.glob('fw-board-a-3.*')))}"
        self.released(version)
        for ro in rollout_ops.list_rollouts(self.server.state.db):
            if ro.status == "active":
                rollout_ops.set_paused(self.server.state.db, "test", datetime.now(UTC), ro.id, True)
        return rollout_ops.create(
            self.server.state.db, "test", datetime.now(UTC), version, "board-a"
        ).id


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    tmp = tmp_path_factory.mktemp("surface")
    data = tmp / "data"
    made = run_homing("init", "--data", str(data))
    assert made.returncode == 0, made.stderr
    dd = DataDir(data)
    server = RunningServer(data, dd.default_db_url(), Clock()).start()
    secret = operations.add_factory(server.state.db, "test", datetime.now(UTC), "line-1")
    try:
        yield Site(data, tmp, server, f"line-1:{secret}")
    finally:
        server.stop()


Args = Callable[[Site], list[str]]


@dataclass(frozen=True)
class Case:
    ok: Args | str  # the arguments of a successful call, or the test that makes one
    bad: Args
    error: str  # what the one error line says
    expect: str = ""  # what the successful call prints


_MQTT = (
    "tests/test_device_mqtt.py::"
    "test_an_mqtt_application_follows_rotations_and_a_revoked_device_is_refused"
)


def _d(site: Site) -> list[str]:
    return ["--data", str(site.data)]


def _csr(site: Site, device_id: str) -> str:
    path = site.path(f"{device_id}.csr")
    path.write_bytes(device_csr(device_id))
    return str(path)


def _bundle(site: Site) -> str:
    path = site.path("bundle.tar")
    if not path.exists():
        ceremonies.recovery_bundle(site.data, path, datetime.now(UTC))
    return str(path)


def _garbage(site: Site) -> str:
    path = site.path("garbage.tar")
    path.write_bytes(b"not a tar file at all")
    return str(path)


NOWHERE = "/nonexistent/homing-data"


def _backup(site: Site) -> str:
    from homing.site.backup import backup

    path = site.path("for-restore.tar.gz")
    if not path.exists():
        dd = DataDir(site.data)
        try:
            backup(dd, path, datetime.now(UTC))
        finally:
            dd.close()
    return str(path)


_ACME = "tests/test_acme.py::test_acme_through_the_cli"
_CEREMONY = (
    "tests/test_threshold_ceremony.py"
    "::test_two_of_three_root_rotation_by_three_holders_in_three_processes"
)

_ALLOWLISTS = (
    "tests/test_allowlists.py::test_a_stolen_station_secret_enrolls_nothing_off_its_manifest"
)

_TWO_HOMES = (
    "tests/test_custody.py::test_two_homes_an_issuing_ca_promoted_without_a_root_key_on_the_server"
)

CASES: dict[str, Case] = {
    "ceremony propose-ca": Case(
        _TWO_HOMES,
        lambda s: [
            "ceremony",
            "propose-ca",
            "--data",
            NOWHERE,
            "--kind",
            "server",
            "--out",
            str(s.path("r.json")),
        ],
        "no homing data directory",
    ),
    "ceremony sign-ca": Case(
        _TWO_HOMES,
        lambda s: [
            "ceremony",
            "sign-ca",
            _garbage(s),
            "--root-ca-key",
            _garbage(s),
            "--out",
            str(s.path("c.pem")),
            "--yes",
        ],
        "the CA request is not JSON",
    ),
    "ceremony import-ca": Case(
        _TWO_HOMES,
        lambda s: ["ceremony", "import-ca", *_d(s), _garbage(s), _garbage(s)],
        "the CA request is not JSON",
    ),
    "keystore move-offline": Case(
        "tests/test_custody.py::test_offline_keys_leave_the_server_and_serve_refuses_them",
        lambda s: ["keystore", "move-offline", *_d(s), "--to", str(s.path("media"))],
        "set HOMING_HOLDER_PASSPHRASE",
    ),
    "keystore pkcs11": Case(
        "tests/test_pkcs11.py::test_keystore_pkcs11_through_the_cli",
        lambda s: [
            "keystore",
            "pkcs11",
            "--data",
            NOWHERE,
            "--module",
            _garbage(s),
            "--token",
            "t",
            "--key",
            "timestamp-*",
        ],
        "no homing data directory",
    ),
    "ceremony keygen": Case(
        _CEREMONY,
        lambda s: [
            "ceremony",
            "keygen",
            "--out",
            str(s.path("k.pem")),
            "--public-out",
            str(s.path("k.pub")),
        ],
        "set HOMING_HOLDER_PASSPHRASE",
    ),
    "ceremony propose-root": Case(
        _CEREMONY,
        lambda s: ["ceremony", "propose-root", "--data", NOWHERE, "--out", str(s.path("p.json"))],
        "no homing data directory",
    ),
    "ceremony propose-targets": Case(
        "tests/test_threshold_ceremony.py::test_targets_handed_to_a_holder_and_signed_apart",
        lambda s: [
            "ceremony",
            "propose-targets",
            "--data",
            NOWHERE,
            "--out",
            str(s.path("t.json")),
        ],
        "no homing data directory",
    ),
    "ceremony sign": Case(
        _CEREMONY,
        lambda s: [
            "ceremony",
            "sign",
            _garbage(s),
            "--key",
            _garbage(s),
            "--out",
            str(s.path("s.json")),
            "--yes",
        ],
        "not JSON",
    ),
    "ceremony publish": Case(
        _CEREMONY,
        lambda s: ["ceremony", "publish", *_d(s), _garbage(s), _garbage(s)],
        "not JSON",
    ),
    "acme setup": Case(
        _ACME,
        lambda s: [
            "acme",
            "setup",
            *_d(s),
            "--directory",
            "http://acme.example/dir",
            "--public-roots",
            _garbage(s),
        ],
        "must be an https:// URL",
    ),
    "acme issue": Case(_ACME, lambda s: ["acme", "issue", *_d(s)], "ACME is not set up here"),
    "acme roots": Case(
        _ACME, lambda s: ["acme", "roots", *_d(s), _garbage(s)], "ACME is not set up here"
    ),
    "acme mode": Case(
        _ACME, lambda s: ["acme", "mode", *_d(s), "public"], "ACME is not set up here"
    ),
    "init": Case(
        lambda s: ["init", "--data", str(s.path("fresh"))],
        lambda s: ["init", "--ceremony", "--data", str(s.path("fresh2"))],
        "--ceremony needs at least one --root-key",
        "server CA backup pin",
    ),
    "rotate root": Case(
        lambda s: ["rotate", "root", *_d(s)],
        lambda s: ["rotate", "root", "--data", NOWHERE],
        "no homing data directory",
        "published root version",
    ),
    "rotate server-ca": Case(
        lambda s: ["rotate", "server-ca", *_d(s)],
        lambda s: ["rotate", "server-ca", "--data", NOWHERE],
        "no homing data directory",
        "is active; new pins published",
    ),
    "rotate endpoints": Case(
        "tests/test_moving_home.py::test_a_device_asleep_through_the_move_comes_home_at_the_new_name",
        lambda s: [
            "rotate",
            "endpoints",
            *_d(s),
            "--host",
            "localhost",
            "--primary",
            "ftp://localhost",
        ],
        "must be an https:// URL",
    ),
    "rotate firmware-key": Case(
        lambda s: ["rotate", "firmware-key", *_d(s)],
        lambda s: ["rotate", "firmware-key", "--data", NOWHERE],
        "no homing data directory",
        "firmware key generation 2 delegated",
    ),
    "rotate root-ca": Case(
        lambda s: ["rotate", "root-ca", *_d(s)],
        lambda s: ["rotate", "root-ca", "--data", NOWHERE],
        "no homing data directory",
        "root CA generation",
    ),
    "rotate device-ca": Case(
        lambda s: ["rotate", "device-ca", *_d(s)],
        lambda s: ["rotate", "device-ca", "--data", NOWHERE],
        "no homing data directory",
        "is active",
    ),
    "rotate server-cert": Case(
        lambda s: ["rotate", "server-cert", *_d(s)],
        lambda s: ["rotate", "server-cert", "--data", NOWHERE],
        "no homing data directory",
        "new server certificate",
    ),
    "rotate session-tickets": Case(
        lambda s: ["rotate", "session-tickets", *_d(s)],
        lambda s: ["rotate", "session-tickets", "--data", NOWHERE],
        "no homing data directory",
        "session-ticket secret replaced",
    ),
    "rotate online-keys": Case(
        lambda s: ["rotate", "online-keys", *_d(s)],
        lambda s: ["rotate", "online-keys", "--data", NOWHERE],
        "no homing data directory",
        "online keys replaced",
    ),
    "timestamp refresh": Case(
        lambda s: ["timestamp", "refresh", "--expires-in", "2", *_d(s)],
        lambda s: ["timestamp", "refresh", "--expires-in", "-1", *_d(s)],
        "must be positive",
        "timestamp version",
    ),
    "targets refresh": Case(
        lambda s: ["targets", "refresh", *_d(s)],
        lambda s: ["targets", "refresh", "--data", NOWHERE],
        "no homing data directory",
        "targets version",
    ),
    "pki issue": Case(
        lambda s: ["pki", "issue", "--profile", "device", "--csr", _csr(s, "dev-issue"), *_d(s)],
        lambda s: ["pki", "issue", "--profile", "device", "--csr", _garbage(s), *_d(s)],
        "CSR cannot be parsed",
        "BEGIN CERTIFICATE",
    ),
    "pki revoke": Case(
        lambda s: ["pki", "revoke", "--device", _issued(s, "dev-revoked"), *_d(s)],
        lambda s: ["pki", "revoke", "--serial", "xyz", *_d(s)],
        "not hexadecimal",
        "revoked",
    ),
    "pki crl": Case(
        lambda s: ["pki", "crl", "--ca", "device", *_d(s)],
        lambda s: ["pki", "crl", "--ca", "bogus", *_d(s)],
        "'bogus' is not one of",
        "CRL written",
    ),
    "pins show": Case(
        lambda s: ["pins", "show", *_d(s)],
        lambda s: ["pins", "show", "--data", NOWHERE],
        "no homing data directory",
        "spki_pins",
    ),
    "site publish": Case(
        "tests/test_shared_site.py::test_the_cli_publishes_and_follows_a_shared_site",
        lambda s: ["site", "publish", *_d(s)],
        "needs PostgreSQL",
    ),
    "site status": Case(
        "tests/test_shared_site.py::test_the_cli_publishes_and_follows_a_shared_site",
        lambda s: ["site", "status", "--data", NOWHERE],
        "no homing data directory",
    ),
    "replica join": Case(
        "tests/test_replicas_netns.py::test_three_replicas_lose_two_signers_and_no_device_notices",
        lambda s: [
            "replica",
            "join",
            "--data",
            str(s.path("replica-new")),
            "--keys",
            NOWHERE,
            "--name",
            "r9",
            "--host",
            "r9.localhost",
        ],
        "not a directory of exported online keys",
    ),
    "replica import-keys": Case(
        "tests/test_shared_site.py::test_a_replica_follows_rotations_once_it_has_the_new_keys",
        lambda s: ["replica", "import-keys", *_d(s), "--keys", NOWHERE],
        "not a directory of exported online keys",
    ),
    "keystore export-online": Case(
        lambda s: ["keystore", "export-online", *_d(s), "--to", str(s.path("online-keys"))],
        lambda s: ["keystore", "export-online", "--data", NOWHERE, "--to", str(s.path("k2"))],
        "no homing data directory",
        "exported",
    ),
    "backup": Case(
        lambda s: ["backup", *_d(s), "--out", str(s.path("site-backup.tar.gz"))],
        lambda s: ["backup", *_d(s), "--out", _garbage(s)],
        "refusing to overwrite a backup",
        "backed up",
    ),
    "restore": Case(
        lambda s: [
            "restore",
            "--data",
            str(s.path("restored")),
            "--from",
            _backup(s),
            "--db",
            f"sqlite:///{s.path('restored.db')}",
        ],
        lambda s: ["restore", "--data", str(s.path("restored-bad")), "--from", _garbage(s)],
        "not a readable homing backup",
        "restored",
    ),
    "serve": Case(
        "tests/test_server_processes.py::test_several_processes_against_one_database_stay_consistent",
        lambda s: ["serve", "--listen", "nonsense", *_d(s)],
        "--listen must be HOST:PORT",
    ),
    "factory add": Case(
        lambda s: ["factory", "add", "line-2", *_d(s)],
        lambda s: ["factory", "add", "../x", *_d(s)],
        "invalid",
        "line-2:",
    ),
    "factory list": Case(
        lambda s: ["factory", "list", *_d(s)],
        lambda s: ["factory", "list", "--db", "postgresql://nobody@127.0.0.1:1/none", *_d(s)],
        "cannot reach or migrate the database",
        "line-1: secret, active",
    ),
    "factory disable": Case(
        lambda s: ["factory", "disable", _station(s, "line-3"), *_d(s)],
        lambda s: ["factory", "disable", "ghost-line", *_d(s)],
        "no factory station 'ghost-line'",
        "disabled",
    ),
    "token add": Case(
        lambda s: ["token", "add", "ops", "--role", "operator", *_d(s)],
        lambda s: ["token", "add", "ops2", "--role", "root", *_d(s)],
        "'root' is not one of",
        "hom_",
    ),
    "token list": Case(
        lambda s: ["token", "list", *_d(s)] if _token(s, "ops-list") else [],
        lambda s: ["token", "list", "--db", "postgresql://nobody@127.0.0.1:1/none", *_d(s)],
        "cannot reach or migrate the database",
        "ops-list: operator",
    ),
    "token revoke": Case(
        lambda s: ["token", "revoke", _token(s, "ops-revoke"), *_d(s)],
        lambda s: ["token", "revoke", "ghost-token", *_d(s)],
        "no operator token 'ghost-token'",
        "revoked",
    ),
    "revoke": Case(
        lambda s: ["revoke", _device(s, "dev-gone"), "--reason", "stolen", *_d(s)],
        lambda s: ["revoke", "ghost", *_d(s)],
        "no device 'ghost'",
        "revoked",
    ),
    "factory manifest": Case(
        _ALLOWLISTS,
        lambda s: ["factory", "manifest", "line-1", _garbage(s), *_d(s)],
        "expected 'DEVICE_ID [KEY_SHA256_HEX]'",
    ),
    "factory limit": Case(
        _ALLOWLISTS,
        lambda s: ["factory", "limit", "line-1", "--expires", "soon", *_d(s)],
        "--expires must be an ISO 8601 time",
    ),
    "factory block": Case(
        _ALLOWLISTS,
        lambda s: ["factory", "block", "../etc", *_d(s)],
        "invalid device id",
    ),
    "agent proxy": Case(
        "tests/test_device_proxy.py::test_curl_reaches_home_through_the_proxy_every_way",
        lambda s: ["agent", "proxy", "--state", NOWHERE, "--port", "1"],
        "holds no verified pin policy yet",
    ),
    "agent export": Case(
        "tests/test_device_apps.py::test_exported_trust_serves_curl_through_rotations_and_runs_the_hook",
        lambda s: ["agent", "export", "--state", NOWHERE, "--off"],
        "no device state",
    ),
    "broker set": Case(
        _MQTT,
        lambda s: ["broker", "set", "mqtts://elsewhere.example:8883", *_d(s)],
        "not one of the site's hosts",
    ),
    "broker export": Case(
        _MQTT,
        lambda s: ["broker", "export", "--host", "elsewhere.example", "--dir", NOWHERE, *_d(s)],
        "not one of the site's hosts",
    ),
    "clock status": Case(
        lambda s: ["clock", "status", *_d(s)],
        lambda s: ["clock", "status", "--db", "postgresql://nobody@127.0.0.1:1/none", *_d(s)],
        "cannot reach or migrate the database",
        "the server may sign at this time",
    ),
    "clock confirm": Case(
        "tests/test_clock_guard.py::test_clock_commands_from_outside",
        lambda s: ["clock", "confirm", "--reason", "x", "--data", NOWHERE],
        "no homing data directory",
    ),
    "factory add-manufacturer": Case(
        "tests/test_idevid_enrollment.py::test_an_idevid_enrolls_over_est_with_curl_and_no_secret",
        lambda s: ["factory", "add-manufacturer", "mfr", "--ca", _garbage(s), *_d(s)],
        "holds no PEM certificate",
    ),
    "factory update-crl": Case(
        "tests/test_idevid_enrollment.py::test_idevids_that_must_not_enroll_are_refused",
        lambda s: ["factory", "update-crl", "line-1", _garbage(s), *_d(s)],
        "the CRL file cannot be read",
    ),
    "revoke-batch": Case(
        "tests/test_revoke_batch.py::test_the_cli_revokes_a_list_and_an_issuing_cas_devices",
        lambda s: ["revoke-batch", "--station", "line-1", "--until", "never", *_d(s)],
        "--until must be an ISO 8601 time",
    ),
    "audit": Case(
        "tests/test_fleet_audit.py::test_each_seeded_defect_is_flagged_and_a_clean_fleet_flags_nothing",
        lambda s: ["audit", "--data", NOWHERE],
        "no homing data directory",
    ),
    "status": Case(
        lambda s: ["status", *_d(s)],
        lambda s: ["status", "--data", NOWHERE],
        "no homing data directory",
        "metadata versions",
    ),
    "devices list": Case(
        lambda s: ["devices", "list", *_d(s)],
        lambda s: ["devices", "list", "--limit", "0", *_d(s)],
        "--limit",
        "device(s)",
    ),
    "devices group": Case(
        lambda s: ["devices", "group", "lab", _device(s, "dev-a"), *_d(s)],
        lambda s: ["devices", "group", "lab", "ghost", *_d(s)],
        "no devices ghost",
        "",
    ),
    "device provision": Case(
        lambda s: ["device", "provision", "--out", str(s.path("prov")), "--id", "dev-p", *_d(s)],
        lambda s: ["device", "provision", "--out", str(s.path("prov2")), "--id", "../x", *_d(s)],
        "invalid device id",
        "provisioned",
    ),
    "agent enroll": Case(
        lambda s: [
            "agent",
            "enroll",
            "--state",
            str(s.path("enrolled")),
            "--server",
            s.url,
            "--factory",
            s.factory,
            "--root",
            str(s.data / "repository/metadata/1.root.json"),
            "--id",
            "dev-enrolled",
            "--hardware",
            "board-a",
        ],
        lambda s: [
            "agent",
            "enroll",
            "--state",
            str(s.path("enrolled2")),
            "--server",
            s.url,
            "--factory",
            "no-colon",
            "--root",
            str(s.data / "repository/metadata/1.root.json"),
        ],
        "NAME:SECRET",
        "enrolled",
    ),
    "agent run": Case(
        lambda s: ["agent", "run", "--once", "--state", str(s.provisioned("dev-run"))],
        lambda s: ["agent", "run", "--once", "--state", NOWHERE],
        "no device state",
        "",
    ),
    "agent status": Case(
        lambda s: ["agent", "status", "--state", str(s.provisioned("dev-a"))],
        lambda s: ["agent", "status", "--state", NOWHERE],
        "no device state",
        "dev-a",
    ),
    "agent tuf-client": Case(
        "tests/test_agent_offline_tools.py::test_tuf_client_protocol",
        lambda s: ["agent", "tuf-client", "--metadata-dir", str(s.path("tufc")), "refresh"],
        "--metadata-url",
    ),
    "agent apply-bundle": Case(
        lambda s: ["agent", "apply-bundle", "--state", str(s.provisioned("dev-a")), _bundle(s)],
        lambda s: ["agent", "apply-bundle", "--state", str(s.provisioned("dev-a")), _garbage(s)],
        "this is not a recovery bundle: not a tar archive",
        "trust updated",
    ),
    "recovery-bundle": Case(
        lambda s: ["recovery-bundle", "--out", str(s.path("b2.tar")), "--valid-days", "7", *_d(s)],
        lambda s: ["recovery-bundle", "--out", str(s.path("b3.tar")), "--valid-days", "0", *_d(s)],
        "--valid-days",
        "valid until",
    ),
    "release": Case(
        lambda s: ["release", _image(s), "--version", "2.1.0", "--hardware", "board-a", *_d(s)],
        lambda s: ["release", _image(s), "--version", "two", "--hardware", "board-a", *_d(s)],
        "version",
        "2.1.0",
    ),
    "release-import": Case(
        "tests/test_firmware.py::test_ceremony_mode_release_signed_offline_and_imported",
        lambda s: ["release-import", str(s.path("no-such-signed-release")), *_d(s)],
        "no-such-signed-release",
    ),
    "rollout create": Case(
        lambda s: _rollout_create(s),
        lambda s: [
            "rollout",
            "create",
            "--version",
            "2.0.0",
            "--hardware",
            "board-a",
            "--stages",
            "1,x",
            *_d(s),
        ],
        "--stages must be comma-separated percentages",
        "group 'lab'",
    ),
    "rollout pause": Case(
        lambda s: ["rollout", "pause", str(s.rollout()), *_d(s)],
        lambda s: ["rollout", "pause", "999999", *_d(s)],
        "999999",
        "paused",
    ),
    "rollout resume": Case(
        lambda s: ["rollout", "resume", str(_paused(s)), *_d(s)],
        lambda s: ["rollout", "resume", "999999", *_d(s)],
        "999999",
        "resumed",
    ),
    "rollout status": Case(
        lambda s: ["rollout", "status", str(s.rollout()), *_d(s)],
        lambda s: ["rollout", "status", "999999", *_d(s)],
        "999999",
        "stage_progress",
    ),
    "rollout list": Case(
        lambda s: ["rollout", "list", *_d(s)] if s.rollout() else [],
        lambda s: ["rollout", "list", "--db", "notaurl", *_d(s)],
        "invalid database URL",
        "board-a",
    ),
    "demo": Case(
        lambda s: ["demo"],
        lambda s: ["demo", "--fast"],
        "No such option '--fast'",
        "the fleet at the end",
    ),
    "simulate": Case(
        lambda s: [
            "simulate",
            "--devices",
            "50",
            "--years",
            "1",
            "--strategy",
            "homing",
            "--out",
            str(s.path("sim")),
        ],
        lambda s: ["simulate", "--years", "51"],
        "--years",
        "homing",
    ),
}


def _image(site: Site) -> str:
    image = site.path("fw-cli.bin")
    image.write_bytes(b"firmware from the cli")
    return str(image)


def _issued(site: Site, device_id: str) -> str:
    """A device certificate issued by hand, so each case stands on its own."""
    csr = device_csr(device_id)
    ceremonies.issue_certificate(site.data, csr, "device", datetime.now(UTC))
    return device_id


def _station(site: Site, name: str) -> str:
    operations.add_factory(site.server.state.db, "test", datetime.now(UTC), name)
    return name


def _token(site: Site, name: str) -> str:
    operations.add_token(site.server.state.db, "test", datetime.now(UTC), name, "operator")
    return name


def _device(site: Site, device_id: str) -> str:
    site.provisioned(device_id)
    return device_id


def _rollout_create(site: Site) -> list[str]:
    """A group rollout of its own hardware class, so no other case's rollout is in the way."""
    from homing.store import firmware

    site.released("2.0.0", "board-r")
    member = _device(site, "dev-a")  # provisioned before the transaction: another process
    with site.server.state.db.begin() as conn:
        firmware.set_group(conn, "lab", [member])
    return [
        "rollout", "create", "--version", "2.0.0", "--hardware", "board-r", "--group", "lab",
        "--deadline-hours", "6", *_d(site),
    ]  # fmt: skip


def _paused(site: Site) -> int:
    rollout_id = site.rollout()
    rollout_ops.set_paused(site.server.state.db, "test", datetime.now(UTC), rollout_id, True)
    return rollout_id


def _leaves(group: click.Group, prefix: tuple[str, ...] = ()) -> Iterator[str]:
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            yield from _leaves(command, (*prefix, name))
        else:
            yield " ".join((*prefix, name))


def test_every_command_is_in_the_table() -> None:
    assert set(_leaves(cli)) == set(CASES)


def test_commands_run_elsewhere_are_run_there_through_the_entry_point() -> None:
    import importlib

    for name, case in CASES.items():
        if not isinstance(case.ok, str):
            continue
        module_path, _, function = case.ok.partition("::")
        module = importlib.import_module(module_path.removesuffix(".py").replace("/", "."))
        test = getattr(module, function)
        source = inspect.getsource(module)
        assert callable(test), case.ok
        # The named module drives the command through the installed entry point.
        assert "homing_entry_point" in source or "run_homing" in source, case.ok
        assert f'"{name.split()[-1]}"' in source, (name, case.ok)


def _one_error_line(result: subprocess.CompletedProcess[str], expected: str) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr + result.stdout
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    assert expected in errors[0], errors[0]


@pytest.mark.parametrize("command", sorted(CASES))
def test_command_succeeds(site: Site, command: str) -> None:
    case = CASES[command]
    if isinstance(case.ok, str):
        return  # run by the named test; checked by the test above
    args = case.ok(site)
    assert args, command
    result = run_homing(*args, env={"HOMING_DB": site.server.state.db.url}, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert case.expect in " ".join(result.stdout.split()), result.stdout


@pytest.mark.parametrize("command", sorted(CASES))
def test_command_refuses_bad_input_in_one_line(site: Site, command: str) -> None:
    case = CASES[command]
    result = run_homing(*case.bad(site), env={"HOMING_DB": site.server.state.db.url})
    _one_error_line(result, case.error)


def test_a_usage_error_is_one_line_too() -> None:
    result = run_homing("rotate", "sideways")
    _one_error_line(result, "No such command 'sideways'")
    assert result.returncode == 2


def test_every_option_of_every_command_says_what_it_is_for() -> None:
    """`--help` is the operator's manual at 3 a.m.: no option without a description."""
    import click

    from homing.cli import cli

    bare: list[str] = []

    def walk(command: click.Command, path: list[str]) -> None:
        if isinstance(command, click.Group):
            for name, sub in command.commands.items():
                walk(sub, [*path, name])
            return
        bare.extend(
            f"{' '.join(path)} {param.opts[0]}"
            for param in command.params
            if isinstance(param, click.Option) and not param.hidden and not param.help
        )

    walk(cli, [])
    assert bare == []
