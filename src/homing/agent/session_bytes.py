"""A TLS session as bytes and back, so the next cycle's process can resume it.

The resident agent runs each cycle in a process of its own
(homing.agent.daemon), so a session kept in memory dies with the cycle and
every hourly wake-up would pay a full handshake. Python's ``ssl`` can offer a
session only as an ``SSLSession`` object of the same process; OpenSSL itself
writes a session out (``i2d_SSL_SESSION``) and reads it back
(``d2i_SSL_SESSION``, ``SSL_set_session``). homing calls those through the
OpenSSL library Python is linked against, as it does for the key exchange
groups (homing.tls), and checks each pointer against what Python reports
before it is used. Where a check fails, nothing is saved or offered and the
connection is a full handshake: resumption is a saving, never a condition.
"""

from __future__ import annotations

import _ssl
import ctypes
import ssl
from functools import cache

from homing.tls import ssl_ctx_pointer

__all__ = ["offer_saved", "session_bytes"]

_POINTER = ctypes.sizeof(ctypes.c_void_p)


@cache
def _lib() -> ctypes.CDLL | None:
    try:
        lib = ctypes.CDLL(_ssl.__file__)
        lib.i2d_SSL_SESSION.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_void_p)]
        lib.i2d_SSL_SESSION.restype = ctypes.c_int
        lib.d2i_SSL_SESSION.argtypes = [
            ctypes.c_void_p,
            ctypes.POINTER(ctypes.c_void_p),
            ctypes.c_long,
        ]
        lib.d2i_SSL_SESSION.restype = ctypes.c_void_p
        lib.SSL_SESSION_free.argtypes = [ctypes.c_void_p]
        lib.SSL_SESSION_free.restype = None
        lib.SSL_SESSION_get_id.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_uint)]
        lib.SSL_SESSION_get_id.restype = ctypes.c_void_p
        lib.SSL_set_session.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
        lib.SSL_set_session.restype = ctypes.c_int
        lib.SSL_get_SSL_CTX.argtypes = [ctypes.c_void_p]
        lib.SSL_get_SSL_CTX.restype = ctypes.c_void_p
    except (OSError, AttributeError):
        return None
    return lib


def _session_pointer(lib: ctypes.CDLL, session: ssl.SSLSession) -> int | None:
    """The SSL_SESSION* inside ``session``, if its id is the one Python reports."""
    pointer = ctypes.c_void_p.from_address(id(session) + object.__basicsize__).value
    if not pointer:
        return None
    length = ctypes.c_uint(0)
    raw_id = lib.SSL_SESSION_get_id(pointer, ctypes.byref(length))
    if raw_id is None or ctypes.string_at(raw_id, length.value) != session.id:
        return None
    return int(pointer)


def session_bytes(session: ssl.SSLSession) -> bytes | None:
    """``session`` in OpenSSL's DER form (it holds the resumption secret), or None where
    this interpreter's OpenSSL cannot be reached safely."""
    lib = _lib()
    if lib is None:
        return None
    pointer = _session_pointer(lib, session)
    if pointer is None:
        return None
    length = lib.i2d_SSL_SESSION(pointer, None)
    if length <= 0:
        return None
    buffer = ctypes.create_string_buffer(length)
    cursor = ctypes.c_void_p(ctypes.addressof(buffer))
    if lib.i2d_SSL_SESSION(pointer, ctypes.byref(cursor)) != length:
        return None
    return buffer.raw


def offer_saved(tls: ssl.SSLSocket, context: ssl.SSLContext, saved: bytes) -> bool:
    """Offer the session ``saved`` on ``tls`` (made with ``context``, not yet handshaken);
    False if it cannot be offered, and the handshake will be a full one."""
    lib = _lib()
    sslobj = getattr(tls, "_sslobj", None)
    context_pointer = ssl_ctx_pointer(context)
    if lib is None or sslobj is None or context_pointer is None:
        return False
    # _ssl's socket object: the object header, a weak reference to the socket, the SSL*.
    pointer = ctypes.c_void_p.from_address(id(sslobj) + object.__basicsize__ + _POINTER).value
    if not pointer or lib.SSL_get_SSL_CTX(pointer) != context_pointer:
        return False
    buffer = ctypes.create_string_buffer(saved, len(saved))
    cursor = ctypes.c_void_p(ctypes.addressof(buffer))
    session = lib.d2i_SSL_SESSION(None, ctypes.byref(cursor), len(saved))
    if not session:
        return False
    try:
        return bool(lib.SSL_set_session(pointer, session) == 1)
    finally:
        lib.SSL_SESSION_free(session)  # SSL_set_session took its own reference
