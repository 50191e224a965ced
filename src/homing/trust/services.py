"""The home's other services, named in signed metadata: today its MQTT brokers.

A device application that publishes telemetry over MQTT must learn where the
broker is from the same verified trust that names home, not from a setting
copied at assembly. The names travel as their own TUF target, signed by the
targets key with the pin policy, rather than as a field of the pin policy:
every deployed agent refuses a pin policy with a field it does not know
(homing.trust.pins parses strictly), so a broker named there would stop the
trust updates of the whole fleet. An agent that does not know this target
ignores it; one that does exports it (homing.agent.exports).

The broker's certificate is issued by the site's server CA for a host the
pin policy names, so the pins that guard home guard the broker too.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from urllib.parse import urlsplit

from homing.errors import MetadataError
from homing.trust.pins import strict_document

__all__ = ["SCHEMA", "SERVICES_TARGET", "Services", "mqtt_url"]

SERVICES_TARGET = "services.json"
SCHEMA = "homing.services/1"
MAX_BYTES = 64 * 1024
_FIELDS = {"schema", "mqtt"}


def mqtt_url(value: object) -> str:
    """An ``mqtts://host:port`` URL (TLS only, an explicit port, nothing else)."""
    if not isinstance(value, str):
        raise MetadataError("an MQTT broker must be a string")
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError as e:
        raise MetadataError(f"MQTT broker {value!r} is not a URL: {e}") from e
    if parts.scheme != "mqtts" or not parts.hostname or port is None:
        raise MetadataError(f"MQTT broker {value!r} must be mqtts://host:port")
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
        raise MetadataError(f"MQTT broker {value!r} must be only mqtts://host:port")
    return f"mqtts://{parts.netloc}"


@dataclass(frozen=True)
class Services:
    """What else is home: the MQTT brokers a device application may publish to."""

    mqtt: tuple[str, ...] = ()

    def to_bytes(self) -> bytes:
        doc = {"schema": SCHEMA, "mqtt": list(self.mqtt)}
        return json.dumps(doc, indent=2, sort_keys=True).encode() + b"\n"

    @classmethod
    def from_bytes(cls, data: bytes) -> Services:
        doc = strict_document(data, "the services document", MAX_BYTES, _FIELDS)
        if doc["schema"] != SCHEMA:
            raise MetadataError(f"unsupported services schema {doc['schema']!r}")
        brokers = doc["mqtt"]
        if not isinstance(brokers, list):
            raise MetadataError("the services document's 'mqtt' must be a list")
        return cls(tuple(mqtt_url(b) for b in brokers))
