"""Run every benchmark: ``python -m benchmarks`` (or ``make bench``)."""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

from benchmarks import (
    bench_agent,
    bench_assignment,
    bench_checkin,
    bench_firmware,
    bench_generations,
    bench_install_memory,
    bench_issuance,
    bench_replicas,
    bench_revocation,
    bench_root_walk,
    bench_simulate,
    bench_slow_clients,
    bench_storm,
    bench_trusted_time,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer iterations")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/latest.json"))
    args = parser.parse_args()
    results = {
        "machine": platform.platform(),
        "python": platform.python_version(),
        "issuance": bench_issuance.run(quick=args.quick),
        "root_walk": bench_root_walk.run(quick=args.quick),
        "checkin": bench_checkin.run(quick=args.quick),
        "device_ca_generations": bench_generations.run(quick=args.quick),
        "agent": bench_agent.run(quick=args.quick),
        "firmware": bench_firmware.run(quick=args.quick),
        "install_memory": bench_install_memory.run(quick=args.quick),
        "assignment": bench_assignment.run(quick=args.quick),
        "simulate": bench_simulate.run(quick=args.quick),
        "replicas": bench_replicas.run(quick=args.quick),
        "storm": bench_storm.run(quick=args.quick),
        "revocation": bench_revocation.run(quick=args.quick),
        "trusted_time": bench_trusted_time.run(quick=args.quick),
        "slow_clients": bench_slow_clients.run(quick=args.quick),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"results written to {args.out}")


if __name__ == "__main__":
    main()
