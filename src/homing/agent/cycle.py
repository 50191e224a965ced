"""One agent cycle in a process of its own: ``python -m homing.agent.cycle``.

The resident agent (homing.agent.daemon) runs each cycle here, so what a
cycle loads (cryptography, python-tuf, TLS) leaves memory when it ends and
the device sleeps with the interpreter alone resident. Prints one JSON
object on stdout for the daemon: whether it checked in, whether the device
is revoked, the pause the server asked for, and the journal's summary.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path

__all__ = ["main"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="homing agent run (one cycle)")
    parser.add_argument("--state", required=True, type=Path)
    parser.add_argument("--server")
    parser.add_argument("--firmware-version")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    from homing.agent.agent import Agent
    from homing.agent.runner import cycle_summary
    from homing.agent.state import DeviceState
    from homing.agent.token_pin import PIN_VARIABLE, set_pin
    from homing.errors import HomingError

    set_pin(os.environ.get(PIN_VARIABLE))  # a device key on a PKCS#11 token needs it
    try:
        agent = Agent(
            DeviceState(args.state), server=args.server, firmware_version=args.firmware_version
        )
        report = agent.run_once()
    except HomingError as e:
        print(json.dumps({"error": str(e)}))
        raise SystemExit(1) from e
    print(
        json.dumps(
            {
                "checked_in": report.checked_in,
                "revoked": report.revoked,
                "retry_after": report.retry_after,
                "summary": cycle_summary(report),
            }
        )
    )


if __name__ == "__main__":
    main()
