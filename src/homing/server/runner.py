"""Running the home server: one process, or a supervisor and N workers on one port.

Workers share the listening port with SO_REUSEPORT, so the kernel spreads
connections over every core. The supervisor does the maintenance (timestamp,
server certificate, CRL) and restarts a worker that dies.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import sys
import time
from datetime import UTC, datetime

from aiohttp import web

from homing.errors import ConfigError
from homing.server.app import build_app
from homing.server.config import ServerConfig
from homing.server.connections import CONNECTIONS, GuardedSite
from homing.server.state import ServerState
from homing.server.upkeep import Upkeep
from homing.site import DataDir
from homing.site.custody import offline_keys_in

__all__ = ["configure_logging", "run_worker", "serve"]

log = logging.getLogger("homing.server")


class _JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "pid": record.process,
        }
        message = record.getMessage()
        try:
            parsed = json.loads(message)
            entry.update(parsed if isinstance(parsed, dict) else {"message": message})
        except ValueError:
            entry["message"] = message
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def configure_logging(level: int = logging.INFO, access_log: bool = False) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JSONFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logging.getLogger("homing").setLevel(level)
    logging.getLogger("homing.pki.keystore").setLevel(logging.ERROR)
    logging.getLogger("homing.access").setLevel(logging.INFO if access_log else logging.WARNING)


async def _serve_async(config: ServerConfig, maintenance: bool) -> None:
    state = ServerState(config)
    app = build_app(state)
    runner = web.AppRunner(
        app,
        access_log=None,
        handle_signals=False,
        keepalive_timeout=app[CONNECTIONS].limits.http_keepalive,
    )
    await runner.setup()
    site = GuardedSite(
        runner,
        app[CONNECTIONS],
        host=config.host,
        port=config.port,
        ssl_context=state.ssl_context,
        reuse_port=True,
        backlog=1024,
    )
    await site.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info(json.dumps({"event": "listening", "host": config.host, "port": config.port}))

    data_dir = config.site()
    # Only the maintaining process follows the site and may sign; workers serve.
    upkeep = Upkeep(data_dir, config.checkin_retention) if maintenance else None

    async def maintain_loop(upkeep: Upkeep) -> None:
        next_pass = 0.0
        while True:
            try:
                if loop.time() >= next_pass:
                    await loop.run_in_executor(None, upkeep.maintain, datetime.now(UTC))
                    next_pass = loop.time() + config.maintenance_interval
                else:
                    await loop.run_in_executor(None, upkeep.follow)
            except Exception:
                log.exception("maintenance failed; retrying")
            await asyncio.sleep(min(config.sync_interval, config.maintenance_interval))

    task = loop.create_task(maintain_loop(upkeep)) if upkeep is not None else None
    await stop.wait()
    if task:
        task.cancel()
    await runner.cleanup()
    state.close()
    if upkeep is not None:
        upkeep.close()
    data_dir.close()


def run_worker(config: ServerConfig, maintenance: bool = False) -> None:
    """Entry point of one server process."""
    configure_logging(access_log=config.access_log)
    try:
        # uvloop's event loop and TLS transport, written in Cython over libuv,
        # roughly double what one worker answers; asyncio's own is the fallback.
        import uvloop
    except ImportError:
        asyncio.run(_serve_async(config, maintenance))
    else:
        uvloop.run(_serve_async(config, maintenance))


def ensure_port_is_free(host: str, port: int) -> None:
    """Refuse a port another server already listens on (ConfigError naming it).

    Workers bind with SO_REUSEPORT so the kernel spreads connections over
    them; that same option would let a second, unrelated ``homing serve``
    bind the port too and take half the requests with another repository.
    A plain bind (SO_REUSEADDR only, for TIME_WAIT) fails on any listener,
    so it is tried before the workers start.
    """
    if port == 0:
        return  # the kernel picks a free port
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as e:
            raise ConfigError(
                f"{host}:{port} is already in use by another server ({e.strerror}): "
                "stop it or choose another --listen"
            ) from e


def refuse_offline_keys(data_dir: DataDir) -> None:
    """A production server holds no offline key (root CA, TUF root, targets, firmware).

    Refused by name; a development directory, which keeps every key on one
    machine by design, only warns.
    """
    settings = data_dir.settings()
    found = offline_keys_in(data_dir.file_keystore(settings))
    if not found:
        return
    if settings.mode == "dev" and not settings.offline_custody:
        log.warning("UNSAFE development directory: offline keys on the server: %s", found)
        return
    raise ConfigError(
        f"refusing to serve: offline keys are in the server's key store: {', '.join(found)}; "
        "move them to removable media with `homing keystore move-offline`"
    )


def serve(config: ServerConfig) -> None:
    """Run in the foreground until SIGINT or SIGTERM."""
    data_dir = config.site()
    ensure_port_is_free(config.host, config.port)
    upkeep = Upkeep(data_dir, config.checkin_retention)
    upkeep.join(datetime.now(UTC))
    refuse_offline_keys(data_dir)
    upkeep.maintain(datetime.now(UTC))  # fail fast on a broken data directory
    if config.workers == 1:
        upkeep.close()
        data_dir.close()
        run_worker(config, maintenance=True)
        return
    metrics_dir = config.data / "run" / "metrics"
    shutil.rmtree(metrics_dir, ignore_errors=True)
    metrics_dir.mkdir(parents=True)
    # prometheus_client's interface for worker processes is this variable.
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    config = dataclasses.replace(config, metrics_dir=metrics_dir)
    context = multiprocessing.get_context("spawn")
    workers: list[multiprocessing.process.BaseProcess] = []

    def start() -> multiprocessing.process.BaseProcess:
        process = context.Process(target=run_worker, args=(config,), daemon=False)
        process.start()
        return process

    workers = [start() for _ in range(config.workers)]
    stopping = False

    def stop(_signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    next_maintenance = time.monotonic() + config.maintenance_interval
    next_sync = time.monotonic() + config.sync_interval
    try:
        while not stopping:
            time.sleep(0.5)
            for i, process in enumerate(workers):
                if not process.is_alive() and not stopping:
                    log.warning(
                        "worker %s exited with %s; restarting", process.pid, process.exitcode
                    )
                    workers[i] = start()
            try:
                if time.monotonic() >= next_maintenance:
                    next_maintenance = time.monotonic() + config.maintenance_interval
                    upkeep.maintain(datetime.now(UTC))
                elif time.monotonic() >= next_sync:
                    next_sync = time.monotonic() + config.sync_interval
                    upkeep.follow()
            except Exception:
                log.exception("maintenance failed; retrying")
    finally:
        upkeep.close()
        for process in workers:
            if process.is_alive() and process.pid:
                os.kill(process.pid, signal.SIGTERM)
        for process in workers:
            process.join(timeout=10)
            if process.is_alive():
                process.kill()
