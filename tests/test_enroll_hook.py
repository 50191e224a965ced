"""The operator's enrollment decision, from outside: a command and a webhook, failing closed.

The real server asks a real command (a script reading the JSON on stdin)
and a real webhook (an HTTP server on loopback) before it issues anything.
Allowed enrollments succeed; a refusal, a crash, a hook that outlives its
timeout, a webhook that is down or answers nonsense: each is 403
``not_allowed`` with the reason, audited, and nothing is issued. A station
whose secret is wrong never reaches the hook.
"""

from __future__ import annotations

import asyncio
import base64
import json
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import select

from homing import ceremonies
from homing.operations import fleet as operations
from homing.store.audit import audit_entries
from homing.store.schema import devices
from tests.harness import Clock, RunningServer, est_csr, free_port

HOOK = """
import json, sys, time
doc = json.load(sys.stdin)
device = doc["device_id"]
if device.startswith("slow-"):
    time.sleep(60)
if device.startswith("crash-"):
    raise SystemExit(70)
if not device.startswith("ok-"):
    print(f"{device} is not on the production plan")
    raise SystemExit(1)
"""


def _enroll(server: RunningServer, station: tuple[str, str], device_id: str) -> tuple[int, str]:
    token = base64.b64encode(f"{station[0]}:{station[1]}".encode()).decode()
    answer = server.request(
        "POST",
        "/.well-known/est/simpleenroll",
        base64.b64encode(est_csr(ec.generate_private_key(ec.SECP256R1()), device_id)),
        headers={"Content-Type": "application/pkcs10", "Authorization": f"Basic {token}"},
    )
    return answer.status, (answer.json()["message"] if answer.status != 200 else "")


def _server(tmp_path: Path, **config: Any) -> RunningServer:
    data = tmp_path / "site"
    ceremonies.init(data, datetime.now(UTC))
    return RunningServer(data, f"sqlite:///{tmp_path / 'test.db'}", Clock(), **config).start()


@contextmanager
def _webhook(seen: list[dict[str, Any]]) -> Iterator[str]:
    """A decision service on loopback: allows ids starting ok-, answers junk for junk-."""

    async def decide(request: web.Request) -> web.Response:
        doc = await request.json()
        seen.append(doc)
        if doc["device_id"].startswith("junk-"):
            return web.Response(text="<html>gateway error</html>", status=502)
        if doc["device_id"].startswith("ok-"):
            return web.json_response({"allow": True})
        return web.json_response({"allow": False, "reason": "serial not in the ERP"})

    port = free_port()
    loop = asyncio.new_event_loop()
    app = web.Application()
    app.router.add_post("/decide", decide)
    runner = web.AppRunner(app)
    loop.run_until_complete(runner.setup())
    loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", port).start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}/decide"
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(30)
        loop.close()


def test_a_command_decides_and_every_failure_refuses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HOMING_KEY_PASSPHRASE", raising=False)
    script = tmp_path / "decide.py"
    script.write_text(HOOK)
    with _server(
        tmp_path, enroll_hook=(sys.executable, str(script)), enroll_hook_timeout=2.0
    ) as server:
        station = (
            "line-1",
            operations.add_factory(server.state.db, "test", datetime.now(UTC), "line-1"),
        )
        assert _enroll(server, station, "ok-1") == (200, "")
        status, why = _enroll(server, station, "rogue-1")
        assert status == 403
        assert "rogue-1 is not on the production plan" in why
        status, why = _enroll(server, station, "crash-1")
        assert (status, "exit status 70" in why) == (403, True)
        status, why = _enroll(server, station, "slow-1")
        assert (status, "did not decide within 2 s" in why) == (403, True)
        # A wrong secret is refused before the hook is asked.
        assert _enroll(server, ("line-1", "wrong"), "ok-2")[0] == 401
        with server.state.db.begin() as conn:
            refused = [e for e in audit_entries(conn, 50) if e["action"] == "enroll_refused"]
            enrolled = set(conn.execute(select(devices.c.device_id)).scalars())
        assert {e["target"] for e in refused} == {"rogue-1", "crash-1", "slow-1"}
        assert enrolled == {"ok-1"}


def test_a_webhook_decides_and_an_unreachable_or_garbled_one_refuses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HOMING_KEY_PASSPHRASE", raising=False)
    seen: list[dict[str, Any]] = []
    with _webhook(seen) as url, _server(tmp_path, enroll_webhook=url) as server:
        station = (
            "line-1",
            operations.add_factory(server.state.db, "test", datetime.now(UTC), "line-1"),
        )
        assert _enroll(server, station, "ok-1") == (200, "")
        status, why = _enroll(server, station, "rogue-1")
        assert (status, "serial not in the ERP" in why) == (403, True)
        status, why = _enroll(server, station, "junk-1")
        assert (status, "answered HTTP 502" in why) == (403, True)
    assert [d["device_id"] for d in seen] == ["ok-1", "rogue-1", "junk-1"]
    assert seen[0]["station"] == "line-1"
    assert len(seen[0]["key_sha256"]) == 64
    assert json.dumps(seen[0])  # plain JSON
    # The decision service is down: nothing is enrolled.
    with _server(tmp_path / "second", enroll_webhook=url) as server:
        station = (
            "line-1",
            operations.add_factory(server.state.db, "test", datetime.now(UTC), "line-1"),
        )
        status, why = _enroll(server, station, "ok-2")
        assert (status, "did not answer" in why) == (403, True)
