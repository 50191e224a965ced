"""Server-side assignment cost per check-in: 100,000 devices, 10 active rollouts.

Measured in the same run against the cost of recording one check-in (the
work every check-in does anyway), on the embedded SQLite database.
"""

from __future__ import annotations

import random
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import insert

from benchmarks._size import sized
from homing.operations import rollouts
from homing.store import Database, device_contacts, firmware
from homing.store.schema import devices

DEVICES = 100_000
CLASSES = 10


def run(quick: bool = False) -> dict[str, Any]:
    count = sized(quick, DEVICES, 20_000, 500)
    samples = 2000
    now = datetime.now(UTC)
    with tempfile.TemporaryDirectory() as tmp:
        db = Database(f"sqlite:///{Path(tmp) / 'bench.db'}")
        db.migrate()
        with db.engine.begin() as conn:
            conn.execute(
                insert(devices),
                [
                    {
                        "device_id": f"d{i}",
                        "status": "active",
                        "hardware": f"hw{i % CLASSES}",
                        "key_spki": b"k",
                        "enrolled_at": now,
                        "enrolled_by": "bench",
                    }
                    for i in range(count)
                ],
            )
            for c in range(CLASSES):
                rel = firmware.Release(
                    target=f"firmware/hw{c}-2.0.0-1.img",
                    hardware=f"hw{c}",
                    version="2.0.0",
                    sequence=1,
                    length=1,
                    sha256="0" * 64,
                    downgrade=False,
                    notes=None,
                    created_at=now,
                )
                firmware.add_release(conn, rel)
                firmware.add_rollout(
                    conn, rel, [10, 50, 100], 0.1, 0.9, timedelta(0), timedelta(hours=24), now
                )
        rng = random.Random(1)
        picks = [rng.randrange(count) for _ in range(samples)]
        t0 = time.perf_counter()
        assigned = 0
        for i in picks:
            with db.engine.begin() as conn:
                if rollouts.assignment(conn, f"d{i}", f"hw{i % CLASSES}", "1.0.0", now):
                    assigned += 1
        assign_us = (time.perf_counter() - t0) / samples * 1e6
        t0 = time.perf_counter()
        for i in picks:
            with db.engine.begin() as conn:
                device_contacts.record_checkins(
                    conn, [device_contacts.CheckIn(f"d{i}", now, "1.0.0", 1, 1, 1, None)]
                )
        record_us = (time.perf_counter() - t0) / samples * 1e6
        db.dispose()
    results = {
        "devices": count,
        "rollouts": CLASSES,
        "assigned": assigned,
        "assignment_us": assign_us,
        "record_checkin_us": record_us,
        "ratio": assign_us / record_us,
    }
    print(f"assignment per check-in, {count} devices, {CLASSES} rollouts (lower is better)")
    print(f"  recording a check-in   {record_us:7.0f} us")
    print(
        f"  assignment             {assign_us:7.0f} us  ratio {results['ratio']:.2f}"
        f"  ({assigned} of {samples} sampled check-ins assigned an image)"
    )
    return results
