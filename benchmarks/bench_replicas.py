"""Several hosts on one PostgreSQL: what replicas, fleet size and TLS resumption cost.

Three figures, each a ratio to a baseline measured in the same run:

(a) check-ins per second with 1, 2 and 3 replicas (``homing serve``, one
    process each, one shared site in PostgreSQL), as a ratio to 1 replica.
    The load generator (asyncio, keep-alive mutual-TLS connections, each
    device pinned to a replica round-robin) runs on the same machine: on two
    cores the ratio shows the cost of coordination, not the gain of hosts.
(b) check-in rate and p99 latency with 1,000,000 devices (and as many
    certificates) in the database, as a ratio to the same run on a database
    holding only the benchmark's devices: the cost of fleet size.
(c) check-ins per second, one per TLS 1.3 connection, with session
    resumption (tickets) against full handshakes (goal >= 3x).

A few devices check in back to back, so the replicas run with the per-device
check-in limit off (``--checkin-limit off``); ``bench_checkin`` measures with
it on.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import psycopg
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from benchmarks._server import free_port, wait_for_port
from benchmarks._size import sized
from homing import ceremonies
from homing.ceremonies.replicas import export_online_keys, join_replica
from homing.operations.provisioning import register_device
from homing.site import DataDir, shared

PG_ADMIN = os.environ.get("HOMING_BENCH_POSTGRES", "postgresql://postgres@127.0.0.1/test")
_BODY = {"firmware_version": "1.0", "trust": {"root": 1, "timestamp": 1, "targets": 1}}


@contextmanager
def _database() -> Iterator[str]:
    name = f"homing_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield PG_ADMIN.rsplit("/", 1)[0] + f"/{name}"
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class _Device:
    def __init__(self, directory: Path, device_id: str, root_ca: Path) -> None:
        self.device_id = device_id
        self.cert = directory / f"{device_id}.crt"
        self.key = directory / f"{device_id}.key"
        self.root_ca = root_ca

    def context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.root_ca))
        context.check_hostname = False  # replicas by address; the chain is still verified
        context.minimum_version = ssl.TLSVersion.TLSv1_3
        context.load_cert_chain(self.cert, self.key)
        return context


def _site(tmp: Path, db_url: str, count: int) -> tuple[DataDir, list[_Device]]:
    now = datetime.now(UTC)
    ceremonies.init(tmp / "site", now, hosts=["homing.test", "127.0.0.1"])
    site = DataDir(tmp / "site", db_url)
    shared.publish(site, now, "bench")
    devices = []
    for i in range(count):
        device_id = f"bench-{i:04d}"
        key = ec.generate_private_key(ec.SECP256R1())
        chain = register_device(site, key, device_id, now, actor="bench:replicas")
        device = _Device(tmp, device_id, site.pki_path("root-ca.pem"))
        device.cert.write_bytes(chain[0].public_bytes(serialization.Encoding.PEM))
        device.key.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        devices.append(device)
    return site, devices


@contextmanager
def _replicas(site: DataDir, tmp: Path, count: int) -> Iterator[list[int]]:
    """``count`` replicas of the site on loopback ports, each its own process."""
    assert site.db_url is not None
    keys = tmp / f"keys-{uuid.uuid4().hex[:6]}"
    export_online_keys(site, keys)
    processes, ports = [], []
    try:
        for i in range(count):
            data = tmp / f"replica-{uuid.uuid4().hex[:6]}"
            join_replica(data, site.db_url, keys, f"r{i}", [], datetime.now(UTC)).close()
            port = free_port()
            log = (tmp / f"{data.name}.log").open("wb")
            argv = [sys.executable, "-m", "homing.cli", "serve", "--data", str(data)]
            argv += ["--listen", f"127.0.0.1:{port}", "--db", site.db_url]
            # A few devices check in back to back here: the per-device limit (its own
            # figures in bench_checkin, limits on) would turn them away within a second.
            argv += ["--checkin-limit", "off"]
            processes.append(subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=log))
            wait_for_port(port, processes[-1])
            ports.append(port)
        yield ports
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
        for process in processes:
            process.wait(30)


async def _load(
    ports: list[int], devices: list[_Device], seconds: float
) -> tuple[float, float, float]:
    """Check-ins per second, p50 and p99 latency (ms), keep-alive, for ``seconds``."""
    latencies: list[float] = []
    deadline = time.monotonic() + seconds

    async def device_loop(index: int, device: _Device) -> None:
        port = ports[index % len(ports)]
        connector = aiohttp.TCPConnector(ssl=device.context(), limit=1)
        async with aiohttp.ClientSession(connector=connector) as session:
            url = f"https://127.0.0.1:{port}/v1/device/checkin"
            while time.monotonic() < deadline:
                start = time.perf_counter()
                async with session.post(url, json=_BODY) as response:
                    await response.read()
                    if response.status != 200:
                        raise RuntimeError(f"check-in refused: {response.status}")
                latencies.append(time.perf_counter() - start)

    started = time.monotonic()
    await asyncio.gather(*(device_loop(i, d) for i, d in enumerate(devices)))
    elapsed = time.monotonic() - started
    ordered = sorted(latencies)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return len(latencies) / elapsed, statistics.median(ordered) * 1000, p99 * 1000


def _fill(db_url: str, count: int) -> float:
    """``count`` devices and certificates more, by COPY; returns the seconds it took."""
    start = time.monotonic()
    now = datetime.now(UTC)
    spki = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    with psycopg.connect(db_url) as conn:
        with conn.cursor().copy(
            "COPY devices (device_id, status, key_spki, enrolled_at, enrolled_by, last_seen) "
            "FROM STDIN"
        ) as copy:
            for i in range(count):
                copy.write_row((f"fill-{i:07d}", "active", spki, now, "bench", now))
        with conn.cursor().copy(
            "COPY certificates (serial, kind, subject_id, issuer_pin, issued_at, not_after) "
            "FROM STDIN"
        ) as copy:
            later = now + timedelta(days=30)
            for i in range(count):
                copy.write_row((f"f{i:x}", "device", f"fill-{i:07d}", "x" * 44, now, later))
        conn.execute("ANALYZE")
    return time.monotonic() - start


def _one_per_connection(
    port: int, device: _Device, count: int, resume: bool, request: bytes | None = None
) -> tuple[float, int]:
    """Check-ins per second with a new TLS 1.3 connection for each; and how many resumed."""
    context = device.context()
    body = json.dumps(_BODY).encode()
    request = request or (
        b"POST /v1/device/checkin HTTP/1.1\r\nHost: homing.test\r\n"
        b"Content-Type: application/json\r\nConnection: close\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    session = None
    resumed = 0
    start = time.perf_counter()
    for _ in range(count):
        raw = socket.create_connection(("127.0.0.1", port))
        with context.wrap_socket(raw, session=session if resume else None) as tls:
            tls.sendall(request)
            response = b""
            while chunk := tls.recv(65536):
                response += chunk
            if not response.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(f"check-in refused: {response[:80]!r}")
            resumed += 1 if tls.session_reused else 0
            session = tls.session
    return count / (time.perf_counter() - start), resumed


def run(quick: bool = False) -> dict[str, Any]:
    seconds = sized(quick, 10.0, 4.0, 0.5)
    big = sized(quick, 1_000_000, 100_000, 1_000)
    handshakes = sized(quick, 200, 200, 10)
    concurrency = 24
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp_name, _database() as db_url:
        tmp = Path(tmp_name)
        site, devices = _site(tmp, db_url, concurrency)
        try:
            rates: dict[int, float] = {}
            for count in sized(quick, (1, 2, 3), (1, 2, 3), (1, 2)):
                with _replicas(site, tmp, count) as ports:
                    asyncio.run(_load(ports, devices, 1.0))  # warm: connections, caches
                    rates[count], _, _ = asyncio.run(_load(ports, devices, seconds))
            results["replicas"] = {
                "checkins_per_s": {str(k): round(v, 1) for k, v in rates.items()},
                "ratio_to_1": {str(k): round(v / rates[1], 2) for k, v in rates.items()},
            }
            with _replicas(site, tmp, 1) as ports:
                asyncio.run(_load(ports, devices, 1.0))
                empty = asyncio.run(_load(ports, devices, seconds))
                full_rate, resumed_count = _one_per_connection(
                    ports[0], devices[0], handshakes, False
                )
                resumed_rate, resumed_count = _one_per_connection(
                    ports[0], devices[0], handshakes, True
                )
                # The same with a request that touches no database: what TLS itself costs.
                health = (
                    b"GET /openapi.json HTTP/1.1\r\nHost: homing.test\r\nConnection: close\r\n\r\n"
                )
                tls_full, _ = _one_per_connection(ports[0], devices[0], handshakes, False, health)
                tls_resumed, _ = _one_per_connection(ports[0], devices[0], handshakes, True, health)
            results["tls13_resumption"] = {
                "full_handshake_checkins_per_s": round(full_rate, 1),
                "resumed_checkins_per_s": round(resumed_rate, 1),
                "resumed_connections": f"{resumed_count}/{handshakes}",
                "ratio": round(resumed_rate / full_rate, 2),
                "goal": 3.0,
                "no_database_requests_per_s": {
                    "full": round(tls_full, 1),
                    "resumed": round(tls_resumed, 1),
                    "ratio": round(tls_resumed / tls_full, 2),
                },
            }
            fill_seconds = _fill(db_url, big)
            with _replicas(site, tmp, 1) as ports:
                asyncio.run(_load(ports, devices, 1.0))
                loaded = asyncio.run(_load(ports, devices, seconds))
            results["fleet_size"] = {
                "devices": big,
                "fill_seconds": round(fill_seconds, 1),
                "empty": {"checkins_per_s": round(empty[0], 1), "p99_ms": round(empty[2], 1)},
                "full": {"checkins_per_s": round(loaded[0], 1), "p99_ms": round(loaded[2], 1)},
                "rate_ratio": round(loaded[0] / empty[0], 2),
                "p99_ratio": round(loaded[2] / empty[2], 2),
            }
        finally:
            site.close()
    return results


if __name__ == "__main__":
    print(json.dumps(run(quick="--quick" in sys.argv), indent=2))
