"""The CLI's root group, its console and the helpers every command shares.

Every ``HomingError`` becomes one line on stderr and exit status 1; usage
errors exit 2 (click's convention). No traceback reaches the operator.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from homing.errors import HomingError

if TYPE_CHECKING:
    from homing.site import DataDir

F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_DATA = ".homing-data"


class _Console:
    """rich, imported on first use: the agent's commands run on small devices."""

    def __init__(self, stderr: bool = False) -> None:
        self._stderr = stderr
        self._console: Any = None

    def _rich(self) -> Any:
        if self._console is None:
            from rich.console import Console

            self._console = Console(stderr=self._stderr)
        return self._console

    def print(self, *args: Any, **kwargs: Any) -> None:
        self._rich().print(*args, **kwargs)

    @property
    def width(self) -> int:
        """The terminal's width in columns (80 when it is not a terminal)."""
        return int(self._rich().width)


out = _Console()
err = _Console(stderr=True)


def _now() -> datetime:
    return datetime.now(UTC)


def _fail(message: str, status: int = 1) -> None:
    from rich.markup import escape

    # Messages quote user input and TOML tables ("[fleet]"): never markup.
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise SystemExit(status)


def _data_option(f: F) -> F:
    return click.option(
        "--data",
        "data",
        type=click.Path(path_type=Path, file_okay=False),
        default=lambda: os.environ.get("HOMING_DATA", DEFAULT_DATA),
        show_default=f"$HOMING_DATA or {DEFAULT_DATA}",
        help="The operator's data directory.",
    )(f)


def _guard_options(what: str) -> Callable[[F], F]:
    """The ``--live-within-days``, ``--force`` and ``--reason`` of a guarded ceremony."""

    def decorate(f: F) -> F:
        f = click.option(
            "--reason", help=f"Why a forced {what} is worth stranding them (audited)."
        )(f)
        f = click.option(
            "--force", is_flag=True, help="Go ahead even if live devices would be stranded."
        )(f)
        return click.option(
            "--live-within-days",
            type=click.FloatRange(min=0, min_open=True),
            default=30,
            show_default=True,
            help="Devices seen this recently are live: the guard refuses to strand them.",
        )(f)

    return decorate


def _forced(force: bool, reason: str | None, what: str) -> str | None:
    """The reason a guarded ceremony is forced with, or None; one error line when misused."""
    if force and not (reason and reason.strip()):
        _fail(f"--force needs --reason: a forced {what} is audited with why")
    if reason is not None and not force:
        _fail("--reason is only for --force")
    return reason if force else None


def _ensure_passphrase(data: Path | None, *, required: bool = False) -> None:
    """Ask for the key passphrase on a terminal when it is needed and not in the environment."""
    from homing.pki.keystore import PASSPHRASE_ENV
    from homing.site import DataDir

    if os.environ.get(PASSPHRASE_ENV):
        return
    if not required and data is not None:
        dd = DataDir(data)
        required = dd.exists() and dd.settings().encrypted
    if required and sys.stdin.isatty():
        os.environ[PASSPHRASE_ENV] = click.prompt(
            "Key passphrase", hide_input=True, confirmation_prompt=data is None
        )


def _passphrase() -> bytes | None:
    """The key store passphrase, read here at the edge (environment or terminal prompt)."""
    from homing.pki.keystore import PASSPHRASE_ENV

    value = os.environ.get(PASSPHRASE_ENV)
    return value.encode("utf-8") if value else None


# Shared sites a command is changing: each holds the site-change lock until the
# command ends, then publishes what it changed (homing.site.shared).
_changing: list[tuple[DataDir, contextlib.ExitStack]] = []


def _site(data: Path, db_url: str | None = None, *, shared_change: bool = True) -> DataDir:
    """The data directory with what only the edge reads: the database URL and the passphrase.

    On a shared site (PostgreSQL holding a publication) the command works on
    today's published files and publishes its change when it succeeds,
    holding the site-change lock meanwhile, whichever host it runs on.
    """
    from homing.site import DataDir

    _ensure_passphrase(data)
    media = os.environ.get("HOMING_OFFLINE_KEYS")
    holder = os.environ.get("HOMING_HOLDER_PASSPHRASE")
    dd = DataDir(
        data,
        db_url or os.environ.get("HOMING_DB"),
        passphrase=_passphrase(),
        pkcs11_pin=os.environ.get("HOMING_PKCS11_PIN"),
        # The offline keys' media, mounted for a ceremony (never for `homing serve`).
        offline_media=Path(media) if media else None,
        holder_passphrase=holder.encode("utf-8") if holder else None,
    )
    if dd.exists():
        token = dd.settings().pkcs11
        if token:
            # securesystemslib's HSMSigner finds the PKCS#11 module through this variable.
            os.environ.setdefault("PYKCS11LIB", token["module"])
    if shared_change and dd.exists() and (dd.db_url or "").startswith(("postgres", "postgresql")):
        _begin_shared_change(dd)
    return dd


def _begin_shared_change(dd: DataDir) -> None:
    from homing.site import shared

    db = dd.database()
    if not shared.is_shared(db):
        return
    stack = contextlib.ExitStack()
    stack.enter_context(shared.site_change(db))
    try:
        shared.pull(dd, db, exact=True)
    except BaseException:
        stack.close()
        raise
    _changing.append((dd, stack))


def _end_shared_changes(succeeded: bool) -> None:
    """Publish what the command changed (only if it succeeded), then release the locks."""
    if not _changing:
        return  # nothing began a change: the site's layer need not load
    from homing.site import shared

    while _changing:
        dd, stack = _changing.pop()
        with stack:
            if succeeded and (generation := shared.publish(dd, _now(), _operator_actor())):
                err.print(f"published generation {generation} of the shared site", highlight=False)


def _paths(values: tuple[str, ...]) -> list[Path]:
    return [Path(v) for v in values]


@click.group()
@click.version_option(package_name="homing")
@click.option("-v", "--verbose", is_flag=True, help="Log more detail.")
def cli(verbose: bool) -> None:
    """homing: devices that always find their way home."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(levelname)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )


_db_option = click.option(
    "--db", "db_url", help="Database URL (default: SQLite in the data directory, or $HOMING_DB)."
)


def _operator_actor() -> str:
    import getpass

    return f"cli:{getpass.getuser()}"


def _guarded(entry: Callable[[], Any]) -> Callable[[], None]:
    @functools.wraps(entry)
    def run() -> None:
        try:
            entry()
        except HomingError as e:
            _fail(str(e))
        except KeyboardInterrupt:
            _fail("interrupted", 130)
        except OSError as e:
            _fail(f"{e.strerror or e}: {e.filename or ''}".rstrip(": "))
        except Exception as e:
            reason = _database_failure(e)
            if reason is None:
                raise
            _fail(reason)

    return run


def _database_failure(error: Exception) -> str | None:
    """One line for a database that refused (full disk, gone, read-only); None if not one."""
    from sqlalchemy.exc import SQLAlchemyError

    from homing.store.db import database_reason

    if not isinstance(error, SQLAlchemyError):
        return None
    return f"the database refused: {database_reason(error)}"


def _run_cli() -> None:
    """click without its own error handling, so usage errors are one line like the rest."""
    succeeded = False
    try:
        code = cli.main(standalone_mode=False)
        succeeded = not (isinstance(code, int) and code)
    except click.ClickException as e:
        _fail(e.format_message(), e.exit_code)
    except click.Abort:
        _fail("aborted", 1)
    finally:
        _end_shared_changes(succeeded)
    if isinstance(code, int) and code:
        raise SystemExit(code)


def main() -> None:
    """Console entry point."""
    _guarded(_run_cli)()
