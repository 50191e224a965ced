"""The user PIN of the token that holds the device key, as the process's edge gave it.

The PIN is never written by homing: the process's edge (the CLI, the cycle's
process) reads it from ``HOMING_PKCS11_PIN`` (the unit's drop-in fills that
from a root-only file) and gives it here with :func:`set_pin`; a device
application that uses the key through homing.agent.apps does the same. A
module of its own, and light: the resident agent's CLI sets it before it
sleeps, and must not load what only a cycle needs.
"""

from __future__ import annotations

from homing.errors import ConfigError

__all__ = ["PIN_VARIABLE", "set_pin", "token_pin"]

PIN_VARIABLE = "HOMING_PKCS11_PIN"
_PIN: list[str] = []  # the PIN, once the edge has given it


def set_pin(pin: str | None) -> None:
    """The token's user PIN for this process (None or empty: none given)."""
    _PIN[:] = [pin] if pin else []


def token_pin() -> str:
    """The token's user PIN the edge gave; one clear line if it gave none."""
    if not _PIN:
        raise ConfigError(
            f"the device key is on a PKCS#11 token: set {PIN_VARIABLE} to the token's user PIN "
            "(docs/agent.md)"
        )
    return _PIN[0]
