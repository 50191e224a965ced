"""`homing demo`: the story homing answers, told in under a minute on loopback.

Real home server, real agents, real TLS, real metadata: nothing is mocked.
Only time moves faster: the server and the devices share a clock that the
demo advances (as the tests do), so a year passes in a line.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from aiohttp import web

from homing import ceremonies
from homing.agent.agent import Agent
from homing.agent.enroll import enroll
from homing.agent.state import DeviceState
from homing.agent.update import installer_for
from homing.ceremonies.releases import release
from homing.operations import fleet as operations
from homing.operations import rollouts
from homing.server.app import build_app
from homing.server.config import ServerConfig
from homing.server.state import ServerState
from homing.site import DataDir

__all__ = ["run_demo"]


@dataclass
class _Clock:
    offset: timedelta = field(default_factory=timedelta)

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.offset


@contextmanager
def _server(data: Path, clock: _Clock, port: int = 0) -> Iterator[tuple[str, ServerState]]:
    state = ServerState(ServerConfig(data=data, port=port, reload_interval=0.05), clock=clock)
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    holder: dict[str, object] = {}

    async def start() -> None:
        runner = web.AppRunner(build_app(state), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", port, ssl_context=state.ssl_context)
        await site.start()
        server = site._server
        assert server is not None
        holder["runner"] = runner
        holder["port"] = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(start())
        ready.set()
        loop.run_forever()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    ready.wait(30)
    try:
        yield f"https://127.0.0.1:{holder['port']}", state
    finally:
        runner = holder["runner"]
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)  # type: ignore[attr-defined]
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
        state.close()


def run_demo(say: Callable[[str], None], workdir: Path | None = None) -> list[dict[str, str]]:
    """Tell the story; returns the final state of each device."""
    logging.getLogger("homing").setLevel(logging.CRITICAL)
    own = workdir is None
    work = Path(tempfile.mkdtemp(prefix="homing-demo-")) if own else workdir
    assert work is not None
    clock = _Clock()
    try:
        data = work / "company"
        ceremonies.init(data, clock())
        dd = DataDir(data)
        root = (data / "repository" / "metadata" / "1.root.json").read_bytes()
        with _server(data, clock) as (url, state):
            secret = operations.add_factory(state.db, "demo", clock(), "factory")
            devices: dict[str, DeviceState] = {}
            for name in ("kettle", "thermostat", "doorbell"):
                devices[name] = enroll(
                    work / name,
                    url,
                    f"factory:{secret}",
                    root,
                    clock(),
                    device_id=name,
                    hardware="board-a",
                )

            def cycle(name: str) -> bool:
                return (
                    Agent(devices[name], server=url, clock=clock, firmware_version="1.0.0")
                    .run_once()
                    .checked_in
                )

            assert all(cycle(n) for n in devices)
            say(
                "3 devices enrolled over EST (keys made on the devices) and checked in over "
                "pinned mutual TLS."
            )
            say("The doorbell goes offline (a warehouse shelf): it will miss everything below.")

            def everyone_else() -> None:
                for name in ("kettle", "thermostat"):
                    assert cycle(name), name

            def later(days: int) -> None:
                clock.offset += timedelta(days=days)
                ceremonies.refresh_snapshot(dd, clock())
                ceremonies.rotate_server_cert(dd, clock())

            later(20)
            import time

            time.sleep(0.2)
            everyone_else()
            say(
                "Day 20: the server renewed its certificate; online devices did not notice "
                "(they pin the issuing CA, not the leaf)."
            )
            ceremonies.rotate_issuing_ca(dd, "server", clock())
            time.sleep(0.2)
            everyone_else()
            say(
                "The server-issuing CA was rotated: its backup key, pinned since day one, "
                "became active; new pins were published as signed metadata."
            )
            for _ in range(2):
                later(90)
                ceremonies.rotate_root(dd, clock())
            ceremonies.rotate_issuing_ca(dd, "server", clock())
            time.sleep(0.2)
            everyone_else()
            say(
                "Day 200: the root keys were rotated twice (each root signed by the one before) "
                "and the CA once more: the doorbell's pins are now two rotations old."
            )
            image = work / "fw-2.0.0.img"
            image.write_bytes(b"homing demo firmware 2.0.0\n" * 1000)
            release(dd, image, "2.0.0", "board-a", clock())
            rollouts.create(
                state.db,
                "demo",
                clock(),
                "2.0.0",
                "board-a",
                rollouts.RolloutPlan(stages=(100,), max_failure_ratio=0.5),
            )
            time.sleep(1.1)
            everyone_else()
            say(
                "Firmware 2.0.0 was released (a signed TUF target) and rolled out: online "
                "devices installed it in their inactive slot, booted it and committed."
            )
            later(60)
            time.sleep(0.2)
            everyone_else()
            say(
                "Day 260: the online devices renewed their certificates over EST at two "
                "thirds of their lifetime."
            )
            later(140)
            time.sleep(0.2)
            report = Agent(
                devices["doorbell"], server=url, clock=clock, firmware_version="1.0.0"
            ).run_once()
            assert report.checked_in, report
            say(
                "Day 400: the doorbell comes back. Its pins failed, so it fetched metadata over "
                "the bootstrap channel, walked 3 roots, took today's pins, recovered its "
                "expired certificate by proving its key, checked in, and updated itself."
            )
            say(f"   ({'; '.join(report.steps)})")
            mitm = _man_in_the_middle(work, devices["kettle"], clock)
            say(
                f"A man in the middle with another company's valid certificate: refused "
                f"({mitm}); no device data reached it."
            )
            assert cycle("kettle")
            say(
                "Back on the real server, the kettle checks in as before: "
                "nothing it trusts changed."
            )
            operations.revoke_device(dd, state.db, "demo", clock(), "thermostat", "stolen")
            refused = not cycle("thermostat")
            assert refused
            say(
                "The thermostat was reported stolen and revoked: its next request was refused, "
                "by every server process, without a restart."
            )
            table = []
            for name, device in devices.items():
                last = device.last_run()
                cert = device.certificate()
                table.append(
                    {
                        "device": name,
                        "firmware": installer_for(Agent(device)).active_version() or "1.0.0",
                        "root": str(last.get("trust", {}).get("root", "")),
                        "certificate until": cert.not_valid_after_utc.date().isoformat()
                        if cert
                        else "",
                        "last cycle": "checked in"
                        if last.get("checked_in")
                        else (last.get("error") or "")[:60],
                    }
                )
            dd.close()
            return table
    finally:
        if own:
            shutil.rmtree(work, ignore_errors=True)


def _man_in_the_middle(work: Path, device: DeviceState, clock: _Clock) -> str:
    other = work / "attacker"
    ceremonies.init(other, clock())
    with _server(other, _Clock(clock.offset)) as (url, _state):
        report = Agent(device, server=url, clock=clock).run_once()
    assert not report.checked_in
    return (report.error or "refused").split(":")[0]
