"""The TUF conformance client command and offline recovery bundles."""

from __future__ import annotations

import functools
import io
import shutil
import subprocess
import tarfile
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from homing import ceremonies
from homing.agent.agent import Agent
from homing.errors import TrustError
from homing.factory import provision
from homing.trust.bundle import extracted, write_bundle
from tests.harness import RunningServer, run_homing


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        """Keep test output clean: this server logs nothing."""


@pytest.fixture
def http_repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Path, str]]:
    monkeypatch.delenv("HOMING_KEY_PASSPHRASE", raising=False)
    data = tmp_path / "data"
    ceremonies.init(data, datetime.now(UTC))
    server = ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_Quiet, directory=str(data / "repository"))
    )
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield data, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _client(*args: str) -> subprocess.CompletedProcess[str]:
    return run_homing("agent", "tuf-client", *args, timeout=60)


def test_tuf_client_protocol(http_repo: tuple[Path, str], tmp_path: Path) -> None:
    data, url = http_repo
    meta = tmp_path / "client"
    root = data / "repository" / "metadata" / "1.root.json"
    assert _client("--metadata-dir", str(meta), "init", str(root)).returncode == 0
    ceremonies.rotate_root(data, datetime.now(UTC))
    refresh = _client("--metadata-url", f"{url}/metadata/", "--metadata-dir", str(meta), "refresh")
    assert refresh.returncode == 0, refresh.stderr
    for name in ("root.json", "timestamp.json", "snapshot.json", "targets.json"):
        assert (meta / name).exists(), name
    (target,) = (data / "repository" / "targets").glob("*.pins.json")
    download = [
        "--metadata-url",
        f"{url}/metadata/",
        "--metadata-dir",
        str(meta),
        "--target-name",
        "pins.json",
        "--target-dir",
        str(tmp_path / "t"),
        "--target-base-url",
        f"{url}/targets/",
        "download",
    ]
    assert _client(*download).returncode == 0
    assert (tmp_path / "t" / "pins.json").read_bytes() == target.read_bytes()
    # A valid target already downloaded is not fetched again: it survives the server losing it.
    shutil.move(target, tmp_path / "gone")
    assert _client(*download).returncode == 0
    # Failures exit 1 with one line.
    bad = _client(
        "--metadata-url", f"{url}/nothing/", "--metadata-dir", str(tmp_path / "x"), "refresh"
    )
    assert bad.returncode == 1
    assert "Traceback" not in bad.stderr


def test_tuf_client_refuses_a_rollback(http_repo: tuple[Path, str], tmp_path: Path) -> None:
    data, url = http_repo
    meta = tmp_path / "client"
    assert (
        _client(
            "--metadata-dir",
            str(meta),
            "init",
            str(data / "repository" / "metadata" / "1.root.json"),
        ).returncode
        == 0
    )
    old = (data / "repository" / "metadata" / "timestamp.json").read_bytes()
    ceremonies.refresh_timestamp(data, datetime.now(UTC))
    assert (
        _client(
            "--metadata-url", f"{url}/metadata/", "--metadata-dir", str(meta), "refresh"
        ).returncode
        == 0
    )
    (data / "repository" / "metadata" / "timestamp.json").write_bytes(old)
    assert (
        _client(
            "--metadata-url", f"{url}/metadata/", "--metadata-dir", str(meta), "refresh"
        ).returncode
        == 1
    )


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_recovery_bundle_brings_a_stranded_device_back(
    server: RunningServer, tmp_path: Path
) -> None:
    """A device that reaches nothing takes new roots and pins from a file, then checks in."""
    state = provision(server.state.dd, tmp_path / "dev", datetime.now(UTC), device_id="dev-1")
    now = datetime.now(UTC)
    ceremonies.rotate_root(server.state.dd, now)
    ceremonies.rotate_issuing_ca(server.state.dd, "server", now)
    ceremonies.rotate_issuing_ca(server.state.dd, "server", now)
    bundle = tmp_path / "bundle.tar"
    assert write_bundle(server.data / "repository", bundle) > 5
    result = run_homing(
        "agent", "apply-bundle", "--state", str(state.root), str(bundle), timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "root v2" in result.stdout
    import time

    time.sleep(0.3)
    report = Agent(state, server=f"https://127.0.0.1:{server.port}").run_once()
    assert report.checked_in, report
    assert report.steps[0].startswith("trust refreshed over pinned TLS")


@pytest.mark.parametrize("name", ["../evil", "/etc/x", "metadata/../../evil", "other/file"])
def test_bundle_with_unsafe_entries_is_refused(tmp_path: Path, name: str) -> None:
    bundle = tmp_path / "evil.tar"
    with tarfile.open(bundle, "w") as tar:
        info = tarfile.TarInfo(name)
        info.size = 3
        tar.addfile(info, io.BytesIO(b"bad"))
    with pytest.raises(TrustError, match="unsafe"), extracted(bundle):
        pass  # opening the bundle is what must fail
    assert not (tmp_path.parent / "evil").exists()


def test_bundle_with_a_link_is_refused(tmp_path: Path) -> None:
    bundle = tmp_path / "link.tar"
    with tarfile.open(bundle, "w") as tar:
        info = tarfile.TarInfo("metadata/root.json")
        info.type = tarfile.SYMTYPE
        info.linkname = "/etc/passwd"
        tar.addfile(info)
    with pytest.raises(TrustError, match="unsafe"), extracted(bundle):
        pass  # opening the bundle is what must fail
