"""The run report: one self-contained `report.html` from a run directory.

Reads `metrics.jsonl` (docs/contracts.md) and `experiment.yaml`; writes a page
with no scripts, fonts, images or links outside itself (plots are inline SVG),
so it can be mailed, attached to a ticket or opened from a cluster's scratch
filesystem years later. Written at the end of a run and by `fedhpc report`; a
run that is still going, was killed, had one round or no eval still gets a page.
"""

from __future__ import annotations

import time
from importlib.metadata import PackageNotFoundError, version
from html import escape
from pathlib import Path

from fedhpc.atomic_files import atomic_write_text
from fedhpc.errors import FedhpcError
from fedhpc.report.evaluation_section import evaluation_section
from fedhpc.report.metrics_log import read_events
from fedhpc.report.plots import color_for
from fedhpc.report.privacy_section import privacy_section
from fedhpc.report.sections import (
    config_section,
    data_section,
    loss_section,
    problems_section,
    summary_section,
    timeline_section,
)
from fedhpc.report.style import CSS
from fedhpc.report.summary import RunSummary, summarize


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
    atomic_write_text(out, page, make_parents=True)
    return out


def render(run: RunSummary, *, config: str | None, source: str = "") -> str:
    """The whole page as a string."""
    colors = {name: color_for(i) for i, name in enumerate(run.facilities)}
    sections = [
        ("summary", "Summary", summary_section(run)),
        ("loss", "Training loss", loss_section(run, colors)),
        ("eval", "Evaluation", evaluation_section(run)),
        *([("privacy", "Privacy", privacy_section(run))] if run.privacy else []),
        ("timeline", "Timeline", timeline_section(run)),
        ("data", "Data moved", data_section(run)),
        ("problems", "Rejected updates and failed jobs", problems_section(run)),
        ("config", "Configuration", config_section(config)),
    ]
    nav = "".join(f'<a href="#{key}">{escape(title)}</a>' for key, title, _ in sections)
    body = "".join(f'<section id="{key}"><h2>{escape(title)}</h2>{html}</section>' for key, title, html in sections)
    status = run.status
    notes = {"finished": "", "incomplete": " — no run_finished event: still running, or killed"}
    reason = run.stop_reason.splitlines()[0] if run.stop_reason else status
    again = "" if reason.startswith("privacy budget reached") else "; run the same command again to resume"
    note = notes.get(status, f" — {reason}{again}")
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
