"""Folding events into the report's figures, and the SVG helpers' edge cases."""

from __future__ import annotations

import math

from fedhpc.report.plots import Bar, BarGroup, Series, bar_chart, gantt, line_chart, nice_ticks
from fedhpc.report.summary import summarize


def test_job_is_split_into_queue_load_train_from_the_workers_timings() -> None:
    run = summarize([
        {"ts": 130, "event": "job_finished", "round": 1, "facility": "a", "state": "done", "start": 100, "seconds": 30},
        {"ts": 131, "event": "accepted", "round": 1, "facility": "a", "loss": [2.0, 1.0],
         "load_seconds": 5, "train_seconds": 20},
    ])
    assert [(s.kind, s.start, s.seconds) for s in run.spans] == [
        ("queue", 100, 5), ("load", 105, 5), ("train", 110, 20)
    ]
    assert run.outcomes["a"][1] == "accepted" and run.losses["a"][1] == [2.0, 1.0]


def test_a_stale_update_splits_the_bar_of_the_job_that_trained_it() -> None:
    # the job ran for round 1, its update was accepted into round 3 (asynchronous, or carried late)
    run = summarize([
        {"ts": 130, "event": "job_finished", "round": 1, "facility": "a", "state": "done", "start": 100,
         "seconds": 30, "attempt": "j00007"},
        {"ts": 131, "event": "accepted", "round": 3, "facility": "a", "loss": [1.0], "attempt": "j00007",
         "load_seconds": 5, "train_seconds": 20, "staleness": 2},
    ])
    assert [(s.kind, s.start, s.seconds) for s in run.spans] == [
        ("queue", 100, 5), ("load", 105, 5), ("train", 110, 20)
    ]


def test_a_measured_queue_wait_splits_queue_from_start_up() -> None:
    run = summarize([
        {"ts": 103, "event": "job_running", "round": 1, "facility": "a", "attempt": "r0001-a0", "queue_seconds": 3},
        {"ts": 130, "event": "job_finished", "round": 1, "facility": "a", "state": "done", "start": 100,
         "seconds": 30, "attempt": "r0001-a0"},
        {"ts": 131, "event": "accepted", "round": 1, "facility": "a", "loss": [1.0], "attempt": "r0001-a0",
         "load_seconds": 5, "train_seconds": 20},
    ])
    assert [(s.kind, s.start, s.seconds) for s in run.spans] == [
        ("wait", 100, 3), ("startup", 103, 2), ("load", 105, 5), ("train", 110, 20)
    ]


def test_missing_start_falls_back_to_submission_or_ts_minus_seconds() -> None:
    run = summarize([
        {"ts": 10, "event": "submitted", "round": 1, "facility": "a", "job_id": "7"},
        {"ts": 40, "event": "job_finished", "round": 1, "facility": "a", "state": "failed", "seconds": 30,
         "returncode": 1},
        {"ts": 50, "event": "pulled", "round": 1, "facility": "b", "seconds": 4, "bytes": 9},
    ])
    job, pull = run.spans
    assert (job.kind, job.start, job.failed) == ("job", 10, True)
    assert (pull.kind, pull.start) == ("pull", 46)
    assert run.problems[0].reason == "returncode 1" and run.outcomes["a"][1] == "failed: failed"


def test_resumed_run_counts_bytes_twice_but_keeps_the_last_outcome() -> None:
    events = [
        {"ts": 1, "event": "run_started", "name": "x", "facilities": ["a"], "rounds": 2},
        {"ts": 2, "event": "staged", "round": 1, "facility": "a", "bytes": 100},
        {"ts": 3, "event": "rejected", "round": 1, "facility": "a", "reason": "stale", "message": ""},
        {"ts": 9, "event": "run_started", "name": "x", "facilities": ["a"], "rounds": 2, "resumed_from": 0},
        {"ts": 10, "event": "staged", "round": 1, "facility": "a", "bytes": 100},
        {"ts": 11, "event": "accepted", "round": 1, "facility": "a", "loss": [1.0, None]},
        {"ts": 12, "event": "round_complete", "round": 1, "seconds": 3},
    ]
    run = summarize(events)
    assert run.sessions == 2 and not run.finished and run.wall_seconds == 11
    assert run.total_staged() == 200 and run.outcomes["a"][1] == "accepted"
    assert run.rounds_completed == {1} and len(run.problems) == 1


def test_odd_values_are_gaps_not_errors() -> None:
    run = summarize([
        {"ts": "yesterday", "event": "staged", "round": "one", "facility": "a", "bytes": "lots"},
        {"event": "eval", "round": 0, "scores": {"t": {"m": "n/a"}, "bare": 0.5}},
        {"ts": 1, "event": "unknown_future_event", "round": 3},
        {"ts": 2, "event": "accepted", "round": 2, "facility": "a", "loss": "not a list"},
    ])
    assert run.evals == {0: {"t": {"m": None}, "bare": {"score": 0.5}}}
    assert run.losses["a"][2] == [] and run.facilities == ["a"]


def test_nice_ticks_cover_the_range_with_round_steps() -> None:
    assert nice_ticks(0, 1) == (0.0, 1.0, [0.0, 0.2, 0.4, 0.6, 0.8, 1.0])
    lo, hi, ticks = nice_ticks(1.23, 2.71)
    assert lo <= 1.23 and hi >= 2.71 and ticks[0] == lo and ticks[-1] == hi
    lo, hi, ticks = nice_ticks(5, 5)  # one value: padded, not a zero-width axis
    assert lo < 5 < hi
    assert nice_ticks(math.nan, 3)[0] == 0.0


def test_charts_draw_empty_single_and_broken_series() -> None:
    assert "no data" in line_chart([], x_ticks=[])
    one = line_chart([Series("a", "#000", [(1.0, 2.0)])], x_ticks=[(1.0, "1")])
    assert "<circle" in one and "nan" not in one.lower()
    broken = line_chart([Series("a", "#000", [(0, 1.0), (1, None), (2, 2.0), (3, math.nan)], markers=False)],
                        x_ticks=[(0.0, "0")])
    assert "<polyline" not in broken and broken.count("<circle") == 0
    assert "no data" in bar_chart(["1"], [BarGroup("g", "#000", [0.0])], y_format=str)
    assert "no timed events" in gantt(["a"], [], x_format=str)
    svg = gantt(["a"], [Bar("a", 0, 0, "#000", "<t>")], x_format=str)
    assert "&lt;t&gt;" in svg  # hover text is escaped


def test_example_counts_in_eval_scores_are_not_plotted_as_metrics() -> None:
    events = [
        {"ts": 1.0, "event": "eval", "round": 0, "scores": {"logp": {"n": 24, "rmse": None, "unparseable": 1.0}}},
        {"ts": 2.0, "event": "eval", "round": 4, "scores": {"logp": {"n": 24, "rmse": 2.7, "unparseable": 0.5}}},
    ]
    run = summarize(events)
    assert set(run.evals[4]["logp"]) == {"rmse", "unparseable"}
    assert run.evals[4]["logp"]["rmse"] == 2.7


def test_eval_events_with_baselines_fold_into_verdicts_and_metric_values() -> None:
    tasks = {
        "bbbp": {"n": 120, "primary": "accuracy", "higher_is_better": True,
                 "metrics": {"accuracy": {"value": 0.81, "ci95": [0.74, 0.88]}, "mcc": {"value": None, "ci95": None}},
                 "baseline": {"name": "majority class (Yes)", "metrics": {"accuracy": {"value": 0.6, "ci95": [0.51, 0.69]}}},
                 "beats_baseline": True},
        "esol": {"primary": "rmse", "higher_is_better": False, "metrics": {"rmse": {"value": "n/a", "ci95": [1]}},
                 "baseline": "not a dict", "beats_baseline": "yes"},
        "junk": 3,
    }  # fmt: skip
    run = summarize([{"event": "eval", "round": 2, "tasks": tasks, "lenient": True}])
    bbbp, esol = run.eval_tasks[2]["bbbp"], run.eval_tasks[2]["esol"]
    assert (bbbp.value, bbbp.ci95, bbbp.n, bbbp.baseline) == (0.81, (0.74, 0.88), 120, "majority class (Yes)")
    assert (bbbp.baseline_value, bbbp.baseline_ci95, bbbp.beats_baseline) == (0.6, (0.51, 0.69), True)
    assert (esol.value, esol.ci95, esol.baseline, esol.beats_baseline, esol.higher_is_better) == (
        None, None, "?", False, False)  # fmt: skip
    assert run.evals[2]["bbbp"] == {"accuracy": 0.81, "mcc": None}
    assert run.lenient_rounds == {2} and "junk" not in run.eval_tasks[2]


def test_interval_bars_are_drawn_and_fit_inside_the_axis() -> None:
    svg = line_chart([Series("a", "#123456", [(0, 1.0), (1, 2.0)], intervals=[(0.5, 1.5), None])],
                     x_ticks=[(0.0, "0"), (1.0, "1")])
    bars = [line for line in svg.split("<line") if 'stroke="#123456"' in line and 'stroke-width="1.2"' in line]
    assert len(bars) == 1  # the point without an interval has no bar
    assert ">0.4<" in svg or ">0.5<" in svg  # the axis reaches down to the interval's low end, below every point
