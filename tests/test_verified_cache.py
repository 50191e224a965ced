"""A device's verified certificate is remembered, not its certificate, and never past its end.

Each server process keeps what a check-in needs of a validated device
certificate (device, key, serial, dates) for tens of thousands of devices,
so a device that comes back on a new connection is not validated again; the
remembered result holds only for the CAs it was checked against and only
within the certificate's dates.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from homing.server import auth
from homing.server.errors import HTTPProblem
from homing.server.rules import VerifiedDevice
from tests.harness import RunningServer


def test_a_device_is_validated_once_and_again_after_its_certificate_ends(
    server: RunningServer, factory: tuple[str, str], tmp_path: Path
) -> None:
    device = server.enroll("cached-1", factory, tmp_path)
    der = device.certificate.public_bytes(serialization.Encoding.DER)
    now = server.state.now()
    first = auth._verify(der, server.state, now)
    assert auth._verify(der, server.state, now) is first
    assert first.device_id == "cached-1"
    assert first.serial == device.certificate.serial_number
    assert not any(isinstance(field, x509.Certificate) for field in first)
    # One second past its end the remembered answer does not hold: validated again.
    with pytest.raises(HTTPProblem) as refused:
        auth._verify(der, server.state, first.not_valid_after + timedelta(seconds=1))
    assert refused.value.code == "certificate_expired"


def test_the_check_in_answer_states_the_presented_certificate(
    server: RunningServer, factory: tuple[str, str], tmp_path: Path
) -> None:
    device = server.enroll("cached-2", factory, tmp_path)
    cert = device.certificate
    for _ in range(2):  # validated, then remembered: the same answer
        response = server.request(
            "POST", "/v1/device/checkin", {"firmware_version": "1.0"}, device=device
        )
        assert response.status == 200, response.body
        stated = json.loads(response.body)["certificate"]
        lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
        assert stated == {
            "serial": format(cert.serial_number, "x"),
            "not_after": cert.not_valid_after_utc.isoformat(),
            "renew_after": (cert.not_valid_before_utc + lifetime * 2 / 3).isoformat(),
        }


def test_the_cache_keeps_its_limit_and_answers_only_for_its_epoch() -> None:
    assert auth._VerifiedCache().limit >= 65_536
    cache = auth._VerifiedCache(limit=3)
    now = datetime(2030, 1, 1)
    entry = VerifiedDevice("d", b"k", 1, now, now + timedelta(days=1))
    for i in range(3):
        cache.put(b"cert-%d" % i, 7, entry)
    assert len(cache) == 3
    assert cache.get(b"cert-0", 7) is entry
    assert cache.get(b"cert-0", 8) is None  # the CAs changed since
    cache.put(b"cert-3", 7, entry)  # full: starts again
    assert len(cache) == 1
    assert cache.get(b"cert-0", 7) is None
    assert cache.get(b"cert-3", 7) is entry


def test_the_cache_never_outgrows_its_limit_over_many_fleets_and_epochs() -> None:
    cache = auth._VerifiedCache(limit=64)
    now = datetime(2030, 1, 1)
    for epoch in range(20):  # twenty CA changes, each with a fleet over the limit
        for i in range(200):
            entry = VerifiedDevice(f"d{i}", b"k", i, now, now + timedelta(days=1))
            cache.put(b"%d/%d" % (epoch, i), epoch, entry)
            assert len(cache) <= 64
            assert cache.get(b"%d/%d" % (epoch, i), epoch) is entry
            assert cache.get(b"%d/%d" % (epoch, i), epoch + 1) is None


def test_twenty_devices_are_each_validated_once(
    server: RunningServer, factory: tuple[str, str], tmp_path: Path
) -> None:
    now = server.state.now()
    ders = [
        server.enroll(f"fleet-{i}", factory, tmp_path).certificate.public_bytes(
            serialization.Encoding.DER
        )
        for i in range(20)
    ]
    first = [auth._verify(der, server.state, now) for der in ders]
    assert [v.device_id for v in first] == [f"fleet-{i}" for i in range(20)]
    for _ in range(3):
        again = [auth._verify(der, server.state, now) for der in ders]
        assert all(a is b for a, b in zip(again, first, strict=True))
