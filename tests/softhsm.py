"""A SoftHSM2 token of a test's own, in its own directory (the site's and the device's)."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.harness import system_tool

PIN = "246810"
SO_PIN = "13579"
MODULES = ("/usr/lib/softhsm/libsofthsm2.so", "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so")


@dataclass(frozen=True)
class Token:
    module: Path
    label: str
    env: dict[str, str]


def make_token(directory: Path, label: str, monkeypatch: pytest.MonkeyPatch) -> Token:
    """An initialised token labelled ``label``, its PIN and configuration in this process's
    environment (and in ``Token.env`` for the processes a test starts)."""
    util = system_tool("softhsm2-util")
    module = next((Path(m) for m in MODULES if Path(m).is_file()), None)
    assert module is not None, (
        "softhsm2 is installed but its PKCS#11 module is not where Debian puts it"
    )
    tokens = directory / "softhsm-tokens"
    tokens.mkdir()
    conf = directory / "softhsm2.conf"
    conf.write_text(
        f"directories.tokendir = {tokens}\nobjectstore.backend = file\nlog.level = ERROR\n"
    )
    env = {"SOFTHSM2_CONF": str(conf), "HOMING_PKCS11_PIN": PIN, "PYKCS11LIB": str(module)}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    subprocess.run(
        [util, "--init-token", "--free", "--label", label, "--pin", PIN, "--so-pin", SO_PIN],
        check=True, capture_output=True,
    )  # fmt: skip
    return Token(module, label, env)
