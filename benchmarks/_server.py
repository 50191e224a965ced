"""Starting a real `homing serve` for a benchmark, and waiting until it answers."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = [
    "cpu_seconds",
    "free_port",
    "homing_process",
    "homing_server",
    "listening_process",
    "peak_memory_mib",
    "wait_for_port",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with status {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                time.sleep(1.0)  # let every worker bind
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError("server did not start")


@contextmanager
def listening_process(
    command: list[str], port: int, stop: signal.Signals = signal.SIGTERM
) -> Iterator[subprocess.Popen[bytes]]:
    """Another server (nginx, HAProxy) started for a benchmark, once it listens on ``port``;
    stopped with ``stop`` at the end."""
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, process)
        yield process
    finally:
        process.send_signal(stop)
        process.wait(timeout=30)


@contextmanager
def homing_process(
    data: Path, workers: int = 1, extra: tuple[str, ...] = ()
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """`homing serve` on a free loopback port; yields its URL and process.

    Logs go to DATA/../server.log. ``extra``: more `serve` options.
    """
    port = free_port()
    with (data.parent / "server.log").open("wb") as log:
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "homing.cli",
                "serve",
                "--data",
                str(data),
                "--listen",
                f"127.0.0.1:{port}",
                "--workers",
                str(workers),
                *extra,
            ],
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
        try:
            wait_for_port(port, server)
            yield f"https://127.0.0.1:{port}", server
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(30)


@contextmanager
def homing_server(data: Path, workers: int = 1, extra: tuple[str, ...] = ()) -> Iterator[str]:
    """`homing serve` on a free loopback port; yields its URL."""
    with homing_process(data, workers, extra) as (url, _):
        yield url


def _family(process: subprocess.Popen[bytes]) -> list[int]:
    pids = [process.pid]
    children = Path(f"/proc/{process.pid}/task/{process.pid}/children")
    if children.exists():
        pids += [int(p) for p in children.read_text().split()]
    return pids


def cpu_seconds(process: subprocess.Popen[bytes]) -> float:
    """CPU time (user and system) used so far by a server and its workers."""
    import os

    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in _family(process):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / ticks


def peak_memory_mib(process: subprocess.Popen[bytes]) -> float:
    """The peak resident memory of a server and its workers, summed (VmHWM), in MiB."""
    total_kib = 0
    for pid in _family(process):
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                total_kib += int(line.split()[1])
    return total_kib / 1024
