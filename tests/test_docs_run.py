"""Docs that run: every shell block of README.md and docs/*.md is run or checked by a test.

How each block is held to the code is in its info string (tests/doc_blocks.py).
Runnable blocks of a document run in order as one bash script (``set -e``), in
a temporary directory, with ``homing`` on the PATH and $HOMING_DATA set as a
reader's shell would have it, against local stand-ins: a home server on
loopback for ``home.example.com``, a manufacturer's CA made by openssl, the
local PostgreSQL for a database host, a ``systemctl`` that records what it was
asked. The reader's paths (``/srv/homing``, ``DIR``, ``/var/lib/homing-agent``)
are mapped into the directory; nothing else of the text changes, so a doc
cannot drift from the code.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.doc_blocks import ROOT, Block, Reader, blocks, documents, reader_for, synopsis_errors
from tests.harness import (
    Clock,
    RunningServer,
    free_port,
    postgres_database,
    run_homing,
)
from tests.manufacturer import OpensslManufacturer

HOLDER = "the key holder's passphrase"
SERVER_PASSPHRASE = "the server's own passphrase"


def _all_shell_blocks() -> list[Block]:
    return [b for path in documents() for b in blocks(path) if b.language in _SHELLS]


_SHELLS = ("sh", "bash", "shell", "console", "zsh")


def test_every_shell_block_says_how_it_is_held_to_the_code() -> None:
    found = _all_shell_blocks()
    assert len(found) > 30
    for block in found:
        assert block.language == "sh", f"{block.where}: write shell blocks as ```sh"
        assert block.kind in ("run", "synopsis", "run-by"), block.where
    # Every document with runnable blocks has its runner below.
    runnable = {b.path.name for b in found if b.kind == "run"}
    assert runnable == set(RUNNERS), sorted(runnable ^ set(RUNNERS))


@pytest.mark.parametrize(
    "block", [b for b in _all_shell_blocks() if b.kind == "synopsis"], ids=lambda b: b.where
)
def test_a_synopsis_names_only_commands_and_options_that_exist(block: Block) -> None:
    from homing.cli import cli

    assert synopsis_errors(block, cli) == []


def test_the_synopsis_check_fails_on_a_command_or_option_that_does_not_exist() -> None:
    from homing.cli import cli

    def check(text: str) -> list[str]:
        return synopsis_errors(Block(ROOT / "README.md", 1, "sh", "synopsis", "", text), cli)

    assert check("homing rotate server-ca --data DIR\n") == []
    assert check("homing rotate server-ca --data DIR --frobnicate\n") != []
    assert check("homing rotate sideways --data DIR\n") != []
    assert check("make test\n") == []
    assert check("make tset\n") != []


@pytest.mark.parametrize(
    "block", [b for b in _all_shell_blocks() if b.kind == "run-by"], ids=lambda b: b.where
)
def test_a_block_run_by_another_test_is_read_from_the_doc_by_it(block: Block) -> None:
    test = ROOT / block.argument
    assert test.is_file(), f"{block.where}: {block.argument} does not exist"
    source = test.read_text()
    assert block.path.name in source, f"{block.argument} does not read {block.path.name}"


# -- running documents ---------------------------------------------------------------


@contextmanager
def _home(tmp_path: Path, db_url: str | None = None) -> Iterator[tuple[Reader, RunningServer]]:
    """A development site serving on loopback: the stand-in for home.example.com
    (on PostgreSQL, as $HOMING_DB, when ``db_url`` is given)."""
    site = tmp_path / "site"
    made = run_homing("init", "--data", str(site), "--host", "localhost")
    assert made.returncode == 0, made.stderr
    database = db_url or f"sqlite:///{site / 'homing.db'}"
    server = RunningServer(site, database, Clock()).start()
    try:
        url = f"https://localhost:{server.port}"
        extra = {"HOMING_DB": db_url} if db_url else {}
        reader = reader_for(tmp_path, site, SERVER=url, **extra)
        reader.paths.insert(0, (r"https://home\.example\.com(:\d+)?", "$SERVER"))
        # What a device receives at the factory: the site's first root metadata.
        shutil.copy(site / "repository" / "metadata" / "1.root.json", tmp_path / "1.root.json")
        yield reader, server
    finally:
        server.stop()


def _provision(reader: Reader, device_id: str, out: Path, hardware: str = "board-a") -> None:
    made = run_homing(
        "device", "provision", "--data", reader.env["SITE"], "--out", str(out),
        "--id", device_id, "--hardware", hardware, "--server", reader.env["SERVER"],
        env={k: v for k, v in reader.env.items() if k == "HOMING_DB"},
    )  # fmt: skip
    assert made.returncode == 0, made.stderr


def _readme(tmp_path: Path) -> None:
    site = tmp_path / "site"
    reader = reader_for(tmp_path, site)
    # The README's set-up: the environment `make` made, the one running these tests.
    reader.paths.append((r"^\. \.venv/bin/activate", f". {sys.prefix}/bin/activate"))
    reader.run("README.md")


def _quickstart(tmp_path: Path) -> None:
    with _home(tmp_path) as (reader, _server):
        acme = OpensslManufacturer.create(tmp_path / "vendor", "acme")
        shutil.copy(acme.dir / "bundle.pem", tmp_path / "acme-cas.pem")
        shutil.copy(acme.crl(), tmp_path / "acme.crl")
        cert, key = acme.idevid("sensor-0042")
        (tmp_path / "factory").mkdir()
        shutil.copy(cert, tmp_path / "factory" / "idevid.pem")
        shutil.copy(key, tmp_path / "factory" / "idevid.key")
        reader.paths.insert(0, (r"/factory/", "$WORK/factory/"))
        # Each device of the page is another device: its own state directory.
        reader.paths.insert(0, (r"/var/lib/homing-agent", "$WORK/agent-{n}"))
        reader.run("quickstart.md")
        assert (tmp_path / "agent-0" / "cert.pem").is_file()
        assert (tmp_path / "agent-1" / "cert.pem").is_file()


def _est_with_curl(tmp_path: Path) -> None:
    with _home(tmp_path) as (reader, _server):
        acme = OpensslManufacturer.create(tmp_path / "vendor", "acme")
        cert, key = acme.idevid("sensor-0099")
        shutil.copy(cert, tmp_path / "idevid.pem")
        shutil.copy(key, tmp_path / "idevid.key")
        imported = run_homing(
            "factory", "add-manufacturer", "acme", "--ca", str(acme.dir / "bundle.pem"),
            "--data", reader.env["SITE"],
        )  # fmt: skip
        assert imported.returncode == 0, imported.stderr
        reader.paths.insert(0, (r"https://localhost:8443", "$SERVER"))
        reader.paths.insert(0, (r"\.homing-data", "$SITE"))
        result = reader.run("est-with-curl.md")
        assert "BEGIN CERTIFICATE" in result.stdout
        assert (tmp_path / "dev-renewed.pem").read_text().startswith("subject=")


def _firmware(tmp_path: Path) -> None:
    with _home(tmp_path) as (reader, _server):
        for i in range(1, 9):
            _provision(reader, f"dev-{i}", tmp_path / f"dev-{i}")
        (tmp_path / "fw-2.1.0.img").write_bytes(b"\x7fELF board-a 2.1.0" * 1000)
        (tmp_path / "fw-2.2.0.img").write_bytes(b"\x7fELF board-a 2.2.0" * 1000)
        reader.paths.insert(0, (r"/media/release\.key", "$SITE/keys/firmware.key.pem"))
        reader.paths.insert(0, (r"\bSTATE\b", "$WORK/dev-1"))
        result = reader.run("firmware.md")
        assert "stage 1 of 4 (1%): 1 of 8 board-a devices" in result.stdout


def _agent(tmp_path: Path) -> None:
    with _home(tmp_path) as (reader, _server):
        _provision(reader, "dev-1", tmp_path / "agent")
        result = reader.run("agent.md")
        assert "trust updated to root v1" in result.stdout


def _ceremonies(tmp_path: Path) -> None:
    """A production site whose root CA key went to the offline site's medium and whose
    pins went to a targets holder (carol), as the page's two homes have it."""
    site = tmp_path / "site"
    server_env = {"HOMING_KEY_PASSPHRASE": SERVER_PASSPHRASE}
    holder_env = {"HOMING_HOLDER_PASSPHRASE": HOLDER}
    media = tmp_path / "media"
    steps = [
        (["init", "--data", str(site), "--ceremony", "--host", "home.example.com",
          "--root-key", str(media / "holder" / "root.pem")],
         {**server_env, "HOMING_HOLDER_PASSPHRASE_1": HOLDER}),
        (["keystore", "move-offline", "--data", str(site), "--to", str(media / "offline-keys")],
         {**server_env, **holder_env}),
        (["ceremony", "keygen", "--out", str(media / "carol" / "targets.pem"),
          "--public-out", str(tmp_path / "carol-targets.pub")], holder_env),
        (["ceremony", "propose-root", "--data", str(site), "--out", str(tmp_path / "root.json"),
          "--targets-key", str(tmp_path / "carol-targets.pub")], server_env),
        (["ceremony", "sign", str(tmp_path / "root.json"), "--key",
          str(media / "holder" / "root.pem"), "--out", str(tmp_path / "root.sig"), "--yes"],
         holder_env),
        (["ceremony", "publish", "--data", str(site), str(tmp_path / "root.json"),
          str(tmp_path / "root.sig")], server_env),
    ]  # fmt: skip
    for args, env in steps:
        done = run_homing(*args, env=env)
        assert done.returncode == 0, f"{args[:2]}: {done.stderr}"
    # The endpoints section runs on a development site of its own (DIR).
    other = tmp_path / "other-site"
    made = run_homing("init", "--data", str(other), "--host", "home.example.com")
    assert made.returncode == 0, made.stderr
    reader = reader_for(
        tmp_path,
        site,
        HOMING_KEY_PASSPHRASE=SERVER_PASSPHRASE,
        HOMING_HOLDER_PASSPHRASE=HOLDER,
    )
    reader.paths = [
        (r"/media/", "$WORK/media/"),
        (r"HOMING_HOLDER_PASSPHRASE=\.\.\. ", ""),  # the holder types it; here it is set
        (r"\bDIR\b", str(other)),
        *reader.paths,
    ]
    # Each signature is read in words and confirmed, as the holder would ("y").
    reader.paths.insert(0, (r"(homing ceremony sign(-ca)? )", r"printf 'y\\n' | \1"))
    result = reader.run("ceremonies.md")
    assert "server-issuing CA generation 2 is active" in result.stdout


def _deployment(tmp_path: Path) -> None:
    """A shared site: the home on PostgreSQL, another database to restore into."""
    with (
        postgres_database() as shared,
        postgres_database() as url,
        _home(tmp_path, shared) as (reader, _server),
    ):
        # The devices the page revokes: one by name, one returned, one by its issuer.
        for name in ("dev-42", "dev-43", "dev-44"):
            _provision(reader, name, tmp_path / name)
        (tmp_path / "run-42.txt").write_text("dev-42\ndev-43\n")
        (tmp_path / "returned.txt").write_text("dev-43\n")
        site = Path(reader.env["SITE"])
        shutil.copy(site / "pki" / "device-ca.pem", tmp_path / "old-device-ca.pem")
        reader.paths.insert(0, (r"postgresql://homing@db2\.internal/homing", url))
        reader.paths.insert(0, (r"/var/backups/", "$WORK/backups/"))
        (tmp_path / "backups" / "homing").mkdir(parents=True)
        # The host: its /etc and /opt here; the installs run in the checkout, as the page
        # says, installing homing itself (its dependencies are a real host's download).
        reader.paths[:0] = [
            (r"/opt/homing", "$WORK/opt/homing"),
            (r"(?<![\w.])/etc/", "$WORK/etc/"),
        ]
        (tmp_path / "etc" / "systemd" / "system").mkdir(parents=True)
        reader.env["PIP_NO_DEPS"] = "1"
        reader.env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
        for installs in ("useradd", "homing-backup.{service,timer}"):
            reader.before[installs] = f"cd {ROOT}"
            reader.after[installs] = 'cd "$WORK"'
        result = reader.run("deployment.md")
        assert "restored" in result.stdout
        assert (tmp_path / "opt" / "homing" / "venv" / "bin" / "homing").is_file()
        units = tmp_path / "etc" / "systemd" / "system"
        assert {p.name for p in units.iterdir()} == {
            "homing-serve.service",
            "homing-backup.service",
            "homing-backup.timer",
        }
        assert (tmp_path / "etc" / "homing" / "serve.env").stat().st_mode & 0o777 == 0o600
        asked = (tmp_path / "systemctl.log").read_text()
        assert "enable --now homing-serve" in asked
        assert "enable --now homing-backup.timer" in asked
        assert "--system --home /var/lib/homing homing" in (tmp_path / "useradd.log").read_text()


def _device_apps(tmp_path: Path) -> None:
    with _home(tmp_path) as (reader, server):
        _provision(reader, "dev-1", tmp_path / "agent")
        ran = run_homing("agent", "run", "--state", str(tmp_path / "agent"), "--once")
        assert ran.returncode == 0, ran.stderr
        (tmp_path / "reading.json").write_text('{"celsius": 21.5}')
        reader.paths.insert(0, (r"mqtt\.example\.com", "localhost"))
        # A CONNECT names the home's host and port: here, the stand-in's.
        reader.paths.insert(0, (r"home\.example\.com:443", f"localhost:{server.port}"))
        reader.paths.insert(0, (r"/etc/mosquitto/homing", "$WORK/mosquitto"))
        reader.paths.insert(0, (r"/run/homing-home\.sock", "$WORK/home.sock"))
        port = free_port()
        reader.paths.insert(0, (r"\b8089\b", str(port)))
        # The reader waits for the proxies to listen before the next commands.
        reader.after["homing agent proxy"] = (
            "for i in $(seq 600); do [ -S $WORK/home.sock ] && curl -s -o /dev/null "
            f"http://127.0.0.1:{port}/ && break; sleep 0.1; done"
        )
        reader.run("device-apps.md")
        log = (tmp_path / "systemctl.log").read_text()
        assert "systemctl reload my-telemetry.service" in log
        assert "systemctl reload mosquitto" in log


def _simulator(tmp_path: Path) -> None:
    reader = reader_for(tmp_path, tmp_path / "site")
    # The page's runs at a tenth of a default fleet (a minute of CI, not several).
    reader.paths = [
        (r"\.venv/bin/homing simulate", "homing simulate --devices 3000"),
        (r"docs/scenarios/", f"{ROOT}/docs/scenarios/"),
        (r"/tmp/root-expiry", "$WORK/root-expiry"),
    ]
    reader.run("simulator.md")
    assert (tmp_path / "root-expiry" / "results.json").is_file()


RUNNERS: dict[str, Callable[[Path], None]] = {
    "README.md": _readme,
    "quickstart.md": _quickstart,
    "est-with-curl.md": _est_with_curl,
    "firmware.md": _firmware,
    "agent.md": _agent,
    "ceremonies.md": _ceremonies,
    "deployment.md": _deployment,
    "device-apps.md": _device_apps,
    "simulator.md": _simulator,
}


@pytest.mark.parametrize("name", sorted(RUNNERS))
def test_a_documents_commands_run_as_written(name: str, tmp_path: Path) -> None:
    RUNNERS[name](tmp_path)
