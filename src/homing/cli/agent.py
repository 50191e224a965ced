"""What runs on the device: enroll, run, status, the TUF conformance client, bundles."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from homing.cli._base import (
    _fail,
    _now,
    cli,
    out,
)

if TYPE_CHECKING:
    from cryptography import x509


@cli.group()
def agent() -> None:
    """What runs on the device."""
    from homing.agent.token_pin import PIN_VARIABLE, set_pin

    set_pin(os.environ.get(PIN_VARIABLE))  # a device key on a PKCS#11 token needs it


_state_option = click.option(
    "--state",
    "state_dir",
    type=click.Path(path_type=Path, file_okay=False),
    required=True,
    help="The device state directory.",
)


@agent.command("enroll")
@_state_option
@click.option("--server", required=True, help="Home server URL, e.g. https://home.example.com")
@click.option(
    "--idevid",
    "idevid_cert",
    type=click.Path(path_type=Path, dir_okay=False),
    help="The device's manufacturer certificate (PEM): enroll with it, no secret needed.",
)
@click.option(
    "--idevid-key",
    type=click.Path(path_type=Path, dir_okay=False),
    help="The IDevID's private key (PEM).",
)
@click.option(
    "--factory", "factory_cred", help="NAME:SECRET of the station (when there is no IDevID)."
)
@click.option(
    "--root",
    "root_file",
    type=click.Path(path_type=Path, dir_okay=False),
    required=True,
    help="Root metadata the factory gives every device.",
)
@click.option("--id", "device_id", help="Device id (default: random).")
@click.option("--hardware", help="Hardware class of the device.")
@click.option(
    "--key-store",
    type=click.Choice(["file", "tpm2", "pkcs11"]),
    default="file",
    show_default=True,
    help="Where the device key is made and kept: a file in the state directory, "
    "inside the TPM 2.0 (OpenSSL's tpm2 provider), or on a PKCS#11 token (its PIN in "
    "HOMING_PKCS11_PIN; docs/agent.md).",
)
@click.option(
    "--pkcs11-module",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    help="With --key-store pkcs11: the token's PKCS#11 module (a .so file).",
)
@click.option("--pkcs11-token", help="With --key-store pkcs11: the token's label.")
def agent_enroll(
    state_dir: Path,
    server: str,
    idevid_cert: Path | None,
    idevid_key: Path | None,
    factory_cred: str | None,
    root_file: Path,
    device_id: str | None,
    hardware: str | None,
    key_store: str,
    pkcs11_module: Path | None,
    pkcs11_token: str | None,
) -> None:
    """Online: make the key on the device and enroll over EST.

    The device proves itself by its manufacturer certificate (--idevid and
    --idevid-key, recommended) or by a factory station's secret (--factory).
    """
    from homing.agent.enroll import enroll
    from homing.agent.token_key import TokenKeyRef

    if (idevid_cert is None) != (idevid_key is None):
        _fail("--idevid and --idevid-key go together")
    if (idevid_cert is None) == (factory_cred is None):
        _fail("enroll with --idevid/--idevid-key or with --factory: one of them")
    try:
        root = root_file.read_bytes()
    except OSError as e:
        _fail(f"cannot read {root_file}: {e.strerror}")
    idevid = (idevid_cert, idevid_key) if idevid_cert and idevid_key else None
    token = None
    if pkcs11_module is not None and pkcs11_token is not None:
        token = TokenKeyRef(str(pkcs11_module.absolute()), pkcs11_token)
    elif pkcs11_module is not None or pkcs11_token is not None:
        _fail("--pkcs11-module and --pkcs11-token go together")
    state = enroll(
        state_dir,
        server,
        factory_cred,
        root,
        _now(),
        device_id=device_id,
        hardware=hardware,
        idevid=idevid,
        key_store=key_store,
        token=token,
    )
    out.print(f"device {state.config().device_id!r} enrolled with {server}")


@agent.command("run")
@_state_option
@click.option("--once", is_flag=True, help="One full cycle; exit 0 only if checked in.")
@click.option("--server", help="Override the endpoints from the trust metadata (pins unchanged).")
@click.option(
    "--interval",
    type=float,
    default=3600.0,
    show_default=True,
    help="Seconds between cycles (jittered).",
)
@click.option("--firmware-version", help="Version the device reports.")
def agent_run(
    state_dir: Path, once: bool, server: str | None, interval: float, firmware_version: str | None
) -> None:
    """Check in, keep trust fresh, renew or recover the certificate."""
    if not once:
        # The resident process carries only the agent: re-execute into the
        # lean entry point instead of keeping the operator CLI loaded for ever.
        argv = [
            sys.executable,
            "-m",
            "homing.agent.daemon",
            "--state",
            str(state_dir),
            "--interval",
            str(interval),
        ]
        if server:
            argv += ["--server", server]
        if firmware_version:
            argv += ["--firmware-version", firmware_version]
        sys.stdout.flush()
        sys.stderr.flush()
        os.execv(sys.executable, argv)  # noqa: S606 - our own interpreter and module
    from homing.agent.agent import Agent
    from homing.agent.state import DeviceState

    report = Agent(
        DeviceState(state_dir), server=server, firmware_version=firmware_version
    ).run_once()
    for step in report.steps:
        out.print(f"  {step}")
    if not report.checked_in:
        _fail(report.error or "not checked in")
    out.print("checked in")


@agent.command("status")
@_state_option
@click.option("--json", "as_json", is_flag=True, help="Everything, as JSON.")
def agent_status(state_dir: Path, as_json: bool) -> None:
    """Device id, trust versions, certificate expiry, last result."""
    import json as jsonlib

    from homing.agent.state import DeviceState

    state = DeviceState(state_dir)
    config = state.config()
    cert = state.certificate()
    last = state.last_run()
    from homing.agent.installer import SlotInstaller

    slots = SlotInstaller(state.root / "slots")
    doc = {
        "device_id": config.device_id,
        "hardware": config.hardware,
        "certificate_expires": cert.not_valid_after_utc.isoformat() if cert else None,
        "trust": last.get("trust", {}),
        "slots": slots.slots(),
        "active_slot": slots.active_slot(),
        "active_version": slots.active_version(),
        "update_pending_commit": slots.pending(),
        "last_update": [s for s in last.get("steps", []) if "firmware" in s or "update" in s],
        "last_run": last,
    }
    if as_json:
        click.echo(jsonlib.dumps(doc, indent=2))
        return
    for line in _status_lines(doc, cert):
        out.print(line, highlight=False, markup=False, soft_wrap=True)


def _status_lines(doc: dict[str, Any], cert: x509.Certificate | None) -> list[str]:
    """``agent status`` for a person: one fact a line (``--json`` has everything)."""
    from datetime import UTC, datetime

    lines = [f"device {doc['device_id']} ({doc['hardware'] or 'no hardware class'})"]
    if cert is None:
        lines.append("certificate: none (not enrolled yet)")
    else:
        left = (cert.not_valid_after_utc - datetime.now(UTC)).days
        state = f"{left} days left" if left >= 0 else f"EXPIRED {-left} days ago"
        lines.append(f"certificate: valid until {cert.not_valid_after_utc:%Y-%m-%d} ({state})")
    trust = doc["trust"]
    if trust:
        lines.append("trust: " + ", ".join(f"{role} v{version}" for role, version in trust.items()))
    version = doc["active_version"] or "the factory image"
    pending = (
        " (booted, waiting for its health check to commit)" if doc["update_pending_commit"] else ""
    )
    lines.append(f"firmware: {version}{pending}")
    last = doc["last_run"]
    if last:
        result = "checked in" if last.get("checked_in") else f"not checked in: {last.get('error')}"
        lines.append(f"last cycle: {last.get('at', '?')}: {result}")
        lines += [f"  {step}" for step in last.get("steps", [])]
    else:
        lines.append("last cycle: none yet")
    return lines


@agent.command(
    "tuf-client",
    context_settings={"ignore_unknown_options": False},
)
@click.option(
    "--metadata-dir",
    type=click.Path(path_type=Path, file_okay=False),
    required=True,
    help="Where the client keeps the metadata it trusts.",
)
@click.option("--metadata-url", help="The repository's metadata URL (ending in /).")
@click.option(
    "--target-name", "target_names", multiple=True, help="A target to download; repeat for each."
)
@click.option(
    "--target-dir",
    type=click.Path(path_type=Path, file_okay=False),
    help="Where downloaded targets go.",
)
@click.option("--target-base-url", help="The repository's targets URL (ending in /).")
@click.argument("command", type=click.Choice(["init", "refresh", "download"]))
@click.argument("root_file", required=False, type=click.Path(path_type=Path, dir_okay=False))
def agent_tuf_client(
    metadata_dir: Path,
    metadata_url: str | None,
    target_names: tuple[str, ...],
    target_dir: Path | None,
    target_base_url: str | None,
    command: str,
    root_file: Path | None,
) -> None:
    """The TUF conformance client protocol over homing's trust-update code (exit 0 or 1)."""
    import contextlib

    from homing.agent.fetcher import HTTPSFetcher

    fetcher = HTTPSFetcher(None, _now(), allow_plain_http=True)
    with contextlib.closing(fetcher):
        _tuf_client(
            fetcher,
            metadata_dir,
            metadata_url,
            target_names,
            target_dir,
            target_base_url,
            command,
            root_file,
        )


def _tuf_client(
    fetcher: Any,
    metadata_dir: Path,
    metadata_url: str | None,
    target_names: tuple[str, ...],
    target_dir: Path | None,
    target_base_url: str | None,
    command: str,
    root_file: Path | None,
) -> None:
    from homing.trust import conformance

    if command == "init":
        if root_file is None:
            _fail("init needs ROOT_FILE", 1)
        assert root_file is not None
        try:
            root = root_file.read_bytes()
        except OSError as e:
            _fail(f"cannot read {root_file}: {e.strerror}", 1)
        conformance.init_metadata_dir(metadata_dir, root)
        return
    if not metadata_url:
        _fail(f"{command} needs --metadata-url", 1)
    assert metadata_url is not None
    if command == "refresh":
        conformance.refresh_metadata(metadata_dir, metadata_url, fetcher)
        return
    if not target_names or target_dir is None or not target_base_url:
        _fail("download needs --target-name, --target-dir and --target-base-url", 1)
    assert target_dir is not None
    assert target_base_url is not None
    conformance.download_targets(
        metadata_dir, metadata_url, target_names, target_dir, target_base_url, fetcher
    )


@agent.command("proxy")
@_state_option
@click.option("--unix", type=click.Path(path_type=Path, dir_okay=False), help="Unix socket path.")
@click.option("--port", type=click.IntRange(1, 65535), help="Loopback port (127.0.0.1).")
@click.option("--server", help="A home endpoint to use instead of the policy's primary.")
def agent_proxy(state_dir: Path, unix: Path | None, port: int | None, server: str | None) -> None:
    """A local proxy to home over pinned mutual TLS, for applications in any language:
    plain HTTP (or CONNECT) in, pinned TLS with the device certificate out, home only."""
    import asyncio

    from homing.agent.proxy import serve
    from homing.apps import Home

    if (unix is None) == (port is None):
        _fail("listen on --unix PATH or --port N: one of them")
    home = Home(state_dir, server=server)
    home.endpoints()  # a device with no verified trust yet says so now, not per request
    out.print(f"pinned proxy to {home.endpoints()[0]} on {unix or f'127.0.0.1:{port}'}")
    try:
        asyncio.run(serve(home, unix=unix, port=port))
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    except OSError as e:
        _fail(f"cannot listen on {unix or f'127.0.0.1:{port}'}: {e.strerror or e}")


@agent.command("export")
@_state_option
@click.option(
    "--dir",
    "directory",
    type=click.Path(path_type=Path, file_okay=False),
    help="Keep the current trust here (DIR/current/...).",
)
@click.option("--hook", help="A command to run after each change (e.g. a service reload).")
@click.option("--off", is_flag=True, help="Stop exporting (the files stay).")
def agent_export(state_dir: Path, directory: Path | None, hook: str | None, off: bool) -> None:
    """Export the current trust for applications that do their own TLS: the CA bundle,
    the pins, the device certificate and the key's location (docs/device-apps.md)."""
    from dataclasses import replace

    from homing.agent.exports import export_trust
    from homing.agent.state import DeviceState
    from homing.trust.pins import PinPolicy

    if off == (directory is not None):
        _fail("give --dir DIR (with --hook CMD if wanted), or --off")
    if off and hook:
        _fail("--hook goes with --dir")
    state = DeviceState(state_dir)
    config = state.config()
    if off:
        state.save_config(replace(config, export_dir=None, export_hook=None))
        out.print("trust is no longer exported")
        return
    assert directory is not None
    target = directory.resolve()
    state.save_config(replace(config, export_dir=str(target), export_hook=hook))
    try:
        policy = PinPolicy.from_bytes((state.root / "pins.json").read_bytes())
    except FileNotFoundError:
        out.print(f"trust will be exported to {target}/current after the agent's next cycle")
        return
    export_trust(state, policy, target, hook)
    out.print(f"trust exported to {target}/current; the agent keeps it current")


@agent.command("apply-bundle")
@_state_option
@click.argument("bundle", type=click.Path(path_type=Path, dir_okay=False))
def agent_apply_bundle(state_dir: Path, bundle: Path) -> None:
    """Verify and apply a recovery bundle: new roots and pins without any network."""
    from homing.agent.agent import Agent
    from homing.agent.bundle import apply_bundle
    from homing.agent.state import DeviceState

    for line in apply_bundle(Agent(DeviceState(state_dir)), bundle):
        out.print(line, highlight=False, soft_wrap=True)
