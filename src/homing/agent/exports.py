"""Current trust for applications that do their own TLS: files, swapped in whole.

After every cycle the agent (when ``export_dir`` is configured) writes what a
device application needs to reach home with any TLS stack:

- ``ca-bundle.pem``: the private root CAs of the current pin policy;
- ``pins.json``: the pinned SPKI SHA-256s (base64), the home's host names and
  endpoints, its MQTT brokers (homing.trust.services), and the SHA-256 of the
  pin policy they come from (its version);
- ``cert.pem``: the device certificate chain;
- ``key``: where the device key is: ``file:/path`` (a PEM key file), or
  ``tpm2:/path`` (the TPM's wrapped blob, usable through OpenSSL's tpm2
  provider with ``OPENSSL_CONF`` set as for the agent; docs/agent.md), or the
  key's PKCS#11 URI (``pkcs11:token=...;object=...;type=private?module-path=...``,
  for OpenSSL's pkcs11 engine with the token's PIN; docs/agent.md).

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
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from homing.agent.state import DeviceState
from homing.fsutil import swap_in_file_set
from homing.hooks import run_hook
from homing.trust.pins import PinPolicy
from homing.trust.services import Services

__all__ = ["SERVICES_FILE", "export_trust"]

log = logging.getLogger(__name__)

# In the agent's state directory: the services document it last verified.
SERVICES_FILE = "services.json"


def _contents(state: DeviceState, policy: PinPolicy) -> dict[str, bytes]:
    bundle = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in policy.root_cas)
    pins = {
        "policy_sha256": hashlib.sha256(policy.to_bytes()).hexdigest(),
        "spki_sha256": list(policy.spki_pins),
        "hosts": list(policy.hosts),
        "endpoints": {"primary": policy.primary, "mirrors": list(policy.mirrors)},
        "mqtt": list(_services(state).mqtt),
    }
    try:
        chain = state.cert_path.read_bytes()
    except FileNotFoundError:
        chain = b""
    return {
        "ca-bundle.pem": bundle,
        "pins.json": json.dumps(pins, indent=2).encode() + b"\n",
        "cert.pem": chain,
        "key": _key_locator(state),
    }


def _key_locator(state: DeviceState) -> bytes:
    """Where the device key is, for an application: its store and path, or its PKCS#11 URI."""
    store = state.config().key_store
    if store == "pkcs11":
        return state.key_path.read_bytes()  # the URI, module included; never the PIN
    return f"{store}:{state.key_path.resolve()}\n".encode()


def _services(state: DeviceState) -> Services:
    """The services the agent last verified (none before its first refresh)."""
    try:
        return Services.from_bytes((state.root / SERVICES_FILE).read_bytes())
    except FileNotFoundError:
        return Services()


def export_trust(
    state: DeviceState, policy: PinPolicy, directory: Path, hook: str | None = None
) -> bool:
    """Swap in the current files if anything changed; True when it did (and the hook ran)."""
    current = swap_in_file_set(directory, _contents(state, policy))
    if current is None:
        return False
    log.info("trust exported to %s (%s)", current, os.readlink(current))
    if hook:
        run_hook(hook, current)
    return True
