"""The progress view: a live table on a terminal, throttled plain lines elsewhere."""

from __future__ import annotations

import io
import re

from rich.console import Console

from fedhpc.report.progress import ProgressView

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
        "round 1/3 done in 1m02s, mean loss 1.2345",
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
