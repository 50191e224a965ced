"""Certificates issued per second from CSRs, as a ratio to raw cryptography.

Baseline (same run, same CSRs, one core): parse the CSR, verify its
signature, build and sign the same certificate with cryptography directly.
homing: Authority.issue_csr, i.e. the profile policy checks plus the
issuance record (in memory, and in the append-only file with and without
fsync per record).
"""

from __future__ import annotations

import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from benchmarks._size import sized
from homing.pki import (
    Authority,
    FileLedger,
    MemoryLedger,
    generate_tls_key,
    make_issuing_ca,
    make_root_ca,
)
from homing.pki.profiles import device_profile


def _csrs(count: int) -> list[bytes]:
    out = []
    for i in range(count):
        key = ec.generate_private_key(ec.SECP256R1())
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([]))
            .add_extension(
                x509.SubjectAlternativeName(
                    [x509.UniformResourceIdentifier(f"urn:homing:device:bench-{i}")]
                ),
                critical=False,
            )
            .sign(key, hashes.SHA256())
        )
        out.append(csr.public_bytes(serialization.Encoding.DER))
    return out


def _raw(
    csrs: list[bytes], ca: x509.Certificate, key: ec.EllipticCurvePrivateKey, now: datetime
) -> None:
    aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key())
    for data in csrs:
        csr = x509.load_der_x509_csr(data)
        assert csr.is_signature_valid
        san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        device_id = san.get_values_for_type(x509.UniformResourceIdentifier)[0].rsplit(":", 1)[1]
        (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device_id)]))
            .issuer_name(ca.subject)
            .public_key(csr.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(days=365))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(True, False, False, False, False, False, False, False, False),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .add_extension(san, critical=False)
            .add_extension(aki, critical=False)
            .sign(key, hashes.SHA256())
        )


def _rate(fn, count: int, rounds: int = 3) -> float:  # type: ignore[no-untyped-def]
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return count / best


def run(quick: bool = False) -> dict[str, float]:
    count = sized(quick, 3000, 500, 50)
    now = datetime.now(UTC)
    root_key = generate_tls_key()
    root = make_root_ca(root_key, now)
    key = generate_tls_key()
    ca = make_issuing_ca("device", key.public_key(), root, root_key, now)
    csrs = _csrs(count)
    profile = device_profile()

    raw = _rate(lambda: _raw(csrs, ca, key, now), count)

    def homing_memory() -> None:
        authority = Authority(ca, key, MemoryLedger())
        for data in csrs:
            authority.issue_csr(data, profile, now)

    memory = _rate(homing_memory, count)
    with tempfile.TemporaryDirectory() as tmp:

        def homing_file(durable: bool) -> None:
            path = Path(tmp) / f"ledger-{time.perf_counter_ns()}.jsonl"
            authority = Authority(ca, key, FileLedger(path, durable=durable))
            for data in csrs:
                authority.issue_csr(data, profile, now)

        file_buffered = _rate(lambda: homing_file(False), count)
        file_fsync = _rate(lambda: homing_file(True), count, rounds=1)

        from homing.site.ledger import DatabaseLedger
        from homing.store import Database

        def homing_database(batch: int) -> None:
            """The server's record: SQLite, one transaction per `batch` certificates."""
            db = Database(f"sqlite:///{Path(tmp) / f'ledger-{time.perf_counter_ns()}.db'}")
            db.migrate()
            for start in range(0, len(csrs), batch):
                with db.engine.begin() as conn:
                    authority = Authority(ca, key, DatabaseLedger(db, conn, now))
                    for data in csrs[start : start + batch]:
                        authority.issue_csr(data, profile, now)
            db.dispose()

        database_each = _rate(lambda: homing_database(1), count, rounds=1)
        database_batched = _rate(lambda: homing_database(100), count, rounds=1)
    results = {
        "raw_cryptography_per_s": raw,
        "homing_memory_ledger_per_s": memory,
        "homing_file_ledger_per_s": file_buffered,
        "homing_file_ledger_fsync_per_s": file_fsync,
        "ratio_memory_ledger": memory / raw,
        "ratio_file_ledger": file_buffered / raw,
        "ratio_file_ledger_fsync": file_fsync / raw,
        "homing_database_per_s": database_each,
        "homing_database_batched_per_s": database_batched,
        "ratio_database": database_each / raw,
        "ratio_database_batched": database_batched / raw,
    }
    print("issuance from CSRs (one core, higher is better; goal ratio >= 0.5)")
    print(f"  raw cryptography            {raw:8.0f}/s")
    print(f"  homing, memory ledger       {memory:8.0f}/s  ratio {memory / raw:.2f}")
    print(f"  homing, file ledger         {file_buffered:8.0f}/s  ratio {file_buffered / raw:.2f}")
    print(f"  homing, file ledger + fsync {file_fsync:8.0f}/s  ratio {file_fsync / raw:.2f}")
    print(f"  homing, SQLite, 1 per commit {database_each:7.0f}/s  ratio {database_each / raw:.2f}")
    print(
        f"  homing, SQLite, 100 per commit {database_batched:5.0f}/s  "
        f"ratio {database_batched / raw:.2f}"
    )
    return results
