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

__all__ = ["free_port", "homing_server", "wait_for_port"]


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
def homing_server(data: Path, workers: int = 1) -> Iterator[str]:
    """`homing serve` on a free loopback port; yields its URL. Logs go to DATA/../server.log."""
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
            ],
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
        try:
            wait_for_port(port, server)
            yield f"https://127.0.0.1:{port}"
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(30)
