"""The curl + openssl recipe of docs/est-with-curl.md, run as written against a real server."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.harness import RunningServer

pytestmark = pytest.mark.skipif(
    shutil.which("curl") is None or shutil.which("openssl") is None, reason="curl/openssl missing"
)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_recipe(server: RunningServer, factory: tuple[str, str], tmp_path: Path) -> None:
    script = f"""
set -eu
SERVER=https://localhost:{server.port}
CA={server.data / "pki" / "root-ca.pem"}
CRED='{factory[0]}:{factory[1]}'
cd {tmp_path}
curl -sf --cacert $CA $SERVER/.well-known/est/cacerts \\
  | base64 -d | openssl pkcs7 -inform DER -print_certs > cacerts.pem
openssl ecparam -name prime256v1 -genkey -noout -out dev.key
openssl req -new -key dev.key -subj "/CN=dev-42" \\
  -addext "subjectAltName=URI:urn:homing:device:dev-42" -outform DER | base64 > dev.csr.b64
curl -sf --cacert $CA --anyauth -u "$CRED" -H "Content-Type: application/pkcs10" \\
  --data-binary @dev.csr.b64 $SERVER/.well-known/est/simpleenroll \\
  | base64 -d | openssl pkcs7 -inform DER -print_certs > dev.pem
curl -sf --cacert $CA --cert dev.pem --key dev.key -H "Content-Type: application/json" \\
  -d '{{"firmware_version": "1.0.0"}}' $SERVER/v1/device/checkin > checkin.json
curl -sf --cacert $CA --cert dev.pem --key dev.key -H "Content-Type: application/pkcs10" \\
  --data-binary @dev.csr.b64 $SERVER/.well-known/est/simplereenroll \\
  | base64 -d | openssl pkcs7 -inform DER -print_certs > dev-renewed.pem
"""
    result = subprocess.run(
        ["bash", "-c", script], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "cacerts.pem").read_text().count("BEGIN CERTIFICATE") == 2
    assert "BEGIN CERTIFICATE" in (tmp_path / "dev.pem").read_text()
    assert json.loads((tmp_path / "checkin.json").read_text())["device_id"] == "dev-42"
    assert "BEGIN CERTIFICATE" in (tmp_path / "dev-renewed.pem").read_text()
