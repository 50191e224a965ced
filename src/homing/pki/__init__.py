"""The private PKI: authorities, issuance profiles, key stores and validation.

Names are imported on first use (PEP 562), so a device agent that only
validates chains does not load the authority, ledger and key store code.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from homing.pki.authority import Authority, make_issuing_ca, make_root_ca
    from homing.pki.keys import generate_signing_key, generate_tls_key, spki_pin
    from homing.pki.keystore import FileKeyStore, KeyStore
    from homing.pki.ledger import FileLedger, IssuedRecord, Ledger, MemoryLedger
    from homing.pki.profiles import Profile, approve_csr, device_profile, server_profile
    from homing.pki.validate import (
        VerifiedChain,
        check_not_revoked,
        verify_client_chain,
        verify_crl,
        verify_pins,
        verify_server_chain,
    )

_EXPORTS = {
    "Authority": "authority",
    "make_issuing_ca": "authority",
    "make_root_ca": "authority",
    "generate_signing_key": "keys",
    "generate_tls_key": "keys",
    "spki_pin": "keys",
    "FileKeyStore": "keystore",
    "KeyStore": "keystore",
    "FileLedger": "ledger",
    "IssuedRecord": "ledger",
    "Ledger": "ledger",
    "MemoryLedger": "ledger",
    "Profile": "profiles",
    "approve_csr": "profiles",
    "device_profile": "profiles",
    "server_profile": "profiles",
    "VerifiedChain": "validate",
    "check_not_revoked": "validate",
    "verify_client_chain": "validate",
    "verify_crl": "validate",
    "verify_pins": "validate",
    "verify_server_chain": "validate",
}

__all__ = [
    "Authority",
    "FileKeyStore",
    "FileLedger",
    "IssuedRecord",
    "KeyStore",
    "Ledger",
    "MemoryLedger",
    "Profile",
    "VerifiedChain",
    "approve_csr",
    "check_not_revoked",
    "device_profile",
    "generate_signing_key",
    "generate_tls_key",
    "make_issuing_ca",
    "make_root_ca",
    "server_profile",
    "spki_pin",
    "verify_client_chain",
    "verify_crl",
    "verify_pins",
    "verify_server_chain",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'homing.pki' has no attribute {name!r}")
    return getattr(importlib.import_module(f"homing.pki.{module}"), name)
