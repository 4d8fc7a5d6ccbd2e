"""The progress view: a live table on a terminal, throttled plain lines elsewhere."""

from __future__ import annotations

import io
import json
import re
import threading
import time
from pathlib import Path

from rich.console import Console

from fedhpc.report.progress import ProgressView, one_line

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


class Clock:
    def __init__(self, t: float = 1_760_000_000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


def plain_view(clock: Clock) -> tuple[ProgressView, io.StringIO]:
    out = io.StringIO()
    view = ProgressView("chem-demo", 3, ["a", "b"], console=Console(file=out, width=200), clock=clock)
    return view, out


def test_plain_mode_logs_changes_not_every_step() -> None:
    clock = Clock()
    view, out = plain_view(clock)
    assert not view.live_mode
    with view:
        view.facility_state("a", "staging", round=1)
        view.facility_state("a", "staging", round=1)  # no change, no line
        view.facility_state("a", "running", round=1)
        for step in range(1, 11):  # ten steps, one second apart
            clock.t += 1
            view.facility_progress("a", step, 20, 2.0 - step / 10)
        clock.t += 5
        view.facility_progress("a", 11, 20, 0.95)  # 10 s after the last progress line
        view.facility_progress("b", 3, 20, None)  # another facility has its own throttle
        view.facility_state("a", "done")
        view.message("update from b rejected: non_finite")
        view.round_done(1, seconds=62.5, mean_loss=1.2345)
    lines = out.getvalue().splitlines()
    assert all(re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d  ", line) for line in lines)
    text = [line[21:] for line in lines]
    assert text == [
        "run chem-demo: 3 rounds, facilities a, b",
        "a round 1: staging",
        "a round 1: running",
        "a round 1: step 1/20 loss 1.9000",
        "a round 1: step 11/20 loss 0.9500",
        "b: step 3/20 loss -",
        "a round 1: done",
        "update from b rejected: non_finite",
        "round 1/3 done in 1m02s, mean loss 1.2345; ETA 2m05s",
    ]
    assert "\x1b" not in out.getvalue()


def test_plain_mode_takes_no_markup_from_user_text() -> None:
    view, out = plain_view(Clock())
    view.message("[bold]not markup[/bold] and [red]")
    view.close()
    assert "[bold]not markup[/bold] and [red]" in out.getvalue()


def test_live_mode_draws_a_table_per_facility() -> None:
    out = io.StringIO()
    clock = Clock()
    console = Console(file=out, force_terminal=True, width=140, color_system="truecolor")
    with ProgressView("chem-demo", 3, ["polaris", "aurora"], console=console, clock=clock) as view:
        assert view.live_mode
        view.facility_state("polaris", "running", round=2)
        view.facility_progress("polaris", 7, 10, 1.5)
        clock.t += 42
        view.facility_state("polaris", "done", round=2)
        view.facility_state("frontier", "queued", round=2)  # a facility named late gets a row
        view.message("resumed from round 1")
        view.round_done(2, seconds=90.0, mean_loss=1.25)
    view.close()  # idempotent
    screen = ANSI.sub("", out.getvalue())
    last_frame = screen[screen.rindex("fedhpc chem-demo") :]
    assert "round 2/3" in last_frame and "(2 done)" in last_frame
    assert "last round 2: 1m30s, loss 1.2500" in last_frame
    assert "ETA 1m30s" in last_frame  # one round left at the 90 s the only round seen took
    for header in ("facility", "state", "round", "step", "loss", "last round"):
        assert header in last_frame
    rows = {line.split("│")[1].strip(): line for line in last_frame.splitlines() if line.count("│") > 5}
    assert set(rows) == {"polaris", "aurora", "frontier"}
    assert "done" in rows["polaris"] and "7/10" in rows["polaris"] and "1.5000" in rows["polaris"]
    assert "42.0 s" in rows["polaris"]
    assert "waiting" in rows["aurora"] and "queued" in rows["frontier"]
    # Messages print above the table, not inside it.
    assert "resumed from round 1" in screen and "round 2/3 done in 1m30s" in screen
    assert "\x1b[" in out.getvalue()  # it really drew with terminal codes


def test_eta_is_the_rounds_left_at_the_mean_round_less_the_time_since_the_last() -> None:
    clock = Clock()
    view, _ = plain_view(clock)
    view.rounds = 5
    assert view.eta() is None  # no round seen yet: no guess
    view.round_done(1, seconds=10.0, mean_loss=None)
    view.round_done(2, seconds=30.0, mean_loss=None)
    assert view.eta() == 3 * 20.0
    clock.t += 15
    assert view.eta() == 3 * 20.0 - 15
    clock.t += 1000
    assert view.eta() == 0.0  # late, not negative
    view.close()


def test_a_failed_job_prints_its_reason_in_one_line_with_its_log(tmp_path: Path) -> None:
    log = tmp_path / "beta-r0001-a0.err"
    asked = []

    def failure_log(round, facility, attempt):
        asked.append((round, facility, attempt))
        return log

    clock = Clock()
    out = io.StringIO()
    view = ProgressView("q", 1, ["alpha", "beta"], console=Console(file=out, width=400), clock=clock,
                        failure_log=failure_log)
    reason = ("rank 1 exited with code 1 (first failure); stderr tail:\nTraceback (most recent call last):\n"
              "  File \"x.py\", line 1\n2026-12-07 12:02:05,147 fedhpc.worker.main ERROR bad.jsonl:1: unknown layout")
    view.on_event("job_finished", 1, "beta", {"state": "failed", "returncode": 1, "reason": reason,
                                              "attempt": "r0001-a0", "start": 0.0})
    view.on_event("rejected", 1, "alpha", {"reason": "checksum", "message": "checksum: a.safetensors differs",
                                           "attempt": "r0001-a0"})
    view.on_event("job_finished", 1, "alpha", {"state": "done", "returncode": 0, "attempt": "r0001-a1"})
    view.close()
    text = [line[21:] for line in out.getvalue().splitlines()]
    assert text[1:] == [
        f"beta round 1: failed: rank 1 exited with code 1 (first failure): bad.jsonl:1: unknown layout (log: {log})",
        f"alpha round 1: rejected (checksum): checksum: a.safetensors differs (log: {log})",
    ]
    assert asked == [(1, "beta", "r0001-a0"), (1, "alpha", "r0001-a0")]


def test_the_failure_line_shows_in_the_live_view_too() -> None:
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=200)
    with ProgressView("q", 1, ["beta"], console=console, clock=Clock()) as view:
        view.on_event("job_finished", 1, "beta", {"state": "timeout", "attempt": "r0001-a0", "start": 0.0,
                                                  "reason": "algorithm.round_timeout (90 s) passed"})
    assert "beta round 1: timeout: algorithm.round_timeout (90 s) passed" in ANSI.sub("", out.getvalue())


def test_one_line_keeps_a_single_line_and_bounds_a_long_one() -> None:
    assert one_line("exited with code 3; nothing on stderr") == "exited with code 3; nothing on stderr"
    assert one_line("") == "no reason given"
    assert one_line("exit 1; see /x/eval.err:\nline\nValueError: no") == "exit 1; see /x/eval.err: ValueError: no"
    assert len(one_line("x" * 5000)) == 400


def test_a_phase_in_plain_mode_says_what_it_does_while_it_runs(tmp_path: Path) -> None:
    """The round-0 build: a line when it starts, one per interval with the worker's step, one when it ends."""
    out = io.StringIO()
    view = ProgressView("q", 3, ["a"], console=Console(file=out, width=200), progress_interval=0.05)
    progress = tmp_path / "progress.json"

    def worker() -> None:  # a worker loading its base model, then saving
        time.sleep(0.3)
        progress.write_text(json.dumps({"round": 0, "step": 0, "local_steps": 0, "loss": None, "phase": "loading"}))
        time.sleep(0.3)

    with view.phase("round 0: building the initial global model", progress):
        thread = threading.Thread(target=worker)
        thread.start()
        thread.join()
    printed = len(out.getvalue().splitlines())
    time.sleep(0.15)
    view.close()
    lines = [line[21:] for line in out.getvalue().splitlines()]
    assert len(lines) == printed, "the ticker went on after the phase ended"
    assert lines[1] == "round 0: building the initial global model"
    ticks = [re.fullmatch(r"round 0: building the initial global model(: loading)? \(\d+\.\d s\)", line)
             for line in lines[2:-1]]
    assert all(ticks), lines
    assert not ticks[0][1] and ticks[-1][1], lines  # before the worker wrote its progress file, and after
    assert re.fullmatch(r"round 0: building the initial global model: finished in \d+\.\d s", lines[-1]), lines


def test_a_phase_in_the_live_header_shows_its_step_and_elapsed_time(tmp_path: Path) -> None:
    clock = Clock()
    out = io.StringIO()
    progress = tmp_path / "progress.json"
    progress.write_text(json.dumps({"round": 0, "step": 0, "local_steps": 0, "loss": None, "phase": "saving"}))
    console = Console(file=out, force_terminal=True, width=200)
    with ProgressView("q", 3, ["a"], console=console, clock=clock) as view:
        with view.phase("evaluating the global of round 2", progress):
            clock.t += 75
            view._live.refresh()
            during = ANSI.sub("", out.getvalue())
    assert "evaluating the global of round 2: saving (1m15s)" in during
    assert "evaluating the global of round 2: finished in 1m15s" in ANSI.sub("", out.getvalue())


def test_a_phase_cut_short_says_it_stopped() -> None:
    clock = Clock()
    view, out = plain_view(clock)
    try:
        with view.phase("round 0: building the initial global model"):
            clock.t += 3
            raise KeyboardInterrupt
    except KeyboardInterrupt:
        pass
    view.close()
    assert out.getvalue().splitlines()[-1][21:] == "round 0: building the initial global model: stopped after 3.0 s"
