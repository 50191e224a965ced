"""The one place every TLS context of homing is built.

Server profile (Mozilla "intermediate", narrowed to what homing needs):
TLS 1.2 minimum, because some device EST stacks lack 1.3; only AEAD cipher
suites with forward secrecy (ECDHE + AES-GCM or ChaCha20-Poly1305, ECDSA
certificates, no CBC); key exchange groups X25519 and P-256 only; no
compression, no renegotiation. Client certificates are *optional* at the
TLS layer, so one port serves metadata, EST and recovery to devices without
a certificate; the device endpoints then demand a verified one.

Python's ``ssl`` module has no API to choose key exchange groups before
3.13; homing sets them on the context's ``SSL_CTX`` through the OpenSSL
library Python itself is linked against, and checks the result with
a real handshake in the tests.
"""

from __future__ import annotations

import _ssl
import ctypes
import logging
import socket
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

from homing.errors import ConfigError

__all__ = [
    "GROUPS",
    "TLS12_CIPHERS",
    "client_context",
    "server_context",
    "set_ticket_keys",
    "ssl_ctx_pointer",
    "wrap_or_close",
]

log = logging.getLogger(__name__)

TLS12_CIPHERS = ":".join(
    [
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
    ]
)
GROUPS = b"X25519:P-256"
_SSL_CTRL_SET_GROUPS_LIST = 92
_SSL_CTRL_SET_TLSEXT_TICKET_KEYS = 59
_SSL_CTRL_OPTIONS = 32
_NO_CHECK_TIME = 0x200000


def ssl_ctx_pointer(context: ssl.SSLContext) -> int | None:
    """The SSL_CTX* inside a Python SSLContext, verified before it is used."""
    try:
        lib = ctypes.CDLL(_ssl.__file__)
        ctrl = lib.SSL_CTX_ctrl
    except (OSError, AttributeError):
        return None
    ctrl.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_void_p]
    ctrl.restype = ctypes.c_ulong
    pointer = ctypes.c_void_p.from_address(id(context) + object.__basicsize__).value
    if not pointer:
        return None
    # The pointer is the context only if OpenSSL reports the options Python
    # set. SSL_CTX_get_options is a function from OpenSSL 3.0 and a macro
    # over SSL_CTX_ctrl(ctx, SSL_CTRL_OPTIONS, 0, NULL) before.
    get_options = getattr(lib, "SSL_CTX_get_options", None)
    if get_options is not None:
        get_options.argtypes = [ctypes.c_void_p]
        get_options.restype = ctypes.c_uint64
        options = get_options(pointer)
    else:
        options = ctrl(pointer, _SSL_CTRL_OPTIONS, 0, None)
    if options != int(context.options):
        return None
    return int(pointer)


def _set_groups(context: ssl.SSLContext) -> None:
    pointer = ssl_ctx_pointer(context)
    if pointer is not None:
        lib = ctypes.CDLL(_ssl.__file__)
        lib.SSL_CTX_ctrl.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_void_p]
        lib.SSL_CTX_ctrl.restype = ctypes.c_long
        if lib.SSL_CTX_ctrl(pointer, _SSL_CTRL_SET_GROUPS_LIST, 0, ctypes.c_char_p(GROUPS)) == 1:
            return
    # Fallback: P-256 alone is still inside the policy, only without X25519.
    log.warning("cannot set TLS groups to X25519:P-256 here; using P-256 only")
    context.set_ecdh_curve("prime256v1")


def set_ticket_keys(context: ssl.SSLContext, keys: bytes, lifetime: int) -> bool:
    """Seal this server context's session tickets with ``keys`` (80 bytes: name, HMAC key,
    AES key) and accept a session for ``lifetime`` seconds; False where it cannot.

    Python's ssl has no call for either; the contexts of several workers must
    share the key for a device to resume wherever its connection lands.
    """
    if len(keys) != 80:
        raise ValueError("ticket keys are 80 bytes")
    pointer = ssl_ctx_pointer(context)
    if pointer is None:
        return False
    lib = ctypes.CDLL(_ssl.__file__)
    lib.SSL_CTX_ctrl.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_void_p]
    lib.SSL_CTX_ctrl.restype = ctypes.c_long
    buffer = ctypes.create_string_buffer(keys, 80)
    if lib.SSL_CTX_ctrl(pointer, _SSL_CTRL_SET_TLSEXT_TICKET_KEYS, 80, buffer) != 1:
        return False
    set_timeout = getattr(lib, "SSL_CTX_set_timeout", None)
    if set_timeout is None:
        return False
    set_timeout.argtypes = [ctypes.c_void_p, ctypes.c_long]
    set_timeout.restype = ctypes.c_long
    set_timeout(pointer, lifetime)
    return True


# OpenSSL's verify callback: int (*)(int preverify_ok, X509_STORE_CTX *ctx).
_VERIFY_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_void_p)
_SSL_VERIFY_PEER = 0x01


def _defer_client_chain(_preverify_ok: int, _store: int | None) -> int:
    """Accept any client chain at the TLS layer; the application validates it.

    The handshake still proves the client holds the certificate's key
    (CertificateVerify, RFC 8446 §4.4.3); only the chain decision moves up.
    """
    return 1


# Kept referenced for the life of the process: OpenSSL holds the raw pointer.
_DEFER_CALLBACK = _VERIFY_CALLBACK(_defer_client_chain)


# OpenSSL's certificate verification hook: int (*)(X509_STORE_CTX *ctx, void *arg).
_CERT_VERIFY_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p)


def _chain_left_to_the_application(_store: int | None, _arg: int | None) -> int:
    """Build and check no client chain in the TLS layer: the application does, once.

    The verify callback above accepts every chain, so the TLS layer's own
    path building and signature checks decided nothing and cost a third of
    a handshake. The handshake still proves the client holds the key of the
    certificate it sent (CertificateVerify).
    """
    return 1


_CHAIN_CALLBACK = _CERT_VERIFY_CALLBACK(_chain_left_to_the_application)


def _defer_client_verification(context: ssl.SSLContext) -> bool:
    """Request client certificates but leave every verdict on them to the application.

    A chain OpenSSL refused ended the handshake without an alert (the
    event loop closes the transport before the alert is flushed) and
    without a log line, so a device, or an operator, never learned why.
    Deferred, every refusal is an HTTP 401 naming the reason, logged, and
    decided by one verifier (``homing.server.auth``: cryptography's path
    validation at the server's time, the device leaf profile, standing).
    Python keeps a callback set this way when ``verify_mode`` changes.
    """
    pointer = ssl_ctx_pointer(context)
    if pointer is None:
        return False
    lib = ctypes.CDLL(_ssl.__file__)
    set_verify = getattr(lib, "SSL_CTX_set_verify", None)
    if set_verify is None:
        return False
    set_verify.argtypes = [ctypes.c_void_p, ctypes.c_int, _VERIFY_CALLBACK]
    set_verify.restype = None
    set_verify(pointer, _SSL_VERIFY_PEER, _DEFER_CALLBACK)
    set_cert_verify = getattr(lib, "SSL_CTX_set_cert_verify_callback", None)
    if set_cert_verify is not None:
        set_cert_verify.argtypes = [ctypes.c_void_p, _CERT_VERIFY_CALLBACK, ctypes.c_void_p]
        set_cert_verify.restype = None
        set_cert_verify(pointer, _CHAIN_CALLBACK, None)
    return context.verify_mode == ssl.CERT_OPTIONAL


def _harden(context: ssl.SSLContext) -> None:
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(TLS12_CIPHERS)
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    context.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    _set_groups(context)


def server_context(
    chain_file: Path,
    key_file: Path,
    *,
    key_password: bytes | None = None,
    client_cas: bytes | None = None,
) -> ssl.SSLContext:
    """Build the home server's context: its chain, and device CAs to verify clients."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _harden(context)
    # One session ticket per handshake (OpenSSL sends two): a device keeps only its newest.
    context.num_tickets = 1
    try:
        context.load_cert_chain(chain_file, key_file, password=key_password)
    except (ssl.SSLError, OSError) as e:
        raise ConfigError(f"cannot load the server certificate {chain_file}: {e}") from e
    if client_cas:
        try:
            context.load_verify_locations(cadata=client_cas.decode("ascii"))
        except (ssl.SSLError, ValueError) as e:
            raise ConfigError(f"cannot load the device CAs: {e}") from e
        context.verify_mode = ssl.CERT_OPTIONAL
        if _defer_client_verification(context):
            return context
        log.warning(
            "cannot defer client certificate checks to the application here: "
            "refused device chains end the handshake without a reason"
        )
        # The TLS layer checks that a client certificate chains to a device CA
        # but not its dates: an expired device must reach the application,
        # which validates the chain again at its own `now` (cryptography's
        # verifier) and answers with a clear status pointing to recovery,
        # instead of a bare handshake alert. X509_V_FLAG_NO_CHECK_TIME.
        context.verify_flags = ssl.VerifyFlags(int(context.verify_flags) | _NO_CHECK_TIME)
    return context


def client_context(*, context_class: type[ssl.SSLContext] = ssl.SSLContext) -> ssl.SSLContext:
    """A device-side context: TLS policy only; trust is checked after the handshake.

    Certificate verification is done by homing's pinned verifier on the
    chain the server presented (``homing.pki.validate``), before any request
    byte is sent, so the OpenSSL verifier is switched off here deliberately.
    The device's own certificate and key are given to it where the key is
    kept (homing.agent.device_key.load_identity).
    """
    context = context_class(ssl.PROTOCOL_TLS_CLIENT)
    _harden(context)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def wrap_or_close(
    wrap: Callable[..., ssl.SSLSocket], raw: socket.socket, *args: Any, **kwargs: Any
) -> ssl.SSLSocket:
    """``wrap(raw, ...)``; when it raises, no descriptor is left open.

    ``SSLContext.wrap_socket`` moves ``raw``'s descriptor into a new TLS socket
    and then checks that the peer is still there. On Python before 3.11.8 and
    3.12.2 (CPython gh-113280), a peer that resets the connection between the
    TCP connect and that check (a server killed, a balancer dropping it) makes
    it raise without closing the TLS socket: the descriptor stays open until
    the garbage collector finds the socket in a reference cycle, with a
    ResourceWarning then. Here the socket is closed at once, found through the
    traceback (it is the ``self`` of the frame that raised); on a Python that
    closed it already, closing again does nothing.
    """
    try:
        return wrap(raw, *args, **kwargs)
    except BaseException as e:
        raw.close()
        _close_sockets_left_in(e)
        raise


def _close_sockets_left_in(error: BaseException) -> None:
    trace = error.__traceback__
    while trace is not None:
        left = trace.tb_frame.f_locals.get("self")
        if isinstance(left, ssl.SSLSocket):
            left.close()
        trace = trace.tb_next
