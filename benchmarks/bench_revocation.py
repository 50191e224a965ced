"""Revoking a compromised production batch: 100,000 devices in one call.

A site's database holds ``DEVICES`` devices from one factory station, each
with a certificate of the site's device CA (rows as enrollment writes them;
certificates are not signed one by one here, as that is not what is
measured). ``homing.ceremonies.revoke_batch`` by station revokes them all
in one transaction and re-signs the device CRL once, listing every one.
Baseline in the same run: ``homing.ceremonies.revoke``, one device a call
(what a loop over ``homing revoke`` or the per-device admin endpoint does),
timed over ``SINGLES`` devices and scaled to the batch.
"""

from __future__ import annotations

import logging
import os
import secrets
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from sqlalchemy import insert

from benchmarks._size import sized
from homing import ceremonies
from homing.pki.keys import spki_pin
from homing.site import DataDir
from homing.store.revocation import Selection
from homing.store.schema import certificates, devices

DEVICES = 100_000
SINGLES = 50


def _fleet(dd: DataDir, count: int, station: str, now: datetime) -> None:
    ca = x509.load_pem_x509_certificate((dd.root / "pki" / "device-ca.pem").read_bytes())
    pin = spki_pin(ca)
    rows, certs = [], []
    for i in range(count):
        device_id = f"{station}-{i}"
        rows.append(
            {
                "device_id": device_id,
                "status": "active",
                "key_spki": secrets.token_bytes(91),
                "enrolled_at": now,
                "enrolled_by": f"factory:{station}",
            }
        )
        certs.append(
            {
                "serial": format(secrets.randbits(127) | 1 << 126, "x"),
                "kind": "device",
                "subject_id": device_id,
                "issuer_pin": pin,
                "issued_at": now,
                "not_after": now + timedelta(days=90),
            }
        )
    with dd.database().begin() as conn:
        for start in range(0, count, 10_000):
            conn.execute(insert(devices), rows[start : start + 10_000])
            conn.execute(insert(certificates), certs[start : start + 10_000])


def run(quick: bool = False) -> dict[str, Any]:
    count = sized(quick, DEVICES, 10_000, 200)
    os.environ.pop("HOMING_KEY_PASSPHRASE", None)
    logging.getLogger("homing.pki.keystore").setLevel(logging.ERROR)
    results: dict[str, Any] = {"devices": count}
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        now = datetime.now(UTC)
        ceremonies.init(data, now)
        dd = DataDir(data)
        _fleet(dd, count, "line-bad", now)
        _fleet(dd, SINGLES, "line-single", now)
        started = time.perf_counter()
        for i in range(SINGLES):
            ceremonies.revoke(dd, now, device_id=f"line-single-{i}", reason="one by one")
        single = (time.perf_counter() - started) / SINGLES
        started = time.perf_counter()
        chosen, revoked = ceremonies.revoke_batch(
            dd, now, Selection(station="line-bad"), reason="key leak"
        )
        batch = time.perf_counter() - started
        crl = x509.load_pem_x509_crl((data / "pki" / "device-ca.crl.pem").read_bytes())
        listed = len(crl)
        dd.close()
    results.update(
        {
            "batch_seconds": batch,
            "revoked_devices": len(chosen),
            "revoked_certificates": revoked,
            "crl_entries": listed,
            "single_seconds_each": single,
            "one_by_one_seconds_estimated": single * count,
            "speedup": single * count / batch,
        }
    )
    print(f"revocation of a batch of {count} devices (embedded SQLite)")
    print(
        f"  one call by station: {batch:.1f} s ({len(chosen)} devices, {revoked} certificates, "
        f"CRL of {listed} entries signed once)"
    )
    print(
        f"  one by one (ceremonies.revoke): {single * 1000:.0f} ms each, "
        f"{single * count / 60:.0f} min for the batch: {single * count / batch:.0f}x slower"
    )
    return results


if __name__ == "__main__":
    run(quick="--quick" in sys.argv)
