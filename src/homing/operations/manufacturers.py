"""Importing a manufacturer CA (and later its CRLs): checked, then one audited transaction."""

from __future__ import annotations

import hashlib
from datetime import datetime

from cryptography.hazmat.primitives import serialization

from homing.errors import ConfigError
from homing.fsutil import safe_name
from homing.pki.idevid import ID_SOURCES, check_crls, parse_ca_bundle, parse_crls
from homing.store import Database, audit, manufacturers

__all__ = ["add_manufacturer", "update_crls"]


def _crls_pem(crl_data: bytes) -> str:
    return "".join(
        c.public_bytes(serialization.Encoding.PEM).decode() for c in parse_crls(crl_data)
    )


def add_manufacturer(
    db: Database,
    actor: str,
    now: datetime,
    name: str,
    ca_data: bytes,
    crl_data: bytes | None,
    id_from: str,
) -> int:
    """Trust ``ca_data``'s CAs to vouch for devices by IDevID; how many CA certificates."""
    safe_name(name, "manufacturer name")
    if id_from not in ID_SOURCES:
        raise ConfigError(f"--id-from must be one of {', '.join(ID_SOURCES)}, not {id_from!r}")
    cas = parse_ca_bundle(ca_data)
    crls_pem = None
    if crl_data is not None:
        check_crls(parse_crls(crl_data), cas, now)
        crls_pem = _crls_pem(crl_data)
    cas_pem = "".join(c.public_bytes(serialization.Encoding.PEM).decode() for c in cas)
    with db.begin() as conn:
        manufacturers.add_manufacturer(conn, name, cas_pem, crls_pem, id_from, now)
        audit.audit(
            conn,
            now,
            actor,
            "add_manufacturer",
            name,
            {
                "id_from": id_from,
                "ca_sha256": [
                    hashlib.sha256(c.public_bytes(serialization.Encoding.DER)).hexdigest()
                    for c in cas
                ],
                "crls": crls_pem is not None,
            },
        )
    return len(cas)


def update_crls(db: Database, actor: str, now: datetime, name: str, crl_data: bytes) -> int:
    """Replace a manufacturer's CRLs; how many revoked serials they list."""
    crls = parse_crls(crl_data)
    with db.begin() as conn:
        cas = parse_ca_bundle(manufacturers.manufacturer_cas(conn, name).encode())
        check_crls(crls, cas, now)
        manufacturers.set_crls(conn, name, _crls_pem(crl_data))
        revoked = sum(len(list(c)) for c in crls)
        audit.audit(conn, now, actor, "update_manufacturer_crls", name, {"revoked": revoked})
    return revoked
