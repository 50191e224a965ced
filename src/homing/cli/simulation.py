"""The story and the numbers: the demo and the fleet simulator."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from homing.cli._base import (
    cli,
    out,
)
from homing.fleet import STRATEGY_NAMES

if TYPE_CHECKING:
    pass


@cli.command("demo")
def demo() -> None:
    """The story homing answers, on loopback in under a minute: nothing bricks."""
    from rich.table import Table

    from homing.fleet.demo import run_demo

    rows = run_demo(lambda line: out.print(f"- {line}", highlight=False, soft_wrap=True))
    table = Table(title="the fleet at the end")
    for column in rows[0]:
        table.add_column(column)
    for row in rows:
        table.add_row(*row.values())
    out.print(table)


@cli.command("simulate")
@click.option("--devices", type=click.IntRange(1, 10_000_000), help="Fleet size (default 100,000).")
@click.option("--years", type=click.FloatRange(0, 50, min_open=True), help="Simulated years.")
@click.option("--seed", type=int, help="Random seed: the same seed gives the same run.")
@click.option(
    "--strategy",
    "strategies",
    multiple=True,
    type=click.Choice(STRATEGY_NAMES),
    help="Strategy to compare (repeat; default: all).",
)
@click.option(
    "--scenario",
    "scenario_file",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Scenario TOML (docs/simulator.md); default: a realistic ten-year fleet.",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=Path("homing-simulation"),
    show_default=True,
    help="Where results.json and the plots go.",
)
def simulate_cmd(
    devices: int | None,
    years: float | None,
    seed: int | None,
    strategies: tuple[str, ...],
    scenario_file: Path | None,
    out_dir: Path,
) -> None:
    """Simulate a fleet over years and compare pinning strategies: who bricks, and why."""
    from rich import box
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    from homing.fleet.report import HEADERS, longest_exposures, table_rows, write_outputs
    from homing.fleet.scenario import Scenario
    from homing.fleet.scenario_file import load_scenario
    from homing.fleet.simulate import simulate

    scenario = load_scenario(scenario_file) if scenario_file else Scenario()
    overrides = {"devices": devices, "years": years, "seed": seed}
    scenario = scenario.with_fleet(**{k: v for k, v in overrides.items() if v is not None})
    step_days = scenario.fleet.step_days
    unit = "week" if step_days == 7 else ("day" if step_days == 1 else f"{step_days}-day step")
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TimeElapsedColumn(),
        transient=True,
    ) as progress:
        # The world's ceremonies come first (seconds): said so, not "week 0/1".
        task = progress.add_task("building the world (real ceremonies)", total=None)

        def advance(done: int, total: int) -> None:
            progress.update(
                task, completed=done, total=total, description=f"simulating {unit} {done}/{total}"
            )

        results = simulate(scenario, strategies or None, advance)
    written = write_outputs(results, out_dir)
    f = scenario.fleet
    table = Table(
        title=f"{scenario.name}: {f.devices:,} devices, {f.years:g} years, seed {f.seed}",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        padding=(0, 1),
        collapse_padding=True,
        pad_edge=False,
    )
    for number, header in enumerate(HEADERS):
        # Names and figures never break mid-word; 80 columns hold them (compact figures).
        table.add_column(header, no_wrap=True, justify="left" if number == 0 else "right")
    for row in table_rows(results):
        table.add_row(*row)
    out.print(table)
    lines = [f"{result.name}: {result.why}" for result in results.strategies]
    for result in results.strategies:
        # Where every device ended, so a design limit reads apart from a bug.
        states = ", ".join(
            f"{count:,} {state}" for state, count in result.end_states.items() if count
        )
        lines.append(f"{result.name} at the end: {states}")
    lines += [
        f"{result.name}: {result.firmware_installs:,} firmware updates through the agent, "
        f"{result.firmware_refused:,} refused, {result.firmware_behind:,} devices behind "
        "what they were offered"
        for result in results.strategies
        if result.takes_firmware
    ]
    longest = longest_exposures(results)
    if longest is not None:
        lines.append(longest)
    if results.compromise_day is not None:
        lines.append(
            f"stolen key on day {results.compromise_day:g}; homing's exposure is bounded by "
            f"the timestamp expiry ({results.timestamp_expiry_days:g} d)"
        )
    for line in lines:
        # Wrapped at the terminal's width, continuation lines indented.
        out.print(_hanging(line, out.width), highlight=False, markup=False)
    out.print(
        _hanging("wrote " + ", ".join(str(p) for p in written), out.width),
        highlight=False,
        markup=False,
    )


def _hanging(line: str, width: int) -> str:
    """``line`` wrapped to ``width`` at spaces, later lines indented two spaces."""
    import textwrap

    return textwrap.fill(
        line,
        width=max(40, width),
        subsequent_indent="  ",
        break_long_words=False,
        break_on_hyphens=False,
    )
