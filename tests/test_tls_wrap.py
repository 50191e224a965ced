"""A peer that resets the connection before the TLS handshake leaves no descriptor open.

Python's ``wrap_socket`` before 3.11.8 raises without closing the TLS socket it
made when the peer is gone by then (a server killed, a balancer dropping the
connection): the descriptor stays open until the garbage collector, with a
ResourceWarning. The reset here is real (SO_LINGER 0 on loopback) and has
arrived before the wrap, so every run takes that path.
"""

from __future__ import annotations

import gc
import select
import socket
import ssl
import struct
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

import pytest

from homing.agent.transport import PinnedConnection, parse_endpoint
from homing.errors import TransportError
from homing.tls import client_context, wrap_or_close


@contextmanager
def _reset_connection() -> Iterator[socket.socket]:
    """A connected socket whose peer has reset it; the reset has arrived."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        raw = socket.create_connection(listener.getsockname(), timeout=30)
        peer, _ = listener.accept()
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        peer.close()
        readable, _, _ = select.select([raw], [], [], 30)
        assert readable, "the reset did not arrive"
        try:
            yield raw
        finally:
            raw.close()


@contextmanager
def _no_descriptor_left() -> Iterator[None]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        yield
        gc.collect()
    left = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
    assert not left, left


def test_a_reset_before_the_handshake_raises_and_closes_the_tls_socket() -> None:
    context = client_context()
    with _no_descriptor_left(), _reset_connection() as raw:
        with pytest.raises(ConnectionResetError):
            wrap_or_close(context.wrap_socket, raw, server_hostname="home.example")
        assert raw.fileno() == -1  # the descriptor moved to the TLS socket, now closed


def test_the_agent_transport_says_the_reset_and_leaves_nothing_open() -> None:
    connection = PinnedConnection(
        parse_endpoint("https://127.0.0.1:1"), policy=None, now=datetime.now(UTC)
    )
    with (
        _no_descriptor_left(),
        _reset_connection() as raw,
        pytest.raises(TransportError, match=r"TLS handshake with 127\.0\.0\.1:1 failed"),
    ):
        connection._handshake(raw)
    connection.close()


def test_a_wrap_that_succeeds_is_returned_open() -> None:
    left, right = socket.socketpair()
    descriptor = left.fileno()
    with _no_descriptor_left(), right:
        tls = wrap_or_close(client_context().wrap_socket, left, do_handshake_on_connect=False)
        with tls:
            assert isinstance(tls, ssl.SSLSocket)
            assert tls.fileno() == descriptor
