"""Current trust for applications that do their own TLS: files, swapped in whole.

After every cycle the agent (when ``export_dir`` is configured) writes what a
device application needs to reach home with any TLS stack:

- ``ca-bundle.pem``: the private root CAs of the current pin policy;
- ``pins.json``: the pinned SPKI SHA-256s (base64), the home's host names and
  endpoints, and the SHA-256 of the pin policy they come from (its version);
- ``cert.pem``: the device certificate chain;
- ``key``: where the device key is (``file:/path``; a PKCS#11 URI once the
  key lives in hardware).

They are written into a new directory and ``current`` (a symbolic link) is
swapped to it in one rename, so a reader sees the old set or the new one,
never half of each. When anything changed, ``export_hook`` (a command; its
``{trust_dir}`` becomes the ``current`` path) runs, e.g. to reload a service;
its failure is logged, never fatal to the cycle.

An application that takes ``ca-bundle.pem`` without checking ``pins.json``
trusts every certificate those roots certify, which is more than homing
trusts (docs/device-apps.md).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shlex
import shutil
import subprocess
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from homing.agent.state import DeviceState
from homing.errors import ConfigError
from homing.fsutil import atomic_write
from homing.trust.pins import PinPolicy

__all__ = ["HOOK_TIMEOUT", "export_trust"]

log = logging.getLogger(__name__)

HOOK_TIMEOUT = 60.0
CURRENT = "current"


def _contents(state: DeviceState, policy: PinPolicy) -> dict[str, bytes]:
    bundle = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in policy.root_cas)
    pins = {
        "policy_sha256": hashlib.sha256(policy.to_bytes()).hexdigest(),
        "spki_sha256": list(policy.spki_pins),
        "hosts": list(policy.hosts),
        "endpoints": {"primary": policy.primary, "mirrors": list(policy.mirrors)},
    }
    try:
        chain = state.cert_path.read_bytes()
    except FileNotFoundError:
        chain = b""
    return {
        "ca-bundle.pem": bundle,
        "pins.json": json.dumps(pins, indent=2).encode() + b"\n",
        "cert.pem": chain,
        "key": f"file:{state.key_path.resolve()}\n".encode(),
    }


def export_trust(
    state: DeviceState, policy: PinPolicy, directory: Path, hook: str | None = None
) -> bool:
    """Swap in the current files if anything changed; True when it did (and the hook ran)."""
    files = _contents(state, policy)
    digest = hashlib.sha256(
        b"".join(name.encode() + b"\0" + data for name, data in sorted(files.items()))
    ).hexdigest()[:16]
    directory.mkdir(parents=True, exist_ok=True)
    current = directory / CURRENT
    generation = f"trust-{digest}"
    if current.is_symlink() and os.readlink(current) == generation:
        return False
    target = directory / generation
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(mode=0o755)
    for name, data in files.items():
        atomic_write(target / name, data)
    link = directory / f".{CURRENT}.new"
    link.unlink(missing_ok=True)
    link.symlink_to(generation)
    os.replace(link, current)  # one rename: readers see the old set or the new
    for old in directory.glob("trust-*"):
        if old.name != generation:
            shutil.rmtree(old, ignore_errors=True)
    log.info("trust exported to %s (%s)", current, generation)
    if hook:
        _run_hook(hook, current)
    return True


def _run_hook(hook: str, current: Path) -> None:
    try:
        argv = shlex.split(hook)
    except ValueError as e:
        raise ConfigError(f"the export hook {hook!r} cannot be parsed: {e}") from e
    try:
        done = subprocess.run(  # noqa: S603 - the device's own configuration
            [arg.replace("{trust_dir}", str(current)) for arg in argv],
            capture_output=True,
            timeout=HOOK_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        log.warning("the export hook %r failed: %s", hook, e)
        return
    if done.returncode != 0:
        log.warning(
            "the export hook %r exited %d: %s",
            hook,
            done.returncode,
            done.stderr.decode(errors="replace").strip()[-300:],
        )
