"""The HTTP layer's own floor: homing's web stack answering nginx's static body.

The same stack homing serves with (aiohttp on uvloop, worker processes sharing
the port), homing's server TLS context built from the site's files (its chain,
key and device CAs, client certificates deferred to the application), and for
every check-in the body read and nginx's static answer sent: no verification,
no database, no metrics. What homing's check-in costs above this is homing's
own work; what this costs above nginx is the HTTP layer and the TLS glue.

Run as ``python -m benchmarks._floor DATA PORT WORKERS``; stopped with SIGTERM.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import signal
import sys
from pathlib import Path

import uvloop
from aiohttp import web

from homing import tls
from homing.site import DataDir

# nginx's answer in benchmarks.bench_checkin, byte for byte.
STATIC = b'{"device_id":"static","refresh_metadata":false,"update":null}'


def _context(data: Path) -> tuple[Path, Path, bytes]:
    site = DataDir(data)
    try:
        key = site.file_keystore(site.settings()).path("server-tls")
        cas = site.pki_path("root-ca.pem").read_bytes()
        cas += site.pki_path("device-cas.pem").read_bytes()
        return site.pki_path("server-chain.pem"), key, cas
    finally:
        site.close()


async def _checkin(request: web.Request) -> web.Response:
    await request.read()
    return web.Response(body=STATIC, content_type="application/json")


async def _serve(data: Path, port: int) -> None:
    chain, key, cas = _context(data)
    app = web.Application()
    app.router.add_post("/v1/device/checkin", _checkin)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    context = tls.server_context(chain, key, client_cas=cas)
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=context, reuse_port=True).start()
    await asyncio.Event().wait()


def _worker(data: Path, port: int) -> None:
    # The parent blocks these to wait for them; a spawned child inherits the mask.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM, signal.SIGINT})
    uvloop.run(_serve(data, port))


def main(argv: list[str]) -> None:
    data, port, workers = Path(argv[0]), int(argv[1]), int(argv[2])
    spawn = multiprocessing.get_context("spawn")
    children = [spawn.Process(target=_worker, args=(data, port)) for _ in range(workers)]
    for child in children:
        child.start()
    signal.sigwait({signal.SIGTERM, signal.SIGINT})
    for child in children:
        child.terminate()
    for child in children:
        child.join(timeout=30)


if __name__ == "__main__":
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    main(sys.argv[1:])
