"""The private PKI: authorities, issuance profiles, key stores and validation."""

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
