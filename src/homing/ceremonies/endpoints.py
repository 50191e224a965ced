"""The home moves: new host names, primary and mirrors, published through TUF.

Over twenty years a company renames its domain, moves clouds, adds a region
or a mirror. Where home is travels in the pin policy (a signed target), so a
move is a trust change like any other: every device that refreshes its
metadata learns the new endpoints, including one that slept through it,
as long as the name it still dials answers.

A move is two steps, each this one ceremony with the full list of names:

1. Add the new names (``hosts`` = old + new, ``primary`` = the new URL).
   The server's certificate covers old and new names; the server CA is
   name-constrained (RFC 5280 §4.2.1.10) to the site's hosts, so when the
   new names fall outside its constraints its pre-pinned backup key is
   promoted with constraints that cover them (the server-CA guard applies).
2. Later, drop the old names. Refused while a device seen within the live
   window holds a pin policy whose primary is a dropped name (it still
   dials it), naming the devices, unless forced with a reason (audited).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit

from cryptography import x509

from homing.ceremonies._common import OPERATOR, _audit, _open, serialized
from homing.ceremonies.pin_publication import publish_pins, targets_signed_here
from homing.ceremonies.retirement import (
    DEFAULT_LIVE_WINDOW,
    check_pin_retirement,
    stranding_refusal,
)
from homing.ceremonies.rotations import rotate_issuing_ca, rotate_server_cert
from homing.errors import CeremonyError, MetadataError, PolicyError
from homing.pki.keys import spki_pin
from homing.pki.profiles import split_hosts
from homing.site import DataDir
from homing.store import pin_history
from homing.trust.pins import PinPolicy

__all__ = ["MovedHome", "move_home"]


@dataclass(frozen=True)
class MovedHome:
    """What a move published."""

    hosts: tuple[str, ...]
    primary: str
    mirrors: tuple[str, ...]
    dropped: tuple[str, ...]
    server_ca_generation: int | None  # set when the server CA was promoted for new names
    pins_published: bool
    stranded: tuple[str, ...] = ()


def _endpoint(value: str, what: str) -> str:
    parts = urlsplit(value)
    if parts.scheme != "https" or not parts.hostname or parts.path not in ("", "/"):
        raise CeremonyError(f"the {what} {value!r} must be an https:// URL with no path")
    return value.rstrip("/")


def _constrained_to(ca: x509.Certificate, host: str) -> bool:
    """Whether the server CA's name constraints permit ``host``."""
    try:
        constraints = ca.extensions.get_extension_for_class(x509.NameConstraints).value
    except x509.ExtensionNotFound:
        return True
    permitted = constraints.permitted_subtrees or []
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        name = host.lower()
        return any(
            isinstance(p, x509.DNSName)
            and (name == p.value.lower() or name.endswith("." + p.value.lower().lstrip(".")))
            for p in permitted
        )
    return any(
        isinstance(p, x509.IPAddress)
        and isinstance(p.value, ipaddress.IPv4Network | ipaddress.IPv6Network)
        and address in p.value
        for p in permitted
    )


def _still_dialing(
    dd: DataDir, dropped: set[str], now: datetime, live_within: timedelta
) -> tuple[list[str], int]:
    """Live devices whose held pin policy's primary is a dropped name; and how many are live."""
    repo_targets = dd.repository(dd.settings()).targets_dir
    with dd.database().begin() as conn:
        held = pin_history.live_device_trust(conn, now - live_within)
    # A fleet holds a handful of policies: each is read once, not once per device.
    primary_host: dict[str, str | None] = {}

    def dials(sha256: str) -> str | None:
        if sha256 not in primary_host:
            try:
                policy = PinPolicy.from_bytes((repo_targets / f"{sha256}.pins.json").read_bytes())
                primary_host[sha256] = (urlsplit(policy.primary).hostname or "").lower()
            except (OSError, MetadataError):
                primary_host[sha256] = None
        return primary_host[sha256]

    dialing = [
        device.device_id
        for device in held
        if device.pin_policy_sha256 and dials(device.pin_policy_sha256) in dropped
    ]
    return dialing, len(held)


@serialized
def move_home(
    data: Path | DataDir,
    now: datetime,
    *,
    hosts: list[str],
    primary: str,
    mirrors: list[str] | None = None,
    actor: str = OPERATOR,
    live_within: timedelta = DEFAULT_LIVE_WINDOW,
    force_reason: str | None = None,
) -> MovedHome:
    """Publish new endpoints; returns what changed (see the module docstring for the steps)."""
    if live_within <= timedelta(0):
        raise CeremonyError("the live window must be positive")
    if force_reason is not None and not force_reason.strip():
        raise CeremonyError("forcing a move needs a reason (it is audited)")
    dd, settings, store = _open(data)
    if settings.serving == "acme":
        raise CeremonyError(
            "the server serves a certificate from its ACME CA: set up ACME for the new names "
            "(`homing acme setup`) and issue it before moving the endpoints"
        )
    hosts = list(dict.fromkeys(h.strip().lower() for h in hosts if h.strip()))
    if not hosts:
        raise CeremonyError("the home needs at least one host name")
    try:
        split_hosts(hosts)
    except PolicyError as e:
        raise CeremonyError(str(e)) from e
    primary = _endpoint(primary, "primary endpoint")
    mirrors = [_endpoint(m, "mirror") for m in (mirrors if mirrors is not None else [])]
    primary_host = (urlsplit(primary).hostname or "").lower()
    if primary_host not in hosts:
        raise CeremonyError(
            f"the primary endpoint's host {primary_host!r} is not among the hosts the server's "
            "certificate will cover: add it to the hosts"
        )
    dropped = sorted(set(settings.hosts) - set(hosts))
    dialing, live = _still_dialing(dd, set(dropped), now, live_within) if dropped else ([], 0)
    if dialing and force_reason is None:
        raise stranding_refusal(
            dialing,
            live,
            live_within,
            f"still dial {', '.join(dropped)}",
            "Keep the name until they have checked in on the new endpoints",
        )
    here = targets_signed_here(dd, settings, store)
    server_ca = dd.certificate("server-ca.pem")
    uncovered = [h for h in hosts if not _constrained_to(server_ca, h)]
    if uncovered:
        # Checked before anything is written: the promotion below checks it again.
        backup = store.load(f"server-ca-g{settings.server_ca_generation + 1}")
        check_pin_retirement(
            dd,
            spki_pin(backup.public_key()),
            now,
            live_within=live_within,
            force_reason=force_reason,
        )
    settings.hosts = hosts
    settings.primary = primary
    settings.mirrors = mirrors
    dd.save_settings(settings)
    generation = None
    if uncovered:
        # The backup key, pinned since the last promotion, is certified for the new names.
        generation = rotate_issuing_ca(
            dd, "server", now, actor=actor, live_within=live_within, force_reason=force_reason
        )
    else:
        rotate_server_cert(dd, now, actor=actor)
        if here:
            publish_pins(dd, dd.settings(), store, now)
    detail: dict[str, object] = {
        "hosts": hosts,
        "primary": primary,
        "mirrors": mirrors,
        "dropped": dropped,
    }
    if dialing:
        detail.update(stranded=dialing, forced=force_reason)
    _audit(dd, now, actor, "move_home", primary, detail)
    return MovedHome(
        tuple(hosts), primary, tuple(mirrors), tuple(dropped), generation, here, tuple(dialing)
    )
