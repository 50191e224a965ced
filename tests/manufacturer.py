"""A device manufacturer's PKI as openssl keeps it: a root, an issuing CA, IDevIDs, a CRL.

The stand-in for a module vendor's factory identities, used by the IDevID
enrollment tests and by the docs' runnable blocks (tests/test_docs_run.py).
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from tests.harness import system_tool

__all__ = ["OpensslManufacturer", "openssl"]

_CONFIG = """
[ ca ]
default_ca = mfr
[ mfr ]
dir = {dir}
database = {dir}/index.txt
new_certs_dir = {dir}/issued
serial = {dir}/serial
crlnumber = {dir}/crlnumber
certificate = {dir}/issuing.pem
private_key = {dir}/issuing.key
default_md = sha256
default_crl_days = 30
policy = anything
unique_subject = no
[ anything ]
serialNumber = optional
commonName = optional
organizationName = optional
[ req ]
distinguished_name = dn
[ dn ]
[ ca_ext ]
basicConstraints = critical,CA:true
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[ idevid ]
basicConstraints = critical,CA:false
keyUsage = critical,digitalSignature
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
"""


def openssl(*args: str, cwd: Path) -> None:
    result = subprocess.run(
        [system_tool("openssl"), *args], cwd=cwd, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, f"openssl {' '.join(args)}: {result.stderr}"


def _stamp(when: datetime) -> str:
    return when.strftime("%Y%m%d%H%M%SZ")


@dataclass
class OpensslManufacturer:
    """A manufacturer's PKI as openssl keeps it: a root, an issuing CA, its database."""

    dir: Path
    name: str

    @classmethod
    def create(cls, base: Path, name: str) -> OpensslManufacturer:
        d = base / name
        (d / "issued").mkdir(parents=True)
        (d / "index.txt").write_text("")
        (d / "serial").write_text("1000\n")
        (d / "crlnumber").write_text("01\n")
        (d / "ca.cnf").write_text(_CONFIG.format(dir=d))
        ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
        cfg = ["-config", "ca.cnf"]
        openssl(
            "req", "-x509", *ec, *cfg, "-extensions", "ca_ext", "-days", "7300",
            "-subj", f"/O={name}/CN={name} Root", "-keyout", "root.key", "-out", "root.pem",
            cwd=d,
        )  # fmt: skip
        openssl(
            "req", "-new", *ec, *cfg, "-subj", f"/O={name}/CN={name} IDevID CA",
            "-keyout", "issuing.key", "-out", "issuing.csr",
            cwd=d,
        )  # fmt: skip
        openssl(
            "x509", "-req", "-in", "issuing.csr", "-CA", "root.pem", "-CAkey", "root.key",
            "-CAcreateserial", "-days", "3650", "-extfile", "ca.cnf", "-extensions", "ca_ext",
            "-out", "issuing.pem",
            cwd=d,
        )  # fmt: skip
        (d / "bundle.pem").write_text(
            (d / "issuing.pem").read_text() + (d / "root.pem").read_text()
        )
        return cls(d, name)

    def idevid(
        self, serial_number: str, *, start: datetime | None = None, end: datetime | None = None
    ) -> tuple[Path, Path]:
        """An IDevID naming ``serial_number`` in its subject, valid from ``start`` to ``end``."""
        now = datetime.now(UTC)
        cert, key = self.dir / f"{serial_number}.pem", self.dir / f"{serial_number}.key"
        openssl(
            "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-config", "ca.cnf", "-subj", "/CN=x", "-keyout", key.name,
            "-out", f"{serial_number}.csr",
            cwd=self.dir,
        )  # fmt: skip
        openssl(
            "ca", "-batch", "-config", "ca.cnf", "-notext", "-extensions", "idevid",
            "-subj", f"/O={self.name}/serialNumber={serial_number}/CN=Sensor {serial_number}",
            "-startdate", _stamp(start or now - timedelta(days=1)),
            "-enddate", _stamp(end or now + timedelta(days=3650)),
            "-in", f"{serial_number}.csr", "-out", cert.name,
            cwd=self.dir,
        )  # fmt: skip
        return cert, key

    def revoke(self, cert: Path) -> Path:
        """Revoke ``cert`` and write the issuing CA's new CRL."""
        openssl("ca", "-config", "ca.cnf", "-revoke", cert.name, cwd=self.dir)
        return self.crl()

    def crl(self) -> Path:
        openssl("ca", "-config", "ca.cnf", "-gencrl", "-out", "crl.pem", cwd=self.dir)
        return self.dir / "crl.pem"
