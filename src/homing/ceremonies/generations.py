"""When a retired device-CA generation leaves the server's trust by itself.

A device CA rotation keeps trusting the CAs before it, so devices holding
their certificates keep checking in until they renew. Kept forever, the
trust store would grow with every rotation for the CA's ten-year life. A
retired generation issues nothing after its retirement, so once the
longest device certificate it could have issued has expired, no device
needs it: an agent whose certificate has expired recovers by key proof
without presenting it. ``pki/device-ca-retired.json`` records when each
generation was retired (by its SPKI pin); a generation with no record is
kept until its own certificate expires.
"""

from __future__ import annotations

import json
from datetime import datetime

from cryptography import x509

from homing.config import Validity
from homing.errors import ConfigError
from homing.fsutil import atomic_write
from homing.pki.keys import spki_pin
from homing.site import DataDir

__all__ = ["RETIRED_DEVICE_CAS", "record_retirement", "retired_device_cas", "still_trusted"]

RETIRED_DEVICE_CAS = "device-ca-retired.json"


def retired_device_cas(dd: DataDir) -> dict[str, datetime]:
    """When each retired device-CA key stopped issuing, by SPKI pin."""
    path = dd.pki_path(RETIRED_DEVICE_CAS)
    if not path.exists():
        return {}
    try:
        raw = json.loads(path.read_bytes())
        return {str(pin): datetime.fromisoformat(when) for pin, when in raw.items()}
    except (ValueError, AttributeError, TypeError) as e:
        raise ConfigError(f"{path} is damaged: {e}") from e


def record_retirement(
    dd: DataDir, retired: x509.Certificate, now: datetime, keep: set[str]
) -> None:
    """Note that ``retired``'s key stops issuing now; forget keys no longer in ``keep``."""
    known = {pin: when for pin, when in retired_device_cas(dd).items() if pin in keep}
    known.setdefault(spki_pin(retired), now)
    body = {pin: when.isoformat() for pin, when in sorted(known.items())}
    atomic_write(dd.pki_path(RETIRED_DEVICE_CAS), json.dumps(body, indent=1).encode())


def still_trusted(
    ca: x509.Certificate, now: datetime, validity: Validity, retired: dict[str, datetime]
) -> bool:
    """Whether a device CA certificate can still have a live device certificate below it."""
    if ca.not_valid_after_utc <= now:
        return False
    retired_at = retired.get(spki_pin(ca))
    if retired_at is None:
        return True
    # The last certificate it issued, at the retirement, lives validity.device
    # (plus the back-dating every certificate gets).
    return retired_at + validity.device + validity.backdate > now
