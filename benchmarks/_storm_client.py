"""The storm's load generator: one process, asyncio on uvloop, many devices at once.

Run by ``bench_storm`` as ``python -m benchmarks._storm_client PLAN.json``;
prints one JSON object. Every check-in is a new TLS 1.3 connection with the
device's own certificate (a sleepy device reconnects every time). A device
told 429 or 503 waits what Retry-After says, and one whose connection fails
waits the agent's own jittered backoff (``homing.agent.runner.next_delay``),
both times ``retry_scale`` so a run stays short, and tries again.

Modes:
- ``storm``: every device at once (at most ``concurrency`` sockets open, the
  descriptor limit's share); until each has checked in once.
- ``closed``: ``concurrency`` devices back to back for ``seconds`` (the
  sustainable rate);
- ``slowloris``: ``connections`` request heads that never end, reopened
  when cut (the attack of ``bench_slow_clients``);
- ``rate``: open-loop arrivals at ``rate`` per second for ``seconds``, each a
  different device, each given ``timeout`` seconds to be answered.
"""

from __future__ import annotations

import asyncio
import json
import random
import resource
import ssl
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from homing.agent.runner import next_delay

_BODY = b'{"firmware_version":"1.0","trust":{"root":1,"timestamp":1,"targets":1}}'


def _request(host: str) -> bytes:
    return (
        b"POST /v1/device/checkin HTTP/1.1\r\nHost: " + host.encode() + b"\r\n"
        b"Content-Type: application/json\r\nConnection: close\r\n"
        b"Content-Length: " + str(len(_BODY)).encode() + b"\r\n\r\n" + _BODY
    )


class Generator:
    def __init__(self, plan: dict[str, Any]) -> None:
        self.port = int(plan["port"])
        self.ca = plan["ca"]
        self.devices: list[tuple[str, str]] = [tuple(d) for d in plan["devices"]]  # type: ignore[misc]
        self.retry_scale = float(plan.get("retry_scale", 1.0))
        self.request = _request("localhost")
        self.latencies: list[float] = []
        self._contexts: dict[tuple[str, str], ssl.SSLContext] = {}

    def prepare(self, count: int) -> None:
        """Each device's TLS context, made before the clock starts (making one costs
        about as much as a handshake: it is the device's set-up, not the load)."""
        for device in self.devices[:count]:
            context = ssl.create_default_context(cafile=self.ca)
            context.minimum_version = ssl.TLSVersion.TLSv1_3
            context.load_cert_chain(device[0], device[1])
            self._contexts[device] = context

    def context(self, device: tuple[str, str]) -> ssl.SSLContext:
        return self._contexts[device]

    async def once(self, device: tuple[str, str], timeout: float) -> tuple[str, float | None]:
        """One check-in on a new connection: ("200", None), ("429", wait), or an error."""
        try:
            async with asyncio.timeout(timeout):
                reader, writer = await asyncio.open_connection(
                    "127.0.0.1", self.port, ssl=self.context(device), server_hostname="localhost"
                )
                try:
                    writer.write(self.request)
                    head = await reader.readuntil(b"\r\n\r\n")
                    await reader.read()
                finally:
                    writer.close()
        except (OSError, ssl.SSLError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as e:
            return f"connection_error:{type(e).__name__}", None
        except TimeoutError:
            return "timeout", None
        status = head.split(b" ", 2)[1].decode()
        wait = None
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"retry-after:"):
                wait = float(line.split(b":", 1)[1].strip())
        return status, wait

    async def storm(self, concurrency: int, timeout: float) -> dict[str, Any]:
        slots = asyncio.Semaphore(concurrency)
        started = time.perf_counter()
        done_at: list[float] = []
        attempts = Counter[str]()

        rng = random.Random()

        async def device(d: tuple[str, str]) -> None:
            failures = 0
            while True:
                async with slots:
                    status, wait = await self.once(d, timeout)
                attempts[status] += 1
                if status == "200":
                    done_at.append(time.perf_counter() - started)
                    return
                failures += 1
                # As the agent: what Retry-After asks, else its own jittered backoff.
                delay = wait if wait is not None else next_delay(3600.0, failures, rng)
                await asyncio.sleep(delay * self.retry_scale)

        await asyncio.gather(*(device(d) for d in self.devices))
        done_at.sort()
        return {
            "devices": len(self.devices),
            "seconds_until_all": done_at[-1],
            "p50_s": done_at[len(done_at) // 2],
            "p99_s": done_at[int(len(done_at) * 0.99) - 1],
            "attempts": dict(attempts),
            "server_errors_5xx": sum(
                n for s, n in attempts.items() if s.startswith("5") and s != "503"
            ),
            "client_cpu_s": _cpu(),
        }

    async def closed(self, concurrency: int, seconds: float, timeout: float) -> dict[str, Any]:
        """``concurrency`` devices checking in back to back for ``seconds``: the rate the
        server sustains when nobody waits in line."""
        answered = Counter[str]()
        started = time.perf_counter()
        turn = iter(range(10**9))

        latencies: list[float] = []

        async def worker() -> None:
            while time.perf_counter() - started < seconds:
                d = self.devices[next(turn) % len(self.devices)]
                t0 = time.perf_counter()
                status, _ = await self.once(d, timeout)
                answered[status] += 1
                if status == "200":
                    latencies.append(time.perf_counter() - t0)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
        latencies.sort()
        return {
            "concurrency": concurrency,
            "rate_per_s": answered["200"] / elapsed,
            "outcomes": dict(answered),
            "p50_ms": latencies[len(latencies) // 2] * 1000 if latencies else None,
            "p99_ms": latencies[int(len(latencies) * 0.99) - 1] * 1000 if latencies else None,
            "client_cpu_s": _cpu(),
        }

    async def slowloris(self, count: int, seconds: float, drip: float) -> dict[str, Any]:
        """``count`` connections that never finish a request head (a header line every
        ``drip`` seconds), each reopened as soon as the server cuts it, for ``seconds``."""
        context = ssl.create_default_context(cafile=self.ca)  # no certificate: anyone may
        started = time.perf_counter()
        cut = Counter[str]()

        async def hold() -> None:
            # Opened over the first ten seconds, as attack tools do; then steady.
            await asyncio.sleep(random.uniform(0, 10))
            while time.perf_counter() - started < seconds:
                try:
                    reader, writer = await asyncio.open_connection(
                        "127.0.0.1", self.port, ssl=context, server_hostname="localhost"
                    )
                except (OSError, ssl.SSLError):
                    cut["refused"] += 1
                    await asyncio.sleep(1.0)
                    continue
                try:
                    writer.write(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n")
                    n = 0
                    while time.perf_counter() - started < seconds:
                        try:
                            await asyncio.wait_for(reader.read(4096), drip)
                        except TimeoutError:
                            writer.write(f"X-Slow-{n}: 1\r\n".encode())
                            n += 1
                            continue
                        cut["cut"] += 1  # answered (408) or closed: open another
                        break
                except (OSError, ssl.SSLError):
                    cut["cut"] += 1
                finally:
                    writer.close()

        await asyncio.gather(*(hold() for _ in range(count)))
        return {"connections": count, "outcomes": dict(cut), "client_cpu_s": _cpu()}

    async def rate(self, rate: float, seconds: float, timeout: float) -> dict[str, Any]:
        outcomes = Counter[str]()
        latencies: list[float] = []
        tasks = []
        started = time.perf_counter()
        total = int(rate * seconds)

        last_answer = started

        async def one(d: tuple[str, str]) -> None:
            nonlocal last_answer
            t0 = time.perf_counter()
            status, _ = await self.once(d, timeout)
            outcomes[status] += 1
            if status == "200":
                last_answer = time.perf_counter()
                latencies.append(last_answer - t0)

        for i in range(total):
            due = started + i / rate
            now = time.perf_counter()
            if due > now:
                await asyncio.sleep(due - now)
            tasks.append(asyncio.create_task(one(self.devices[i % len(self.devices)])))
        await asyncio.gather(*tasks)
        # Until the last answer: the wait for clients that gave up is not the server's time.
        elapsed = max(last_answer, started + seconds) - started
        latencies.sort()
        return {
            "offered_per_s": rate,
            "offered": total,
            "goodput_per_s": outcomes["200"] / elapsed,
            "outcomes": dict(outcomes),
            "p99_ms": latencies[int(len(latencies) * 0.99) - 1] * 1000 if latencies else None,
            "client_cpu_s": _cpu(),
        }


_CPU_AT_START = 0.0


def _cpu() -> float:
    """CPU seconds since the measured phase began (the devices' TLS set-up before it,
    about a millisecond a device, is not load and would hide the phase's own share)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime - _CPU_AT_START


def main() -> None:
    plan = json.loads(Path(sys.argv[1]).read_text())
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    generator = Generator(plan)
    if plan["mode"] == "rate":
        generator.prepare(int(float(plan["rate"]) * float(plan["seconds"])))
    elif plan["mode"] != "slowloris":
        generator.prepare(len(generator.devices))
    if plan["mode"] == "slowloris":
        work = generator.slowloris(
            int(plan["connections"]), float(plan["seconds"]), float(plan["drip"])
        )
    elif plan["mode"] == "storm":
        work = generator.storm(int(plan["concurrency"]), float(plan["timeout"]))
    elif plan["mode"] == "closed":
        work = generator.closed(
            int(plan["concurrency"]), float(plan["seconds"]), float(plan["timeout"])
        )
    else:
        work = generator.rate(float(plan["rate"]), float(plan["seconds"]), float(plan["timeout"]))
    global _CPU_AT_START
    _CPU_AT_START = _cpu()
    try:
        import uvloop

        result = uvloop.run(work)
    except ImportError:
        result = asyncio.run(work)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
