"""The report's timeline: each facility's own timings, round 0 as its own phase, a resumed run's interruption
and the jobs that outlived their server.

The timings are checked on a real two-facility quickstart run (local launcher, real jobs) whose
facilities train for different step counts, against what the ledger recorded. The resumed runs are
real server runs on the simulated launcher (in-process, virtual clock, seconds each), interrupted
or killed as `tests/test_resume_reattach.py` does, then resumed.
"""

from __future__ import annotations

import json
import re
import signal
from html import unescape
from pathlib import Path

import pytest
from rich.console import Console

from conftest import QUICKSTART, run_fedhpc
from fedhpc.clock import VirtualClock
from fedhpc.config import load_experiment
from fedhpc.errors import RunInterrupted
from fedhpc.facility.base import JobSpec
from fedhpc.report.html import write_report
from fedhpc.report.metrics_log import MetricsLog, read_events
from fedhpc.report.progress import ProgressView
from fedhpc.report.summary import summarize
from fedhpc.run.events import EventLog
from fedhpc.run.interrupts import OnInterrupt, StopFlag
from fedhpc.run.ledger import Ledger
from fedhpc.run.orchestrator import Orchestrator
from fedhpc.simulate.launcher import SimulatedLauncher, simulated_launchers
from test_async_e2e import Killed, scenario


def titles(html: str) -> list[str]:
    """Every hover text of the page (SVG `<title>`s), unescaped."""
    return [unescape(t) for t in re.findall(r"<title>([^<]*)</title>", html)]


def section(html: str, key: str) -> str:
    return html.split(f'<section id="{key}">')[1].split("</section>")[0]


@pytest.fixture(scope="module")
def two_speeds(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The quickstart, one round, alpha training 8 steps and beta 1 (one rank each)."""
    run_dir = tmp_path_factory.mktemp("two-speeds") / "run"
    result = run_fedhpc(
        "run", str(QUICKSTART), "--set", f"run_dir={run_dir}", "--set", "algorithm.rounds=1",
        "--set", "algorithm.local_steps=1", "--set", "facilities.0.train.local_steps=8",
        "--set", "facilities.1.launcher.nprocs=1",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return run_dir


def test_each_facility_bar_carries_its_own_train_and_load_times_as_the_ledger_recorded_them(
    two_speeds: Path,
) -> None:
    ledger = Ledger(two_speeds / "ledger.sqlite")
    accepted = {e.facility: e.detail for e in ledger.events("accepted", round=1)}
    ledger.close()
    assert set(accepted) == {"alpha", "beta"}
    alpha, beta = accepted["alpha"]["train_seconds"], accepted["beta"]["train_seconds"]
    assert f"{alpha:.2f}" != f"{beta:.2f}", "both trained equally long: this run cannot show the fix"
    assert accepted["alpha"]["attempt"] == accepted["beta"]["attempt"] == "r0001-a0"  # the shared id

    html = (two_speeds / "report.html").read_text()  # the report the run wrote, as a user opens it
    hover = titles(section(html, "timeline"))
    spans = summarize(read_events(two_speeds / "metrics.jsonl")).spans
    for facility, detail in accepted.items():
        (train_bar,) = [t for t in hover if t.startswith(f"{facility} · round 1 · train ·")]
        assert f"train {detail['train_seconds']:.2f} s" in train_bar, train_bar
        assert f"load {detail['load_seconds']:.2f} s" in train_bar, train_bar
        assert "attempt r0001-a0" in train_bar and "pull " in train_bar
        (train,) = [s for s in spans if s.lane == facility and s.kind == "train"]
        assert train.seconds == pytest.approx(detail["train_seconds"])


def test_round_0_is_drawn_as_the_initial_global_not_as_an_aggregation(two_speeds: Path) -> None:
    timeline = section((two_speeds / "report.html").read_text(), "timeline")
    hover = titles(timeline)
    (init,) = [t for t in hover if t.startswith("server · round 0 ·")]
    assert "initial global (round 0)" in init
    assert all("round 0" not in t for t in hover if "· aggregate ·" in t)
    assert "initial global (round 0)" in timeline.split("<svg")[0]  # in the legend
    assert "r0" in hover  # its end is a round rule like the others'


def simulate(path: Path, stop: StopFlag | None = None, on_interrupt: OnInterrupt = OnInterrupt.AUTO) -> Path:
    """Run (or resume) the experiment at `path` on simulated launchers and the virtual clock."""
    experiment = load_experiment(path, [])
    names = [f.name for f in experiment.facilities]
    with ProgressView(experiment.name, experiment.algorithm.rounds, names, console=Console(quiet=True)) as view:
        clock = VirtualClock(start=0.0)
        orchestrator = Orchestrator(experiment, view, clock, launchers=simulated_launchers(experiment.facilities,
                                                                                          clock))
        try:
            orchestrator.run(on_interrupt=on_interrupt, stop=stop)
        finally:
            orchestrator.close()
    return experiment.resolved_run_dir()


@pytest.mark.slow  # a real server interrupted and resumed; the same events, written fast: test_a_kept_job_...
def test_an_interrupted_run_resumed_shows_the_interruption_and_the_jobs_it_left_running(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = scenario(tmp_path, {"name": "fedavg", "rounds": 1}, {"alpha": 1.0, "beta": 2.0})
    stop = StopFlag()
    original = SimulatedLauncher.submit

    def submit_then_signal(self: SimulatedLauncher, job: JobSpec):  # type: ignore[no-untyped-def]
        handle = original(self, job)
        if job.name == "beta-r0001-a0":  # both round-1 jobs are out: SIGTERM, as the handler would note it
            stop.signum, stop.count = signal.SIGTERM, 1
        return handle

    with monkeypatch.context() as patch:
        patch.setattr(SimulatedLauncher, "submit", submit_then_signal)
        with pytest.raises(RunInterrupted):
            simulate(path, stop, OnInterrupt.KEEP)
    run_dir = simulate(path)

    ledger = Ledger(run_dir / "ledger.sqlite")
    kept = {(e.facility, e.detail["attempt"]) for e in ledger.events("job_kept")}
    reattached = {(e.facility, e.detail["attempt"]) for e in ledger.events("reattached")}
    ledger.close()
    assert kept == reattached == {("alpha", "r0001-a0"), ("beta", "r0001-a0")}

    html = write_report(run_dir).read_text()
    hover = titles(section(html, "timeline"))
    assert "server interrupted by SIGTERM after round 0" in hover and "resumed after round 0" in hover
    for facility in ("alpha", "beta"):
        bars = [t for t in hover if t.startswith(f"{facility} · round 1 · train ·")]
        assert bars and all("left running at the interruption; reattached after the restart" in t for t in bars)
    sessions = section(html, "summary").split("<h3>Server sessions</h3>")[1]
    assert "interrupted by SIGTERM after round 0" in sessions
    assert "left running at the interruption: alpha r0001-a0, beta r0001-a0" in sessions
    assert "reattached after the restart: alpha r0001-a0, beta r0001-a0" in sessions


@pytest.mark.slow  # a real server killed and resumed; the same events, written fast: test_a_cancelled_job_...
def test_a_killed_server_job_lost_with_it_is_drawn_as_an_orphan_and_labelled_relaunched(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = scenario(tmp_path, {"name": "fedavg", "rounds": 1}, {"alpha": 1.0, "beta": 2.0})
    original = SimulatedLauncher.submit

    def submit_then_die(self: SimulatedLauncher, job: JobSpec):  # type: ignore[no-untyped-def]
        handle = original(self, job)
        if job.name == "alpha-r0001-a0":
            task = json.loads(Path(job.task or "").read_text())
            (Path(task["update_dir"]) / "manifest.json").unlink()  # still writing its update when the server died
            raise Killed()
        return handle

    with monkeypatch.context() as patch:
        patch.setattr(SimulatedLauncher, "submit", submit_then_die)
        with pytest.raises(Killed):
            simulate(path)
    monkeypatch.setattr(SimulatedLauncher, "reattach", lambda self, job, submitted_at: None)  # its process died
    run_dir = simulate(path)

    html = write_report(run_dir).read_text()
    hover = titles(section(html, "timeline"))
    (orphan,) = [t for t in hover if "job outliving its server" in t]
    assert orphan.startswith("alpha · round 1 ·") and "relaunched as r0001-a1" in orphan
    assert any(t.startswith("server killed (no end recorded") for t in hover)
    assert "relaunched after the restart: alpha r0001-a0 as r0001-a1" in section(html, "summary")


class Server:
    """Writes a run's ledger and metrics.jsonl through the server's own `EventLog`, with the fields the server
    records (run/orchestrator.py, launches.py, intake.py), on a clock the test moves: a real server's sessions
    without the minutes of real ones."""

    def __init__(self, run_dir: Path):
        run_dir.mkdir()
        self.run_dir = run_dir
        self.clock = VirtualClock(start=1000.0)
        self.ledger = Ledger(run_dir / "ledger.sqlite", now=self.clock.now)
        self.metrics = MetricsLog(run_dir / "metrics.jsonl")
        self.events = EventLog(self.ledger, self.metrics, self.clock)

    def at(self, t: float) -> Server:
        self.clock.advance_to(1000.0 + t)
        return self

    def start(self, resumed_from: int | None = None) -> None:
        self.events.record("run_started", name="resumed", facilities=["alpha", "beta"], rounds=1,
                           resumed_from=resumed_from, algorithm="fedavg")

    def init(self, seconds: float) -> None:
        started = self.clock.now() - seconds
        event_id = self.ledger.complete_round(0, str(self.run_dir / "global" / "r0000"), 0, seconds=seconds)
        self.events.emit("aggregated", round=0, num_updates=0, seconds=seconds, start=started, bytes=0,
                         ledger_id=event_id)

    def launch(self, facility: str, attempt: str) -> None:
        now = self.clock.now()
        self.events.record("launching", 1, facility, attempt=attempt, local_steps=2, seed=1, started_at=now)
        self.events.record("submitted", 1, facility, job_id=f"{facility}-{attempt}", attempt=attempt,
                           local_steps=2, start=now)

    def finish_job(self, facility: str, attempt: str, submitted: float, train: float) -> None:
        now = self.clock.now()
        self.events.record("job_finished", 1, facility, state="done", returncode=0, reason="",
                           seconds=now - (1000.0 + submitted), start=1000.0 + submitted, attempt=attempt)
        self.take_in(facility, attempt, train)

    def take_in(self, facility: str, attempt: str, train: float) -> None:
        now = self.clock.now()
        self.events.record("pulled", 1, facility, bytes=4096, seconds=0.5, start=now, attempt=attempt)
        self.events.record("accepted", 1, facility, num_samples=8, local_steps=2, loss=[2.0, 1.5], tokens=100,
                           train_seconds=train, load_seconds=1.0, staleness=0, attempt=attempt, path="x")

    def close(self) -> Path:
        self.ledger.close()
        self.metrics.close()
        return self.run_dir


def test_a_kept_job_reattached_and_one_collected_after_the_restart_are_labelled(tmp_path: Path) -> None:
    server = Server(tmp_path / "run")
    server.start()
    server.at(20).init(20.0)
    server.launch("alpha", "r0001-a0")
    server.launch("beta", "r0001-a0")
    server.at(25)
    for facility in ("alpha", "beta"):
        server.events.record("job_kept", 1, facility, attempt="r0001-a0", job_id=f"{facility}-r0001-a0",
                             reason="the server was interrupted; a resume collects this job's update")
    server.events.record("run_interrupted", rounds_completed=0, signal="SIGTERM", on_interrupt="keep",
                         kept=["r0001-a0", "r0001-a0"], cancelled=[])
    server.at(300).start(resumed_from=0)  # restarted almost five minutes later
    server.events.record("reattached", 1, "alpha", job_id="alpha-r0001-a0", attempt="r0001-a0")
    server.events.record("collected_after_restart", 1, "beta", attempt="r0001-a0")
    server.take_in("beta", "r0001-a0", train=3.0)
    server.at(330).finish_job("alpha", "r0001-a0", submitted=20, train=250.0)
    server.events.record("run_finished", rounds_completed=1, seconds=30.0)

    html = write_report(server.close()).read_text()
    hover = titles(section(html, "timeline"))
    assert "server interrupted by SIGTERM after round 0" in hover and "resumed after round 0" in hover
    (down,) = [t for t in hover if t.startswith("server · no server running ·")]
    assert " · 4.6 min · " in down, down  # from the interruption (+25 s) to the resume (+300 s)
    assert "interrupted by SIGTERM after round 0" in down
    (alpha_train,) = [t for t in hover if t.startswith("alpha · round 1 · train ·")]
    assert "left running at the interruption; reattached after the restart" in alpha_train
    assert "train 250.00 s" in alpha_train
    (beta_orphan,) = [t for t in hover if t.startswith("beta · round 1 · job outliving its server ·")]
    assert "collected after the restart" in beta_orphan and "r0001-a0" in beta_orphan
    assert "in 2 sessions, 4.6 min of it with no server running" in section(html, "summary")
    sessions = section(html, "summary").split("<h3>Server sessions</h3>")[1]
    assert sessions.count("<tr>") == 3  # a header and two sessions
    assert "left running at the interruption: alpha r0001-a0, beta r0001-a0" in sessions
    assert "reattached after the restart: alpha r0001-a0" in sessions
    assert "update collected after the restart: beta r0001-a0" in sessions


def test_a_cancelled_job_relaunched_and_a_killed_session_are_shown_with_the_time_no_server_ran(tmp_path: Path) -> None:
    server = Server(tmp_path / "run")
    server.start()
    server.at(20).init(20.0)
    server.launch("alpha", "r0001-a0")
    server.at(24).events.record("job_cancelled", 1, "alpha", job_id="alpha-r0001-a0", attempt="r0001-a0",
                                reason="the server was interrupted (--on-interrupt cancel)", seconds=4.0,
                                start=1020.0)
    server.events.record("run_interrupted", rounds_completed=0, signal="SIGINT", on_interrupt="cancel",
                         kept=[], cancelled=["r0001-a0"])
    server.at(60).start(resumed_from=0)
    server.events.record("relaunched", 1, "alpha", attempt="r0001-a1", previous="r0001-a0",
                         reason="its job is gone and left no update")
    server.launch("alpha", "r0001-a1")
    server.at(70).events.record("job_running", 1, "alpha", attempt="r0001-a1", job_id="j", queue_seconds=10.0)
    server.at(600).start(resumed_from=0)  # the second server was SIGKILLed at +70 s: it recorded no end
    server.events.record("relaunched", 1, "alpha", attempt="r0001-a2", previous="r0001-a1",
                         reason="its job is gone and left no update")
    server.launch("alpha", "r0001-a2")
    server.at(640).finish_job("alpha", "r0001-a2", submitted=600, train=30.0)

    run = summarize(read_events(server.close() / "metrics.jsonl"))
    assert [s.ended for s in run.session_log] == ["interrupted", "killed", "running"]
    downs = [(s.start - 1000.0, s.seconds) for s in run.spans if s.kind == "down"]
    assert downs == [(24.0, 36.0), (70.0, 530.0)]
    (cancelled,) = [s for s in run.spans if s.kind == "cancelled"]
    assert (cancelled.lane, cancelled.seconds, cancelled.note) == (
        "alpha", 4.0, "cancelled at the interruption; relaunched after the restart")
    (orphan,) = [s for s in run.spans if s.kind == "orphan"]  # a1 died with the killed server
    assert (orphan.attempt, orphan.start - 1000.0, orphan.seconds) == ("r0001-a1", 60.0, 10.0)
    assert "relaunched as r0001-a2" in orphan.note
    html = write_report(tmp_path / "run").read_text()
    assert "killed (no end recorded: SIGKILL, a crash or a lost node)" in section(html, "summary")
    assert "alpha r0001-a0 as r0001-a1" in section(html, "summary")
