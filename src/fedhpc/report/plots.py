"""Hand-written inline SVG charts for the run report: line, grouped bar and Gantt.

Why not matplotlib: the report must be one self-contained file that any browser
opens, the charts are simple, and a plotting stack is a heavy dependency for a
server that otherwise needs none. Each function returns an ``<svg>`` string with
no scripts and no external references; hovering a mark shows its value through
an SVG ``<title>``. Text takes its font from the page's CSS.

Every function copes with empty input (an empty frame with a note) and with a
single value (the axis is padded around it), so a one-round or failed run draws.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from html import escape

# Okabe–Ito, readable by colour-blind readers; facilities take these in order.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000")
GRID = "#e5e7eb"
AXIS = "#6b7280"


def color_for(index: int) -> str:
    return PALETTE[index % len(PALETTE)]


def nice_ticks(lo: float, hi: float, count: int = 5) -> tuple[float, float, list[float]]:
    """A rounded domain covering [lo, hi] and the ticks in it, at 1/2/2.5/5 × 10^k steps."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        lo, hi = 0.0, 1.0
    if hi < lo:
        lo, hi = hi, lo
    if hi == lo:
        pad = abs(lo) * 0.1 or 1.0
        lo, hi = lo - pad, hi + pad
    raw = (hi - lo) / max(count, 1)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    start = math.floor(lo / step + 1e-9) * step
    stop = math.ceil(hi / step - 1e-9) * step
    digits = max(0, 12 - math.floor(math.log10(step)))  # drop float noise such as 0.6000000000000001
    ticks = [round(start + i * step, digits) for i in range(int(round((stop - start) / step)) + 1)]
    return ticks[0], ticks[-1], ticks


def format_tick(value: float, ticks: Sequence[float]) -> str:
    """`value` with as many decimals as the tick spacing needs."""
    step = abs(ticks[1] - ticks[0]) if len(ticks) > 1 else 1.0
    decimals = next((d for d in range(8) if abs(round(step, d) - step) <= step * 1e-6), 8)
    return f"{value:.{decimals}f}"


def _num(value: float) -> str:
    return f"{value:.1f}"


def _empty(width: int, height: int, note: str) -> str:
    return (
        f'<svg class="chart" viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img">'
        f'<rect x="0.5" y="0.5" width="{width - 1}" height="{height - 1}" fill="#fafafa" stroke="{GRID}"/>'
        f'<text x="{width / 2}" y="{height / 2}" text-anchor="middle" fill="{AXIS}">{escape(note)}</text></svg>'
    )


@dataclass
class Series:
    """One line: `points` are (x, y); a None or non-finite y breaks the line there."""

    name: str
    color: str
    points: list[tuple[float, float | None]]
    markers: bool = True
    dashed: bool = False
    stroke_width: float = 2.0
    labels: list[str] = field(default_factory=list)  # hover text per point; default "name: y"
    intervals: list[tuple[float, float] | None] = field(default_factory=list)  # error bar per point, e.g. a 95% CI


@dataclass
class Frame:
    """Maps data to pixels inside the plot area of a chart."""

    width: int
    height: int
    x_lo: float
    x_hi: float
    y_lo: float
    y_hi: float
    left: int = 56
    right: int = 16
    top: int = 14
    bottom: int = 34

    def x(self, value: float) -> float:
        span = (self.x_hi - self.x_lo) or 1.0
        return self.left + (value - self.x_lo) / span * (self.width - self.left - self.right)

    def y(self, value: float) -> float:
        span = (self.y_hi - self.y_lo) or 1.0
        return self.height - self.bottom - (value - self.y_lo) / span * (self.height - self.top - self.bottom)


def _y_axis(frame: Frame, ticks: list[float], fmt: Callable[[float], str], label: str) -> list[str]:
    parts = []
    for tick in ticks:
        y = _num(frame.y(tick))
        parts.append(
            f'<line x1="{frame.left}" x2="{frame.width - frame.right}" y1="{y}" y2="{y}" stroke="{GRID}"/>'
            f'<text x="{frame.left - 6}" y="{y}" dy="0.32em" text-anchor="end" class="tick">{escape(fmt(tick))}</text>'
        )
    if label:
        mid = (frame.top + frame.height - frame.bottom) / 2
        parts.append(
            f'<text transform="translate(12,{_num(mid)}) rotate(-90)" text-anchor="middle" class="axis-label">'
            f"{escape(label)}</text>"
        )
    return parts


def _x_axis(frame: Frame, ticks: Sequence[tuple[float, str]], label: str) -> list[str]:
    base = frame.height - frame.bottom
    parts = [f'<line x1="{frame.left}" x2="{frame.width - frame.right}" y1="{base}" y2="{base}" stroke="{AXIS}"/>']
    last_right = -math.inf
    for value, text in ticks:
        x = frame.x(value)
        parts.append(f'<line x1="{_num(x)}" x2="{_num(x)}" y1="{base}" y2="{base + 4}" stroke="{AXIS}"/>')
        half = 3.3 * len(text)  # about half the label's width at 11px
        if x - half >= last_right + 8:  # crowded axis (many rounds): skip labels that would overlap
            last_right = x + half
            parts.append(f'<text x="{_num(x)}" y="{base + 16}" text-anchor="middle" class="tick">{escape(text)}</text>')
    if label:
        parts.append(
            f'<text x="{_num((frame.left + frame.width - frame.right) / 2)}" y="{frame.height - 2}" '
            f'text-anchor="middle" class="axis-label">{escape(label)}</text>'
        )
    return parts


def line_chart(
    series: Sequence[Series],
    *,
    x_ticks: Sequence[tuple[float, str]],
    x_domain: tuple[float, float] | None = None,
    x_label: str = "",
    y_label: str = "",
    separators: Sequence[float] = (),
    width: int = 520,
    height: int = 260,
    y_format: Callable[[float], str] | None = None,
    empty_note: str = "no data",
) -> str:
    """Lines with optional markers; `x_ticks` are (value, label); `separators` are faint vertical rules."""
    ys = [y for s in series for _, y in s.points if y is not None and math.isfinite(y)]
    ys += [bound for s in series for interval in s.intervals if interval is not None for bound in interval
           if math.isfinite(bound)]
    xs = [x for s in series for x, _ in s.points] + [value for value, _ in x_ticks]
    if not ys:
        return _empty(width, height, empty_note)
    y_lo, y_hi, y_ticks = nice_ticks(min(ys), max(ys))
    x_lo, x_hi = x_domain or (min(xs), max(xs))
    if x_lo == x_hi:
        x_lo, x_hi = x_lo - 0.5, x_hi + 0.5
    frame = Frame(width, height, x_lo, x_hi, y_lo, y_hi)
    fmt = y_format or (lambda v: format_tick(v, y_ticks))
    parts = [f'<svg class="chart" viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img">']
    parts += _y_axis(frame, y_ticks, fmt, y_label)
    for value in separators:
        x = _num(frame.x(value))
        parts.append(
            f'<line x1="{x}" x2="{x}" y1="{frame.top}" y2="{height - frame.bottom}" stroke="#d1d5db" '
            'stroke-dasharray="3 3"/>'
        )
    parts += _x_axis(frame, x_ticks, x_label)
    for s in series:
        dash = ' stroke-dasharray="6 4"' if s.dashed else ""
        for run in _unbroken(s.points):
            if len(run) > 1:
                path = " ".join(f"{_num(frame.x(x))},{_num(frame.y(y))}" for x, y in run)
                parts.append(
                    f'<polyline points="{path}" fill="none" stroke="{s.color}" stroke-width="{s.stroke_width}" '
                    f'stroke-linejoin="round" stroke-linecap="round"{dash}/>'
                )
        for (x, _), interval in zip(s.points, s.intervals):
            if interval is not None and all(math.isfinite(b) for b in interval):
                cx, lo, hi = _num(frame.x(x)), _num(frame.y(interval[0])), _num(frame.y(interval[1]))
                parts.append(f'<line x1="{cx}" x2="{cx}" y1="{lo}" y2="{hi}" stroke="{s.color}" stroke-width="1.2"/>')
        if s.markers or len(s.points) == 1:
            for index, (x, y) in enumerate(s.points):
                if y is None or not math.isfinite(y):
                    continue
                label = s.labels[index] if index < len(s.labels) else f"{s.name}: {fmt_value(y)}"
                parts.append(
                    f'<circle cx="{_num(frame.x(x))}" cy="{_num(frame.y(y))}" r="3.5" fill="{s.color}" '
                    f'stroke="#fff" stroke-width="1"><title>{escape(label)}</title></circle>'
                )
    parts.append("</svg>")
    return "".join(parts)


def _unbroken(points: Sequence[tuple[float, float | None]]) -> list[list[tuple[float, float]]]:
    runs: list[list[tuple[float, float]]] = [[]]
    for x, y in points:
        if y is None or not math.isfinite(y):
            runs.append([])
        else:
            runs[-1].append((x, y))
    return [run for run in runs if run]


def fmt_value(value: float | None) -> str:
    """A measured value at four significant digits; None as an em dash."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    return f"{value:.4g}"


@dataclass
class BarGroup:
    """One colour of bars: `values[i]` belongs to category i."""

    name: str
    color: str
    values: list[float]


def bar_chart(
    categories: Sequence[str],
    groups: Sequence[BarGroup],
    *,
    y_format: Callable[[float], str],
    x_label: str = "",
    width: int = 520,
    height: int = 260,
    empty_note: str = "no data",
) -> str:
    """Grouped bars from zero, one cluster per category."""
    values = [v for g in groups for v in g.values]
    if not categories or not values or max(values) <= 0:
        return _empty(width, height, empty_note)
    _, y_hi, y_ticks = nice_ticks(0.0, max(values))
    frame = Frame(width, height, 0.0, float(len(categories)), 0.0, y_hi, left=64)
    parts = [f'<svg class="chart" viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img">']
    parts += _y_axis(frame, y_ticks, y_format, "")
    parts += _x_axis(frame, [(i + 0.5, c) for i, c in enumerate(categories)], x_label)
    slot = frame.x(1.0) - frame.x(0.0)
    bar = min(28.0, slot * 0.8 / max(len(groups), 1))
    for i, category in enumerate(categories):
        left = frame.x(i + 0.5) - bar * len(groups) / 2
        for k, group in enumerate(groups):
            value = group.values[i] if i < len(group.values) else 0.0
            if value <= 0:
                continue
            top = frame.y(value)
            parts.append(
                f'<rect x="{_num(left + k * bar)}" y="{_num(top)}" width="{_num(bar - 1)}" '
                f'height="{_num(frame.y(0.0) - top)}" fill="{group.color}">'
                f"<title>{escape(f'{category}, {group.name}: {y_format(value)}')}</title></rect>"
            )
    parts.append("</svg>")
    return "".join(parts)


@dataclass
class Bar:
    """One span on a Gantt lane, in seconds from the chart's origin."""

    lane: str
    start: float
    seconds: float
    color: str
    title: str
    hatched: bool = False


@dataclass
class Marker:
    """A labelled vertical rule on a Gantt chart: a round's end (grey), or where a server stopped or resumed."""

    at: float
    label: str
    color: str = AXIS
    title: str = ""  # hover text; default the label
    anchor: str = "middle"  # a coloured marker's label sits at the foot of the lanes: "end" left of the rule


def gantt(
    lanes: Sequence[str],
    bars: Sequence[Bar],
    *,
    markers: Sequence[Marker] = (),
    x_format: Callable[[float], str],
    width: int = 1060,
    lane_height: int = 24,
    empty_note: str = "no timed events",
) -> str:
    """Lanes top to bottom, bars by start and length; `markers` are labelled vertical rules."""
    if not lanes or not bars:
        return _empty(width, 120, empty_note)
    end = max([b.start + max(b.seconds, 0.0) for b in bars] + [m.at for m in markers])
    _, x_hi, x_ticks = nice_ticks(0.0, max(end, 1e-3), count=8)
    height = 26 + lane_height * len(lanes) + 30
    frame = Frame(width, height, 0.0, x_hi, 0.0, 1.0, left=120, right=16, top=26, bottom=30)
    lane_y = {lane: frame.top + i * lane_height for i, lane in enumerate(lanes)}
    parts = [
        f'<svg class="chart gantt" viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img">',
        '<defs><pattern id="hatch" width="6" height="6" patternUnits="userSpaceOnUse" '
        'patternTransform="rotate(45)"><rect width="6" height="6" fill="#fca5a5"/>'
        '<line x1="0" y1="0" x2="0" y2="6" stroke="#b91c1c" stroke-width="2"/></pattern></defs>',
    ]
    for i, lane in enumerate(lanes):
        y = lane_y[lane]
        if i % 2 == 0:
            parts.append(
                f'<rect x="{frame.left}" y="{y}" width="{width - frame.left - frame.right}" '
                f'height="{lane_height}" fill="#f9fafb"/>'
            )
        parts.append(
            f'<text x="{frame.left - 8}" y="{y + lane_height / 2}" dy="0.32em" text-anchor="end" '
            f'class="lane">{escape(lane)}</text>'
        )
    for tick in x_ticks:
        x = _num(frame.x(tick))
        parts.append(f'<line x1="{x}" x2="{x}" y1="{frame.top}" y2="{height - frame.bottom}" stroke="{GRID}"/>')
    parts += _x_axis(frame, [(t, x_format(t)) for t in x_ticks], "")
    last_label = -math.inf
    on_top: list[str] = []
    for marker in markers:
        x = frame.x(marker.at)
        parts.append(
            f'<line x1="{_num(x)}" x2="{_num(x)}" y1="{frame.top - 6}" y2="{height - frame.bottom}" '
            f'stroke="{marker.color}" stroke-dasharray="4 3"><title>{escape(marker.title or marker.label)}</title></line>'
        )
        if marker.color != AXIS:  # few (a server stopping, one resuming): each labelled by its rule, over the bars
            shift = {"start": 3, "end": -3}.get(marker.anchor, 0)
            on_top.append(
                f'<text x="{_num(x + shift)}" y="{height - frame.bottom - 3}" text-anchor="{marker.anchor}" '
                f'class="tick" fill="{marker.color}" stroke="#fff" stroke-width="3" paint-order="stroke">'
                f"{escape(marker.label)}</text>"
            )
        elif x - last_label >= 28:  # many rounds: label only as many rules as fit
            last_label = x
            parts.append(
                f'<text x="{_num(x)}" y="{frame.top - 10}" text-anchor="middle" class="tick">'
                f"{escape(marker.label)}</text>"
            )
    for b in bars:
        if b.lane not in lane_y:
            continue
        x0, x1 = frame.x(max(b.start, 0.0)), frame.x(max(b.start, 0.0) + max(b.seconds, 0.0))
        fill = "url(#hatch)" if b.hatched else b.color
        parts.append(
            f'<rect x="{_num(x0)}" y="{lane_y[b.lane] + 4}" width="{_num(max(x1 - x0, 1.5))}" '
            f'height="{lane_height - 8}" fill="{fill}" rx="2"><title>{escape(b.title)}</title></rect>'
        )
    parts += on_top
    parts.append("</svg>")
    return "".join(parts)
