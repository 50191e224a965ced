"""Promoting an issuing CA whose certificate is signed at the offline site.

``propose_ca`` (server) writes a request for the backup key; ``sign_ca``
(offline, with the root CA keys) returns certificates; ``import_ca`` (server)
checks them and promotes, exactly as ``rotate_issuing_ca`` does, without a
root CA key ever on the server.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path

from cryptography import x509

from homing.ceremonies._common import OPERATOR, _ca_key, _open, _read_offline_key, serialized
from homing.ceremonies.retirement import DEFAULT_LIVE_WINDOW
from homing.ceremonies.rotations import rotate_issuing_ca
from homing.errors import CeremonyError, KeyStoreError
from homing.pki.ca_request import CaRequest
from homing.site import DataDir

__all__ = ["import_ca", "propose_ca", "sign_ca"]


def propose_ca(data: Path | DataDir, kind: str, now: datetime) -> CaRequest:
    """The request to certify the ``kind`` CA's backup key (the next generation)."""
    if kind not in ("server", "device"):
        raise CeremonyError(f"unknown issuing CA {kind!r}: use 'server' or 'device'")
    dd, settings, store = _open(data)
    g = int(getattr(settings, f"{kind}_ca_generation")) + 1
    key = _ca_key(store, f"{kind}-ca-g{g}")
    roots = tuple(r for r in dd.certificates("root-ca.pem") if r.not_valid_after_utc > now)
    return CaRequest(
        kind,
        g,
        key.public_key(),
        tuple(settings.hosts),
        roots,
        settings.validity.issuing_ca.total_seconds() / 86400,
    )


def sign_ca(
    request: CaRequest, root_keys: Sequence[Path], passphrase: bytes | None, now: datetime
) -> list[x509.Certificate]:
    """At the offline site: certify the request with the root CA key files given."""
    from cryptography.hazmat.primitives.asymmetric import ec

    keys = []
    for path in root_keys:
        key = _read_offline_key(path, passphrase)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise KeyStoreError(f"{path} is not a root CA key (ECDSA)")
        keys.append(key)
    return request.sign(keys, now)


@serialized
def import_ca(
    data: Path | DataDir,
    now: datetime,
    request: CaRequest,
    certificates: Sequence[x509.Certificate],
    *,
    actor: str = OPERATOR,
    live_within: timedelta = DEFAULT_LIVE_WINDOW,
    force_reason: str | None = None,
) -> int:
    """Check the offline site's certificates against the request and promote; returns generation."""
    dd = data if isinstance(data, DataDir) else DataDir(data)
    current = propose_ca(dd, request.kind, now)
    if (current.generation, current.public_key) != (request.generation, request.public_key):
        raise CeremonyError(
            f"the request was for {request.kind} CA generation {request.generation}; the site "
            f"now awaits generation {current.generation}: make a new request"
        )
    return rotate_issuing_ca(
        dd,
        request.kind,
        now,
        actor=actor,
        live_within=live_within,
        force_reason=force_reason,
        certified=list(certificates),
    )
