"""The site's TLS session-ticket secret: ``DATA/keys/session-tickets.secret``.

Every server process derives its ticket keys from this one secret
(homing.server.session_tickets), so a device resumes on whichever worker
its connection reaches. It is made by the first worker that needs it and
replaced by ``homing rotate session-tickets``; a worker tells one file from
its replacement by inode and modification time, and takes a new one up at
its next reload check.
"""

from __future__ import annotations

import os
from pathlib import Path

from homing.errors import ConfigError
from homing.fsutil import atomic_write

__all__ = ["TICKET_SECRET_NAME", "read_secret", "replace_secret", "secret_mark"]

TICKET_SECRET_NAME = "session-tickets.secret"  # noqa: S105 (a file name)


def replace_secret(keys_dir: Path) -> None:
    """A new random ticket secret for the site, in place of the old one (atomically, 0600):
    every worker seals and opens with it from its next reload check, so every session
    sealed before ends (`homing rotate session-tickets`)."""
    atomic_write(keys_dir / TICKET_SECRET_NAME, os.urandom(32), mode=0o600)


def secret_mark(keys_dir: Path) -> tuple[int, int] | None:
    """What tells one secret file from its replacement (a new file: a new inode)."""
    try:
        found = (keys_dir / TICKET_SECRET_NAME).stat()
    except OSError:
        return None
    return (found.st_ino, found.st_mtime_ns)


def read_secret(keys_dir: Path) -> tuple[bytes, tuple[int, int]]:
    """The site's ticket secret, made by the first worker that needs it, and the mark of
    the file it was read from."""
    path = keys_dir / TICKET_SECRET_NAME
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    else:
        try:
            os.write(fd, os.urandom(32))
            os.fsync(fd)
        finally:
            os.close(fd)
    try:
        with path.open("rb") as f:
            found = os.fstat(f.fileno())
            secret = f.read(33)
    except OSError as e:
        raise ConfigError(f"cannot read the session ticket secret {path}: {e.strerror}") from e
    if len(secret) != 32:
        # Another worker is between creating and writing it: its bytes arrive next.
        raise ConfigError(f"the session ticket secret {path} is not 32 bytes")
    return secret, (found.st_ino, found.st_mtime_ns)
