"""The report's sections about the run itself: summary, training loss, timeline, data moved, problems, config.

Each takes the folded `RunSummary` and returns its section's inner HTML; an
empty run gets a sentence saying what is missing rather than an empty plot, so
a report of a run that has barely started still reads. The evaluation section
lives in `evaluation_section.py`.
"""

from __future__ import annotations

from html import escape

from fedhpc.report.markup import figure_html, fmt_bytes, fmt_duration, legend_html, table_html
from fedhpc.report.plots import Bar, BarGroup, Marker, Series, bar_chart, fmt_value, gantt, line_chart
from fedhpc.report.sessions import FATES, ended_text
from fedhpc.report.summary import RunSummary, mean

PHASES = {  # timeline kind -> (legend label, colour)
    "stage": ("stage global", "#56B4E9"),
    "queue": ("queue / start-up", "#d1d5db"),
    "wait": ("queue wait", "#9ca3af"),
    "startup": ("start-up", "#e5e7eb"),
    "load": ("load model + data", "#CC79A7"),
    "train": ("train", "#009E73"),
    "job": ("job (queue + run)", "#0072B2"),
    "pull": ("pull update", "#E69F00"),
    "init": ("initial global (round 0)", "#0F766E"),
    "aggregate": ("aggregate", "#6D28D9"),
    "eval": ("evaluate", "#B45309"),
    "cancelled": ("job cancelled at an interruption", "#6b7280"),
    "orphan": ("job outliving its server", "#F0E442"),
    "down": ("no server running", "#fecaca"),
}
RESUME_MARK = "#b91c1c"  # the rules where a server stopped and where the next one resumed


def summary_section(run: RunSummary) -> str:
    outcomes = [o for by_round in run.outcomes.values() for o in by_round.values()]
    last_round = max(run.rounds_completed, default=None)
    last_loss = mean([l for f in run.facilities for l in run.losses.get(f, {}).get(last_round, [])[-1:]])
    planned = run.rounds_planned if run.rounds_planned is not None else "?"
    down = sum(s.seconds for s in run.spans if s.kind == "down")
    sessions = f" in {run.sessions} sessions" if run.sessions > 1 else ""
    sessions += f", {fmt_duration(down)} of it with no server running" if down else ""
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
        html += "<h3>Outcome per facility and round</h3>" + table_html(
            ["facility"] + [f"round {r}" for r in rounds], rows, numeric_from=99
        )
    return html + sessions_table(run)


def sessions_table(run: RunSummary) -> str:
    """A resumed run: one row per server session, how it ended and what became of its jobs in flight."""
    if len(run.session_log) < 2:
        return ""
    origin = run.first_ts or 0.0
    rows = []
    for i, session in enumerate(run.session_log):
        jobs = "; ".join(f"{FATES[fate]}: {', '.join(labels)}" for fate, labels in session.jobs.items())
        rows.append([
            str(i + 1),
            "—" if session.start is None else f"+{fmt_duration(session.start - origin)}",
            "new run" if session.resumed_from is None else f"round {session.resumed_from}",
            escape(ended_text(session)),
            escape(jobs or "—"),
        ])
    return "<h3>Server sessions</h3>" + table_html(
        ["session", "started", "resumed after", "ended", "jobs across the restart"], rows, numeric_from=99
    )


def loss_section(run: RunSummary, colors: dict[str, str]) -> str:
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
    legend = legend_html([(f, colors[f]) for f in run.facilities if f not in missing])
    note = f'<p class="note">No accepted update from {escape(", ".join(missing))}.</p>' if missing else ""
    shown = [f for f in run.facilities if f not in missing]
    rows = [
        [str(r)] + [fmt_value(mean(run.losses[f][r])) if r in run.losses[f] else "—" for f in shown]
        for r in rounds
    ]
    table = table_html(["round"] + [escape(f) for f in shown], rows)
    return (
        legend
        + '<div class="grid2">'
        + figure_html(mean_chart, "Mean training loss of each accepted update, per round.")
        + figure_html(step_chart, "Loss at every local step; each round starts from the new global model.")
        + "</div>"
        + note
        + f'<details{" open" if len(rounds) <= 12 else ""}><summary>Mean loss per round</summary>{table}</details>'
    )


def timeline_section(run: RunSummary) -> str:
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
            title=" · ".join(
                [s.lane] + ([f"round {s.round}"] if s.round is not None else [])
                + [PHASES.get(s.kind, (s.kind,))[0], fmt_duration(s.seconds)] + ([s.note] if s.note else [])
            ),
            hatched=s.failed,
        )
        for s in run.spans
    ]
    markers = [Marker((ts - origin) / scale, f"r{r}") for r, ts in sorted(run.round_end_ts.items()) if ts >= origin]
    markers += [Marker((ts - origin) / scale, label, RESUME_MARK, title, anchor)
                for ts, label, title, anchor in run.session_marks if ts >= origin]
    svg = gantt(lanes, bars, markers=sorted(markers, key=lambda m: m.at), x_format=lambda v: f"{v:g} {unit}")
    kinds = [k for k in PHASES if any(s.kind == k and not s.failed for s in run.spans)]
    legend = legend_html(
        [PHASES[k] for k in kinds], hatched="failed job" if any(s.failed for s in run.spans) else None
    )
    return (
        legend
        + figure_html(
            svg, "Time since the first event. Dashed rules mark the end of each round"
            + (", red ones where a server stopped and where the next resumed" if run.session_marks else "")
            + ". Hover a bar for that facility's own phase times."
        )
        + '<p class="note">Queue wait runs from submission until the server first saw the job running; '
        "start-up is the rest of the time the worker did not spend loading or training (process and rank "
        "launch). Where the wait was not seen (a job that ended between two looks) both are one queue / "
        "start-up bar.</p>"
    )


def data_section(run: RunSummary) -> str:
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
    legend = legend_html([("staged to facilities", PHASES["stage"][1]), ("pulled from facilities", PHASES["pull"][1])])
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
        + figure_html(chart, "Bytes moved per round, both directions.")
        + "<div>"
        + table_html(["round", "staged", "pulled", "new global"], rows)
        + "</div></div><h3>Per facility</h3>"
        + table_html(["facility", "staged", "pulled", "samples trained", "tokens trained"], per_facility)
    )


def problems_section(run: RunSummary) -> str:
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
    return table_html(["round", "facility", "what", "reason", "message"], rows, numeric_from=99)


def config_section(config: str | None) -> str:
    if config is None:
        return '<p class="empty">No experiment.yaml in the run directory.</p>'
    return f"<pre><code>{escape(config)}</code></pre>"
