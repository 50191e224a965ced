"""The server's certificate from a public CA over ACME, still pinned by key.

A public CA may change its intermediates whenever it likes, so devices pin
the server's own keys instead: the active key and a backup generated ahead,
both in the pin policy with the public roots devices accept. Then:

- a renewal (same key) changes nothing for devices;
- a key change promotes the backup, which every device already pins, and
  publishes a fresh backup;
- a public root change travels in TUF like any other trust change (devices
  that slept through it catch up over the bootstrap channel).

Every step refuses to serve a chain devices would not accept: an issued
chain must validate to the published public roots for every identifier, at
``now``, before it replaces the served one, and a new root set must still
accept the chain being served.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from homing.ceremonies._common import OPERATOR, _audit, _ca_key, _open, _pem, serialized
from homing.ceremonies._public_pins import (
    ACCOUNT_KEY,
    PUBLIC_ROOTS,
    AcmeSettings,
    public_pins,
    public_roots,
)
from homing.ceremonies.pin_publication import publish_pins
from homing.ceremonies.retirement import DEFAULT_LIVE_WINDOW, check_pin_retirement
from homing.ceremonies.rotations import rotate_server_cert
from homing.errors import CeremonyError, ChainError
from homing.fsutil import atomic_write
from homing.pki.acme_order import AcmeAccount, order_certificate
from homing.pki.keys import generate_tls_key, spki_pin
from homing.pki.validate import load_certificates_pem, verify_server_chain
from homing.site import DataDir, Settings

__all__ = [
    "AcmeSettings",
    "acme_issue",
    "acme_setup",
    "install_certificate",
    "public_pins",
    "set_public_roots",
    "set_tls_mode",
]


def _parse_roots(pem: bytes) -> list[x509.Certificate]:
    try:
        roots = load_certificates_pem(pem)
    except ChainError as e:
        raise CeremonyError(f"the public roots cannot be read: {e}") from e
    if not roots:
        raise CeremonyError("the public roots file holds no certificate")
    for root in roots:
        try:
            ca = root.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        except x509.ExtensionNotFound:
            ca = False
        if not ca or root.issuer != root.subject:
            raise CeremonyError(
                f"{root.subject.rfc4514_string()} is not a self-signed CA certificate"
            )
    return roots


def _check_identifiers(identifiers: tuple[str, ...], hosts: list[str]) -> None:
    if not identifiers:
        raise CeremonyError("name at least one identifier (a DNS name or an IP address)")
    for identifier in identifiers:
        if identifier not in hosts:
            raise CeremonyError(
                f"{identifier!r} is not one of the server's hosts ({', '.join(hosts)}): "
                "devices dial those names"
            )


@serialized
def acme_setup(
    data: Path | DataDir,
    now: datetime,
    *,
    directory: str,
    public_roots_pem: bytes,
    identifiers: tuple[str, ...] = (),
    email: str | None = None,
    directory_ca: Path | None = None,
    http_host: str = "",
    http_port: int = 80,
    actor: str = OPERATOR,
) -> int:
    """Configure ACME, make the server's public keys, publish mixed pins; returns targets version.

    Nothing served changes: devices learn first that a public chain for
    these keys is home too; ``acme_issue`` then switches the served chain.
    """

    dd, settings, store = _open(data)
    parts = urlsplit(directory)
    if parts.scheme != "https" or not parts.hostname:
        raise CeremonyError(f"the ACME directory must be an https:// URL, not {directory!r}")
    if not 0 < http_port < 65536:
        raise CeremonyError("the HTTP-01 port must be 1-65535")
    if directory_ca is not None and not directory_ca.is_file():
        raise CeremonyError(f"no CA bundle at {directory_ca}")
    chosen = identifiers or tuple(settings.hosts)
    _check_identifiers(chosen, settings.hosts)
    roots = _parse_roots(public_roots_pem)
    previous = AcmeSettings.of(settings) if settings.acme else None
    acme = AcmeSettings(
        directory=directory,
        identifiers=chosen,
        email=email,
        directory_ca=str(directory_ca.resolve()) if directory_ca else None,
        http_host=http_host,
        http_port=http_port,
        account_uri=previous.account_uri if previous and previous.directory == directory else None,
        key_generation=previous.key_generation if previous else 1,
    )
    for name in (ACCOUNT_KEY, acme.key_name(), acme.key_name(acme.key_generation + 1)):
        if not store.exists(name):
            store.store(name, generate_tls_key())
    atomic_write(dd.pki_path(PUBLIC_ROOTS), _pem(*roots))
    settings.acme = acme.to_json()
    if settings.server_tls_mode == "private":
        settings.server_tls_mode = "mixed"
    dd.save_settings(settings)
    version = publish_pins(dd, settings, store, now)
    _audit(
        dd,
        now,
        actor,
        "acme_setup",
        directory,
        {"identifiers": list(chosen), "public_roots": len(roots)},
    )
    return version


def _verify_for_devices(
    chain: list[x509.Certificate], roots: list[x509.Certificate], acme: AcmeSettings, now: datetime
) -> None:
    for identifier in acme.identifiers:
        try:
            verify_server_chain(chain[0], chain[1:], roots, identifier, now)
        except ChainError as e:
            raise CeremonyError(
                f"devices would refuse this chain ({e}); if it leads to a new root, "
                "publish the root first with `homing acme roots`"
            ) from e


def _require_public_pins(settings: Settings) -> AcmeSettings:
    acme = AcmeSettings.of(settings)
    if settings.server_tls_mode == "private":
        raise CeremonyError(
            "the pin policy accepts only the private server CA: `homing acme setup` first"
        )
    return acme


@serialized
def acme_issue(
    data: Path | DataDir,
    now: datetime,
    *,
    rotate_key: bool = False,
    actor: str = OPERATOR,
) -> x509.Certificate:
    """Order the server's certificate over ACME and serve it; returns the new leaf.

    ``rotate_key`` promotes the backup key (pinned since the last change),
    orders for it, and publishes pins for it and a fresh backup.
    """
    dd, settings, store = _open(data)
    acme = _require_public_pins(settings)
    generation = acme.key_generation + 1 if rotate_key else acme.key_generation
    key = _ca_key(store, acme.key_name(generation))
    account = AcmeAccount(
        directory=acme.directory,
        key=_ca_key(store, ACCOUNT_KEY),
        email=acme.email,
        uri=acme.account_uri,
        directory_ca=acme.directory_ca,
    )
    order = order_certificate(
        account, key, acme.identifiers, http_host=acme.http_host, http_port=acme.http_port
    )
    if order.account_uri != acme.account_uri:
        settings.acme = AcmeSettings(
            **{**acme.__dict__, "account_uri": order.account_uri}
        ).to_json()
        dd.save_settings(settings)
    return install_certificate(
        dd, now, order.fullchain_pem, rotate_key=rotate_key, actor=actor, action="acme_issue"
    )


@serialized
def install_certificate(
    data: Path | DataDir,
    now: datetime,
    chain_pem: bytes,
    *,
    rotate_key: bool = False,
    next_backup: ec.EllipticCurvePrivateKey | None = None,
    actor: str = OPERATOR,
    action: str = "acme_install",
) -> x509.Certificate:
    """Serve a public-CA chain for the server's active key (or, rotating, its backup).

    ``acme_issue`` ends here; a chain obtained by another ACME client comes
    in here too. The chain must be for the pinned key and validate, for every
    identifier, to the published public roots. Rotating promotes the backup,
    makes ``next_backup`` (or a fresh key) the new backup and publishes pins.
    """

    dd, settings, store = _open(data)
    acme = _require_public_pins(settings)
    generation = acme.key_generation + 1 if rotate_key else acme.key_generation
    key = _ca_key(store, acme.key_name(generation))
    try:
        chain = load_certificates_pem(chain_pem)
    except ChainError as e:
        raise CeremonyError(f"the certificate chain cannot be read: {e}") from e
    if not chain or chain[0].public_key() != key.public_key():
        raise CeremonyError(
            f"the certificate is not for the server's {'backup' if rotate_key else 'active'} key"
        )
    # Checked at the later of now and the leaf's start: a CA that does not
    # back-date issues certificates that start the second they are made.
    _verify_for_devices(chain, public_roots(dd), acme, max(now, chain[0].not_valid_before_utc))
    if rotate_key:
        store.store(acme.key_name(generation + 1), next_backup or generate_tls_key())
        acme = AcmeSettings(**{**acme.__dict__, "key_generation": generation})
    # Key first, then the chain (the server reloads on the chain), then settings.
    store.store("server-tls", key)
    atomic_write(dd.pki_path("server-chain.pem"), _pem(*chain))
    settings.acme = acme.to_json()
    settings.serving = "acme"
    dd.save_settings(settings)
    if rotate_key:
        publish_pins(dd, settings, store, now)
    leaf = chain[0]
    _audit(
        dd,
        now,
        actor,
        action,
        f"serial {leaf.serial_number:x}",
        {"key_generation": acme.key_generation, "rotated_key": rotate_key},
    )
    return leaf


@serialized
def set_public_roots(
    data: Path | DataDir, now: datetime, roots_pem: bytes, *, actor: str = OPERATOR
) -> int:
    """Replace the public roots devices accept; returns the targets version.

    Refused when the chain being served would not validate to the new set:
    add a new root before the CA switches to it, drop the old one after.
    """

    dd, settings, store = _open(data)
    acme = AcmeSettings.of(settings)
    roots = _parse_roots(roots_pem)
    if settings.serving == "acme":
        _verify_for_devices(dd.certificates("server-chain.pem"), roots, acme, now)
    atomic_write(dd.pki_path(PUBLIC_ROOTS), _pem(*roots))
    version = publish_pins(dd, settings, store, now)
    _audit(dd, now, actor, "acme_roots", f"targets v{version}", {"roots": len(roots)})
    return version


@serialized
def set_tls_mode(
    data: Path | DataDir,
    now: datetime,
    mode: str,
    *,
    actor: str = OPERATOR,
    live_within: timedelta = DEFAULT_LIVE_WINDOW,
    force_reason: str | None = None,
) -> int:
    """Publish the pin policy of ``mode``; returns the targets version.

    - ``public``: only the public chain; the server must already serve it.
    - ``mixed``: both (the migration state, either way).
    - ``private``: only the site's server CA; the server goes back to a
      private certificate first (devices in mixed mode accept it).

    The retirement guard (``homing.ceremonies.retirement``) refuses a switch
    while a device seen within ``live_within`` does not hold the pin of the
    key that serves afterwards (the private server CA, or the server's ACME
    key), unless ``force_reason`` is given; a forced switch is audited.
    """

    if mode not in ("private", "mixed", "public"):
        raise CeremonyError(f"unknown mode {mode!r}: use private, mixed or public")
    dd, settings, store = _open(data)
    if mode != "private":
        AcmeSettings.of(settings)
    if mode == "public" and settings.serving != "acme":
        raise CeremonyError(
            "the server still serves its private certificate: `homing acme issue` first, "
            "or devices pinned to public keys only would be cut off"
        )
    verdict = None
    if mode == "public":
        # After it, devices accept only the public pins: the served ACME key's among them.
        served = dd.certificates("server-chain.pem")[0]
        verdict = check_pin_retirement(
            dd, spki_pin(served), now, live_within=live_within, force_reason=force_reason
        )
    if mode == "private" and settings.serving == "acme":
        if settings.server_tls_mode == "public":
            raise CeremonyError(
                "devices pin only public keys now: go to mixed first and let them take it"
            )
        # The private server CA signs the server's certificate from now on.
        verdict = check_pin_retirement(
            dd,
            spki_pin(dd.certificate("server-ca.pem")),
            now,
            live_within=live_within,
            force_reason=force_reason,
        )
        settings.serving = "private"
        dd.save_settings(settings)
        rotate_server_cert(dd, now, actor=actor)
    settings = dd.settings()
    settings.server_tls_mode = mode
    dd.save_settings(settings)
    version = publish_pins(dd, settings, store, now)
    detail: dict[str, object] = {"targets": version}
    if verdict is not None and verdict.stranded:
        detail.update(stranded=list(verdict.stranded), forced=force_reason)
    _audit(dd, now, actor, "tls_mode", mode, detail)
    return version
