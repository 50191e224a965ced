"""Enrollment by factory identity: a manufacturer's IDevID, no secret on the factory line.

The manufacturer's PKI is made by openssl (a root, an issuing CA run with
``openssl ca``, its CRL), as a manufacturer would make it; the operator
imports it through the installed ``homing`` entry point; devices enroll over
EST with mutual TLS through curl and through ``homing agent enroll``, against
a real server. Refusals are attacks: another manufacturer's IDevID, an
expired and a not-yet-valid one, a revoked one, one that names another id,
the site's own device certificate, and a disabled manufacturer.
"""

from __future__ import annotations

import base64
import json
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from sqlalchemy import select

from homing.store.schema import audit_log, devices
from tests.harness import RunningServer, assert_one_error, run_homing, system_tool
from tests.manufacturer import OpensslManufacturer
from tests.manufacturer import openssl as _openssl


def _url(server: RunningServer) -> str:
    return f"https://localhost:{server.port}"


def _import(server: RunningServer, mfr: OpensslManufacturer, *extra: str) -> str:
    result = run_homing(
        "factory", "add-manufacturer", mfr.name, "--ca", str(mfr.dir / "bundle.pem"),
        "--data", str(server.data), "--db", server.config.db_url, *extra,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result.stdout


def _curl_enroll(
    server: RunningServer,
    cert: Path,
    key: Path,
    work: Path,
    subject: str = "/O=sensor",
    san: str = "",
) -> tuple[int, bytes]:
    """simpleenroll through curl with ``cert`` as the TLS client certificate; (status, body)."""
    work.mkdir(parents=True, exist_ok=True)
    extra = ["-addext", f"subjectAltName={san}"] if san else []
    _openssl(
        "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-subj", subject, *extra, "-keyout", "op.key", "-outform", "DER", "-out", "op.csr",
        cwd=work,
    )  # fmt: skip
    (work / "op.b64").write_bytes(base64.encodebytes((work / "op.csr").read_bytes()))
    result = subprocess.run(
        [
            system_tool("curl"), "-s", "-o", str(work / "answer"), "-w", "%{http_code}",
            "--cacert", str(server.data / "pki" / "root-ca.pem"),
            "--cert", str(cert), "--key", str(key),
            "-H", "Content-Type: application/pkcs10", "--data-binary", f"@{work / 'op.b64'}",
            f"{_url(server)}/.well-known/est/simpleenroll",
        ],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return int(result.stdout), (work / "answer").read_bytes()


def _issued(body: bytes) -> x509.Certificate:
    from cryptography.hazmat.primitives.serialization import pkcs7

    (cert,) = pkcs7.load_der_pkcs7_certificates(base64.b64decode(body))
    return cert


def _enrolled(server: RunningServer) -> dict[str, str]:
    with server.state.db.engine.connect() as conn:
        return {r.device_id: r.enrolled_by for r in conn.execute(select(devices))}


def test_an_idevid_enrolls_over_est_with_curl_and_no_secret(
    server: RunningServer, tmp_path: Path
) -> None:
    acme = OpensslManufacturer.create(tmp_path, "acme")
    assert "2 CA certificate(s) imported with CRLs" in _import(
        server, acme, "--crl", str(acme.crl())
    )
    cert, key = acme.idevid("SN-0001")
    status, body = _curl_enroll(server, cert, key, tmp_path / "op", subject="/CN=SN-0001")
    assert status == 200, body
    issued = _issued(body)
    sans = issued.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.UniformResourceIdentifier) == ["urn:homing:device:SN-0001"]
    assert issued.issuer == server.state.device_ca.subject
    assert _enrolled(server) == {"SN-0001": "factory:acme"}
    with server.state.db.engine.connect() as conn:
        entry = conn.execute(
            select(audit_log).where(audit_log.c.action == "enroll", audit_log.c.target == "SN-0001")
        ).one()
    detail = json.loads(entry.detail) if isinstance(entry.detail, str) else entry.detail
    idevid = x509.load_pem_x509_certificate(cert.read_bytes())
    assert detail["idevid_serial"] == format(idevid.serial_number, "x")
    assert entry.actor == "factory:acme"
    # The same IDevID again: the device exists; it renews or recovers instead.
    status, body = _curl_enroll(server, cert, key, tmp_path / "again")
    assert status == 409, body
    listed = run_homing("factory", "list", "--data", str(server.data), "--db", server.config.db_url)
    assert "acme: manufacturer, active" in listed.stdout


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_idevids_that_must_not_enroll_are_refused(
    server: RunningServer, factory: tuple[str, str], tmp_path: Path
) -> None:
    acme = OpensslManufacturer.create(tmp_path, "acme")
    rogue = OpensslManufacturer.create(tmp_path, "rogue")
    _import(server, acme, "--crl", str(acme.crl()))
    now = datetime.now(UTC)
    cases: dict[str, tuple[tuple[Path, Path], dict[str, str], int, str]] = {
        "another manufacturer": (rogue.idevid("SN-R1"), {}, 401, "not issued by an imported"),
        "expired": (
            acme.idevid("SN-OLD", start=now - timedelta(days=400), end=now - timedelta(days=1)),
            {},
            401,
            "does not validate",
        ),
        "not yet valid": (
            acme.idevid("SN-NEW", start=now + timedelta(days=2)),
            {},
            401,
            "does not validate",
        ),
        "names another id (URI SAN)": (
            acme.idevid("SN-0002"),
            {"san": "URI:urn:homing:device:SN-9999"},
            403,
            "the CSR asks for 'SN-9999'",
        ),
        "names another id (CN)": (
            acme.idevid("SN-0003"),
            {"subject": "/CN=SN-9998"},
            403,
            "the CSR asks for 'SN-9998'",
        ),
    }
    revoked = acme.idevid("SN-0666")
    crl = acme.revoke(revoked[0])
    result = run_homing(
        "factory", "update-crl", "acme", str(crl), "--data", str(server.data),
        "--db", server.config.db_url,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "they revoke 1 certificate(s)" in result.stdout
    cases["revoked"] = (revoked, {}, 403, "the manufacturer revoked the IDevID")
    # The site's own operational key and certificate are not a factory identity.
    own = server.enroll("dev-own", factory, tmp_path / "own")
    cases["a device certificate of this site"] = (
        (own.cert_file, own.key_file),
        {},
        401,
        "not issued by an imported",
    )
    for what, ((cert, key), csr, status, says) in cases.items():
        got, body = _curl_enroll(server, cert, key, tmp_path / what.replace(" ", "-"), **csr)
        assert (got, says in body.decode()) == (status, True), (what, body)
    assert set(_enrolled(server)) == {"dev-own"}
    # A disabled manufacturer vouches for nothing, its good IDevIDs included.
    good = acme.idevid("SN-0100")
    result = run_homing(
        "factory", "disable", "acme", "--data", str(server.data), "--db", server.config.db_url
    )
    assert result.returncode == 0, result.stderr
    got, body = _curl_enroll(server, *good, tmp_path / "disabled")
    assert got == 401, body
    assert set(_enrolled(server)) == {"dev-own"}


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_stale_crl_stops_idevid_enrollment_until_a_current_one_is_imported(
    server: RunningServer, tmp_path: Path
) -> None:
    """Fail closed: a CRL past its nextUpdate cannot say a certificate is good."""
    acme = OpensslManufacturer.create(tmp_path, "acme")
    _import(server, acme, "--crl", str(acme.crl()))
    cert, key = acme.idevid("SN-0001")
    server.clock.advance(timedelta(days=31))
    got, body = _curl_enroll(server, cert, key, tmp_path / "stale")
    assert got == 503, body
    assert "import a current one" in body.decode()
    assert _enrolled(server) == {}


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_the_agent_enrolls_by_idevid_and_the_manufacturers_bounds_hold(
    server: RunningServer, tmp_path: Path
) -> None:
    acme = OpensslManufacturer.create(tmp_path, "acme")
    _import(server, acme)
    root = str(server.data / "repository/metadata/1.root.json")
    cert, key = acme.idevid("SN-0001")

    def enroll(state: str, *extra: str) -> subprocess.CompletedProcess[str]:
        return run_homing(
            "agent", "enroll", "--state", str(tmp_path / state), "--server", _url(server),
            "--root", root, *extra,
        )  # fmt: skip

    result = enroll("device", "--idevid", str(cert), "--idevid-key", str(key))
    assert result.returncode == 0, result.stderr
    assert "device 'SN-0001' enrolled" in result.stdout
    checked = run_homing("agent", "run", "--once", "--state", str(tmp_path / "device"))
    assert checked.returncode == 0, checked.stderr
    # Asking for another id than the IDevID names: refused, one line.
    other_cert, other_key = acme.idevid("SN-0002")
    refused = enroll(
        "other", "--idevid", str(other_cert), "--idevid-key", str(other_key), "--id", "SN-0003"
    )
    assert_one_error(refused, "the IDevID names device 'SN-0002'")
    # The manufacturer is a station: a manifest bounds it like any other.
    manifest = tmp_path / "manifest.txt"
    manifest.write_text("SN-0004\n")
    listed = run_homing(
        "factory", "manifest", "acme", str(manifest), "--data", str(server.data),
        "--db", server.config.db_url,
    )  # fmt: skip
    assert listed.returncode == 0, listed.stderr
    off_list = acme.idevid("SN-0005")
    refused = enroll("off-list", "--idevid", str(off_list[0]), "--idevid-key", str(off_list[1]))
    assert_one_error(refused, "not on station 'acme''s manifest")
    assert set(_enrolled(server)) == {"SN-0001"}
    # And what it enrolled is revoked in one call, as a batch.
    revoked = run_homing(
        "revoke-batch", "--station", "acme", "--reason", "key_compromise",
        "--data", str(server.data), "--db", server.config.db_url,
    )  # fmt: skip
    assert revoked.returncode == 0, revoked.stderr
    after = run_homing("agent", "run", "--once", "--state", str(tmp_path / "device"))
    assert after.returncode != 0
    # Bad input: the flags go together, and an IDevID that cannot be read.
    assert_one_error(enroll("x", "--idevid", str(cert)), "--idevid and --idevid-key go together")
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate")
    assert_one_error(
        enroll("y", "--idevid", str(junk), "--idevid-key", str(key)), "cannot read the IDevID"
    )
