"""Firmware: download and verification of a 100 MB image, as a ratio to curl + sha256sum.

homing: the agent's resumable download over its pinned connection, then
python-tuf's length and hash check against the signed target. Baseline, same
run, same server, same file: ``curl`` writing the file, then ``sha256sum``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks._server import homing_server
from benchmarks._size import sized
from homing import ceremonies
from homing.agent.agent import Agent, CycleReport
from homing.agent.fetcher import HTTPSFetcher
from homing.agent.update import download
from homing.ceremonies.releases import release
from homing.operations.provisioning import provision
from homing.site import DataDir
from homing.trust.client import target_info


def run(quick: bool = False) -> dict[str, Any]:
    if shutil.which("curl") is None or shutil.which("sha256sum") is None:
        print("firmware benchmark skipped: curl or sha256sum missing")
        return {"skipped": True}
    os.environ.pop("HOMING_KEY_PASSPHRASE", None)
    size = sized(quick, 100, 20, 2) * 1024 * 1024
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data = work / "data"
        now = datetime.now(UTC)
        ceremonies.init(data, now)
        dd = DataDir(data)
        image = work / "fw.img"
        image.write_bytes(os.urandom(size))
        rel = release(dd, image, "2.0.0", "board-a", now)
        state = provision(dd, work / "dev", now, device_id="bench", hardware="board-a")
        dd.close()
        # One device identity, copied, checks in every round: no per-device limit.
        with homing_server(data, extra=("--checkin-limit", "off")) as url:
            agent = Agent(state, server=url)
            policy = agent.refresh_trust(datetime.now(UTC), CycleReport()).pin_policy
            fetcher = HTTPSFetcher(policy, datetime.now(UTC))
            info = target_info(
                state.trust_dir,
                f"{url}/tuf/metadata/",
                rel.target,
                datetime.now(UTC),
                fetcher=fetcher,
                bootstrap_root=state.factory_root(),
            )
            fetcher.close()
            t0 = time.perf_counter()
            report = CycleReport()
            job = agent.firmware_job(agent.client(policy, datetime.now(UTC)), report)
            path = download(job, info)
            with path.open("rb") as f:
                info.verify_length_and_hashes(f)
            homing_s = time.perf_counter() - t0
            path.unlink()
            directory, _, base = info.path.rpartition("/")
            target_url = f"{url}/tuf/targets/{directory}/{rel.sha256}.{base}"
            out = work / "curl.img"
            t0 = time.perf_counter()
            subprocess.run(
                [
                    "curl",
                    "-sf",
                    "--cacert",
                    str(data / "pki" / "root-ca.pem"),
                    "-o",
                    str(out),
                    target_url,
                ],
                check=True,
            )
            digest = subprocess.run(
                ["sha256sum", str(out)], check=True, capture_output=True, text=True
            ).stdout.split()[0]
            baseline_s = time.perf_counter() - t0
            assert digest == rel.sha256
    results = {
        "image_mb": size / 1024 / 1024,
        "homing_s": homing_s,
        "curl_sha256sum_s": baseline_s,
        "ratio": homing_s / baseline_s,
    }
    print(f"firmware download + verification of {results['image_mb']:.0f} MB (lower is better)")
    print(f"  curl + sha256sum  {baseline_s:6.2f} s")
    print(f"  homing agent      {homing_s:6.2f} s  ratio {results['ratio']:.2f}")
    return results
