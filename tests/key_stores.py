"""The installed agent enrolled with its key in a store of its own (a TPM, a PKCS#11
token), and its cycles: shared by the tests of each store."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.harness import RunningServer, homing_entry_point


def enroll_args(
    server: RunningServer,
    factory: tuple[str, str],
    state_dir: Path,
    key_store: str,
    *store_options: str,
) -> list[str]:
    """``homing agent enroll`` for this server and station, the key kept in ``key_store``."""
    return [
        "agent",
        "enroll",
        "--state",
        str(state_dir),
        "--server",
        f"https://127.0.0.1:{server.port}",
        "--factory",
        f"{factory[0]}:{factory[1]}",
        "--root",
        str(server.data / "repository" / "metadata" / "1.root.json"),
        "--key-store",
        key_store,
        *store_options,
    ]


def cycle(
    state_dir: Path, environment: dict[str, str], *before: str
) -> subprocess.CompletedProcess[str]:
    """One cycle of the installed agent in exactly ``environment``, whatever its end."""
    return subprocess.run(
        [*before, homing_entry_point(), "agent", "run", "--state", str(state_dir), "--once"],
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def run_once(state_dir: Path, env: dict[str, str], *before: str) -> str:
    """One cycle of the installed agent, ``env`` added to this process's (``before``:
    e.g. faketime), which must check in; its output."""
    ran = cycle(state_dir, {**os.environ, **env}, *before)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    return ran.stdout + ran.stderr
