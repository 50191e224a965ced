"""Metadata written by homing is read by an unmodified python-tuf client over HTTP."""

from __future__ import annotations

import functools
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from tuf.ngclient import Updater

from homing import ceremonies
from homing.site import DataDir
from homing.trust import PinPolicy


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        """Keep test output clean: this server logs nothing."""


@pytest.fixture
def served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Path, str]]:
    """A data directory made now (the stock client reads the wall clock) served over HTTP."""
    monkeypatch.delenv("HOMING_KEY_PASSPHRASE", raising=False)
    data = tmp_path / "data"
    ceremonies.init(data, datetime.now(UTC))
    handler = functools.partial(_QuietHandler, directory=str(data / "repository"))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield data, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _stock_refresh(url: str, client_dir: Path, bootstrap: bytes) -> PinPolicy:
    (client_dir / "targets").mkdir(parents=True, exist_ok=True)
    updater = Updater(
        str(client_dir),
        f"{url}/metadata/",
        str(client_dir / "targets"),
        f"{url}/targets/",
        bootstrap=bootstrap,
    )
    updater.refresh()
    info = updater.get_targetinfo("pins.json")
    assert info is not None
    path = updater.download_target(info)
    return PinPolicy.from_bytes(Path(path).read_bytes())


def test_stock_updater_reads_init_output(served: tuple[Path, str], tmp_path: Path) -> None:
    data, url = served
    bootstrap = (data / "repository" / "metadata" / "1.root.json").read_bytes()
    policy = _stock_refresh(url, tmp_path / "client", bootstrap)
    dd = DataDir(data)
    settings = dd.settings()
    assert policy == ceremonies.pin_policy(dd, settings, dd.keystore(settings))


def test_stock_updater_follows_every_ceremony(served: tuple[Path, str], tmp_path: Path) -> None:
    data, url = served
    bootstrap = (data / "repository" / "metadata" / "1.root.json").read_bytes()
    before = _stock_refresh(url, tmp_path / "early", bootstrap)
    now = datetime.now(UTC)
    ceremonies.rotate_root(data, now)
    ceremonies.rotate_online_keys(data, now)
    ceremonies.rotate_issuing_ca(data, "server", now)
    ceremonies.rotate_server_cert(data, now)
    ceremonies.refresh_timestamp(data, now)
    # A client that left the factory with root v1 arrives at today's pins...
    after = _stock_refresh(url, tmp_path / "late", bootstrap)
    # ...and the backup pin published before the rotation is the new active pin.
    assert after.spki_pins[0] == before.spki_pins[1]
    assert after.spki_pins != before.spki_pins
    # A client that refreshed earlier catches up from its cache too.
    cached = (tmp_path / "early" / "root.json").read_bytes()
    assert _stock_refresh(url, tmp_path / "early", cached) == after
