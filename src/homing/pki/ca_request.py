"""An issuing CA certified at the offline site: the request out, the certificates back.

The server keeps its issuing CAs' keys (it must issue); only their
certificates need the root CA key. The server writes a request naming the
backup key it wants promoted; the offline site reads it in words, signs a CA
certificate for it with each root it holds, and the certificates travel back
as a file; the server checks them before it promotes (``rotate_issuing_ca``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from homing.config import Validity
from homing.errors import CeremonyError
from homing.pki.authority import make_issuing_ca
from homing.pki.keys import spki_pin

__all__ = ["CaRequest"]

SCHEMA = "homing.ca-request/1"
_FIELDS = {"schema", "kind", "generation", "public_key", "hosts", "roots", "validity_days"}


@dataclass(frozen=True)
class CaRequest:
    kind: str
    generation: int
    public_key: ec.EllipticCurvePublicKey
    hosts: tuple[str, ...]
    roots: tuple[x509.Certificate, ...]  # every root the site holds: each must certify
    validity_days: float

    def to_bytes(self) -> bytes:
        pem = self.public_key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ).decode()
        doc = {
            "schema": SCHEMA,
            "kind": self.kind,
            "generation": self.generation,
            "public_key": pem,
            "hosts": list(self.hosts),
            "roots": [r.public_bytes(serialization.Encoding.PEM).decode() for r in self.roots],
            "validity_days": self.validity_days,
        }
        return json.dumps(doc, indent=2, sort_keys=True).encode() + b"\n"

    @classmethod
    def from_bytes(cls, data: bytes) -> CaRequest:
        try:
            doc = json.loads(data)
        except (UnicodeDecodeError, ValueError) as e:
            raise CeremonyError(f"the CA request is not JSON: {e}") from e
        if not isinstance(doc, dict) or doc.get("schema") != SCHEMA or set(doc) != _FIELDS:
            raise CeremonyError(f"not a homing CA request ({SCHEMA})")
        if doc["kind"] not in ("server", "device"):
            raise CeremonyError("a CA request is for the server or the device CA")
        try:
            key = serialization.load_pem_public_key(str(doc["public_key"]).encode())
            request = cls(
                str(doc["kind"]),
                int(doc["generation"]),
                key,  # type: ignore[arg-type]
                tuple(str(h) for h in doc["hosts"]),
                tuple(x509.load_pem_x509_certificate(str(r).encode()) for r in doc["roots"]),
                float(doc["validity_days"]),
            )
        except (ValueError, TypeError) as e:
            raise CeremonyError(f"the CA request cannot be read: {e}") from e
        if not isinstance(key, ec.EllipticCurvePublicKey):
            raise CeremonyError("the CA request's key is not an ECDSA key")
        return request

    def describe(self) -> list[str]:
        """What signing it means, in words."""
        return [
            f"certify the {self.kind}-issuing CA generation {self.generation}",
            f"its key: {spki_pin(self.public_key)} (devices have pinned it since the last rotation)"
            if self.kind == "server"
            else f"its key: {spki_pin(self.public_key)}",
            f"names it may certify: {', '.join(self.hosts)}"
            if self.kind == "server"
            else "names it may certify: devices only (no IP, no real DNS name)",
            f"valid for {self.validity_days:g} days (capped by each root)",
            f"by the roots: {', '.join(r.subject.rfc4514_string() for r in self.roots)}",
        ]

    def sign(
        self, root_keys: Sequence[ec.EllipticCurvePrivateKey], now: datetime
    ) -> list[x509.Certificate]:
        """The CA certificates, one per root of the request (active first), each by its key."""
        from datetime import timedelta

        keys = {spki_pin(k.public_key()): k for k in root_keys}
        missing = [r.subject.rfc4514_string() for r in self.roots if spki_pin(r) not in keys]
        if missing:
            raise CeremonyError(f"bring the key of every root: missing {', '.join(missing)}")
        validity = Validity(issuing_ca=timedelta(days=self.validity_days))
        return [
            make_issuing_ca(
                self.kind,
                self.public_key,
                root,
                keys[spki_pin(root)],
                now,
                hosts=self.hosts,
                generation=self.generation,
                validity=validity,
            )
            for root in self.roots
        ]
