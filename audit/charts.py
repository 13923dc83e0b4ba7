"""The report's formatting and charts: inline SVG and HTML, no script, no network."""

from __future__ import annotations

import html
import math
from collections.abc import Iterable, Sequence
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


#: The units of a value axis, in kg: tonnes, as the rest of the report, or the first larger
#: one in which the top tick has at most four digits; kg for an axis under a tonne.
UNITS = (("t", 1e3), ("kt", 1e6), ("Mt", 1e9), ("Gt", 1e12))
#: Round steps between ticks, times a power of ten.
_STEPS = (1.0, 2.0, 2.5, 5.0, 10.0)


@dataclass(frozen=True)
class Scale:
    """A value axis: round ticks (kg) from 0 up to at least the largest value, in one unit."""

    ticks: tuple[float, ...]
    unit: str
    per_unit: float
    decimals: int

    @property
    def top(self) -> float:
        return self.ticks[-1]

    def label(self, kg: float) -> str:
        """A tick's value in the axis unit: ``12,000`` t, ``2.5`` kt, ``0.25`` t."""
        value = kg / self.per_unit
        return f"{value:,.{self.decimals}f}" if abs(value) < 1e15 else f"{value:.3g}"


def value_scale(largest: float, intervals: int = 6) -> Scale:
    """Ticks at 0 and every round step (1, 2, 2.5 or 5 times a power of ten) up to the first
    at or above ``largest`` kg, at most ``intervals`` steps; the unit is the first of ``UNITS``
    in which the top tick has at most four digits (kg under a tonne), the decimals as few as
    the step needs."""
    if not (math.isfinite(largest) and largest > 0):
        largest = 1e3  # no finite value: an axis of one tonne
    power = 10.0 ** math.floor(math.log10(largest / intervals))
    step = next(m * power for m in _STEPS if math.ceil(largest / (m * power)) <= intervals)
    count = math.ceil(largest / step)
    ticks = tuple(float(f"{i * step:.12g}") for i in range(count + 1))
    if not math.isfinite(ticks[-1]):  # beyond a double: 0 and the value itself
        ticks = (0.0, largest)
    unit, per_unit = (
        ("kg", 1.0)
        if ticks[-1] < 1e3
        else next(((u, k) for u, k in UNITS if ticks[-1] / k < 1e4 - 0.5), UNITS[-1])
    )
    shown = step / per_unit
    decimals = next((d for d in range(7) if abs(round(shown, d) - shown) < 1e-9 * shown), 6)
    return Scale(ticks, unit, per_unit, decimals)


def month_span(months: Iterable[str]) -> list[str]:
    """Every month (``YYYY-MM``) from the earliest of ``months`` to the latest, gaps included."""
    given = sorted(set(months))
    if not given:
        return []
    year, month = (int(p) for p in given[0].split("-"))
    last = tuple(int(p) for p in given[-1].split("-"))
    span = []
    while (year, month) <= last:
        span.append(f"{year:04d}-{month:02d}")
        year, month = (year + 1, 1) if month == 12 else (year, month + 1)
    return span


#: Month labels are 7 characters at 11 px: about 46 px wide, so at least this far apart.
_MONTH_LABEL_SPACING = 56.0
#: Label every Nth month, N one of these, counted back from the last month.
_MONTH_STRIDES = (1, 2, 3, 4, 6, 12, 24, 36, 60, 120)
#: Width of a character of an axis label (11 px DejaVu Sans digits are 7 px wide).
_TICK_CHAR_PX = 7.0


def month_labels(count: int, slot: float) -> list[int]:
    """The indices of the months labelled on an axis of ``count`` months ``slot`` px apart:
    every Nth (the smallest N that keeps labels apart), counted back from the last month, so
    that the last month always has its label."""
    stride = next(
        (s for s in _MONTH_STRIDES if s * slot >= _MONTH_LABEL_SPACING), _MONTH_STRIDES[-1]
    )
    return sorted(range(count - 1, -1, -stride))


def stacked_month_chart(
    name: str, months: Sequence[str], series: dict[str, dict[str, float]], width: int = 900
) -> str:
    """Vertical bars per month, stacked by activity type (kg CO2e), with a legend and a value
    axis of round ticks. ``months`` are every month of the axis (``month_span``)."""
    height, bottom, top_pad, right_pad = 320, 40, 48, 30
    plot_h = height - bottom - top_pad
    totals = [sum(series.get(t, {}).get(m, 0.0) for t in series) for m in months]
    scale = value_scale(_top(totals))
    labels = [scale.label(v) for v in scale.ticks]
    left = max(48, int(_TICK_CHAR_PX * max(len(s) for s in labels)) + 18)
    slot = (width - left - right_pad) / max(len(months), 1)
    bar_w = max(min(slot * 0.7, 40.0), 2.0)
    base = height - bottom
    parts = [
        f'<svg data-chart="{_e(name)}" class="chart" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" xmlns="http://www.w3.org/2000/svg">',
        f'<text x="4" y="{top_pad - 16}" class="tick axis-unit">{_e(scale.unit)} CO2e</text>',
    ]
    for value, label in zip(scale.ticks, labels, strict=True):
        y = base - plot_h * value / scale.top
        parts.append(
            f'<line x1="{left}" y1="{y:.2f}" x2="{width - right_pad + 5}" y2="{y:.2f}" '
            f'stroke="{"#888" if value == 0 else "#e4e4e4"}"/>'
            f'<text x="{left - 6}" y="{y + 4:.2f}" text-anchor="end" class="tick axis-value" '
            f'data-tick-kg="{value!r}">{_e(label)}</text>'
        )
    labelled = set(month_labels(len(months), slot))
    for i, month in enumerate(months):
        x = left + i * slot + (slot - bar_w) / 2
        y = float(base)
        for t in series:
            kg = series[t].get(month, 0.0)
            h = _length(kg, scale.top, plot_h)
            if h == 0:
                continue
            y -= h
            parts.append(
                f'<rect x="{x:.2f}" y="{y:.2f}" width="{bar_w:.2f}" height="{h:.2f}" '
                f'fill="{TYPE_COLOURS.get(t, "#777")}" data-label="{_e(month)} {_e(t)}" '
                f'data-value="{kg!r}"><title>{_e(month)} · {_e(TYPE_LABELS.get(t, t))}: '
                f"{_e(tonnes(kg))} t</title></rect>"
            )
        if i in labelled:
            centre = x + bar_w / 2
            parts.append(
                f'<line x1="{centre:.2f}" y1="{base}" x2="{centre:.2f}" y2="{base + 4}" '
                f'stroke="#888"/><text x="{centre:.2f}" y="{base + 17}" text-anchor="middle" '
                f'class="tick axis-month" data-month="{_e(month)}">{_e(month)}</text>'
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
