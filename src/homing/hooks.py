"""The command an operator or a device names to run after files it reads have changed.

Exports (the agent's trust for applications, a broker's certificates and
CRLs) are only useful if their reader takes them up: a hook reloads it.
``{trust_dir}`` in the command becomes the directory just written. A hook
that fails is logged and reported, never fatal to what wrote the files: they
are already in place, and the next change runs it again.
"""

from __future__ import annotations

import logging
import shlex
import subprocess
from pathlib import Path

from homing.errors import ConfigError

__all__ = ["HOOK_TIMEOUT", "check_hook", "run_hook"]

log = logging.getLogger(__name__)

HOOK_TIMEOUT = 60.0


def check_hook(hook: str) -> list[str]:
    """The hook's arguments; a clear error for one that cannot be parsed."""
    try:
        argv = shlex.split(hook)
    except ValueError as e:
        raise ConfigError(f"the hook {hook!r} cannot be parsed: {e}") from e
    if not argv:
        raise ConfigError("the hook is empty")
    return argv


def run_hook(hook: str, current: Path) -> bool:
    """Run ``hook`` for the files in ``current``; whether it succeeded (failures logged)."""
    argv = check_hook(hook)
    try:
        done = subprocess.run(  # noqa: S603 - the operator's or device's own configuration
            [arg.replace("{trust_dir}", str(current)) for arg in argv],
            capture_output=True,
            timeout=HOOK_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        log.warning("the hook %r failed: %s", hook, e)
        return False
    if done.returncode != 0:
        log.warning(
            "the hook %r exited %d: %s",
            hook,
            done.returncode,
            done.stderr.decode(errors="replace").strip()[-300:],
        )
        return False
    return True
