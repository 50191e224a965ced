"""SVG charts for the fleet view, drawn on the server: no script, no build step.

Every label is XML-escaped here; the templates mark the result safe.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from xml.sax.saxutils import escape, quoteattr

from markupsafe import Markup

__all__ = ["bar_chart", "timeline_chart"]

_BAR_HEIGHT = 22
_LABEL_WIDTH = 190
_WIDTH = 560


def bar_chart(title: str, items: Sequence[tuple[str, int]]) -> Markup:
    """Horizontal bars, one per (label, count), scaled to the largest count."""
    height = max(1, len(items)) * _BAR_HEIGHT + 30
    top = max((n for _, n in items), default=0) or 1
    span = _WIDTH - _LABEL_WIDTH - 60
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" role="img" class="chart" '
        f'width="{_WIDTH}" height="{height}" viewBox="0 0 {_WIDTH} {height}">',
        f"<title>{escape(title)}</title>",
        f'<text x="0" y="14" class="chart-title">{escape(title)}</text>',
    ]
    if not items:
        parts.append('<text x="0" y="40" class="chart-empty">no devices yet</text>')
    for i, (label, count) in enumerate(items):
        y = 24 + i * _BAR_HEIGHT
        width = round(span * count / top)
        attr = quoteattr(label)
        parts.append(
            f'<g class="bar" data-label={attr} data-count="{count}">'
            f'<text x="0" y="{y + 14}">{escape(label)}</text>'
            f'<rect x="{_LABEL_WIDTH}" y="{y + 2}" width="{width}" height="{_BAR_HEIGHT - 6}"/>'
            f'<text x="{_LABEL_WIDTH + width + 6}" y="{y + 14}">{count}</text></g>'
        )
    parts.append("</svg>")
    return Markup("".join(parts))  # noqa: S704 - every piece above is escaped


def timeline_chart(now: datetime, items: Sequence[tuple[str, datetime, bool]]) -> Markup:
    """Each (name, expires, warned) as a bar from now to its expiry on a log-like scale."""
    height = max(1, len(items)) * _BAR_HEIGHT + 30
    span = _WIDTH - _LABEL_WIDTH - 110
    days = [max((e - now).total_seconds() / 86400, 0.0) for _, e, _ in items]
    # Square-root scale: an hour-long timestamp and a 20-year root both show.
    top = max(days, default=1.0) ** 0.5 or 1.0
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" role="img" class="chart" '
        f'width="{_WIDTH}" height="{height}" viewBox="0 0 {_WIDTH} {height}">',
        "<title>expiry timeline</title>",
        '<text x="0" y="14" class="chart-title">time left (square-root scale)</text>',
    ]
    for i, ((name, _, warned), left) in enumerate(zip(items, days, strict=True)):
        y = 24 + i * _BAR_HEIGHT
        width = max(2, round(span * left**0.5 / top))
        css = "bar warn" if warned else "bar"
        shown = f"{left:.1f} d" if left < 10 else f"{left:.0f} d"
        parts.append(
            f'<g class="{css}"><text x="0" y="{y + 14}">{escape(name)}</text>'
            f'<rect x="{_LABEL_WIDTH}" y="{y + 2}" width="{width}" height="{_BAR_HEIGHT - 6}"/>'
            f'<text x="{_LABEL_WIDTH + width + 6}" y="{y + 14}">{shown}</text></g>'
        )
    parts.append("</svg>")
    return Markup("".join(parts))  # noqa: S704 - every piece above is escaped
