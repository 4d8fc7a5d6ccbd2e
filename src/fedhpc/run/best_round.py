"""The best evaluated round by `evaluation.key_metric`, kept in the ledger.

The ledger, not this process, holds it (`meta` key ``best_round``), so pruning
(`GlobalChain.prune`), a resumed server and `fedhpc export RUN:best` all read
the same answer. It is updated after each evaluation, and again when a resumed
server finds a round's results already written (a server killed between the two),
so recording it twice changes nothing. A tie keeps the earlier round.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal

from fedhpc.errors import ConfigError
from fedhpc.run.events import EventLog
from fedhpc.run.ledger import Ledger

log = logging.getLogger(__name__)

BEST_KEY = "best_round"


@dataclass(frozen=True)
class Best:
    round: int
    score: float
    key_metric: str
    mode: Literal["max", "min"]

    def beaten_by(self, score: float) -> bool:
        return score > self.score if self.mode == "max" else score < self.score


def key_score(results: Mapping[str, Any], key_metric: str) -> float | None:
    """`key_metric` (TASK.METRIC or mean.METRIC) read from an evaluation results document.

    None when a value it needs is null (undefined this round, e.g. RMSE with no
    parsable answer): such a round cannot be compared. `ConfigError` naming the
    key when the task or metric is not in the document at all.
    """
    target, metric = key_metric.split(".", 1)
    tasks: Mapping[str, Any] = results.get("tasks", {})
    names = sorted(tasks) if target == "mean" else [target]
    if not names or names[0] not in tasks:
        raise ConfigError(f"{key_metric!r} names task {target!r}, but the evaluation scored {sorted(tasks)}",
                          key="evaluation.key_metric")
    values = []
    for task in names:
        metrics = tasks[task].get("metrics", {})
        if metric not in metrics:
            raise ConfigError(f"{key_metric!r}: task {task} has no metric {metric!r}; it has {sorted(metrics)}",
                              key="evaluation.key_metric")
        value = metrics[metric].get("value")
        if value is None:
            return None
        values.append(float(value))
    return sum(values) / len(values)


def recorded_best(ledger: Ledger) -> Best | None:
    """The best round the ledger records, if any round has been scored by a key metric."""
    value = ledger.get_meta(BEST_KEY)
    return Best(**json.loads(value)) if value is not None else None


def protected_rounds(ledger: Ledger) -> tuple[int, ...]:
    """The rounds pruning must keep besides the latest ones: the best, where there is one."""
    best = recorded_best(ledger)
    return (best.round,) if best is not None else ()


def consider(
    ledger: Ledger, round: int, results: Mapping[str, Any], key_metric: str, mode: Literal["max", "min"]
) -> tuple[Best | None, str | None]:
    """Record `round` as the best if its score beats the recorded best; return (new best or None, why skipped).

    A best recorded under another key metric or mode (the experiment file changed
    between runs is refused elsewhere, so this is a run made before) is replaced.
    """
    try:
        score = key_score(results, key_metric)
    except ConfigError as e:
        return None, str(e)
    if score is None:
        return None, f"{key_metric} is undefined (null) in round {round}'s results"
    current = recorded_best(ledger)
    same_rule = current is not None and (current.key_metric, current.mode) == (key_metric, mode)
    if same_rule and current is not None and (current.round == round or not current.beaten_by(score)):
        return None, None
    best = Best(round, score, key_metric, mode)
    ledger.set_meta(BEST_KEY, json.dumps(asdict(best)))
    return best, None


def record_best(
    events: EventLog, round: int, results: Mapping[str, Any], key_metric: str, mode: Literal["max", "min"]
) -> str | None:
    """`consider` round `round`, recording a `best_round` or `best_skipped` event; the line to show, if any."""
    best, skipped = consider(events.ledger, round, results, key_metric, mode)
    if skipped is not None:
        log.warning("round %d cannot be ranked: %s", round, skipped)
        events.record("best_skipped", round, key_metric=key_metric, reason=skipped)
        return f"round {round} not ranked: {skipped}"
    if best is None:
        return None
    events.record("best_round", round, key_metric=key_metric, mode=mode, score=best.score)
    return f"round {round} is the best so far: {key_metric} = {best.score:.4g}"
