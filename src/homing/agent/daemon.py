"""The resident agent process: ``homing agent run`` re-executes into this lean entry point.

A device agent sleeps almost all its life, so what stays resident matters:
this module loads the agent's own code and nothing of the operator CLI
(click, rich, the server and storage layers).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

__all__ = ["main"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="homing agent run")
    parser.add_argument("--state", required=True, type=Path)
    parser.add_argument("--server")
    parser.add_argument("--interval", type=float, default=3600.0)
    parser.add_argument("--firmware-version")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    # One line per cycle (homing.agent.runner.cycle_line): what the journal keeps.
    logging.getLogger("homing.agent.runner").setLevel(logging.INFO)
    from homing.agent.agent import Agent
    from homing.agent.runner import run_forever
    from homing.agent.state import DeviceState
    from homing.errors import HomingError

    try:
        agent = Agent(
            DeviceState(args.state), server=args.server, firmware_version=args.firmware_version
        )
        run_forever(agent, args.interval)
    except HomingError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(1) from e
    except KeyboardInterrupt:
        raise SystemExit(130) from None


if __name__ == "__main__":
    main()
