"""One change to a site at a time: the ceremony lock of a data directory.

Every ceremony reads the site (settings, keys, the newest metadata), signs,
and writes back. Two at once would each sign from what they read, and the
later write would undo the earlier one: an online-key rotation signing root
17 with root keys a concurrent root rotation had just replaced. So each
ceremony, and the server's own maintenance, holds this lock from its first
read to its last write.

It is an ``flock`` on ``run/ceremony.lock`` in the data directory, so it
holds between the operator's commands and the server's processes on one
host. Across hosts of a shared site, the PostgreSQL advisory lock of
``homing.site.shared.site_change`` serializes the changes as well. The
lock is re-entrant within a thread: a ceremony that calls another (a
server-CA promotion re-issues the server certificate) takes it once.
A caller that waits longer than ``timeout`` gets a ``CeremonyError`` that
names who holds it, rather than hanging.
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from homing.errors import CeremonyError

__all__ = ["DEFAULT_WAIT", "ceremony_lock"]

# Long enough for any ceremony on a slow machine; short enough that a stuck
# holder is reported, not waited on forever.
DEFAULT_WAIT = 300.0
# How often a waiting caller looks again (flock has no timed wait).
_POLL = 0.05

_held = threading.local()


def _depths() -> dict[Path, int]:
    if not hasattr(_held, "depths"):
        _held.depths = {}
    depths: dict[Path, int] = _held.depths
    return depths


@contextmanager
def ceremony_lock(root: Path, what: str, timeout: float = DEFAULT_WAIT) -> Iterator[None]:
    """Hold the site's ceremony lock for ``what``; re-entrant within a thread."""
    path = (root / "run" / "ceremony.lock").resolve()
    depths = _depths()
    if depths.get(path):
        depths[path] += 1
        try:
            yield
        finally:
            depths[path] -= 1
        return
    if not root.is_dir():
        # Not a data directory (yet): nothing to serialize, and nothing is made
        # here; the ceremony itself says what is missing.
        yield
        return
    path.parent.mkdir(exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip()
                    raise CeremonyError(
                        f"another ceremony is changing this site ({holder or 'unknown'}) "
                        f"and did not finish within {timeout:.0f} s; run this again when it has"
                    ) from None
                time.sleep(_POLL)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{what}, pid {os.getpid()}".encode(), 0)
        depths[path] = 1
        try:
            yield
        finally:
            depths[path] = 0
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
