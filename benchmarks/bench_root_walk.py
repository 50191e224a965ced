"""Time to walk 100 root versions, as a ratio to python-tuf alone.

Baseline (same run, same repository, same file fetcher): a stock
``ngclient.Updater`` bootstrapped from root v1 refreshes and downloads the
pin policy target. homing: ``refresh_trust`` doing the same, plus its
choice of the newest verified root and the strict pin policy parse.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from tuf.ngclient import Updater

from benchmarks._size import sized
from homing import ceremonies
from homing.trust import DirectoryFetcher, refresh_trust

VERSIONS = 100


def run(quick: bool = False) -> dict[str, float]:
    logging.getLogger("homing.pki.keystore").setLevel(logging.ERROR)
    os.environ.pop("HOMING_KEY_PASSPHRASE", None)
    rounds = sized(quick, 7, 3, 1)
    now = datetime.now(UTC)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        ceremonies.init(data, now)
        for _ in range(VERSIONS - 1):
            ceremonies.rotate_root(data, now)
        metadata_url = (data / "repository" / "metadata").as_uri() + "/"
        targets_url = (data / "repository" / "targets").as_uri() + "/"
        bootstrap = (data / "repository" / "metadata" / "1.root.json").read_bytes()

        def stock() -> None:
            client = Path(tempfile.mkdtemp(dir=tmp))
            (client / "t").mkdir()
            updater = Updater(
                str(client),
                metadata_url,
                str(client / "t"),
                targets_url,
                fetcher=DirectoryFetcher(),
                bootstrap=bootstrap,
            )
            updater.refresh()
            info = updater.get_targetinfo("pins.json")
            assert info is not None
            updater.download_target(info)
            assert updater._trusted_set.root.version == VERSIONS
            shutil.rmtree(client)

        def homing() -> None:
            client = Path(tempfile.mkdtemp(dir=tmp))
            state = refresh_trust(client, metadata_url, datetime.now(UTC), bootstrap_root=bootstrap)
            assert state.root_version == VERSIONS
            shutil.rmtree(client)

        timings: dict[str, float] = {}
        for name, fn in (("python_tuf", stock), ("homing", homing)):
            best = float("inf")
            for _ in range(rounds):
                start = time.perf_counter()
                fn()
                best = min(best, time.perf_counter() - start)
            timings[name] = best
    ratio = timings["homing"] / timings["python_tuf"]
    print(f"walk of {VERSIONS} root versions (lower is better; goal ratio <= 1.5)")
    print(f"  python-tuf alone  {timings['python_tuf'] * 1000:7.1f} ms")
    print(f"  homing            {timings['homing'] * 1000:7.1f} ms  ratio {ratio:.2f}")
    return {
        "python_tuf_ms": timings["python_tuf"] * 1000,
        "homing_ms": timings["homing"] * 1000,
        "ratio": ratio,
    }
