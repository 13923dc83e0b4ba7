"""The report's formatting and charts: inline SVG and HTML, no script, no network."""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass

TYPE_LABELS = {"electricity": "Electricity", "spend": "Purchased goods", "air_travel": "Air travel"}
TYPE_COLOURS = {"electricity": "#1b6ca8", "spend": "#e0a100", "air_travel": "#c0392b"}


def tonnes(kg: float) -> str:
    """kg CO2e shown as tonnes, two decimals, thousands separated."""
    return f"{kg / 1000.0:,.2f}"


def percent(share: float) -> str:
    return f"{100.0 * share:.1f}%"


def scope_label(scope: int, category: int | None) -> str:
    return f"Scope {scope}" + (f" · category {category}" if category is not None else "")


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


# --- Charts (inline SVG) -------------------------------------------------------------------


def _length(value: float, top: float, extent: float) -> float:
    """The length of a bar of ``value`` where ``top`` spans ``extent``: 0 for nothing, at least
    1 for a positive value (so that it stays visible), and the whole extent for a value beyond
    a double (a sum that overflowed), which would otherwise make the SVG's numbers NaN."""
    if not value > 0:
        return 0.0
    if math.isinf(value) or top <= 0:
        return extent
    return max(extent * value / top, 1.0)


def _top(values: Sequence[float]) -> float:
    """The largest finite value, the top of a chart's scale (0 when there is none)."""
    return max((v for v in values if math.isfinite(v)), default=0.0)


@dataclass(frozen=True)
class Bar:
    """One bar: its label, exact value, the text shown and its colour."""

    label: str
    value: float
    shown: str
    colour: str = "#1b6ca8"


def hbar_chart(name: str, bars: Sequence[Bar], width: int = 640) -> str:
    """Horizontal bars scaled to the largest value; each rect carries its exact value."""
    # Room for the longest label (about 7 px a character at 12 px), within reason.
    longest = max((len(b.label) for b in bars), default=10)
    row, label_w, value_w = 26, min(max(120, 7 * longest + 16), 380), 110
    height = row * max(len(bars), 1) + 10
    top = _top([b.value for b in bars])
    plot = width - label_w - value_w
    parts = [
        f'<svg data-chart="{_e(name)}" class="chart" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" xmlns="http://www.w3.org/2000/svg">'
    ]
    for i, b in enumerate(bars):
        y = 5 + i * row
        w = _length(b.value, top, plot)
        parts.append(
            f'<text x="{label_w - 8}" y="{y + 17}" text-anchor="end" class="label">'
            f"{_e(b.label)}</text>"
            f'<rect x="{label_w}" y="{y + 4}" width="{w:.2f}" height="{row - 8}" '
            f'fill="{b.colour}" data-label="{_e(b.label)}" data-value="{b.value!r}">'
            f"<title>{_e(b.label)}: {_e(b.shown)}</title></rect>"
            f'<text x="{label_w + w + 6:.2f}" y="{y + 17}" class="value">{_e(b.shown)}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def stacked_month_chart(
    name: str, months: Sequence[str], series: dict[str, dict[str, float]], width: int = 760
) -> str:
    """Vertical bars per month, stacked by activity type (kg CO2e), with a legend."""
    height, left, bottom, top_pad = 300, 70, 40, 30
    plot_h = height - bottom - top_pad
    totals = [sum(series.get(t, {}).get(m, 0.0) for t in series) for m in months]
    top = _top(totals)
    slot = (width - left - 10) / max(len(months), 1)
    bar_w = max(min(slot * 0.7, 40.0), 2.0)
    parts = [
        f'<svg data-chart="{_e(name)}" class="chart" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" xmlns="http://www.w3.org/2000/svg">',
        f'<line x1="{left}" y1="{height - bottom}" x2="{width - 5}" y2="{height - bottom}" '
        'stroke="#888"/>',
        f'<text x="{left - 6}" y="{top_pad + 4}" text-anchor="end" class="value">'
        f"{_e(tonnes(top))} t</text>",
    ]
    for i, month in enumerate(months):
        x = left + i * slot + (slot - bar_w) / 2
        y = float(height - bottom)
        for t in series:
            kg = series[t].get(month, 0.0)
            h = _length(kg, top, plot_h)
            if h == 0:
                continue
            y -= h
            parts.append(
                f'<rect x="{x:.2f}" y="{y:.2f}" width="{bar_w:.2f}" height="{h:.2f}" '
                f'fill="{TYPE_COLOURS.get(t, "#777")}" data-label="{_e(month)} {_e(t)}" '
                f'data-value="{kg!r}"><title>{_e(month)} · {_e(TYPE_LABELS.get(t, t))}: '
                f"{_e(tonnes(kg))} t</title></rect>"
            )
        if len(months) <= 16 or i % max(len(months) // 12, 1) == 0:
            parts.append(
                f'<text x="{x + bar_w / 2:.2f}" y="{height - bottom + 16}" text-anchor="middle" '
                f'class="tick">{_e(month)}</text>'
            )
    lx = left
    for t in series:
        parts.append(
            f'<rect x="{lx}" y="6" width="12" height="12" fill="{TYPE_COLOURS.get(t, "#777")}"/>'
            f'<text x="{lx + 16}" y="17" class="label">{_e(TYPE_LABELS.get(t, t))}</text>'
        )
        lx += 150
    parts.append("</svg>")
    return "".join(parts)


# --- Figures from the database -------------------------------------------------------------
