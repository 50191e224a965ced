"""The pin policy: what a device trusts when it opens a TLS connection.

It travels as a TUF target signed by the offline targets key, so a device
only ever takes pins from verified metadata. Parsing is strict: a policy
that is not exactly what this module writes is refused, never guessed at.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from homing.config import Limits
from homing.errors import MetadataError

__all__ = ["PIN_POLICY_TARGET", "SCHEMA", "PinPolicy", "strict_document"]

PIN_POLICY_TARGET = "pins.json"
SCHEMA = "homing.pins/1"
_FIELDS = {"schema", "root_cas", "spki_pins", "hosts", "endpoints"}


@dataclass(frozen=True)
class PinPolicy:
    """Pinned trust for TLS: roots to validate to, SPKIs to pin, where home is."""

    root_cas: tuple[x509.Certificate, ...]
    spki_pins: tuple[str, ...]
    hosts: tuple[str, ...]
    primary: str
    mirrors: tuple[str, ...] = ()

    def to_bytes(self) -> bytes:
        doc = {
            "schema": SCHEMA,
            "root_cas": [
                c.public_bytes(serialization.Encoding.PEM).decode("ascii") for c in self.root_cas
            ],
            "spki_pins": list(self.spki_pins),
            "hosts": list(self.hosts),
            "endpoints": {"primary": self.primary, "mirrors": list(self.mirrors)},
        }
        return json.dumps(doc, indent=2, sort_keys=True).encode() + b"\n"

    @classmethod
    def from_bytes(cls, data: bytes, limits: Limits | None = None) -> PinPolicy:
        limits = limits or Limits()
        doc = strict_document(data, "pin policy", limits.max_pin_policy_bytes, _FIELDS)
        if doc["schema"] != SCHEMA:
            raise MetadataError(f"unsupported pin policy schema {doc['schema']!r}")
        roots = tuple(_root(pem) for pem in _str_list(doc, "root_cas"))
        pins = tuple(_pin(p) for p in _str_list(doc, "spki_pins"))
        hosts = tuple(_str_list(doc, "hosts"))
        endpoints = doc["endpoints"]
        if not isinstance(endpoints, dict) or set(endpoints) != {"primary", "mirrors"}:
            raise MetadataError("pin policy endpoints must have 'primary' and 'mirrors'")
        primary = _url(endpoints["primary"])
        mirrors = tuple(_url(u) for u in _str_list(endpoints, "mirrors"))
        if not roots or not pins or not hosts:
            raise MetadataError("pin policy needs at least one root CA, one pin and one host")
        return cls(roots, pins, hosts, primary, mirrors)


def _str_list(doc: dict[str, Any], key: str) -> list[str]:
    value = doc[key]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise MetadataError(f"pin policy field {key!r} must be a list of strings")
    return value


def _root(pem: str) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(pem.encode("ascii"))
    except (ValueError, UnicodeEncodeError) as e:
        raise MetadataError("pin policy holds a root CA that cannot be parsed") from e


def _pin(value: str) -> str:
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as e:
        raise MetadataError(f"pin {value!r} is not base64") from e
    if len(raw) != 32:
        raise MetadataError(f"pin {value!r} is not a SHA-256 digest")
    return value


def _url(value: object) -> str:
    if not isinstance(value, str):
        raise MetadataError("endpoint must be a string")
    parts = urlsplit(value)
    if parts.scheme != "https" or not parts.hostname:
        raise MetadataError(f"endpoint {value!r} must be an https:// URL")
    return value


def strict_document(data: bytes, what: str, limit: int, fields: set[str]) -> dict[str, Any]:
    """A signed JSON document with exactly ``fields``, or the one error saying what is wrong.

    The documents devices take from targets are parsed strictly: what is not
    exactly what homing writes is refused, never guessed at.
    """
    if len(data) > limit:
        raise MetadataError(f"{what} is larger than the limit")
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise MetadataError(f"{what} is not JSON: {e}") from e
    if not isinstance(doc, dict) or set(doc) != fields:
        raise MetadataError(f"{what} must have exactly the fields {sorted(fields)}")
    return doc
