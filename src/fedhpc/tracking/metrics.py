"""The server's ledger events as tracker metrics, and the resolved config as parameters.

Names are ``round/...`` (the round as a whole), ``aggregate/...``,
``facility/<name>/...`` (one facility's update, transfers and failures) and
``eval/<task>/...``; the step is always the round. Every number an event carries
is logged, except identifiers and clock readings (`NOT_METRICS`), so a field a
later fedhpc adds to one of these events (privacy's ``epsilon`` on `accepted`
or `round_complete`) is tracked without a change here. A list of numbers (a
facility's per-step ``loss``) is logged as its mean and its last value.
"""

from __future__ import annotations

import math
from typing import Any

#: Fields that are numbers but no measurement: ids, seeds and absolute clock readings.
NOT_METRICS = frozenset({"attempt", "seed", "start", "started_at", "ledger_id", "ts", "round", "job_id", "returncode"})

#: event -> the prefix its numbers are logged under ({f}: the facility's name)
PREFIXES = {
    "round_complete": "round/",
    "aggregated": "aggregate/",
    "accepted": "facility/{f}/",
    "pulled": "facility/{f}/pull_",
    "staged": "facility/{f}/stage_",
}


def event_metrics(event: str, facility: str | None, fields: dict[str, Any]) -> dict[str, float]:
    """The metrics one event gives (none for most: launches, polls, run boundaries)."""
    if event == "eval":
        return _eval_metrics(fields)
    if event == "rejected" and facility is not None:
        return {f"facility/{facility}/rejected": 1.0}
    if event == "job_finished" and facility is not None and fields.get("state") not in ("done", None):
        return {f"facility/{facility}/failed": 1.0}
    prefix = PREFIXES.get(event)
    if prefix is None or ("{f}" in prefix and facility is None):
        return {}
    prefix = prefix.format(f=facility)
    metrics: dict[str, float] = {}
    for key, value in fields.items():
        if key in NOT_METRICS:
            continue
        if isinstance(value, list):
            numbers = [float(v) for v in value if _number(v)]
            if numbers and len(numbers) == len(value):
                metrics[f"{prefix}{key}"] = sum(numbers) / len(numbers)
                metrics[f"{prefix}{key}_last"] = numbers[-1]
        elif _number(value):
            metrics[f"{prefix}{key}"] = float(value)
    return metrics


def _eval_metrics(fields: dict[str, Any]) -> dict[str, float]:
    """Each task's primary metric and its n (fedhpc.evaluation.results' document), and the evaluation's seconds."""
    metrics: dict[str, float] = {}
    for task, entry in (fields.get("tasks") or {}).items():
        primary = entry.get("primary")
        value = (entry.get("metrics") or {}).get(primary, {}).get("value")
        if primary and _number(value):
            metrics[f"eval/{task}/{primary}"] = float(value)
        if _number(entry.get("n")):
            metrics[f"eval/{task}/n"] = float(entry["n"])
    if _number(fields.get("seconds")):
        metrics["eval/seconds"] = float(fields["seconds"])
    return metrics


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def flat_params(document: Any, prefix: str = "") -> dict[str, str]:
    """The config as ``key.sub.key -> value`` strings; a list of named sections (facilities) is keyed by name.

    Names match what ``--set`` takes, so a parameter read in a tracker's UI can be pasted back.
    """
    if isinstance(document, dict):
        items = document.items()
    elif isinstance(document, list) and document and all(isinstance(d, dict) and "name" in d for d in document):
        items = ((str(d["name"]), d) for d in document)
    elif isinstance(document, list) and any(isinstance(d, (dict, list)) for d in document):
        items = ((str(i), d) for i, d in enumerate(document))
    else:
        return {prefix.rstrip("."): "" if document is None else str(document)} if prefix else {}
    params: dict[str, str] = {}
    for key, value in items:
        params.update(flat_params(value, f"{prefix}{key}."))
    return params
