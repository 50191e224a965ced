"""The shell blocks of README.md and docs/*.md, as tests/test_docs_run.py runs and checks them.

Every fenced block whose language is ``sh`` says, in its info string, how a
reader uses it, and so how a test holds it to the code:

- ``sh``: commands a reader types as written (their paths and hosts theirs):
  run in order, one bash script per document, on loopback in a temporary
  directory, against local stand-ins for what is outside (a running home,
  a manufacturer's CA, PostgreSQL, pebble for an ACME CA, a ``systemctl``,
  ``journalctl`` and ``useradd`` that record what they were asked, the host's
  ``/etc`` and ``/opt`` under the directory);
- ``sh synopsis``: a command's shape with placeholders (``DIR``,
  ``[--option]``, ``a|b``): every ``homing`` command it names must exist,
  with every option it names, and every ``make`` target must parse;
- ``sh run-by=tests/FILE.py``: run as written by that test, which reads the
  document itself (a broker, a proxy that stays in the foreground).
"""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import click

__all__ = ["ROOT", "Block", "Reader", "blocks", "documents", "reader_for", "synopsis_errors"]

ROOT = Path(__file__).resolve().parent.parent
KINDS = ("run", "synopsis", "run-by")
_FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```[ \t]*$", re.S | re.M)


@dataclass(frozen=True)
class Block:
    path: Path
    line: int
    language: str
    kind: str
    argument: str
    text: str

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def documents() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def blocks(path: Path) -> list[Block]:
    """Every fenced block of a Markdown file, with what its info string says."""
    text = path.read_text()
    found = []
    for match in _FENCE.finditer(text):
        info = match.group(1).strip().split()
        language = info[0] if info else ""
        rest = info[1:]
        kind, argument = "run", ""
        if rest:
            word = rest[0]
            kind, _, argument = word.partition("=")
        found.append(
            Block(
                path,
                text[: match.start()].count("\n") + 1,
                language,
                kind,
                argument,
                match.group(2),
            )
        )
    return found


def _commands(text: str) -> list[str]:
    """The block's command lines: continuations joined, comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", text)
    lines = []
    for line in joined.splitlines():
        line = line.split(" #", 1)[0].strip()
        if line and not line.startswith("#"):
            lines.append(line)
    return lines


def _resolve(group: click.Group, words: list[str]) -> list[tuple[click.Command, list[str]]]:
    """Every command a synopsis's words can name (``a|b`` alternatives), with its path."""
    found: list[tuple[click.Command, list[str]]] = []

    def walk(command: click.Command, path: list[str], rest: list[str]) -> None:
        if isinstance(command, click.Group) and rest:
            names = rest[0].split("|")
            matched = [n for n in names if n in command.commands]
            if matched:
                for name in matched:
                    walk(command.commands[name], [*path, name], rest[1:])
                return
        found.append((command, path))

    walk(group, [], words)
    return found


def synopsis_errors(block: Block, cli: click.Group) -> list[str]:
    """What a synopsis names that the CLI does not have."""
    errors = []
    for line in _commands(block.text):
        # Several commands may share a line ("homing revoke ID  homing status").
        for part in re.split(r"\s{2,}(?=(?:\.venv/bin/)?homing )", line):
            words = part.split()
            if not words:
                continue
            program = words[0].rsplit("/", 1)[-1]
            if program == "make":
                errors += [
                    f"{block.where}: make has no target {t!r}"
                    for t in words[1:]
                    if not t.startswith("-") and not _make_target(t)
                ]
                continue
            if program != "homing":
                continue
            commands = [w for w in words[1:] if re.fullmatch(r"[a-z][a-z0-9-]*(\|[a-z0-9-]+)*", w)]
            resolved = _resolve(cli, commands)
            for command, path in resolved:
                name = " ".join(["homing", *path])
                if isinstance(command, click.Group):
                    errors.append(
                        f"{block.where}: {name} has no command {part.split()[len(path) + 1 :][:1]}"
                    )
                    continue
                known = {o for p in command.params for o in (*p.opts, *p.secondary_opts)}
                named = re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", part)
                missing = [o for o in named if o not in known and o != "--help"]
                if missing and len(resolved) == 1:
                    errors.append(f"{block.where}: {name} has no {missing[0]}")
    return errors


def _make_target(target: str) -> bool:
    makefile = (ROOT / "Makefile").read_text()
    return re.search(rf"^{re.escape(target)}\s*:", makefile, re.M) is not None


@dataclass
class Reader:
    """A reader's shell: where it runs, its environment, how the doc's paths map here."""

    work: Path
    env: dict[str, str]
    # (pattern, replacement) on each block's text; ``{n}`` is the block's number.
    paths: list[tuple[str, str]] = field(default_factory=list)
    # A command to run before / after each block that contains the key (a directory to
    # be in, waiting on what the block started).
    before: dict[str, str] = field(default_factory=dict)
    after: dict[str, str] = field(default_factory=dict)

    def run(self, name: str, run_by: str = "") -> subprocess.CompletedProcess[str]:
        """Every runnable block of ``name`` (or those ``run_by`` that test), in order, as one
        script; fails naming the block. A command whose comment says it is refused
        (``# refused while ...``) must be refused."""
        doc = ROOT / name if name == "README.md" else ROOT / "docs" / name
        wanted = ("run-by", run_by) if run_by else ("run", "")
        runnable = [b for b in blocks(doc) if b.language == "sh" and (b.kind, b.argument) == wanted]
        assert runnable, f"{name} has no runnable block"
        lines = ["set -eo pipefail", "trap 'kill $(jobs -p) 2>/dev/null || true' EXIT"]
        for n, block in enumerate(runnable):
            text = block.text
            for pattern, replacement in self.paths:
                text = re.sub(pattern, replacement.replace("{n}", str(n)), text)
            text = re.sub(
                r"^(\S.*?)\s+# refused (?:while|if|when|unless)\b.*$",
                r"if \1; then echo 'documented as refused, but it ran' >&2; exit 1; fi",
                text,
                flags=re.M,
            )
            lines += [then for key, then in self.before.items() if key in block.text]
            lines += [f"echo '### {block.where}' >&2", text]
            lines += [then for key, then in self.after.items() if key in block.text]
        result = subprocess.run(
            ["bash", "-c", "\n".join(lines)],
            cwd=self.work,
            env=self.env,
            stdin=subprocess.DEVNULL,  # a command that would ask a question gets no answer
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
        if result.returncode != 0:
            marks = [line for line in result.stderr.splitlines() if line.startswith("### ")]
            where = marks[-1][4:] if marks else name
            tail = f"{result.stderr[-3000:]}\n{result.stdout[-2000:]}"
            raise AssertionError(f"{where}: exit {result.returncode}\n{tail}")
        return result


def reader_for(work: Path, site: Path, **extra: str) -> Reader:
    bin_dir = work / "bin"
    bin_dir.mkdir(exist_ok=True)
    # The host's service manager, its journal and its users, as stand-ins that record
    # what they were asked.
    for tool in ("systemctl", "journalctl", "useradd"):
        shim = bin_dir / tool
        shim.write_text(f'#!/bin/sh\necho "{tool} $*" >> {work}/{tool}.log\n')
        shim.chmod(shim.stat().st_mode | stat.S_IXUSR)
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOMING_")}
    env.update(
        PATH=f"{bin_dir}:{Path(sys.executable).parent}:{os.environ['PATH']}",
        HOME=str(work),
        WORK=str(work),
        SITE=str(site),
        HOMING_DATA=str(site),
        **extra,
    )
    return Reader(
        work,
        env,
        paths=[
            (r"/srv/homing", "$SITE"),
            (r"\bNEW_DIR\b", "$WORK/restored"),
            (r"\bDIR\b", "$SITE"),
            (r"/var/lib/homing-agent", "$WORK/agent"),
            (r"\bSTATE\b", "$WORK/agent"),
            (r"/run/homing-trust", "$WORK/trust"),
        ],
    )
