"""One ACME (RFC 8555) certificate order, through certbot's ``acme`` library.

The protocol is the library's: account registration (§7.3), orders (§7.4),
HTTP-01 challenges (§8.3) and finalisation with our CSR. homing adds only the
seam: the HTTP-01 responder for the length of one order, bounded waits, and
the translation of every library and network failure into ``homing.errors``.
"""

from __future__ import annotations

import contextlib
import ipaddress
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from homing.errors import CeremonyError, TransportError

__all__ = ["AcmeAccount", "AcmeOrder", "order_certificate"]

# How long one order may take, registration to certificate.
ORDER_DEADLINE = timedelta(minutes=3)


@dataclass(frozen=True)
class AcmeAccount:
    """Where the CA is and who we are to it."""

    directory: str
    key: ec.EllipticCurvePrivateKey
    email: str | None = None
    uri: str | None = None  # known after the first registration
    # A CA bundle to trust the ACME server's own HTTPS by (a test CA); None: the system's.
    directory_ca: str | None = None


@dataclass(frozen=True)
class AcmeOrder:
    """What the CA issued."""

    fullchain_pem: bytes
    account_uri: str


class _Challenges(BaseHTTPRequestHandler):
    """Answers GET /.well-known/acme-challenge/TOKEN with its key authorisation (§8.3)."""

    answers: ClassVar[dict[str, bytes]] = {}

    def do_GET(self) -> None:
        prefix = "/.well-known/acme-challenge/"
        body = self.answers.get(self.path[len(prefix) :]) if self.path.startswith(prefix) else None
        self.send_response(200 if body is not None else 404)
        self.send_header("Content-Type", "text/plain")
        self.end_headers()
        if body is not None:
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        return


@contextlib.contextmanager
def _responder(host: str, port: int, answers: dict[str, bytes]) -> Iterator[None]:
    handler = type("Challenges", (_Challenges,), {"answers": answers})
    try:
        server = ThreadingHTTPServer((host, port), handler)
    except OSError as e:
        raise TransportError(
            f"cannot listen for ACME HTTP-01 challenges on {host}:{port}: {e.strerror}"
        ) from e
    thread = threading.Thread(target=server.serve_forever, name="acme-http01", daemon=True)
    thread.start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def _csr(key: ec.EllipticCurvePrivateKey, identifiers: Sequence[str]) -> bytes:
    from acme import crypto_util

    names, ips = [], []
    for identifier in identifiers:
        try:
            ips.append(ipaddress.ip_address(identifier))
        except ValueError:
            names.append(identifier)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return crypto_util.make_csr(pem, domains=names or None, ipaddrs=ips or None)


def order_certificate(
    account: AcmeAccount,
    key: ec.EllipticCurvePrivateKey,
    identifiers: Sequence[str],
    *,
    http_host: str = "",
    http_port: int = 80,
) -> AcmeOrder:
    """Order a certificate for ``key`` naming ``identifiers``; HTTP-01 on ``http_port``."""
    from acme import challenges, client, errors, messages
    from josepy.jwa import ES256
    from josepy.jwk import JWKEC

    if not identifiers:
        raise CeremonyError("an ACME order needs at least one name or address")
    jwk = JWKEC(key=account.key)
    try:
        net = client.ClientNetwork(
            jwk,
            alg=ES256,
            user_agent="homing",
            # requests takes a CA bundle path here too; the library annotates bool.
            verify_ssl=account.directory_ca or True,  # type: ignore[arg-type]
            timeout=30,
        )
        directory = client.ClientV2.get_directory(account.directory, net)
        acme = client.ClientV2(directory, net=net)
        regr = None
        if account.uri is not None:
            existing = messages.RegistrationResource(uri=account.uri, body=messages.Registration())
            try:
                regr = acme.query_registration(existing)
            except messages.Error as e:
                # §7.3: a CA may forget or deactivate an account; make a new one.
                if e.code not in ("accountDoesNotExist", "unauthorized"):
                    raise
        if regr is None:
            registration = messages.NewRegistration.from_data(
                email=account.email, terms_of_service_agreed=True
            )
            try:
                regr = acme.new_account(registration)
            except errors.ConflictError as e:
                # The key is registered already (§7.3.1): look the account up.
                found = messages.RegistrationResource(uri=e.location, body=messages.Registration())
                regr = acme.query_registration(found)
        net.account = regr
        order = acme.new_order(_csr(key, identifiers))
        answers: dict[str, bytes] = {}
        pending = []
        for authz in order.authorizations:
            if authz.body.status == messages.STATUS_VALID:
                continue
            http01 = [c for c in authz.body.challenges if isinstance(c.chall, challenges.HTTP01)]
            if not http01:
                raise CeremonyError(
                    f"the ACME server offers no HTTP-01 challenge for {authz.body.identifier.value}"
                )
            response, validation = http01[0].response_and_validation(jwk)
            answers[http01[0].chall.encode("token")] = validation.encode()
            pending.append((http01[0], response))
        deadline = datetime.now() + ORDER_DEADLINE  # the library compares naive local times
        with _responder(http_host, http_port, answers):
            for challenge, response in pending:
                acme.answer_challenge(challenge, response)
            finished = acme.poll_and_finalize(order, deadline=deadline)
    except (CeremonyError, TransportError):
        raise
    except errors.ValidationError as e:
        details = "; ".join(
            str(c.error) for a in e.failed_authzrs for c in a.body.challenges if c.error
        )
        raise CeremonyError(f"the ACME server could not validate us: {details}") from e
    except errors.TimeoutError as e:
        raise TransportError(f"the ACME order did not finish within {ORDER_DEADLINE}") from e
    except messages.Error as e:
        raise CeremonyError(f"the ACME server refused: {e}") from e
    except errors.Error as e:
        raise TransportError(f"ACME failed: {e}") from e
    except OSError as e:  # requests' errors are OSErrors
        raise TransportError(f"cannot reach the ACME server {account.directory}: {e}") from e
    return AcmeOrder(finished.fullchain_pem.encode(), regr.uri)
