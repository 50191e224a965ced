"""A property-based fuzzer driven by the server's own /openapi.json, against the real server.

Schemathesis generates requests from the document (valid and invalid) for
every operation, with a device certificate, an operator token, a fleet-view
session and a factory station's credentials, on SQLite and PostgreSQL. It
fails on any 5xx and on every way the answers and the document disagree:
undocumented status codes or content types, answers not matching their
schema, invalid requests accepted, a 405 without ``Allow``. Not checked:
that every schema-valid request is accepted, because homing refuses what no
schema can say (rollout stages that do not increase, a CSR for a device
already enrolled) with a 400 that names the rule.

The budget is fixed and the seed too, so a run is the same every time;
``HOMING_FUZZ_EXAMPLES`` and ``HOMING_FUZZ_SEED`` widen or vary it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from homing.operations import fleet as operations
from tests.harness import DeviceCredentials, RunningServer

EXAMPLES = os.environ.get("HOMING_FUZZ_EXAMPLES", "25")
SEED = os.environ.get("HOMING_FUZZ_SEED", "20261206")
ROOT = Path(__file__).resolve().parents[1]


def _schemathesis() -> str:
    found = shutil.which("st") or str(Path(sys.executable).with_name("st"))
    assert Path(found).exists(), "schemathesis is a test dependency (pyproject.toml)"
    return found


def _fuzz(server: RunningServer, device: DeviceCredentials, config: Path) -> str:
    base = f"https://localhost:{server.port}"
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "tests.fuzz_hooks", "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [
            _schemathesis(),
            "--no-color",
            "--config-file",
            str(config),
            "run",
            f"{base}/openapi.json",
            "--url",
            base,
            "--checks",
            "all",
            "--exclude-checks",
            "positive_data_acceptance",
            "--max-examples",
            EXAMPLES,
            "--seed",
            SEED,
            # One thread: CPython 3.11's ast module is not safe to use from two
            # threads at once (hypothesis describes its filters with it); a run
            # failed with "AST constructor recursion depth mismatch".
            "--workers",
            "1",
            "--request-timeout",
            "60",
            "--tls-verify",
            str(server.data / "pki" / "root-ca.pem"),
            "--request-cert",
            str(device.cert_file),
            "--request-cert-key",
            str(device.key_file),
        ],
        capture_output=True,
        text=True,
        timeout=1200,
        env=env,
        cwd=ROOT,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-20000:]
    return output


@pytest.mark.long
def test_the_api_holds_to_its_document_under_fuzzing(
    server: RunningServer, factory: tuple[str, str], tmp_path: Path
) -> None:
    device = server.enroll("dev-1", factory, tmp_path)
    token = operations.add_token(server.state.db, "test", datetime.now(UTC), "ops", "operator")
    session = server.log_in(token).split("=", 1)[1]
    # Each security scheme of the document with its credential, so the fuzzer
    # knows when it sends one and when it leaves it out on purpose.
    config = tmp_path / "schemathesis.toml"
    config.write_text(
        "[auth.openapi.bearer]\n"
        f'bearer = "{token}"\n'
        "[auth.openapi.session]\n"
        f'api_key = "{session}"\n'
        "[auth.openapi.factory]\n"
        f'username = "{factory[0]}"\n'
        f'password = "{factory[1]}"\n'
    )
    output = _fuzz(server, device, config)
    tested = re.search(r"Tested: (\d+)", output)
    assert tested is not None, output[-3000:]
    document = server.request("GET", "/openapi.json").json()
    operations_in_document = sum(len(methods) for methods in document["paths"].values())
    # Every operation, but the document itself (which the fuzzer reads, not fuzzes).
    assert int(tested.group(1)) == operations_in_document - 1
    generated = re.search(r"(\d+) generated", output)
    assert generated is not None
    assert int(generated.group(1)) >= 500
    # And the server still answers after all of it.
    assert server.request("GET", "/readyz").status == 200
