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
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    from homing.fleet.report import HEADERS, table_rows, write_outputs
    from homing.fleet.scenario import Scenario, load_scenario
    from homing.fleet.simulate import simulate

    scenario = load_scenario(scenario_file) if scenario_file else Scenario()
    overrides = {"devices": devices, "years": years, "seed": seed}
    scenario = scenario.with_fleet(**{k: v for k, v in overrides.items() if v is not None})
    with Progress(
        TextColumn("simulating"),
        BarColumn(),
        TextColumn("week {task.completed:.0f}/{task.total:.0f}"),
        TimeElapsedColumn(),
        transient=True,
    ) as progress:
        task = progress.add_task("weeks", total=1)

        def advance(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        results = simulate(scenario, strategies or None, advance)
    written = write_outputs(results, out_dir)
    f = scenario.fleet
    table = Table(
        title=f"{scenario.name}: {f.devices:,} devices, {f.years:g} years, seed {f.seed}",
        title_justify="left",
    )
    for header in HEADERS:
        table.add_column(header, overflow="fold")
    for row in table_rows(results):
        table.add_row(*row)
    out.print(table)
    for result in results.strategies:
        out.print(f"{result.name}: {result.why}", highlight=False, soft_wrap=True, markup=False)
    for result in results.strategies:
        # Where every device ended, so a design limit reads apart from a bug.
        states = ", ".join(
            f"{count:,} {state}" for state, count in result.end_states.items() if count
        )
        out.print(
            f"{result.name} at the end: {states}", highlight=False, soft_wrap=True, markup=False
        )
    for result in results.strategies:
        if result.takes_firmware:
            out.print(
                f"{result.name}: {result.firmware_installs:,} firmware updates through the agent, "
                f"{result.firmware_refused:,} refused, {result.firmware_behind:,} devices behind "
                "what they were offered",
                highlight=False,
                soft_wrap=True,
                markup=False,
            )
    if results.compromise_day is not None:
        out.print(
            f"stolen key on day {results.compromise_day:g}; homing's exposure is bounded by "
            f"the timestamp expiry ({results.timestamp_expiry_days:g} d)",
            highlight=False,
        )
    out.print("wrote " + ", ".join(str(p) for p in written), highlight=False, soft_wrap=True)
