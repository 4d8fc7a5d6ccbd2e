"""The report's privacy section: ε spent after each round, and how each round clipped and noised.

Read from the `aggregated` events of a run with `privacy:` on (their ε, δ, noise multiplier, clip norm and
clipped count, docs/privacy.md). A run without privacy has none of these fields and no section.
"""

from __future__ import annotations

from html import escape
from typing import Any

from fedhpc.report.markup import figure_html, table_html
from fedhpc.report.plots import Series, fmt_value, line_chart
from fedhpc.report.summary import RunSummary, number

#: the fields of an `aggregated` event the section shows, in its table's order, with their headers
COLUMNS = (("epsilon", "ε spent"), ("noise_multiplier", "noise multiplier z"), ("clip_norm", "clip norm C"),
           ("clipped", "updates clipped"), ("next_clip_norm", "next C"), ("noise_std", "noise std (mean)"))


def privacy_section(run: RunSummary) -> str:
    rounds = sorted(run.privacy)
    delta = next((run.privacy[r].get("delta") for r in reversed(rounds) if run.privacy[r].get("delta")), None)
    last = run.privacy[rounds[-1]] if rounds else {}
    spent = number(last.get("epsilon"))
    headline = (f"<p>Facility-level differential privacy: after round {rounds[-1]} the run has spent "
                f"<b>ε = {'∞ (no noise)' if spent is None else fmt_value(spent)}</b> at δ = {escape(str(delta))}. "
                "ε above about 10 protects almost nothing (docs/privacy.md).</p>") if rounds else ""
    points = [(float(r), number(run.privacy[r].get("epsilon"))) for r in rounds]
    chart = line_chart(
        [Series("ε", "#6D28D9", points, markers=len(rounds) <= 40)],
        x_ticks=[(float(r), str(r)) for r in rounds], x_label="round", y_label=f"ε at δ {delta}",
        empty_note="ε is unbounded (noise multiplier 0)",
    )
    rows = [[str(r)] + [_cell(run.privacy[r].get(key)) for key, _ in COLUMNS] for r in rounds]
    table = table_html(["round"] + [escape(header) for _, header in COLUMNS], rows)
    return (headline + figure_html(chart, "ε spent after each round (the accountant over the rounds released).")
            + f'<details{" open" if len(rounds) <= 12 else ""}><summary>Privacy per round</summary>{table}</details>')


def _cell(value: Any) -> str:
    if value is None:
        return "—"
    return escape(str(value)) if isinstance(value, (int, str)) and not isinstance(value, bool) else fmt_value(value)
