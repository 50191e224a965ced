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
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

from homing.errors import ConfigError, TrustError

__all__ = [
    "MAX_BUNDLE_BYTES",
    "bundle_images",
    "bundle_valid_until",
    "extracted",
    "write_bundle",
]

MANIFEST = "bundle.json"

MAX_BUNDLE_BYTES = 2 * 1024**3
MAX_MEMBERS = 100_000


def write_bundle(
    repository: Path,
    out: Path,
    images: list[str] | None = None,
    *,
    metadata: Mapping[str, bytes] | None = None,
    valid_until: datetime | None = None,
) -> int:
    """Write metadata/ and targets/ of ``repository`` to the tar file ``out``.

    ``images`` names firmware targets a device should install from the bundle;
    ``metadata`` holds files that replace or join the repository's metadata
    (the bundle's own long-lived snapshot and timestamp). ``valid_until`` is
    written to the manifest so an expired bundle is named as such; the
    signed timestamp is what enforces it.
    """
    if not (repository / "metadata").is_dir():
        raise ConfigError(f"no repository at {repository}")
    extra = dict(metadata or {})
    tmp = out.with_name(f".{out.name}.tmp")
    count = 0
    with tarfile.open(tmp, "w") as tar:
        for top in ("metadata", "targets"):
            for path in sorted((repository / top).rglob("*")):
                if path.is_file() and not (top == "metadata" and path.name in extra):
                    tar.add(path, arcname=str(path.relative_to(repository)), recursive=False)
                    count += 1
        manifest: dict[str, object] = {"images": images or []}
        if valid_until is not None:
            manifest["valid_until"] = valid_until.isoformat()
        extra[MANIFEST] = json.dumps(manifest).encode()
        for name, data in sorted(extra.items()):
            info = tarfile.TarInfo(f"metadata/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
            count += 1
    tmp.replace(out)
    return count - 1


def bundle_valid_until(directory: Path) -> datetime | None:
    """The validity an extracted bundle claims (unsigned: for messages only)."""
    try:
        doc = json.loads((directory / "metadata" / MANIFEST).read_bytes())
        return datetime.fromisoformat(doc["valid_until"])
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        return None


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
        except tarfile.ReadError as e:
            raise TrustError(
                "this is not a recovery bundle: not a tar archive (`homing recovery-bundle` "
                "makes one)"
            ) from e
        except (tarfile.TarError, OSError) as e:
            reason = (str(e).splitlines() or [type(e).__name__])[0]
            raise TrustError(f"the recovery bundle cannot be read: {reason}") from e
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def bundle_images(directory: Path) -> list[str]:
    """The firmware targets an extracted bundle asks to install (unsigned hint only)."""
    try:
        doc = json.loads((directory / "metadata" / MANIFEST).read_bytes())
    except (FileNotFoundError, ValueError):
        return []
    images = doc.get("images") if isinstance(doc, dict) else None
    return [i for i in images if isinstance(i, str)] if isinstance(images, list) else []
