"""What the pin policy needs of the ACME set-up: public roots and the server's key pins.

Apart from ``homing.ceremonies.acme`` so that ``pin_policy`` (rotations) can
read it without the two importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cryptography import x509

from homing.ceremonies._common import _ca_key
from homing.errors import CeremonyError
from homing.pki.keys import spki_pin
from homing.pki.keystore import KeyStore
from homing.site import DataDir, Settings

__all__ = ["ACCOUNT_KEY", "PUBLIC_ROOTS", "AcmeSettings", "public_pins", "public_roots"]

PUBLIC_ROOTS = "public-roots.pem"
ACCOUNT_KEY = "acme-account"


@dataclass(frozen=True)
class AcmeSettings:
    """The ACME part of the site's settings (``Settings.acme``)."""

    directory: str
    identifiers: tuple[str, ...]
    email: str | None = None
    directory_ca: str | None = None
    http_host: str = ""
    http_port: int = 80
    account_uri: str | None = None
    key_generation: int = 1

    @classmethod
    def of(cls, settings: Settings) -> AcmeSettings:
        if settings.acme is None:
            raise CeremonyError("ACME is not set up here: run `homing acme setup` first")
        doc = dict(settings.acme)
        doc["identifiers"] = tuple(doc["identifiers"])
        return cls(**doc)

    def to_json(self) -> dict[str, Any]:
        return {**self.__dict__, "identifiers": list(self.identifiers)}

    def key_name(self, generation: int | None = None) -> str:
        return f"server-acme-g{self.key_generation if generation is None else generation}"


def public_roots(dd: DataDir) -> list[x509.Certificate]:
    path = dd.pki_path(PUBLIC_ROOTS)
    if not path.exists():
        raise CeremonyError("no public roots are set: `homing acme setup --public-roots FILE`")
    return dd.certificates(PUBLIC_ROOTS)


def public_pins(
    dd: DataDir, settings: Settings, store: KeyStore
) -> tuple[list[x509.Certificate], list[str]]:
    """The public roots devices accept and the pins of the server's active and backup keys."""
    acme = AcmeSettings.of(settings)
    active = _ca_key(store, acme.key_name())
    backup = _ca_key(store, acme.key_name(acme.key_generation + 1))
    return public_roots(dd), [spki_pin(active.public_key()), spki_pin(backup.public_key())]
