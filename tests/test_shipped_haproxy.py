"""The shipped HAProxy config starts for real and carries a device's pinned mutual TLS."""

from __future__ import annotations

import re
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.fleet import check_in, device
from tests.harness import RunningServer, free_port, system_tool

pytestmark = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)

SHIPPED = Path(__file__).parent.parent / "deploy" / "haproxy" / "homing.cfg"


def test_the_shipped_haproxy_config_starts_on_default_limits_and_carries_a_check_in(
    server: RunningServer, tmp_path: Path
) -> None:
    import resource

    # Only the addresses change: the rest is the file an operator installs.
    port = free_port()
    text = SHIPPED.read_text().replace("bind :443", f"bind 127.0.0.1:{port}")
    text = re.sub(r"server replica-(\d) \S+", rf"server replica-\1 127.0.0.1:{server.port}", text)
    config = tmp_path / "haproxy.cfg"
    config.write_text(text)
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    process = subprocess.Popen(
        [system_tool("haproxy"), "-db", "-f", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=5).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    process.kill()
                    output = process.communicate()[0]
                    raise AssertionError(
                        f"haproxy did not start with {soft} file descriptors: {output}"
                    ) from None
                time.sleep(0.05)
        # A device enrolled with the server, talking to it through the balancer:
        # TLS passes through, so the server sees (and checks) its certificate.
        state = device(server, tmp_path, "dev-behind-haproxy", "board-a")
        report = check_in(server, state, via=f"https://127.0.0.1:{port}")
        assert report.checked_in
        assert process.poll() is None
    finally:
        process.terminate()
        process.communicate(timeout=30)
