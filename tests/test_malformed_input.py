"""Malformed input everywhere: only homing errors may escape, never a raw exception."""

from __future__ import annotations

import random
import shutil
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import pytest

from homing.errors import HomingError
from homing.pki.keystore import load_private_key_pem
from homing.pki.profiles import approve_csr, device_profile, server_profile
from homing.pki.validate import load_certificate, verify_crl
from homing.site.datadir import Settings
from homing.trust import PinPolicy, refresh_trust
from tests.conftest import device_csr

SEED = 20261128


def _mutations(sample: bytes, count: int, rng: random.Random) -> list[bytes]:
    out = [b"", b"\x00", b"{}", b"[]", b"null", sample[: len(sample) // 2], sample * 2]
    for _ in range(count):
        data = bytearray(sample)
        for _ in range(rng.randint(1, 8)):
            choice = rng.random()
            pos = rng.randrange(len(data)) if data else 0
            if choice < 0.5 and data:
                data[pos] = rng.randrange(256)
            elif choice < 0.75:
                data[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
            else:
                del data[pos : pos + rng.randint(1, 32)]
        out.append(bytes(data))
    return out


def _only_homing_errors(parse: Callable[[bytes], object], samples: list[bytes]) -> int:
    refused = 0
    for sample in samples:
        try:
            parse(sample)
        except HomingError:
            refused += 1
    return refused


def test_csr_parsing(now: datetime) -> None:
    rng = random.Random(SEED)
    for sample_csr, profile in [
        (device_csr("dev"), device_profile()),
        (device_csr("dev", der=True), server_profile(["localhost"])),
    ]:
        refused = _only_homing_errors(
            lambda b, profile=profile: approve_csr(b, profile), _mutations(sample_csr, 300, rng)
        )
        assert refused > 250


def test_pin_policy_parsing(data_dir: Path) -> None:
    (target,) = (data_dir / "repository" / "targets").glob("*.pins.json")
    sample = target.read_bytes()
    PinPolicy.from_bytes(sample)  # negative control: the original parses
    refused = _only_homing_errors(
        PinPolicy.from_bytes, _mutations(sample, 300, random.Random(SEED))
    )
    assert refused > 250


def test_certificate_and_crl_parsing(data_dir: Path, now: datetime) -> None:
    from homing import ceremonies

    rng = random.Random(SEED)
    chain = (data_dir / "pki" / "server-chain.pem").read_bytes()
    _only_homing_errors(load_certificate, _mutations(chain, 200, rng))
    crl = ceremonies.write_crl(data_dir, "device", now).read_bytes()
    issuer = load_certificate((data_dir / "pki" / "device-ca.pem").read_bytes())
    verify_crl(crl, issuer, now)
    refused = _only_homing_errors(lambda b: verify_crl(b, issuer, now), _mutations(crl, 200, rng))
    assert refused > 150


def test_settings_and_key_parsing(data_dir: Path) -> None:
    rng = random.Random(SEED)
    settings = (data_dir / "homing.json").read_bytes()
    _only_homing_errors(lambda b: Settings.from_json(b, "x"), _mutations(settings, 200, rng))
    key = (data_dir / "keys" / "targets.key.pem").read_bytes()
    refused = _only_homing_errors(
        lambda b: load_private_key_pem(b, None, "x"), _mutations(key, 200, rng)
    )
    assert refused > 150


@pytest.mark.parametrize(
    "role_file", ["1.root.json", "timestamp.json", "1.snapshot.json", "1.targets.json"]
)
def test_metadata_served_to_a_device(
    data_dir: Path, tmp_path: Path, now: datetime, role_file: str
) -> None:
    rng = random.Random(SEED)
    mirror = tmp_path / "mirror"
    shutil.copytree(data_dir / "repository", mirror)
    path = mirror / "metadata" / role_file
    original = path.read_bytes()
    bootstrap = (data_dir / "repository" / "metadata" / "1.root.json").read_bytes()
    url = (mirror / "metadata").as_uri() + "/"
    refused = 0
    for i, sample in enumerate(_mutations(original, 40, rng)):
        path.write_bytes(sample)
        device = tmp_path / f"device-{i}"
        try:
            refresh_trust(
                device, url, now, bootstrap_root=sample if role_file == "1.root.json" else bootstrap
            )
        except HomingError:
            refused += 1
    assert refused > 30
