"""What a simulation leaves behind: a table, results.json and PNG plots.

matplotlib is imported here only, with its file-only backend, so a run on a
headless machine (CI, a server) never looks for a display.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from homing.errors import ConfigError
from homing.fleet.clock import DAYS_PER_YEAR
from homing.fleet.simulate import Results, StrategyResult
from homing.fsutil import atomic_write

__all__ = ["table_rows", "write_outputs"]

HEADERS = (
    "strategy",
    "bricked",
    "by\nhand",
    "cut-off\ndays",
    "exposed\ndays",
    "caught\nup",
    "requests",
)


def compact(value: float) -> str:
    """A count in at most seven characters: 12,345, then 123.4 k, 12.3 M (fits 80 columns)."""
    if value < 100_000:
        return f"{value:,.0f}"
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if value >= size:
            return (
                f"{value / size:.1f} {unit}" if value / size < 100 else f"{value / size:.0f} {unit}"
            )
    return f"{value:,.0f}"


def _exposure(s: StrategyResult) -> str:
    """Device-days exposed to the stolen key (∞: for some, it never ends)."""
    if s.exposed_devices == 0:
        return "0"
    return compact(s.exposure_device_days) + ("∞" if math.isinf(s.exposure_max_days) else "")


def longest_exposures(results: Results) -> str | None:
    """One line: how long the longest exposure to the stolen key lasts, per strategy."""
    parts = [
        f"{s.name} " + ("never ends" if math.isinf(s.exposure_max_days) else
                        f"≤{s.exposure_max_days:g} d")
        for s in results.strategies
        if s.exposed_devices
    ]  # fmt: skip
    return "longest exposure to the stolen key: " + ", ".join(parts) if parts else None


def _catch_up(s: StrategyResult) -> str:
    """Devices that caught up by themselves (mean walk), or by hand after a median wait."""
    if s.caught_up:
        return f"{compact(s.caught_up)}, {s.catch_up_ms / s.caught_up:.0f} ms"
    if s.returned_days:
        ordered = sorted(s.returned_days)
        return f"{compact(len(ordered))} ~{ordered[len(ordered) // 2]:g}d"
    return "-"


def table_rows(results: Results) -> list[tuple[str, ...]]:
    """One row per strategy, in the order they ran (docs/simulator.md says what each means)."""
    return [
        (
            s.name,
            f"{s.bricked:,}",
            f"{s.manual_recoveries:,}",
            compact(sum(s.cut_off_days.values())),
            _exposure(s),
            _catch_up(s),
            compact(s.requests),
        )
        for s in results.strategies
    ]


def write_outputs(results: Results, out: Path) -> list[Path]:
    """Write results.json and the plots into ``out``; returns the files written."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot create output directory {out}: {e.strerror}") from e
    written = [out / "results.json"]
    atomic_write(written[0], json.dumps(results.to_json(), indent=2).encode() + b"\n")
    written += _plots(results, out)
    return written


def _plots(results: Results, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    years = [(t + 1) * results.step_days / DAYS_PER_YEAR for t in range(results.ticks)]
    fig, ax = plt.subplots(figsize=(11, 5.5), dpi=110)
    # Strategies that fail alike draw the same line: styles and colours keep each visible.
    # No strategy is grey: grey is the events' colour.
    styles = ["-", "--", "-.", ":"]
    tab10 = plt.get_cmap("tab10")
    palette = [tab10(k) for k in range(10) if k != 7]  # tab10's eighth is grey
    for i, s in enumerate(results.strategies):
        homing = s.name.startswith("homing")
        ax.plot(
            years,
            [100 * v for v in s.connected],
            label=s.name,
            color=palette[i % len(palette)],
            linewidth=3.0 if s.name == "homing" else 1.8,
            linestyle="-" if s.name == "homing" else styles[i % len(styles)],
            zorder=1 if homing else 2,
        )
    marked = False
    for tick, event in results.events:
        if "stolen" in event or "expires" in event or "emergency" in event:
            ax.axvline(
                tick * results.step_days / DAYS_PER_YEAR,
                color="0.55",
                linewidth=0.9,
                linestyle=(0, (1, 3)),
                zorder=0,
                label=None if marked else "a key stolen, a root expiring, an emergency",
            )
            marked = True
    ax.set_xlabel("years")
    ax.set_ylabel("deployed devices that can reach home (%)")
    ax.set_ylim(-2, 102)
    ax.set_title(f"{results.scenario.name}: {results.devices:,} devices, {results.years:g} years")
    # Outside the plot: inside, it covers whichever curve runs behind it.
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small", frameon=False)
    ax.grid(alpha=0.3)
    connected = out / "connected.png"
    fig.tight_layout()
    fig.savefig(connected)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(10, 4.8), dpi=110)
    names = [s.name for s in results.strategies]
    ax.bar(names, [s.bricked for s in results.strategies], label="bricked")
    top = ax.bar(
        names,
        [s.manual_recoveries for s in results.strategies],
        bottom=[s.bricked for s in results.strategies],
        label="manual recoveries",
    )
    # The figure on each bar: a strategy with none shows a 0, not an empty gap.
    ax.bar_label(
        top,
        labels=[f"{s.bricked + s.manual_recoveries:,}" for s in results.strategies],
        fontsize="small",
        padding=2,
    )
    tallest = max((s.bricked + s.manual_recoveries for s in results.strategies), default=0)
    ax.set_ylim(0, max(1, tallest) * 1.1)  # room for the tallest bar's figure
    ax.set_ylabel("devices")
    ax.yaxis.set_major_formatter(_thousands(plt))
    ax.set_title("devices bricked or recovered by hand")
    ax.tick_params(axis="x", labelrotation=20)
    for label in ax.get_xticklabels():
        label.set_horizontalalignment("right")
    ax.legend(fontsize="small")
    ax.grid(alpha=0.3, axis="y")
    bricked = out / "bricked.png"
    fig.tight_layout()
    fig.savefig(bricked)
    plt.close(fig)
    return [connected, bricked, _cut_off_plot(results, out, plt)]


def _cut_off_plot(results: Results, out: Path, plt: Any) -> Path:
    """Device-days each device class spent cut off, per strategy (one group of bars each)."""
    classes = list(results.strategies[0].cut_off_days) if results.strategies else []
    fig, ax = plt.subplots(figsize=(11, 5), dpi=110)
    width = 0.8 / max(1, len(classes))
    positions = range(len(results.strategies))
    for i, name in enumerate(classes):
        ax.bar(
            [p + i * width for p in positions],
            [s.cut_off_days.get(name, 0.0) for s in results.strategies],
            width,
            label=name,
        )
    ax.set_xticks([p + width * (len(classes) - 1) / 2 for p in positions])
    ax.set_xticklabels([s.name for s in results.strategies], rotation=20, ha="right")
    ax.set_ylabel("device-days cut off")
    ax.yaxis.set_major_formatter(_thousands(plt))
    ax.set_title("device-days spent cut off, by device class")
    ax.legend(fontsize="small", title="device class")
    ax.grid(alpha=0.3, axis="y")
    path = out / "cut-off-days.png"
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _thousands(plt: Any) -> Any:
    """Axis figures as people write them (1,200,000 or 1.2 M), never matplotlib's 1e8 offset."""
    from matplotlib.ticker import FuncFormatter

    def label(value: float, _position: int) -> str:
        if abs(value) >= 1_000_000:
            return f"{value / 1_000_000:g} M"
        return f"{value:,.0f}"

    return FuncFormatter(label)
