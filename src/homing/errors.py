"""The one exception hierarchy of homing.

Every failure that crosses a module boundary is one of these; third-party
exceptions are translated at the seam with ``raise ... from e``, so callers
(and the CLI, which prints one line and exits non-zero) only ever catch
``HomingError``::

    HomingError
    ├── ConfigError          bad settings, missing or malformed data directory
    ├── KeyStoreError        a key cannot be read, written or decrypted
    ├── PKIError             certificate authority failures
    │   ├── PolicyError      a CSR or request breaks the issuance profile
    │   ├── RevokedError     the certificate or device is revoked
    │   └── ChainError       a peer chain does not validate to the pinned root
    │       └── PinError     the chain validates but no SPKI matches a pin
    ├── TrustError           trust metadata is unusable
    │   ├── MetadataError    metadata failed TUF verification (rollback,
    │   │   │                threshold, freeze, mix-and-match, tampering)
    │   │   └── MetadataExpiredError  verified, but past its expiry
    │   └── CeremonyError    a ceremony cannot be carried out as asked
    │       └── StrandingError  it would leave live devices with no pinned path home
    ├── TransportError       the metadata source could not be reached
    │   └── RefusedError     the server answered, and refused (status and code)
    ├── StoreError           the database refused or lost a write
    │   ├── ConflictError    the row exists already
    │   └── NotFoundError    the row does not exist
    └── AuthError            a caller is not who, or not allowed what, it claims
"""

from __future__ import annotations

__all__ = [
    "AuthError",
    "CeremonyError",
    "ChainError",
    "ConfigError",
    "ConflictError",
    "HomingError",
    "KeyStoreError",
    "MetadataError",
    "MetadataExpiredError",
    "NotFoundError",
    "PKIError",
    "PinError",
    "PolicyError",
    "RefusedError",
    "RevokedError",
    "StoreError",
    "StrandingError",
    "TransportError",
    "TrustError",
]


class HomingError(Exception):
    """Root of every error homing raises on purpose."""


class ConfigError(HomingError):
    """Settings or the data directory are missing or malformed."""


class KeyStoreError(HomingError):
    """A private key cannot be loaded, stored or decrypted."""


class PKIError(HomingError):
    """A certificate authority operation failed."""


class PolicyError(PKIError):
    """A request breaks the issuance profile; the message says which rule."""


class RevokedError(PKIError):
    """The certificate or device has been revoked."""


class ChainError(PKIError):
    """A certificate chain does not validate to a trusted root."""


class PinError(ChainError):
    """The chain validates, but no certificate in it carries a pinned SPKI."""


class TrustError(HomingError):
    """Trust metadata cannot be used."""


class MetadataError(TrustError):
    """Trust metadata failed verification (TUF client workflow)."""


class MetadataExpiredError(MetadataError):
    """Metadata verified but is past its expiry: a freeze attack, or a lapse to renew."""


class UntrustedTimeError(TrustError):
    """The device's clock is in doubt and no home answered with a signed time: it fails
    closed (only metadata and time requests) instead of trusting a time an attacker can
    freeze."""


class CeremonyError(TrustError):
    """A trust ceremony cannot be carried out as requested."""


class StrandingError(CeremonyError):
    """A rotation would retire the only key live devices are known to trust.

    ``device_ids`` names them; the operator lets them check in first, or
    forces the rotation with a reason (audited).
    """

    def __init__(self, message: str, device_ids: tuple[str, ...]) -> None:
        super().__init__(message)
        self.device_ids = device_ids


class TransportError(HomingError):
    """A source of metadata or targets could not be reached."""


class RefusedError(TransportError):
    """The home server answered and refused; ``code`` is its problem code, if any.

    Callers decide on ``status`` and ``code``, never on the message text.
    """

    def __init__(self, message: str, status: int, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class StoreError(HomingError):
    """The database could not complete an operation."""


class ConflictError(StoreError):
    """The operation conflicts with what is stored (a duplicate)."""


class NotFoundError(StoreError):
    """The operation names something that is not stored."""


class AuthError(HomingError):
    """A caller failed authentication or lacks the role for an operation."""
