"""The report's evaluation section: each task's primary metric against its trivial baseline, over rounds.

Runs from before results carried intervals and baselines still get a chart per
(task, metric) with the base model dashed, so an old run directory reports as
it did when it was written.
"""

from __future__ import annotations

from html import escape

from fedhpc.report.markup import table_html
from fedhpc.report.plots import Series, color_for, fmt_value, line_chart
from fedhpc.report.summary import RunSummary


def evaluation_section(run: RunSummary) -> str:
    if not run.evals:
        return '<p class="empty">No evaluation events in this run.</p>'
    rounds = sorted(run.evals)
    parts = []
    if run.lenient_rounds:
        which = ", ".join(str(r) for r in sorted(run.lenient_rounds))
        parts.append(f'<p class="note"><b>LENIENT extraction (not LlaSMol\'s)</b> in round(s) {which}: answers '
                     "without both core tags were still read, so these scores are not comparable with LlaSMol's.</p>")
    if run.eval_tasks:
        parts.append(_verdicts(run))
        charts = _primary_charts(run)
    else:  # an older run: metrics without intervals or baselines
        charts = _metric_charts(run, rounds)
    parts.append(f'<div class="multiples">{"".join(charts)}</div>')
    keys = sorted({(t, m) for scores in run.evals.values() for t, ms in scores.items() for m in ms})
    rows = [[escape(task), escape(metric)] + [fmt_value(run.evals[r].get(task, {}).get(metric)) for r in rounds]
            for task, metric in keys]
    header = ["task", "metric"] + [f"round {r}{' (base)' if r == 0 else ''}" for r in rounds]
    parts.append(f"<details><summary>Every metric, every evaluated round</summary>"
                 f"{table_html(header, rows, numeric_from=2)}</details>")
    return "".join(parts)


def _fmt_ci(ci: tuple[float, float] | None) -> str:
    return "—" if ci is None else f"[{fmt_value(ci[0])}, {fmt_value(ci[1])}]"


def _verdicts(run: RunSummary) -> str:
    """The last evaluated round's primary metric per task, beside the base model's and the baseline's."""
    last = max(run.eval_tasks)
    base = run.eval_tasks.get(0) if last != 0 else None
    header = ["task", "metric"] + (["base model"] if base else []) + [
        f"round {last}", "95% CI", "n", "baseline", "baseline value", "baseline 95% CI", "beats baseline"]
    rows = []
    for task, t in sorted(run.eval_tasks[last].items()):
        before = base.get(task) if base else None
        verdict = (
            '<span class="pill accepted">yes</span>'
            if t.beats_baseline
            else '<span class="pill rejected">no</span>'
        )
        rows.append(
            [escape(task), escape(f"{t.primary} {'↑' if t.higher_is_better else '↓'}")]
            + ([fmt_value(before.value if before else None)] if base else [])
            + [fmt_value(t.value), _fmt_ci(t.ci95), "—" if t.n is None else str(t.n), escape(t.baseline),
               fmt_value(t.baseline_value), _fmt_ci(t.baseline_ci95), verdict]
        )
    note = ('<p class="note">Each task\'s primary metric with its 95% bootstrap interval over questions, and the '
            "trivial baseline (majority class, training mean, echoed input or most frequent training answer) on "
            "the same questions and resamples. “Beats baseline”: the two intervals are apart, the model's on the "
            "better side (↑ higher is better, ↓ lower).</p>")
    return table_html(header, rows, numeric_from=2) + note


def _primary_charts(run: RunSummary) -> list[str]:
    """Per task, its primary metric over rounds with interval bars, and the last round's baseline dashed."""
    rounds = sorted(run.eval_tasks)
    ticks = [(float(r), str(r)) for r in rounds]
    charts = []
    for task in sorted({t for per_round in run.eval_tasks.values() for t in per_round}):
        scored = [(r, run.eval_tasks[r][task]) for r in rounds if task in run.eval_tasks[r]]
        last = scored[-1][1]
        values = [(float(r), t.value) for r, t in scored]
        labels = [f"round {r}: {fmt_value(t.value)} {_fmt_ci(t.ci95)}" for r, t in scored]
        series = [Series(task, color_for(0), values, labels=labels, intervals=[t.ci95 for _, t in scored])]
        if last.baseline_value is not None:
            flat = [(float(rounds[0]), last.baseline_value), (float(rounds[-1]), last.baseline_value)]
            series.insert(0, Series(last.baseline, "#9ca3af", flat, markers=False, dashed=True, stroke_width=1.2))
        chart = line_chart(series, x_ticks=ticks, x_label="round", width=340, height=200)
        caption = f"<b>{escape(task)}</b> · {escape(last.primary)} · dashed: {escape(last.baseline)}"
        charts.append(f"<figure>{chart}<figcaption>{caption}</figcaption></figure>")
    return charts


def _metric_charts(run: RunSummary, rounds: list[int]) -> list[str]:
    """Every (task, metric) over rounds, the base model's score dashed: for runs whose events carry no baseline."""
    has_base = rounds[0] == 0 and len(rounds) > 1
    charts = []
    for task, metric in sorted({(t, m) for scores in run.evals.values() for t, ms in scores.items() for m in ms}):
        values = [(float(r), run.evals[r].get(task, {}).get(metric)) for r in rounds]
        labels = [f"round {int(x)}: {fmt_value(y)}" for x, y in values]
        series = [Series(f"{task} {metric}", color_for(0), values, labels=labels)]
        if has_base and values[0][1] is not None:
            flat = [(0.0, values[0][1]), (float(rounds[-1]), values[0][1])]
            series.insert(0, Series("base", "#9ca3af", flat, markers=False, dashed=True, stroke_width=1.2))
        chart = line_chart(series, x_ticks=[(float(r), str(r)) for r in rounds], x_label="round", width=340,
                           height=200)
        charts.append(f"<figure>{chart}<figcaption><b>{escape(task)}</b> · {escape(metric)}</figcaption></figure>")
    return charts
