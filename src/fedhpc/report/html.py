"""The run report: one self-contained `report.html` from a run directory.

Reads `metrics.jsonl` (docs/contracts.md) and `experiment.yaml`; writes a page
with no scripts, fonts, images or links outside itself (plots are inline SVG),
so it can be mailed, attached to a ticket or opened from a cluster's scratch
filesystem years later. Written at the end of a run and by `fedhpc report`; a
run that is still going, was killed, had one round or no eval still gets a page.
"""

from __future__ import annotations

import os
import time
from importlib.metadata import PackageNotFoundError, version
from html import escape
from pathlib import Path

from fedhpc.errors import FedhpcError
from fedhpc.report.metrics_log import read_events
from fedhpc.report.plots import Bar, BarGroup, Series, bar_chart, color_for, fmt_value, gantt, line_chart
from fedhpc.report.style import CSS
from fedhpc.report.summary import RunSummary, mean, summarize

PHASES = {  # timeline kind -> (legend label, colour)
    "stage": ("stage global", "#56B4E9"),
    "queue": ("queue / start-up", "#d1d5db"),
    "wait": ("queue wait", "#9ca3af"),
    "startup": ("start-up", "#e5e7eb"),
    "load": ("load model + data", "#CC79A7"),
    "train": ("train", "#009E73"),
    "job": ("job (queue + run)", "#0072B2"),
    "pull": ("pull update", "#E69F00"),
    "aggregate": ("aggregate", "#6D28D9"),
    "eval": ("evaluate", "#B45309"),
}


def write_report(run_dir: Path, out: Path | None = None) -> Path:
    """Write the report for `run_dir` to `out` (default ``run_dir/report.html``) and return its path.

    Raises `FedhpcError` when `run_dir` has no `metrics.jsonl`. The file is
    replaced atomically, so a reader never sees half a report.
    """
    run_dir = Path(run_dir)
    metrics = run_dir / "metrics.jsonl"
    try:
        events = read_events(metrics)
    except FileNotFoundError as e:
        raise FedhpcError(
            f"{metrics} does not exist: pass the run directory (runs/<name>) of a run that has started"
        ) from e
    config_file = run_dir / "experiment.yaml"
    config = config_file.read_text(encoding="utf-8", errors="replace") if config_file.is_file() else None
    page = render(summarize(events), config=config, source=str(run_dir))
    out = Path(out) if out is not None else run_dir / "report.html"
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    partial.write_text(page, encoding="utf-8")
    os.replace(partial, out)
    return out


def render(run: RunSummary, *, config: str | None, source: str = "") -> str:
    """The whole page as a string."""
    colors = {name: color_for(i) for i, name in enumerate(run.facilities)}
    sections = [
        ("summary", "Summary", _summary(run)),
        ("loss", "Training loss", _loss(run, colors)),
        ("eval", "Evaluation", _eval(run)),
        ("timeline", "Timeline", _timeline(run)),
        ("data", "Data moved", _data(run)),
        ("problems", "Rejected updates and failed jobs", _problems(run)),
        ("config", "Configuration", _config(config)),
    ]
    nav = "".join(f'<a href="#{key}">{escape(title)}</a>' for key, title, _ in sections)
    body = "".join(f'<section id="{key}"><h2>{escape(title)}</h2>{html}</section>' for key, title, html in sections)
    status = run.status
    notes = {"finished": "", "incomplete": " — no run_finished event: still running, or killed"}
    note = notes.get(status, f" — {run.stop_reason.splitlines()[0] if run.stop_reason else status}; run the same "
                             "command again to resume")
    badge = "finished" if status == "finished" else "incomplete"  # (style.py colours those two)
    generated = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(run.name)} — fedhpc run report</title><style>{CSS}</style></head><body>"
        f'<header><div class="wrap"><h1>{escape(run.name)}</h1>'
        f'<p class="sub"><span class="badge {badge}">{status}</span>{escape(note)} · {escape(source)}'
        f" · report generated {escape(generated)} by fedhpc {escape(_version())}</p>"
        f"<nav>{nav}</nav></div></header><main>{body}</main></body></html>\n"
    )


def _version() -> str:
    try:
        return version("fedhpc")
    except PackageNotFoundError:
        return "(not installed)"


# -- formatting ------------------------------------------------------------------


def fmt_bytes(n: float | None) -> str:
    if n is None:
        return "—"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return "—"


def fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    if seconds < 90:
        return f"{seconds:.1f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _table(header: list[str], rows: list[list[str]], *, numeric_from: int = 1) -> str:
    """Cells are HTML already; columns from `numeric_from` on are right-aligned."""
    head = "".join(f'<th{" class=num" if i >= numeric_from else ""}>{h}</th>' for i, h in enumerate(header))
    body = "".join(
        "<tr>" + "".join(f'<td{" class=num" if i >= numeric_from else ""}>{c}</td>' for i, c in enumerate(r)) + "</tr>"
        for r in rows
    )
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def _legend(items: list[tuple[str, str]], *, hatched: str | None = None) -> str:
    chips = "".join(
        f'<span><i style="background:{color}"></i>{escape(label)}</span>' for label, color in items
    )
    if hatched:
        chips += f'<span><i class="hatched"></i>{escape(hatched)}</span>'
    return f'<div class="legend">{chips}</div>'


def _figure(svg: str, caption: str) -> str:
    return f"<figure>{svg}<figcaption>{escape(caption)}</figcaption></figure>"


# -- sections --------------------------------------------------------------------


def _summary(run: RunSummary) -> str:
    outcomes = [o for by_round in run.outcomes.values() for o in by_round.values()]
    last_round = max(run.rounds_completed, default=None)
    last_loss = mean([l for f in run.facilities for l in run.losses.get(f, {}).get(last_round, [])[-1:]])
    planned = run.rounds_planned if run.rounds_planned is not None else "?"
    sessions = f" in {run.sessions} sessions" if run.sessions > 1 else ""
    cards = [
        ("rounds", f"{len(run.rounds_completed - {0})} / {planned}", "completed / planned"),
        ("facilities", str(len(run.facilities)), ", ".join(run.facilities) or "none"),
        ("wall time", fmt_duration(run.wall_seconds), f"first to last event{sessions}"),
        ("staged", fmt_bytes(run.total_staged()), "global models, to facilities"),
        ("pulled", fmt_bytes(run.total_pulled()), "updates, from facilities"),
        (
            "accepted updates",
            str(outcomes.count("accepted")),
            f"{outcomes.count('rejected')} rejected · {sum(o.startswith('failed') for o in outcomes)} failed jobs",
        ),
        (
            "final loss",
            fmt_value(last_loss),
            "no round completed yet" if last_round is None else f"last step, mean over facilities, round {last_round}",
        ),
    ]
    html = '<div class="cards">' + "".join(
        f'<div class="card"><div class="k">{escape(k)}</div><div class="v">{escape(v)}</div>'
        f'<div class="d">{escape(d)}</div></div>'
        for k, v, d in cards
    ) + "</div>"
    rounds = [r for r in run.rounds if r > 0]
    if run.facilities and rounds:
        rows = []
        for f in run.facilities:
            cells = []
            for r in rounds:
                outcome = run.outcomes.get(f, {}).get(r)
                css = "none" if outcome is None else outcome.split(":")[0]
                cells.append(f'<span class="pill {css}">{escape(outcome or "—")}</span>')
            rows.append([escape(f)] + cells)
        rows.append(["<i>round time</i>"] + [fmt_duration(run.round_seconds.get(r)) for r in rounds])
        html += "<h3>Outcome per facility and round</h3>" + _table(
            ["facility"] + [f"round {r}" for r in rounds], rows, numeric_from=99
        )
    return html


def _loss(run: RunSummary, colors: dict[str, str]) -> str:
    rounds = sorted({r for by_round in run.losses.values() for r in by_round})
    if not rounds:
        return '<p class="empty">No accepted updates yet, so no training loss to show.</p>'
    means, steps = [], []
    for f in run.facilities:
        by_round = run.losses.get(f, {})
        if not by_round:
            continue
        points = [(float(r), mean(by_round[r])) for r in rounds if r in by_round]
        labels = [f"{f}, round {int(x)}: {fmt_value(y)}" for x, y in points]
        means.append(Series(f, colors[f], points, markers=len(rounds) <= 20, labels=labels))
        curve: list[tuple[float, float | None]] = []
        for r in rounds:
            values = by_round.get(r, [])
            curve += [(r - 1 + (i + 1) / len(values), v) for i, v in enumerate(values)]
            curve.append((float(r), None))  # break the line between rounds: each starts from a new global
        steps.append(Series(f, colors[f], curve, markers=False, stroke_width=1.6))
    ticks = [(float(r), str(r)) for r in rounds]
    mean_chart = line_chart(means, x_ticks=ticks, x_label="round", y_label="mean loss")
    step_chart = line_chart(
        steps,
        x_ticks=[(r - 0.5, str(r)) for r in rounds],
        x_domain=(min(rounds) - 1.0, float(max(rounds))),
        separators=[float(r) for r in rounds[:-1]] if len(rounds) <= 20 else [],
        x_label="round (local steps within it)",
        y_label="loss",
    )
    missing = [f for f in run.facilities if not run.losses.get(f)]
    legend = _legend([(f, colors[f]) for f in run.facilities if f not in missing])
    note = f'<p class="note">No accepted update from {escape(", ".join(missing))}.</p>' if missing else ""
    shown = [f for f in run.facilities if f not in missing]
    rows = [
        [str(r)] + [fmt_value(mean(run.losses[f][r])) if r in run.losses[f] else "—" for f in shown]
        for r in rounds
    ]
    table = _table(["round"] + [escape(f) for f in shown], rows)
    return (
        legend
        + '<div class="grid2">'
        + _figure(mean_chart, "Mean training loss of each accepted update, per round.")
        + _figure(step_chart, "Loss at every local step; each round starts from the new global model.")
        + "</div>"
        + note
        + f'<details{" open" if len(rounds) <= 12 else ""}><summary>Mean loss per round</summary>{table}</details>'
    )


def _eval(run: RunSummary) -> str:
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
                 f"{_table(header, rows, numeric_from=2)}</details>")
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
    return _table(header, rows, numeric_from=2) + note


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


def _timeline(run: RunSummary) -> str:
    if not run.spans or run.first_ts is None:
        return '<p class="empty">No timed events yet.</p>'
    origin = min(s.start for s in run.spans)
    total = max(s.start + s.seconds for s in run.spans) - origin
    unit, scale = ("s", 1.0) if total < 180 else ("min", 60.0) if total < 3 * 3600 else ("h", 3600.0)
    lanes = list(run.facilities) + ["server"]
    bars = [
        Bar(
            lane=s.lane,
            start=(s.start - origin) / scale,
            seconds=s.seconds / scale,
            color=PHASES.get(s.kind, ("", "#9ca3af"))[1],
            title=f"{s.lane} · round {s.round} · {PHASES.get(s.kind, (s.kind,))[0]}"
            f"{' · ' + s.note if s.note else ''} · {fmt_duration(s.seconds)}",
            hatched=s.failed,
        )
        for s in run.spans
    ]
    markers = [((ts - origin) / scale, f"r{r}") for r, ts in sorted(run.round_end_ts.items()) if ts >= origin]
    svg = gantt(lanes, bars, markers=markers, x_format=lambda v: f"{v:g} {unit}")
    kinds = [k for k in PHASES if any(s.kind == k and not s.failed for s in run.spans)]
    legend = _legend(
        [PHASES[k] for k in kinds], hatched="failed job" if any(s.failed for s in run.spans) else None
    )
    return (
        legend
        + _figure(svg, "Time since the first event. Dashed rules mark the end of each round. Hover a bar for details.")
        + '<p class="note">Queue wait runs from submission until the server first saw the job running; '
        "start-up is the rest of the time the worker did not spend loading or training (process and rank "
        "launch). Where the wait was not seen (a job that ended between two looks) both are one queue / "
        "start-up bar.</p>"
    )


def _data(run: RunSummary) -> str:
    rounds = sorted(set(run.bytes_staged) | set(run.bytes_pulled) | set(run.global_bytes))
    if not rounds:
        return '<p class="empty">No transfers recorded yet.</p>'
    staged = [float(sum(run.bytes_staged.get(r, {}).values())) for r in rounds]
    pulled = [float(sum(run.bytes_pulled.get(r, {}).values())) for r in rounds]
    unit, size = next(
        ((u, 1024.0**k) for k, u in reversed(list(enumerate(("B", "KiB", "MiB", "GiB", "TiB"))))
         if max(staged + pulled) >= 1024.0**k),
        ("B", 1.0),
    )
    chart = bar_chart(
        [str(r) for r in rounds],
        [
            BarGroup("staged to facilities", PHASES["stage"][1], [b / size for b in staged]),
            BarGroup("pulled from facilities", PHASES["pull"][1], [b / size for b in pulled]),
        ],
        y_format=lambda v: f"{v:g} {unit}",
        x_label="round",
    )
    legend = _legend([("staged to facilities", PHASES["stage"][1]), ("pulled from facilities", PHASES["pull"][1])])
    rows = [
        [str(r), fmt_bytes(s), fmt_bytes(p), fmt_bytes(run.global_bytes.get(r))]
        for r, s, p in zip(rounds, staged, pulled)
    ]
    rows.append(["<b>total</b>", f"<b>{fmt_bytes(sum(staged))}</b>", f"<b>{fmt_bytes(sum(pulled))}</b>", ""])
    per_facility = [
        [
            escape(f),
            fmt_bytes(sum(run.bytes_staged.get(r, {}).get(f, 0) for r in rounds)),
            fmt_bytes(sum(run.bytes_pulled.get(r, {}).get(f, 0) for r in rounds)),
            f"{run.samples.get(f, 0):,}",
            f"{run.tokens.get(f, 0):,}",
        ]
        for f in run.facilities
    ]
    return (
        legend
        + '<div class="grid2">'
        + _figure(chart, "Bytes moved per round, both directions.")
        + "<div>"
        + _table(["round", "staged", "pulled", "new global"], rows)
        + "</div></div><h3>Per facility</h3>"
        + _table(["facility", "staged", "pulled", "samples trained", "tokens trained"], per_facility)
    )


def _problems(run: RunSummary) -> str:
    if not run.problems:
        return '<p class="empty">None: every job finished and every update was accepted.</p>'
    rows = [
        [
            "—" if p.round is None else str(p.round),
            escape(p.facility),
            f'<span class="pill {"rejected" if p.kind == "rejected" else "failed"}">{escape(p.kind)}</span>',
            f"<code>{escape(p.reason)}</code>",
            escape(p.message if p.message != p.reason else ""),
        ]
        for p in run.problems
    ]
    return _table(["round", "facility", "what", "reason", "message"], rows, numeric_from=99)


def _config(config: str | None) -> str:
    if config is None:
        return '<p class="empty">No experiment.yaml in the run directory.</p>'
    return f"<pre><code>{escape(config)}</code></pre>"
