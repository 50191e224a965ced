"""Atomic file writes and safe names.

A power cut at any instant must leave either the old file or the new one,
never a torn mix: write a temporary file in the same directory, fsync it,
``os.replace`` it over the target, then fsync the directory so the rename
itself is durable.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from homing.errors import ConfigError

__all__ = ["CURRENT", "atomic_copy", "atomic_write", "safe_name", "swap_in_file_set"]

_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def safe_name(name: str, what: str = "name") -> str:
    """Refuse a name that could escape its directory or confuse a shell.

    Names become file names and URI components, so only a conservative
    ASCII set is allowed; ``..``, ``.``, ``/`` and non-ASCII are refused.
    """
    if not _SAFE_NAME.fullmatch(name) or ".." in name:
        raise ConfigError(
            f"invalid {what} {name!r}: use 1-128 of A-Z a-z 0-9 . _ -, not starting with . _ -"
        )
    return name


def atomic_write(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` so that a crash leaves old or new, never half."""
    _replace(path, mode, lambda out: out.write(data))


# What atomic_copy holds in memory at once, whatever the file's size.
COPY_CHUNK = 1 << 20


def atomic_copy(source: Path, path: Path, mode: int = 0o644) -> None:
    """Replace ``path`` with a copy of ``source``, as atomically as ``atomic_write``, a
    chunk at a time: a firmware image larger than the device's memory is written whole."""

    def copy(out: BinaryIO) -> None:
        with source.open("rb") as src:
            while chunk := src.read(COPY_CHUNK):
                out.write(chunk)

    _replace(path, mode, copy)


def _replace(path: Path, mode: int, fill: Callable[[BinaryIO], object]) -> None:
    """A temporary file beside ``path``, filled, fsynced, renamed over it; the directory
    fsynced so the rename survives a power cut."""
    directory = path.parent
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as tmp:
            fill(tmp)
            tmp.flush()
            os.fsync(tmp.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


CURRENT = "current"


def swap_in_file_set(
    directory: Path, files: dict[str, bytes], modes: dict[str, int] | None = None
) -> Path | None:
    """Make ``directory/current`` hold exactly ``files``; the new set's path, or None when
    it held them already.

    For readers that take several files together (a CA bundle with its CRLs, a
    certificate with its key): the set is written into a new directory named
    by its digest and ``current`` (a symbolic link) is switched to it in one
    rename, so a reader sees the old set or the new one, never half of each.
    Older sets are removed.
    """
    import hashlib
    import shutil

    modes = modes or {}
    digest = hashlib.sha256(
        b"".join(name.encode() + b"\0" + data + b"\0" for name, data in sorted(files.items()))
    ).hexdigest()[:16]
    directory.mkdir(parents=True, exist_ok=True)
    current = directory / CURRENT
    generation = f"trust-{digest}"
    if current.is_symlink() and os.readlink(current) == generation:
        return None
    target = directory / generation
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(mode=0o755)
    for name, data in files.items():
        atomic_write(target / name, data, modes.get(name, 0o644))
    link = directory / f".{CURRENT}.new"
    link.unlink(missing_ok=True)
    link.symlink_to(generation)
    os.replace(link, current)  # one rename: readers see the old set or the new
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    for old in directory.glob("trust-*"):
        if old.name != generation:
            shutil.rmtree(old, ignore_errors=True)
    return current
