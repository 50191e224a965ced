"""A device certificate checked against 30 device-CA generations, as a ratio to one chain.

Baseline (same run, same certificates): cryptography's own client verifier
given the one issuing CA that signed the leaf, the least any check can do.
homing: the server's rule (``verify_device_certificate``) with the site's
trust after one device-CA generation, and after thirty (each certified by
the root), where it first picks the generations that can have issued the
leaf by name and key identifier. Before, thirty generations were refused
outright ("peer sent 30 intermediates").
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from cryptography.x509.verification import PolicyBuilder, Store

from benchmarks._size import sized
from homing import ceremonies
from homing.pki.profiles import device_profile
from homing.server.rules import DeviceTrust, verify_device_certificate
from homing.site import DataDir

GENERATIONS = 30


def _best(fn: object, rounds: int, calls: int) -> float:
    assert callable(fn)
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter() - start) / calls)
    return best


def run(quick: bool = False) -> dict[str, float]:
    from tests.conftest import device_csr

    logging.getLogger("homing.pki.keystore").setLevel(logging.ERROR)
    os.environ.pop("HOMING_KEY_PASSPHRASE", None)
    rounds, calls = sized(quick, (7, 1000), (3, 200), (1, 10))
    now = datetime.now(UTC)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        ceremonies.init(data, now)
        dd = DataDir(data)
        roots = dd.certificates("root-ca.pem")
        leaf = ceremonies.issue_certificate(data, device_csr("dev-1"), "device", now)[0]
        issuer = dd.certificate("device-ca.pem")
        one = DeviceTrust(dd.certificates("device-cas.pem"), (), roots, device_profile())
        for _ in range(GENERATIONS - 1):
            ceremonies.rotate_issuing_ca(data, "device", now)
        many = DeviceTrust(dd.certificates("device-cas.pem"), (), roots, device_profile())
        assert len(many.trusted) == GENERATIONS
        verifier = PolicyBuilder().store(Store(roots)).time(now).build_client_verifier()

        timings = {
            "cryptography": _best(lambda: verifier.verify(leaf, [issuer]), rounds, calls),
            "homing_1": _best(lambda: verify_device_certificate(leaf, one, now), rounds, calls),
            "homing_30": _best(lambda: verify_device_certificate(leaf, many, now), rounds, calls),
        }
        dd.close()
    base = timings["cryptography"]
    print(f"a device certificate checked against {GENERATIONS} device-CA generations")
    print(f"  cryptography, the one issuer  {base * 1e6:7.1f} us")
    for name, label in (("homing_1", "1 generation "), ("homing_30", f"{GENERATIONS} generations")):
        ratio = timings[name] / base
        print(f"  homing, {label}         {timings[name] * 1e6:7.1f} us  ratio {ratio:.2f}")
    return {
        "cryptography_us": base * 1e6,
        "homing_1_generation_us": timings["homing_1"] * 1e6,
        "homing_30_generations_us": timings["homing_30"] * 1e6,
        "ratio_1": timings["homing_1"] / base,
        "ratio_30": timings["homing_30"] / base,
    }
