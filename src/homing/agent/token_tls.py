"""A key on a PKCS#11 token in the agent's TLS stack, through OpenSSL's pkcs11 engine.

Python's ``ssl`` loads a client key only from a file, and Debian's OpenSSL 3
has no PKCS#11 provider that would read one from a URI; it has the pkcs11
engine (Debian's libengine-pkcs11-openssl, libp11), which hands OpenSSL a
key object whose signatures run on the token. homing takes that key through
the OpenSSL library Python is linked against (``ENGINE_load_private_key``)
and gives it to the context (``SSL_CTX_use_PrivateKey``) with the
certificate chain, as it reaches OpenSSL for the key exchange groups and
sessions (homing.tls, homing.agent.session_bytes); the context checks that
key and certificate belong together before it is used. One engine and one
key object serve the whole process; the key never leaves the token.
"""

from __future__ import annotations

import _ssl
import ctypes
import ssl
import threading
from functools import cache
from pathlib import Path

from homing.agent.token_key import TokenKeyRef
from homing.agent.token_pin import PIN_VARIABLE, token_pin
from homing.errors import ConfigError, KeyStoreError
from homing.pki.pkcs11_store import Pkcs11KeyStore
from homing.tls import ssl_ctx_pointer

__all__ = ["use_token_key"]

_ENGINE_ID = b"pkcs11"
_LOCK = threading.Lock()
_KEYS: dict[TokenKeyRef, int] = {}


@cache
def _lib() -> ctypes.CDLL:
    pointer = ctypes.c_void_p
    try:
        lib = ctypes.CDLL(_ssl.__file__)
        for name, args, result in (
            ("ENGINE_by_id", [ctypes.c_char_p], pointer),
            (
                "ENGINE_ctrl_cmd_string",
                [pointer, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_int],
                ctypes.c_int,
            ),
            ("ENGINE_init", [pointer], ctypes.c_int),
            ("ENGINE_load_private_key", [pointer, ctypes.c_char_p, pointer, pointer], pointer),
            ("SSL_CTX_use_certificate_chain_file", [pointer, ctypes.c_char_p], ctypes.c_int),
            ("SSL_CTX_use_PrivateKey", [pointer, pointer], ctypes.c_int),
            ("SSL_CTX_check_private_key", [pointer], ctypes.c_int),
            ("ERR_get_error", [], ctypes.c_ulong),
            ("ERR_error_string_n", [ctypes.c_ulong, ctypes.c_char_p, ctypes.c_size_t], None),
        ):
            function = getattr(lib, name)
            function.argtypes = args
            function.restype = result
    except (OSError, AttributeError) as e:
        raise KeyStoreError(f"this Python's OpenSSL has no engine support: {e}") from e
    return lib


def _openssl_reason(lib: ctypes.CDLL) -> str:
    """The last error OpenSSL queued (the queue emptied), or a plain word."""
    reason = ""
    while code := lib.ERR_get_error():
        text = ctypes.create_string_buffer(256)
        lib.ERR_error_string_n(code, text, len(text))
        reason = text.value.decode(errors="replace")
    return reason or "no reason given"


def _key(ref: TokenKeyRef) -> int:
    """The engine's key object for ``ref`` (made once a process)."""
    with _LOCK:
        if ref in _KEYS:
            return _KEYS[ref]
        lib = _lib()
        pin = token_pin()
        # One initialisation of the module serves the process: python-pkcs11 (the CSRs
        # and proofs) refuses a module another library initialised, the engine takes one
        # initialised already, so python-pkcs11 goes first.
        Pkcs11KeyStore.initialise(ref.module)
        engine = lib.ENGINE_by_id(_ENGINE_ID)
        if not engine:
            _openssl_reason(lib)
            raise KeyStoreError(
                "the device key is on a PKCS#11 token and OpenSSL's pkcs11 engine is not "
                "installed (Debian: libengine-pkcs11-openssl)"
            )
        for command, value in ((b"MODULE_PATH", ref.module), (b"PIN", pin)):
            if lib.ENGINE_ctrl_cmd_string(engine, command, value.encode(), 0) != 1:
                raise KeyStoreError(
                    f"OpenSSL's pkcs11 engine refused its {command.decode()}: "
                    f"{_openssl_reason(lib)}"
                )
        if lib.ENGINE_init(engine) != 1:
            raise KeyStoreError(
                f"OpenSSL's pkcs11 engine cannot load {ref.module}: {_openssl_reason(lib)}"
            )
        key = lib.ENGINE_load_private_key(engine, ref.uri().encode(), None, None)
        if not key:
            raise KeyStoreError(
                f"the PKCS#11 token {ref.token!r} gives no key {ref.label!r} (a wrong "
                f"{PIN_VARIABLE}, or the token is not there): {_openssl_reason(lib)}"
            )
        _KEYS[ref] = key
        return int(key)


def use_token_key(context: ssl.SSLContext, cert_file: Path, ref: TokenKeyRef) -> None:
    """Present ``cert_file`` with the token's key on connections made with ``context``."""
    lib = _lib()
    key = _key(ref)
    pointer = ssl_ctx_pointer(context)
    if pointer is None:
        raise KeyStoreError("cannot reach this Python's TLS context to give it the token key")
    if lib.SSL_CTX_use_certificate_chain_file(pointer, str(cert_file).encode()) != 1:
        raise ConfigError(f"cannot load the device certificate {cert_file}: {_openssl_reason(lib)}")
    if lib.SSL_CTX_use_PrivateKey(pointer, key) != 1 or lib.SSL_CTX_check_private_key(pointer) != 1:
        raise KeyStoreError(
            f"the token's key does not match the device certificate {cert_file}: "
            f"{_openssl_reason(lib)}"
        )
