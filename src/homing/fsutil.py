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
from pathlib import Path

from homing.errors import ConfigError

__all__ = ["atomic_write", "safe_name"]

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
    directory = path.parent
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as tmp:
            tmp.write(data)
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
