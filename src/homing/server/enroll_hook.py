"""The operator's own allow/deny decision on each enrollment: a command or a webhook.

Asked after the station proved its secret and before anything is issued,
with what the enrollment would create (station, device id, key fingerprint,
hardware class). It fails closed: a command that exits non-zero, crashes or
outlives ``timeout``, or a webhook that does not answer ``{"allow": true}``
within it, refuses the enrollment, with the reason given.

- command: the JSON on its standard input; exit 0 allows, anything else
  refuses (the first line it printed is the reason);
- webhook: POSTed as JSON; ``200 {"allow": true}`` allows, ``{"allow":
  false, "reason": "..."}`` refuses.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass
from typing import Any

import aiohttp

__all__ = ["EnrollHook"]

_REASON_CHARS = 200


def _first_line(raw: bytes) -> str:
    line = raw.decode("utf-8", "replace").strip().splitlines()
    return line[0][:_REASON_CHARS] if line else ""


async def _talk(process: asyncio.subprocess.Process, payload: bytes) -> tuple[bytes, bytes]:
    """Hand the hook its JSON and collect what it prints; a hook that exits without
    reading its input is fine (its exit status decides)."""
    assert process.stdin is not None
    assert process.stdout is not None
    assert process.stderr is not None
    # A closed pipe: BrokenPipeError on asyncio's loop, RuntimeError on uvloop's.
    with contextlib.suppress(BrokenPipeError, ConnectionResetError, RuntimeError):
        process.stdin.write(payload)
        await process.stdin.drain()
    with contextlib.suppress(BrokenPipeError, ConnectionResetError, RuntimeError):
        process.stdin.close()
    out, err = await asyncio.gather(process.stdout.read(), process.stderr.read())
    await process.wait()
    return out, err


@dataclass(frozen=True)
class EnrollHook:
    command: tuple[str, ...] | None = None
    url: str | None = None
    timeout: float = 5.0

    @property
    def active(self) -> bool:
        return bool(self.command or self.url)

    async def refusal(self, enrollment: dict[str, Any]) -> str | None:
        """None when every configured hook allows this enrollment; else why not."""
        if self.command:
            why = await self._ask_command(self.command, enrollment)
            if why is not None:
                return why
        if self.url:
            return await self._ask_webhook(self.url, enrollment)
        return None

    async def _ask_command(self, command: tuple[str, ...], doc: dict[str, Any]) -> str | None:
        try:
            process = await asyncio.create_subprocess_exec(
                *command,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
        except OSError as e:
            return f"the enrollment hook could not run: {e.strerror or e}"
        try:
            out, err = await asyncio.wait_for(
                _talk(process, json.dumps(doc).encode()), self.timeout
            )
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
            return f"the enrollment hook did not decide within {self.timeout:g} s"
        if process.returncode == 0:
            return None
        said = _first_line(out) or _first_line(err)
        return f"the enrollment hook refused ({said or f'exit status {process.returncode}'})"

    async def _ask_webhook(self, url: str, doc: dict[str, Any]) -> str | None:
        timeout = aiohttp.ClientTimeout(total=self.timeout)
        try:
            async with (
                aiohttp.ClientSession(timeout=timeout) as session,
                session.post(url, json=doc) as answer,
            ):
                body = await answer.content.read(4096)
                status = answer.status
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            return f"the enrollment webhook did not answer: {type(e).__name__}"
        try:
            decision = json.loads(body) if status == 200 else None
        except ValueError:
            decision = None
        if not isinstance(decision, dict):
            return f"the enrollment webhook answered HTTP {status}, not a decision"
        if decision.get("allow") is True:
            return None
        reason = decision.get("reason")
        said = reason[:_REASON_CHARS] if isinstance(reason, str) else "no reason given"
        return f"the enrollment webhook refused ({said})"
