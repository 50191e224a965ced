"""The database as the server sees it: up, or down since when, said once each way.

A home server must degrade when its database goes away, not cascade: TUF
metadata and targets are files and keep being served (they authenticate
themselves), while whatever needs the database answers ``503`` with a
``Retry-After`` spread over a window, so a fleet does not return in step.
The log says once that the database is unreachable and once that it is
back, instead of a traceback per request.
"""

from __future__ import annotations

import logging
import random
import threading

from homing.store.db import database_reason

__all__ = ["RETRY_AFTER", "DatabaseAvailability"]

log = logging.getLogger("homing.server")

# Seconds a refused client waits: spread over this window.
RETRY_AFTER = (5, 30)


class DatabaseAvailability:
    """Whether the database answered last time, and the transitions logged once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._down = False

    @property
    def down(self) -> bool:
        return self._down

    def failed(self, error: Exception) -> str:
        """Note a failure; returns the reason (a full disk says so). Logs only the first."""
        reason = database_reason(error)
        with self._lock:
            first, self._down = not self._down, True
        if first:
            log.warning(
                "the database is unreachable (%s): serving metadata from disk, "
                "answering 503 to whatever needs it",
                reason,
            )
        return reason

    def answered(self) -> None:
        """Note the database answered; logs the recovery once."""
        if not self._down:
            return
        with self._lock:
            was, self._down = self._down, False
        if was:
            log.warning("the database answers again")

    @staticmethod
    def retry_after() -> str:
        return str(random.randint(*RETRY_AFTER))  # noqa: S311 - jitter, not a secret
