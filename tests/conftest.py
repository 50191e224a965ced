"""Shared fixtures: a real data directory, real keys, real CSRs."""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from homing import ceremonies

if TYPE_CHECKING:
    from tests.harness import Clock, RunningServer

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Long tests first: with two workers, a long test started last would run alone."""
    items.sort(key=lambda item: item.get_closest_marker("long") is None)


@pytest.fixture(autouse=True)
def _quiet_dev_warnings(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="homing.pki.keystore")


@pytest.fixture
def now() -> datetime:
    return NOW


@pytest.fixture
def data_dir(tmp_path: Path, now: datetime, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A development data directory created at ``now``."""
    monkeypatch.delenv("HOMING_KEY_PASSPHRASE", raising=False)
    data = tmp_path / "data"
    ceremonies.init(data, now)
    return data


def make_csr(
    key: ec.EllipticCurvePrivateKey | None = None,
    *,
    uris: Sequence[str] = (),
    dns: Sequence[str] = (),
    ips: Sequence[str] = (),
    cn: str = "request",
    der: bool = False,
) -> bytes:
    key = key or ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(u) for u in uris]
    names += [x509.DNSName(d) for d in dns]
    names += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    )
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    csr = builder.sign(key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.DER if der else serialization.Encoding.PEM)


def device_csr(device_id: str, **kwargs: object) -> bytes:
    return make_csr(uris=[f"urn:homing:device:{device_id}"], **kwargs)  # type: ignore[arg-type]


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Every storage test runs against embedded SQLite and a real PostgreSQL."""
    from tests.harness import postgres_database

    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'test.db'}"
    else:
        with postgres_database() as url:
            yield url


@pytest.fixture
def clock() -> Clock:
    from tests.harness import Clock

    return Clock()


@pytest.fixture
def server(
    tmp_path: Path, db_url: str, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> Iterator[RunningServer]:
    """A home server on loopback over a fresh data directory (made at the real now)."""
    from datetime import UTC, datetime

    from tests.harness import RunningServer

    monkeypatch.delenv("HOMING_KEY_PASSPHRASE", raising=False)
    data = tmp_path / "server-data"
    ceremonies.init(data, datetime.now(UTC))
    running = RunningServer(data, db_url, clock).start()
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def factory(server: RunningServer) -> tuple[str, str]:
    from datetime import UTC, datetime

    from homing.operations import fleet as operations

    secret = operations.add_factory(server.state.db, "test", datetime.now(UTC), "station-1")
    return "station-1", secret
