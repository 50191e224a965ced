"""The resident agent process: ``homing agent run`` re-executes into this lean entry point.

A device agent sleeps almost all its life, so what stays resident matters.
This process keeps only the interpreter and homing.agent.pacing: each cycle
runs in a process of its own (homing.agent.cycle), which loads the agent's
code, does the cycle and exits, so what a cycle needed (cryptography,
python-tuf, TLS buffers) is never resident while the device sleeps. A cycle
costs one interpreter start (a fraction of a second of CPU), an hour apart.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path
from types import FrameType

from homing.agent.pacing import Outcome, cycle_forever

__all__ = ["main"]

log = logging.getLogger("homing.agent.runner")  # the journal's one line per cycle


def _cycle(args: argparse.Namespace) -> Outcome:
    """One cycle in its own process; its warnings go to this process's stderr (the journal)."""
    command = [sys.executable, "-m", "homing.agent.cycle", "--state", str(args.state)]
    if args.server:
        command += ["--server", args.server]
    if args.firmware_version:
        command += ["--firmware-version", args.firmware_version]
    child = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)  # noqa: S603
    try:
        out, _ = child.communicate()
    finally:
        if child.poll() is None:  # this process is stopping: so is the cycle
            child.terminate()
            child.wait()
    lines = [line for line in out.splitlines() if line.startswith("{")]
    if not lines:
        return Outcome(False, False, None, f"the cycle ended with status {child.returncode}")
    result = json.loads(lines[-1])
    if "error" in result:  # the state cannot be read: no cycle will do better
        print(f"error: {result['error']}", file=sys.stderr)
        raise SystemExit(1)
    retry_after = result.get("retry_after")
    return Outcome(
        bool(result.get("checked_in")),
        bool(result.get("revoked")),
        float(retry_after) if isinstance(retry_after, int | float) else None,
        str(result.get("summary", "")),
    )


class _Stopping(BaseException):
    """SIGTERM arrived: unwind (ending a cycle in progress), then die of the signal."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _stop(signum: int, _frame: FrameType | None) -> None:
    raise _Stopping(signum)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="homing agent run")
    parser.add_argument("--state", required=True, type=Path)
    parser.add_argument("--server")
    parser.add_argument("--interval", type=float, default=3600.0)
    parser.add_argument("--firmware-version")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    # One line per cycle (homing.agent.pacing.next_line): what the journal keeps.
    log.setLevel(logging.INFO)
    signal.signal(signal.SIGTERM, _stop)
    try:
        cycle_forever(lambda: _cycle(args), args.interval)
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    except _Stopping as stopping:
        # Died of the signal, as before the cycle ran in a child: systemd counts a stop by
        # SIGTERM as clean, an exit status of 143 as a failure.
        signal.signal(stopping.signum, signal.SIG_DFL)
        os.kill(os.getpid(), stopping.signum)


if __name__ == "__main__":
    main()
