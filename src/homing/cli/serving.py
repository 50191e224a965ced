"""Running the home server: ``homing serve``."""

from __future__ import annotations

import os
import shlex
from datetime import timedelta
from pathlib import Path

import click

from homing.cli._base import _data_option, _db_option, _now, _passphrase, _site, cli, out
from homing.cli.trust import _print_summary


@cli.command()
@_data_option
@click.option("--listen", default="127.0.0.1:8443", show_default=True, help="HOST:PORT")
@_db_option
@click.option("--workers", type=int, default=1, show_default=True, help="Server processes.")
@click.option(
    "--trusted-proxy",
    "proxies",
    multiple=True,
    help="CIDR of a TLS-terminating proxy allowed to pass X-Client-Cert (repeatable).",
)
@click.option(
    "--max-offline-days",
    type=float,
    help="Recovery policy: refuse devices silent for longer (default: unlimited).",
)
@click.option(
    "--checkin-retention-days",
    type=click.FloatRange(0),
    default=90.0,
    show_default=True,
    help="Prune check-in rows older than this (0: keep them all).",
)
@click.option(
    "--checkin-limit",
    default="10/60",
    show_default=True,
    help="One device's check-ins per worker: BURST/SECONDS (BURST at once, then one "
    "per SECONDS), or 'off'.",
)
@click.option(
    "--enroll-limit",
    default="100/0.5",
    show_default=True,
    help="One factory station's enrollments per worker: BURST/SECONDS, or 'off'.",
)
@click.option(
    "--max-in-flight",
    type=click.IntRange(1),
    default=512,
    show_default=True,
    help="Requests one worker works on at once; past it, 429 (operators first, trust last).",
)
@click.option(
    "--enroll-hook",
    help="A command asked to allow each enrollment (JSON on stdin; exit 0 allows).",
)
@click.option(
    "--enroll-webhook",
    help='A URL asked to allow each enrollment (POST JSON; 200 {"allow": true} allows).',
)
@click.option("--access-log", is_flag=True, help="Log every request as a JSON line.")
@click.option(
    "--maintenance-interval",
    type=click.FloatRange(0.2),
    default=30.0,
    show_default=True,
    help="Seconds between maintenance passes (re-signing, renewals, the signer lease).",
)
@click.option(
    "--sync-interval",
    type=click.FloatRange(0.2),
    default=2.0,
    show_default=True,
    help="Seconds between looks for a new publication of a shared site.",
)
@click.option(
    "--init",
    "init_first",
    is_flag=True,
    help="Create a development data directory first if there is none.",
)
def serve(
    data: Path,
    listen: str,
    db_url: str | None,
    workers: int,
    proxies: tuple[str, ...],
    max_offline_days: float | None,
    checkin_retention_days: float,
    checkin_limit: str,
    enroll_limit: str,
    enroll_hook: str | None,
    enroll_webhook: str | None,
    max_in_flight: int,
    access_log: bool,
    maintenance_interval: float,
    sync_interval: float,
    init_first: bool,
) -> None:
    """Run the home server (HTTPS with optional client certificates on one port)."""
    from homing import ceremonies
    from homing.server.config import ServerConfig, parse_listen, parse_rate
    from homing.server.runner import ensure_port_is_free
    from homing.server.runner import serve as run_server
    from homing.site import DataDir

    host, port = parse_listen(listen)
    # Before anything is made or printed: a busy port is the one line the operator sees.
    ensure_port_is_free(host, port)
    if init_first and not DataDir(data).exists():
        hosts, primary = _published_for(host, port)
        _print_summary(
            ceremonies.init(data, _now(), passphrase=_passphrase(), hosts=hosts, primary=primary)
        )
    db_url = db_url or os.environ.get("HOMING_DB")
    config = ServerConfig(
        data=data,
        host=host,
        port=port,
        db_url=db_url,
        workers=workers,
        trusted_proxies=proxies,
        max_offline=timedelta(days=max_offline_days) if max_offline_days else None,
        access_log=access_log,
        checkin_limit=parse_rate(checkin_limit, "--checkin-limit"),
        enroll_limit=parse_rate(enroll_limit, "--enroll-limit"),
        max_in_flight=max_in_flight,
        enroll_hook=tuple(shlex.split(enroll_hook)) if enroll_hook else None,
        enroll_webhook=enroll_webhook,
        maintenance_interval=maintenance_interval,
        sync_interval=sync_interval,
        checkin_retention=(
            timedelta(days=checkin_retention_days) if checkin_retention_days else None
        ),
        key_passphrase=_passphrase(),
        pkcs11_pin=os.environ.get("HOMING_PKCS11_PIN"),
    )
    dd = _site(data, db_url, shared_change=False)
    settings = dd.settings()
    policy = ceremonies.pin_policy(dd, settings, dd.keystore(settings))
    url = f"https://{'[' + host + ']' if ':' in host else host}:{port}"
    out.print(f"[bold]homing[/] home server on {url} ({workers} worker(s))")
    out.print(f"  devices dial: {policy.primary}", highlight=False)
    out.print(f"  pinned SPKIs: {', '.join(policy.spki_pins)}")
    out.print(f"  trust metadata: {url}/tuf/metadata/  health: {url}/healthz")
    out.print("  next: create a factory credential and enroll a device:")
    out.print(f"    homing factory add station-1 --data {data}")
    out.print("    (see docs/est-with-curl.md for enrolling with curl and openssl)")
    run_server(config)


def _published_for(host: str, port: int) -> tuple[list[str], str]:
    """The names and endpoint a site made by ``serve --init`` publishes, from ``--listen``:
    the default names plus the listen host, dialled on the listen port."""
    from homing.ceremonies.creation import DEFAULT_HOSTS

    wildcard = host in ("0.0.0.0", "::")  # noqa: S104 - compared, not bound
    hosts = list(DEFAULT_HOSTS) + ([] if wildcard or host in DEFAULT_HOSTS else [host])
    dialled = "localhost" if wildcard else host
    name = f"[{dialled}]" if ":" in dialled else dialled
    return hosts, f"https://{name}:{port}"
