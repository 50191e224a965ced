"""The home's MQTT brokers: named in signed metadata, certified and kept current by the home.

A product's telemetry often goes to an MQTT broker (mosquitto), not to the
home server. Devices must reach it with the same trust that guards home, and
it must follow every rotation as the home server does:

- ``set_brokers`` names the brokers (``mqtts://host:port``) in the services
  target, published with the pin policy (homing.trust.services). A broker's
  host must be one of the site's hosts: its certificate comes from the server
  CA, which is name-constrained to them, and the pins devices hold are that
  CA's keys, so a device's pinned check passes for the broker as for home.
- ``export_broker`` writes what the broker needs into a directory, as one set
  swapped in whole (homing.fsutil.swap_in_file_set): its certificate chain and
  key, issued by the active server CA and renewed at half life or when the
  server CA changes; the CAs that certify devices (``cafile``: the X.509 roots
  and the trusted device CAs, never a distrusted one); and a CRL of every
  trusted device CA whose key this site holds (``crlfile``), re-signed at half
  its life or when a device is revoked. Run from a timer with a hook that
  reloads the broker, it keeps the broker current with no change on devices.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from homing.ceremonies._common import (
    OPERATOR,
    _audit,
    _authority,
    _ca_key,
    _open,
    _pem,
    serialized,
)
from homing.ceremonies.issuing_cas import also_certified, presented_cross_certifications
from homing.ceremonies.pin_publication import publish_pins
from homing.errors import CeremonyError, MetadataError
from homing.fsutil import CURRENT, swap_in_file_set
from homing.pki.authority import Authority
from homing.pki.keys import generate_tls_key
from homing.pki.profiles import server_csr, server_profile
from homing.site import DataDir, Settings
from homing.trust.services import mqtt_url

__all__ = ["BROKER_FILES", "BrokerExport", "export_broker", "set_brokers"]

# The files of a broker's directory, under ``current/``.
CHAIN, KEY, CAFILE, CRLFILE = "server-chain.pem", "server-key.pem", "device-cas.pem", "crl.pem"
BROKER_FILES = (CHAIN, KEY, CAFILE, CRLFILE)
# Clock slack for certificates and CRLs dated slightly ahead of this host.
_FUTURE_SLACK = timedelta(minutes=5)


@serialized
def set_brokers(
    data: Path | DataDir, urls: Sequence[str], now: datetime, *, actor: str = OPERATOR
) -> int | None:
    """Name the site's MQTT brokers (none: no broker) and publish them with the pins.

    Returns the new targets version, or None when the targets key is with its
    holders (the brokers are saved; ``homing ceremony propose-targets`` carries them).
    """
    dd, settings, store = _open(data)
    brokers: list[str] = []
    for url in urls:
        try:
            broker = mqtt_url(url)
        except MetadataError as e:
            raise CeremonyError(str(e)) from e
        host = urlsplit(broker).hostname or ""
        if host.lower() not in {h.lower() for h in settings.hosts}:
            raise CeremonyError(
                f"the broker's host {host!r} is not one of the site's hosts "
                f"({', '.join(settings.hosts)}): its certificate comes from the server CA, "
                "which is constrained to them; add it first with "
                "`homing rotate endpoints --host ...`"
            )
        if broker not in brokers:
            brokers.append(broker)
    settings.mqtt_brokers = brokers
    dd.save_settings(settings)
    _audit(dd, now, actor, "set_brokers", ", ".join(brokers) or "none")
    if settings.targets_by_holders:
        return None
    return publish_pins(dd, settings, store, now)


@dataclass(frozen=True)
class BrokerExport:
    """What one export did."""

    current: Path
    changed: bool
    issued: x509.Certificate | None  # a new broker certificate, when one was issued
    crl_authorities: int  # device CAs with a CRL in the set
    without_crl: tuple[str, ...]  # trusted device CAs whose key this site lacks


def _read_current(directory: Path) -> dict[str, bytes]:
    found: dict[str, bytes] = {}
    for name in BROKER_FILES:
        with contextlib.suppress(OSError):
            found[name] = (directory / CURRENT / name).read_bytes()
    return found


def _certificate_due(
    old: dict[str, bytes], authority: Authority, host: str, settings: Settings, now: datetime
) -> bool:
    """Whether the broker's certificate must be (re)issued."""
    if CHAIN not in old or KEY not in old:
        return True
    try:
        leaf = x509.load_pem_x509_certificates(old[CHAIN])[0]
        key = serialization.load_pem_private_key(old[KEY], None)
    except ValueError:
        return True
    try:
        names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return True
    named = {str(n) for n in names.get_values_for_type(x509.DNSName)}
    named |= {str(ip) for ip in names.get_values_for_type(x509.IPAddress)}
    life = leaf.not_valid_after_utc - leaf.not_valid_before_utc
    return (
        key.public_key() != leaf.public_key()
        or leaf.issuer != authority.certificate.subject
        or named != {host}
        or leaf.not_valid_after_utc - now < life / 2
        or leaf.not_valid_before_utc > now + _FUTURE_SLACK
        or life > settings.validity.server * 2
    )


def _device_ca_authorities(dd: DataDir, settings: Settings) -> tuple[list[Authority], list[str]]:
    """An authority for each trusted device CA whose key the site holds; the others' names."""
    store = dd.keystore(settings)
    keys = []
    for g in range(1, settings.device_ca_generation + 2):
        name = f"device-ca-g{g}"
        if store.exists(name):
            keys.append(_ca_key(store, name))
    authorities: list[Authority] = []
    lacking: list[str] = []
    seen: set[bytes] = set()
    for ca in dd.certificates("device-cas.pem"):
        spki = ca.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        if spki in seen:
            continue  # a cross-certification of a CA already covered
        seen.add(spki)
        key = next((k for k in keys if k.public_key() == ca.public_key()), None)
        if key is None:
            lacking.append(ca.subject.rfc4514_string())
            continue
        authorities.append(Authority(ca, key, dd.ledger(), settings.validity))
    return authorities, lacking


def _crls_due(old: dict[str, bytes], authorities: list[Authority], now: datetime) -> bool:
    if CRLFILE not in old:
        return True
    try:
        crls = _load_crls(old[CRLFILE])
    except ValueError:
        return True
    for authority in authorities:
        key = authority.certificate.public_key()
        crl = next((c for c in crls if c.is_signature_valid(key)), None)  # type: ignore[arg-type]
        if crl is None or crl.next_update_utc is None:
            return True
        life = crl.next_update_utc - crl.last_update_utc
        revoked = {r.serial_number for r in crl}
        if (
            crl.next_update_utc - now < life / 2
            or crl.last_update_utc > now + _FUTURE_SLACK
            or revoked != {e.serial for e in authority.ledger.revoked(authority.pin)}
        ):
            return True
    return len(crls) != len(authorities)


def _load_crls(data: bytes) -> list[x509.CertificateRevocationList]:
    marker = b"-----BEGIN X509 CRL-----"
    return [
        x509.load_pem_x509_crl(marker + part) for part in data.split(marker)[1:] if part.strip()
    ]


@serialized
def export_broker(
    data: Path | DataDir, host: str, directory: Path, now: datetime, *, actor: str = OPERATOR
) -> BrokerExport:
    """Bring the broker's set in ``directory`` up to date (nothing written when it is)."""
    dd, settings, store = _open(data)
    if host.lower() not in {h.lower() for h in settings.hosts}:
        raise CeremonyError(
            f"{host!r} is not one of the site's hosts ({', '.join(settings.hosts)}): "
            "the server CA can certify only those; add it with `homing rotate endpoints --host ...`"
        )
    authority = _authority(dd, settings, store, "server")
    old = _read_current(directory)
    files = dict(old)
    issued = None
    if _certificate_due(old, authority, host, settings, now):
        key = generate_tls_key()
        issued = authority.issue_csr(
            server_csr(key, [host]), server_profile([host], settings.validity), now
        )
        also = presented_cross_certifications(also_certified(dd, "server", now))
        files[CHAIN] = _pem(issued, authority.certificate, *also)
        files[KEY] = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    files[CAFILE] = (
        dd.pki_path("root-ca.pem").read_bytes() + dd.pki_path("device-cas.pem").read_bytes()
    )
    authorities, lacking = _device_ca_authorities(dd, settings)
    if _crls_due(old, authorities, now):
        files[CRLFILE] = b"".join(
            a.crl(now).public_bytes(serialization.Encoding.PEM) for a in authorities
        )
    current = swap_in_file_set(directory, files, {KEY: 0o600})
    if issued is not None:
        _audit(dd, now, actor, "issue_broker_cert", f"{host} serial {issued.serial_number:x}")
    return BrokerExport(
        current=directory / CURRENT,
        changed=current is not None,
        issued=issued,
        crl_authorities=len(authorities),
        without_crl=tuple(lacking),
    )
