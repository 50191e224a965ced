"""The agent's steps that keep its certificate: EST re-enrollment and key-proof recovery.

A mixin of ``homing.agent.agent.Agent`` (the cycle decides when:
``homing.agent.decide.certificate_action``). Both steps make the CSR with the
device key wherever it is kept (a file or a TPM: homing.agent.device_key)
and keep the answer only if it certifies that same key.
"""

from __future__ import annotations

import base64
from datetime import datetime

from cryptography import x509
from cryptography.hazmat.primitives.serialization import pkcs7

from homing.agent.client import Answer, HomeClient
from homing.agent.state import DeviceConfig, DeviceState
from homing.errors import TransportError
from homing.pki.proof import sign_recovery_proof

__all__ = ["CertificateSteps", "pkcs7_leaf"]


class CertificateSteps:
    """What the agent does for its certificate; the agent provides the rest."""

    state: DeviceState
    config: DeviceConfig

    def _remember_retry_after(self, answer: Answer, now: datetime) -> Answer:
        raise NotImplementedError

    def _csr(self) -> bytes:
        return self.state.device_key().csr(self.config.device_id)

    def renew(self, client: HomeClient) -> None:
        """EST simplereenroll (RFC 7030 4.2.2) with the same key, over pinned mTLS."""
        answer = client.post(
            "/.well-known/est/simplereenroll",
            base64.b64encode(self._csr()),
            "application/pkcs10",
            mutual=True,
        )
        self._remember_retry_after(answer, client.now).expect_ok("re-enrollment")
        self._save_certificate(pkcs7_leaf(answer.body, "re-enrollment"))

    def recover(self, client: HomeClient) -> None:
        """Key-proof recovery: prove the registered key over a fresh nonce (no client cert)."""
        challenge = client.post_json(
            "/v1/recover/challenge", {"device_id": self.config.device_id}, mutual=False
        )
        nonce = (
            self._remember_retry_after(challenge, client.now)
            .expect_ok("recovery challenge")
            .json("recovery challenge")
            .get("nonce")
        )
        if not isinstance(nonce, str) or len(nonce) != 64:
            raise TransportError("the recovery challenge answer has no valid 'nonce'")
        csr = self._csr()
        proof = sign_recovery_proof(self.state.device_key(), nonce, csr)
        answer = client.post_json(
            "/v1/recover",
            {
                "device_id": self.config.device_id,
                "nonce": nonce,
                "csr": base64.b64encode(csr).decode(),
                "signature": base64.b64encode(proof).decode(),
            },
            mutual=False,
        )
        doc = self._remember_retry_after(answer, client.now).expect_ok("recovery").json("recovery")
        pem = doc.get("certificate")
        if not isinstance(pem, str):
            raise TransportError("the recovery answer has no 'certificate'")
        try:
            cert = x509.load_pem_x509_certificate(pem.encode())
        except ValueError as e:
            raise TransportError(f"the recovery answer's certificate cannot be read: {e}") from e
        self._save_certificate(cert)

    def _save_certificate(self, cert: x509.Certificate) -> None:
        if cert.public_key() != self.state.device_key().public_key():
            raise TransportError("the server returned a certificate for another key")
        self.state.save_certificate([cert])


def pkcs7_leaf(body: bytes, what: str) -> x509.Certificate:
    """The first certificate of an EST certs-only answer (RFC 8951: base64 of DER)."""
    try:
        certs = pkcs7.load_der_pkcs7_certificates(base64.b64decode(body))
    except ValueError as e:
        raise TransportError(f"the {what} answer is not a PKCS#7 certificate bundle") from e
    if not certs:
        raise TransportError(f"the {what} answer holds no certificate")
    return certs[0]
