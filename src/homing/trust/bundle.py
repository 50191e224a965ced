"""Offline recovery bundles: the repository's metadata chain and targets in one tar file.

A bundle needs no trust of its own: the device verifies what is inside with
the TUF workflow, exactly as if it came from the server.
"""

from __future__ import annotations

import io
import json
import shutil
import tarfile
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from homing.errors import ConfigError, TrustError

__all__ = ["MAX_BUNDLE_BYTES", "bundle_images", "extracted", "write_bundle"]

MAX_BUNDLE_BYTES = 2 * 1024**3
MAX_MEMBERS = 100_000


def write_bundle(repository: Path, out: Path, images: list[str] | None = None) -> int:
    """Write metadata/ and targets/ of ``repository`` to the tar file ``out``.

    ``images`` names firmware targets a device should install from the bundle.
    """
    if not (repository / "metadata").is_dir():
        raise ConfigError(f"no repository at {repository}")
    tmp = out.with_name(f".{out.name}.tmp")
    count = 0
    with tarfile.open(tmp, "w") as tar:
        for top in ("metadata", "targets"):
            for path in sorted((repository / top).rglob("*")):
                if path.is_file():
                    tar.add(path, arcname=str(path.relative_to(repository)), recursive=False)
                    count += 1
        manifest = json.dumps({"images": images or []}).encode()
        info = tarfile.TarInfo("metadata/bundle.json")
        info.size = len(manifest)
        tar.addfile(info, io.BytesIO(manifest))
    tmp.replace(out)
    return count


@contextmanager
def extracted(bundle: Path) -> Iterator[Path]:
    """Extract a bundle into a temporary directory, refusing anything but plain files."""
    if bundle.stat().st_size > MAX_BUNDLE_BYTES:
        raise TrustError("the recovery bundle is larger than the limit")
    directory = Path(tempfile.mkdtemp(prefix="homing-bundle-"))
    try:
        try:
            with tarfile.open(bundle, "r") as tar:
                members = tar.getmembers()
                if len(members) > MAX_MEMBERS:
                    raise TrustError("the recovery bundle has too many files")
                for member in members:
                    parts = Path(member.name).parts
                    if (
                        not member.isfile()
                        or member.name.startswith("/")
                        or ".." in parts
                        or parts[0] not in ("metadata", "targets")
                    ):
                        raise TrustError(
                            f"the recovery bundle holds an unsafe entry {member.name!r}"
                        )
                tar.extractall(directory, filter="data")
        except (tarfile.TarError, OSError) as e:
            raise TrustError(f"the recovery bundle cannot be read: {e}") from e
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def bundle_images(directory: Path) -> list[str]:
    """The firmware targets an extracted bundle asks to install (unsigned hint only)."""
    try:
        doc = json.loads((directory / "metadata" / "bundle.json").read_bytes())
    except (FileNotFoundError, ValueError):
        return []
    images = doc.get("images") if isinstance(doc, dict) else None
    return [i for i in images if isinstance(i, str)] if isinstance(images, list) else []
