"""Where the site's keys are made: the file store, or a PKCS#11 token for chosen names."""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from homing.ceremonies._common import OPERATOR, _audit, _open
from homing.errors import CeremonyError
from homing.pki.pkcs11_store import Pkcs11KeyStore, TokenConfig
from homing.site import DataDir

__all__ = ["configure_pkcs11"]

# Python's ssl can only use a TLS key from a file; root keys sit with their holders.
_NEVER_ON_TOKEN = ("server-tls", "server-acme-g1", "acme-account", "tuf-root-1-1")


def configure_pkcs11(
    data: Path | DataDir,
    now: datetime,
    *,
    module: Path,
    token: str,
    patterns: Sequence[str],
    actor: str = OPERATOR,
) -> None:
    """Make new keys whose names match ``patterns`` on the token from now on.

    Checked first: the module loads, the token opens with the PIN the site
    was given, and no pattern takes a key that cannot live on a token.
    Existing keys stay where they are until a rotation replaces them.
    """
    dd, settings, _ = _open(data)
    if not patterns:
        raise CeremonyError("name at least one key pattern for the token, e.g. 'timestamp-*'")
    for pattern in patterns:
        taken = [n for n in _NEVER_ON_TOKEN if fnmatch.fnmatchcase(n, pattern)]
        if taken or fnmatch.fnmatchcase("server-acme-g2", pattern):
            raise CeremonyError(
                f"pattern {pattern!r} takes TLS or root keys, which cannot live on the token"
            )
    if not module.is_file():
        raise CeremonyError(f"no PKCS#11 module at {module}")
    if not dd.pkcs11_pin:
        raise CeremonyError("set HOMING_PKCS11_PIN: the token's user PIN")
    # Not resolved: the module is loaded once per process under one path, the one
    # HSMSigner is given too (a symlink resolved would load it a second time).
    config = TokenConfig(str(module.absolute()), token, dd.pkcs11_pin)
    store = Pkcs11KeyStore(config)
    store.exists("homing-probe")  # logs in: a wrong PIN fails here, not at the next rotation
    settings.pkcs11 = {"module": config.module, "token": token, "keys": list(patterns)}
    dd.save_settings(settings)
    _audit(dd, now, actor, "keystore_pkcs11", token, {"keys": list(patterns)})
