"""Device-side trust refresh: from the newest verified root to today's pins.

This is a thin shell around python-tuf's ``ngclient.Updater``, which does
every verification step of the TUF client workflow (spec §5.3-§5.6). homing
adds three things only:

1. the walk starts from the newest root this device has already verified
   (python-tuf caps one walk at ``max_root_rotations`` from its bootstrap,
   so always bootstrapping from the factory root strands a device for good
   once the fleet is that many versions on);
2. time is a parameter, so tests and the fleet simulator move the clock;
3. the pin policy target is fetched, verified by its signed hashes, and
   parsed strictly; every third-party failure becomes a ``homing.errors``
   exception.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from urllib.parse import unquote, urlsplit

from tuf.api import exceptions as tuf_errors
from tuf.api.metadata import Metadata, Root, Snapshot, TargetFile, Targets, Timestamp
from tuf.ngclient import FetcherInterface, Updater, UpdaterConfig

from homing.config import Limits
from homing.errors import ConfigError, MetadataError, MetadataExpiredError, TransportError
from homing.trust.pins import PIN_POLICY_TARGET, PinPolicy
from homing.trust.services import MAX_BYTES as MAX_SERVICES_BYTES
from homing.trust.services import SERVICES_TARGET, Services

__all__ = ["DirectoryFetcher", "TrustState", "refresh_trust", "target_info"]

log = logging.getLogger(__name__)

_CHUNK = 64 * 1024


@dataclass(frozen=True)
class TrustState:
    """What a successful refresh verified."""

    pin_policy: PinPolicy
    root_version: int
    timestamp_version: int
    snapshot_version: int
    targets_version: int
    timestamp_expires: datetime
    # The home's other services (MQTT brokers), when the targets name them.
    services: Services = field(default_factory=Services)


class DirectoryFetcher(FetcherInterface):
    """Serves ``file://`` URLs: a repository copy on local disk or a USB stick.

    Because TUF metadata authenticates itself, where it comes from does not
    matter; this is the bootstrap channel of last resort.
    """

    def _fetch(self, url: str) -> Iterator[bytes]:
        parts = urlsplit(url)
        if parts.scheme != "file":
            raise tuf_errors.DownloadError(f"DirectoryFetcher only serves file:// URLs, not {url}")
        path = Path(unquote(parts.path))
        try:
            f = path.open("rb")
        except FileNotFoundError as e:
            raise tuf_errors.DownloadHTTPError(f"{path} not found", 404) from e
        except OSError as e:
            raise tuf_errors.DownloadError(f"cannot read {path}: {e.strerror}") from e
        return _chunks(f)


def _chunks(f: object) -> Iterator[bytes]:
    import io

    assert isinstance(f, io.BufferedReader)
    with f:
        while chunk := f.read(_CHUNK):
            yield chunk


def _updater_config(limits: Limits) -> UpdaterConfig:
    return UpdaterConfig(
        max_root_rotations=limits.max_root_rotations,
        root_max_length=limits.max_root_bytes,
        timestamp_max_length=limits.max_timestamp_bytes,
        snapshot_max_length=limits.max_snapshot_bytes,
        targets_max_length=limits.max_targets_bytes,
    )


def _choose_bootstrap(metadata_dir: Path, bootstrap_root: bytes | None) -> bytes:
    """Start from the newest root known: the device's verified cache or the given one.

    The cache holds only roots python-tuf verified on this device, so it is
    as trustworthy as the factory root and usually much newer. A newer
    bootstrap (one that arrived inside a signed firmware image) wins.
    """
    cached: bytes | None = None
    try:
        cached = (metadata_dir / "root.json").read_bytes()
    except FileNotFoundError:
        pass
    except OSError as e:
        raise ConfigError(f"cannot read trusted root in {metadata_dir}: {e.strerror}") from e
    if cached is None and bootstrap_root is None:
        raise ConfigError(f"no trusted root in {metadata_dir} and none given")
    if cached is None:
        assert bootstrap_root is not None
        return bootstrap_root
    if bootstrap_root is None:
        return cached
    return cached if _version(cached) >= _version(bootstrap_root) else bootstrap_root


def _version(root: bytes) -> int:
    try:
        return Metadata.from_bytes(root).signed.version
    except Exception as e:
        raise MetadataError(f"trusted root cannot be parsed: {e}") from e


def refresh_trust(
    metadata_dir: Path,
    metadata_url: str,
    now: datetime,
    *,
    fetcher: FetcherInterface | None = None,
    target_url: str | None = None,
    bootstrap_root: bytes | None = None,
    limits: Limits | None = None,
) -> TrustState:
    """Update trust metadata to the newest the source offers and return the verified pins.

    Raises MetadataError for anything the TUF workflow refuses (rollback,
    freeze, mix-and-match, threshold, tampering) and TransportError when the
    source cannot be reached. On any failure the trusted state on disk is
    what it was, or a newer verified state: python-tuf persists only
    metadata that passed verification.
    """
    limits = limits or Limits()
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    metadata_dir.mkdir(parents=True, exist_ok=True)
    target_dir = metadata_dir / "targets"
    target_dir.mkdir(exist_ok=True)
    if target_url is None:
        target_url = metadata_url.rstrip("/").rsplit("/", 1)[0] + "/targets/"
    with _python_tuf_errors(metadata_dir):
        updater = _updater(
            metadata_dir,
            metadata_url,
            target_dir,
            target_url,
            fetcher or DirectoryFetcher(),
            _choose_bootstrap(metadata_dir, bootstrap_root),
            now,
            limits,
        )
        updater.refresh()
        info = updater.get_targetinfo(PIN_POLICY_TARGET)
        if info is None:
            raise MetadataError(f"trust metadata carries no {PIN_POLICY_TARGET} target")
        path = updater.find_cached_target(info) or updater.download_target(info)
        policy = PinPolicy.from_bytes(Path(path).read_bytes(), limits)
        services = Services()
        listed = updater.get_targetinfo(SERVICES_TARGET)
        if listed is not None:
            if listed.length > MAX_SERVICES_BYTES:
                raise MetadataError("the services document is larger than the limit")
            found = updater.find_cached_target(listed) or updater.download_target(listed)
            services = Services.from_bytes(Path(found).read_bytes())
        # python-tuf persists only metadata that passed verification, so the
        # files it just wrote are the trusted state (read, not re-verified).
        timestamp = Metadata[Timestamp].from_file(str(metadata_dir / "timestamp.json")).signed
        return TrustState(
            pin_policy=policy,
            root_version=Metadata[Root].from_file(str(metadata_dir / "root.json")).signed.version,
            timestamp_version=timestamp.version,
            snapshot_version=Metadata[Snapshot]
            .from_file(str(metadata_dir / "snapshot.json"))
            .signed.version,
            targets_version=Metadata[Targets]
            .from_file(str(metadata_dir / "targets.json"))
            .signed.version,
            timestamp_expires=timestamp.expires,
            services=services,
        )


def _updater(
    metadata_dir: Path,
    metadata_url: str,
    target_dir: Path,
    target_url: str | None,
    fetcher: FetcherInterface,
    bootstrap: bytes,
    now: datetime,
    limits: Limits,
) -> Updater:
    """python-tuf's Updater with homing's limits and a fixed reference time."""
    updater = Updater(
        str(metadata_dir),
        metadata_url,
        str(target_dir),
        target_url,
        fetcher=fetcher,
        config=_updater_config(limits),
        bootstrap=bootstrap,
    )
    # TUF spec §5.3.1: one fixed reference time for the whole update. The
    # Updater takes the wall clock and has no public way to take another;
    # homing's agents use their secure time floor instead, so the reference
    # time is set before anything loads. This is the one place homing reaches
    # into python-tuf; tests/test_trust_attacks.py's expired-timestamp tests
    # fail if python-tuf ever stops honouring it.
    updater._trusted_set.reference_time = now
    return updater


@contextmanager
def _python_tuf_errors(metadata_dir: Path) -> Iterator[None]:
    """Every python-tuf failure as the one homing error that says what went wrong."""
    try:
        yield
    except tuf_errors.ExpiredMetadataError as e:
        raise MetadataExpiredError(f"trust metadata has expired: {e}") from e
    except tuf_errors.UnsignedMetadataError as e:
        if "signed by 0/" in str(e):
            raise MetadataError(
                f"trust metadata refused: {e}: it is signed by none of the keys this device "
                "trusts, so this server serves another site's metadata (check --server) or "
                "whatever answered is not home"
            ) from e
        raise MetadataError(f"trust metadata refused: {e}") from e
    except tuf_errors.RepositoryError as e:
        raise MetadataError(f"trust metadata refused: {e}") from e
    except tuf_errors.DownloadError as e:
        raise TransportError(f"cannot fetch trust metadata: {e}") from e
    except (ValueError, KeyError, TypeError) as e:
        raise MetadataError(f"trust metadata is malformed: {e}") from e
    except OSError as e:
        raise ConfigError(f"cannot write trust state in {metadata_dir}: {e}") from e


def target_info(
    metadata_dir: Path,
    metadata_url: str,
    name: str,
    now: datetime,
    *,
    fetcher: FetcherInterface,
    bootstrap_root: bytes | None = None,
    limits: Limits | None = None,
) -> TargetFile:
    """The verified TargetFile for ``name``, following delegations (TUF spec 5.6.7)."""
    limits = limits or Limits()
    with _python_tuf_errors(metadata_dir):
        updater = _updater(
            metadata_dir,
            metadata_url,
            metadata_dir / "targets",
            None,
            fetcher,
            _choose_bootstrap(metadata_dir, bootstrap_root),
            now,
            limits,
        )
        updater.refresh()
        info = updater.get_targetinfo(name)
    if info is None:
        raise MetadataError(f"no signed target {name!r}")
    return info
