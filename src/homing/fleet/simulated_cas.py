"""The certificate authorities of a simulated world: what a server presents, and who signs it.

``SimulatedCA`` is a root and its current issuing CA (the baseline public and
private PKIs); ``Chain`` is what the server presents. homing's own PKI is
not here: the world drives homing's real ceremonies for it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from homing.config import Validity
from homing.fleet.clock import DAYS_PER_YEAR, HOST, tick_time
from homing.pki.authority import Authority, make_issuing_ca, make_root_ca
from homing.pki.keys import generate_tls_key
from homing.pki.ledger import MemoryLedger
from homing.pki.profiles import server_csr, server_profile

__all__ = ["Chain", "SimulatedCA"]


@dataclass(frozen=True)
class Chain:
    """What the server presents: leaf first, then the intermediates."""

    leaf: x509.Certificate
    intermediates: tuple[x509.Certificate, ...]
    key_index: int

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the leaf's DER: what a fingerprint-pinning device stores."""
        return hashlib.sha256(self.leaf.public_bytes(serialization.Encoding.DER)).hexdigest()


def _leaf(
    authority: Authority, key: ec.EllipticCurvePrivateKey, tick: int, days: int
) -> x509.Certificate:
    validity = Validity(server=timedelta(days=days))
    return authority.issue_csr(
        server_csr(key, [HOST]), server_profile([HOST], validity), tick_time(tick)
    )


class SimulatedCA:
    """A root and its current issuing CA, issuing the server's leaves."""

    def __init__(self, name: str, created: int, years: float, backdate_years: float = 0.0) -> None:
        self.name = name
        self.root_key = generate_tls_key()
        born = tick_time(created) - timedelta(days=backdate_years * DAYS_PER_YEAR)
        lifetime = timedelta(days=(years + backdate_years) * DAYS_PER_YEAR)
        self.root = make_root_ca(
            self.root_key,
            born,
            organization=name,
            common_name=f"{name} root",
            validity=Validity(root_ca=lifetime),
        )
        self.generation = 0
        self.authority: Authority | None = None

    @classmethod
    def around(cls, issuing: x509.Certificate, key: Any) -> SimulatedCA:
        """An issuing CA that exists already (another site's), to issue with its key."""
        ca = cls.__new__(cls)
        ca.name = "stolen"
        ca.root = issuing
        ca.generation = 0
        ca.authority = Authority(issuing, key, MemoryLedger())
        return ca

    def new_issuing(self, tick: int) -> x509.Certificate:
        self.generation += 1
        key = generate_tls_key()
        cert = make_issuing_ca(
            "server",
            key.public_key(),
            self.root,
            self.root_key,
            tick_time(tick),
            hosts=[HOST],
            generation=self.generation,
        )
        self.authority = Authority(cert, key, MemoryLedger())
        return cert

    def chain(self, key: ec.EllipticCurvePrivateKey, index: int, tick: int, days: int) -> Chain:
        assert self.authority is not None
        # Like any CA, renew the intermediate a year before it expires, when
        # the root lives long enough for a longer one.
        expires = self.authority.certificate.not_valid_after_utc
        if (
            expires - tick_time(tick) < timedelta(days=DAYS_PER_YEAR)
            and self.root.not_valid_after_utc > expires
        ):
            self.new_issuing(tick)
        leaf = _leaf(self.authority, key, tick, days)
        return Chain(leaf, (self.authority.certificate,), index)
