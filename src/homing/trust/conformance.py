"""Generic TUF client operations, for `homing agent tuf-client` (the conformance protocol).

The same python-tuf Updater and the same fetcher the agent uses, without
homing's pin policy: initialise a metadata directory from a trusted root,
refresh, and download targets. Trusted metadata is kept under unversioned
names (``root.json``, ``timestamp.json``, ...) in the metadata directory.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from tuf.api import exceptions as tuf_errors
from tuf.api.metadata import Metadata
from tuf.ngclient import FetcherInterface, Updater, UpdaterConfig

from homing.errors import ConfigError, MetadataError, TransportError
from homing.fsutil import atomic_write

__all__ = ["download_targets", "init_metadata_dir", "refresh_metadata"]


def init_metadata_dir(metadata_dir: Path, root: bytes) -> None:
    try:
        Metadata.from_bytes(root)
    except Exception as e:
        raise MetadataError(f"the trusted root cannot be parsed: {e}") from e
    metadata_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(metadata_dir / "root.json", root)


def _updater(
    metadata_dir: Path,
    metadata_url: str,
    fetcher: FetcherInterface,
    target_dir: Path | None = None,
    target_url: str | None = None,
) -> Updater:
    if not (metadata_dir / "root.json").exists():
        raise ConfigError(f"{metadata_dir} has no trusted root.json: run init first")
    return Updater(
        str(metadata_dir),
        metadata_url,
        str(target_dir) if target_dir else None,
        target_url,
        fetcher=fetcher,
        config=UpdaterConfig(),
        bootstrap=None,
    )


def _translate(error: Exception) -> Exception:
    if isinstance(error, tuf_errors.DownloadError):
        return TransportError(str(error))
    return MetadataError(str(error))


def refresh_metadata(metadata_dir: Path, metadata_url: str, fetcher: FetcherInterface) -> None:
    try:
        _updater(metadata_dir, metadata_url, fetcher).refresh()
    except (tuf_errors.RepositoryError, tuf_errors.DownloadError, ValueError) as e:
        raise _translate(e) from e


def download_targets(
    metadata_dir: Path,
    metadata_url: str,
    names: Sequence[str],
    target_dir: Path,
    target_url: str,
    fetcher: FetcherInterface,
) -> list[Path]:
    """Download (or find already downloaded and valid) each named target."""
    target_dir.mkdir(parents=True, exist_ok=True)
    try:
        updater = _updater(metadata_dir, metadata_url, fetcher, target_dir, target_url)
        updater.refresh()
        paths = []
        for name in names:
            info = updater.get_targetinfo(name)
            if info is None:
                raise MetadataError(f"no target {name!r} in the trusted metadata")
            paths.append(Path(updater.find_cached_target(info) or updater.download_target(info)))
        return paths
    except (tuf_errors.RepositoryError, tuf_errors.DownloadError, ValueError) as e:
        raise _translate(e) from e
