"""The table `fedhpc eval` and `fedhpc score` print: per task, the primary metric beside its baseline.

A number alone says little on a few hundred questions; each row gives the value,
its 95% bootstrap interval, `n`, the trivial baseline and its interval on the same
questions, and the verdict ("yes" only when the intervals are apart on the better
side). Lenient extraction is named in the title, as in every output.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rich.console import Console
from rich.table import Table

LENIENT_LABEL = "LENIENT extraction (not LlaSMol's)"


def fmt_number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4g}"


def fmt_interval(ci95: list[float] | None) -> str:
    return "n/a" if ci95 is None else f"[{ci95[0]:.4g}, {ci95[1]:.4g}]"


def title(result: Mapping[str, Any]) -> str:
    """What was scored, how many questions, how long; names lenient extraction so no one mistakes it for LlaSMol's."""
    where = "predictions" if result.get("round") is None else f"round {result['round']}"
    text = f"{where}: {result['split']} split, {result['examples']} questions, {result['seconds']} s"
    return f"{text} — {LENIENT_LABEL}" if result.get("lenient") else text


def results_table(result: Mapping[str, Any]) -> Table:
    """A row per task: its primary metric, interval and n beside the baseline's, and the verdict."""
    table = Table()
    for column in ("task", "metric", "value", "95% CI", "n", "baseline", "baseline value", "baseline 95% CI",
                   "beats baseline"):
        table.add_column(column, justify="left" if column in ("task", "metric", "baseline") else "right")
    for task, entry in result["tasks"].items():
        metric = entry["primary"]
        mine = entry["metrics"].get(metric, {})
        theirs = entry["baseline"]["metrics"].get(metric, {})
        arrow = "↑" if entry["higher_is_better"] else "↓"
        table.add_row(
            task,
            f"{metric} {arrow}",
            fmt_number(mine.get("value")),
            fmt_interval(mine.get("ci95")),
            str(entry["n"]),
            entry["baseline"]["name"],
            fmt_number(theirs.get("value")),
            fmt_interval(theirs.get("ci95")),
            "yes" if entry["beats_baseline"] else "no",
        )
    return table


def print_results(console: Console, result: Mapping[str, Any]) -> None:
    """The title on a line of its own (never wrapped, so the lenient label stays whole), then the table."""
    console.print(title(result), highlight=False, soft_wrap=True, markup=False)
    console.print(results_table(result))
    for task, entry in result["tasks"].items():
        for key, why in entry.get("notes", {}).items():
            console.print(f"{task}: {key.replace('_', ' ')}: {why}", highlight=False, soft_wrap=True, markup=False)
