"""What the user watches while a run goes: the only place fedhpc writes to stdout.

On a terminal, a live table (rich) with one row per facility under a header
with the run name and round; elsewhere (a batch job's log, a pipe, CI), plain
timestamped lines: one per state change, finished round and message, and at most
one training-progress line per facility every `progress_interval` seconds, so a
log stays readable over a multi-day run.

The server's event log feeds it (`on_event`): a job submitted, running,
reattached, failed or timed out (with its reason in one line, and its log), an
update accepted or rejected, a round complete. What no event mirrors (a job's
live step count, a facility idle, a round's messages) is reported by calling it
directly, and so are the server's own long steps (`phase`: the round-0 build, an
evaluation), shown with what they are doing and for how long.

The ETA is the rounds left times the mean duration of the rounds this view saw
complete (each from its start to its aggregation, as `round_complete` reports it),
less the time since the last of them completed; until a round completes there is none. Facility states are free
words; those in `STATE_STYLES` get a colour, any other word is shown as is. A facility's "last round" time runs
from the first state it reports for a round to the first of `FINISHED_STATES`.

    with ProgressView("chem-demo", rounds=3, facilities=["polaris", "aurora"]) as view:
        view.facility_state("polaris", "queued", round=1)
        view.facility_progress("polaris", step=4, local_steps=10, loss=1.93)
        view.round_done(1, seconds=412.0, mean_loss=1.87)
"""

from __future__ import annotations

import json
import math
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

STATE_STYLES = {
    "idle": "dim",
    "waiting": "dim",
    "staging": "cyan",
    "submitted": "blue",
    "queued": "yellow",
    "loading": "magenta",
    "running": "green",
    "training": "green",
    "saving": "green",
    "pulling": "cyan",
    "verifying": "cyan",
    "done": "bold green",
    "accepted": "bold green",
    "rejected": "bold red",
    "failed": "bold red",
    "timeout": "bold red",
    "cancelled": "red",
}
FINISHED_STATES = frozenset({"done", "accepted", "rejected", "failed", "timeout", "cancelled"})
EVENT_STATES = {
    "submitted": "submitted",
    "reattached": "reattached",
    "job_running": "running",
    "accepted": "accepted",
    "late_carried": "late",
    "late_dropped": "late, dropped",
}
"""The facility state each of these server events shows (`ProgressView.on_event`)."""

_LOG_PREFIX = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ \S+ (?:ERROR|WARNING|CRITICAL) ")
"""The start of a line fedhpc's logging wrote (`fedhpc.cli`'s format), which a one-line reason leaves out."""

FailureLog = Callable[[int | None, str, object], "Path | None"]
"""``failure_log(round, facility, attempt)``: the log of a facility's failed attempt, if one is kept."""


@dataclass
class _Facility:
    state: str = "waiting"
    round: int | None = None
    step: int | None = None
    local_steps: int | None = None
    loss: float | None = None
    round_started: float | None = None
    last_round_seconds: float | None = None
    last_progress_line: float = -math.inf


def one_line(reason: str, limit: int = 400) -> str:
    """A multi-line failure reason as one line: its head, then its last line (where a traceback ends).

    ``exited with code 3; stderr tail:`` ... ``RuntimeError: boom`` becomes
    ``exited with code 3: RuntimeError: boom``; a worker's log-line prefix (time, logger,
    level) is dropped from that last line; at most `limit` characters.
    """
    lines = [line.strip() for line in reason.splitlines() if line.strip()]
    if not lines:
        return "no reason given"
    head = lines[0]
    if len(lines) > 1:
        head = head.removesuffix(":").removesuffix("; stderr tail") + ": " + _LOG_PREFIX.sub("", lines[-1])
    return head if len(head) <= limit else head[: limit - 3] + "..."


def _fmt_loss(loss: float | None) -> str:
    return "-" if loss is None else f"{loss:.4f}"


def _fmt_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


class ProgressView:
    """Live table on a terminal, plain log lines otherwise; call `close` (or use `with`).

    `console` defaults to one on stdout; whether it is a terminal picks the mode
    (``Console(force_terminal=True)`` forces the live table). `facilities` fixes
    the row order; a facility first named later gets a row then. Methods are safe
    to call from several threads.
    """

    def __init__(
        self,
        run_name: str,
        rounds: int,
        facilities: Iterable[str] = (),
        *,
        console: Console | None = None,
        progress_interval: float = 10.0,
        refresh_per_second: float = 4.0,
        clock: Callable[[], float] = time.time,
        failure_log: FailureLog | None = None,
    ):
        self.run_name = run_name
        self.rounds = rounds
        self.console = console or Console()
        self.progress_interval = progress_interval
        self._clock = clock
        self._lock = threading.RLock()
        self._facilities: dict[str, _Facility] = {name: _Facility() for name in facilities}
        self._round = 0
        self._rounds_done = 0
        self._last_round: tuple[int, float, float | None] | None = None
        self._round_seconds: list[float] = []
        self._epsilon: dict[int, str] = {}  # privacy: each round's ε spent so far, as shown
        self._last_round_at: float | None = None
        self._failure_log = failure_log
        self._phase: tuple[str, float, Path | None] | None = None
        self._phase_ended = threading.Event()
        self._started = clock()
        self._closed = False
        self.live_mode = self.console.is_terminal
        self._live: Live | None = None
        if self.live_mode:
            self._live = Live(
                get_renderable=self._render,
                console=self.console,
                refresh_per_second=refresh_per_second,
                transient=False,
            )
            self._live.start()
        else:
            names = ", ".join(self._facilities) or "none yet"
            self._line(f"run {run_name}: {rounds} rounds, facilities {names}")

    # -- what the orchestrator calls -------------------------------------------------

    def on_event(self, event: str, round: int | None, facility: str | None, fields: Mapping[str, Any]) -> None:
        """A server event (the run's `EventLog` subscribes this), shown as a facility state or a finished round.

        A `job_finished` shows its state unless the job ended done (its update is still to be taken in);
        a failed, timed-out or cancelled job and a rejected update also print why, in one line.
        """
        if event == "round_complete" and round is not None:
            self.round_done(round, fields["seconds"], fields.get("mean_loss"))
            return
        if facility is None:
            return
        note = None
        if event == "rejected":
            state: str | None = f"rejected ({fields.get('reason')})"
            note = one_line(str(fields.get("message") or ""))
        elif event == "job_finished":
            state = fields.get("state") if fields.get("state") != "done" else None
            reason = fields.get("reason") or (f"exit {fields['returncode']}" if "returncode" in fields else "")
            note = one_line(str(reason))
        else:
            state = EVENT_STATES.get(event)
        if state is not None and note is not None and self._failure_log is not None:
            log = self._failure_log(round, facility, fields.get("attempt"))
            note += f" (log: {log})" if log is not None else ""
        if state is not None:
            self.facility_state(facility, state, round, note)

    def facility_state(self, facility: str, state: str, round: int | None = None, note: str | None = None) -> None:
        """`facility` is now in `state` (for `round`, when given); a `note` (why it failed) is printed with it."""
        with self._lock:
            row = self._row(facility)
            now = self._clock()
            if round is not None and round != row.round:
                row.round, row.step, row.local_steps, row.loss = round, None, None, None
                row.round_started = now
                self._round = max(self._round, round)
            elif row.round_started is None:
                row.round_started = now
            changed = state != row.state
            row.state = state
            if state in FINISHED_STATES and row.round_started is not None:
                row.last_round_seconds = now - row.round_started
                row.round_started = None
            where = f" round {row.round}" if row.round is not None else ""
            if note is not None:
                self._say(f"{facility}{where}: {state}: {note}")
            elif changed and not self.live_mode:
                self._line(f"{facility}{where}: {state}")

    def facility_progress(self, facility: str, step: int, local_steps: int, loss: float | None) -> None:
        """`facility` has trained `step` of `local_steps` steps; `loss` is that step's loss (None: unknown)."""
        with self._lock:
            row = self._row(facility)
            row.step, row.local_steps = step, local_steps
            row.loss = loss
            now = self._clock()
            if not self.live_mode and now - row.last_progress_line >= self.progress_interval:
                row.last_progress_line = now
                where = f" round {row.round}" if row.round is not None else ""
                self._line(f"{facility}{where}: step {step}/{local_steps} loss {_fmt_loss(loss)}")

    def privacy_spent(self, round: int, epsilon: float | None, delta: float) -> None:
        """Privacy on: after round `round` the run has spent `epsilon` (None: unbounded, no noise) at `delta`."""
        with self._lock:
            self._epsilon[round] = f"epsilon {'inf' if epsilon is None else f'{epsilon:.3g}'} (delta {delta:g})"

    def round_done(self, round: int, seconds: float, mean_loss: float | None) -> None:
        """Round `round` was aggregated after `seconds`; `mean_loss` over the accepted updates."""
        with self._lock:
            self._rounds_done = max(self._rounds_done, round)
            self._round = max(self._round, round)
            self._last_round = (round, seconds, mean_loss)
            self._round_seconds.append(seconds)
            self._last_round_at = self._clock()
            text = f"round {round}/{self.rounds} done in {_fmt_seconds(seconds)}, mean loss {_fmt_loss(mean_loss)}"
            text += f", {self._epsilon[round]}" if round in self._epsilon else ""
            eta = self.eta()
            if eta is not None and self._rounds_done < self.rounds:
                text += f"; ETA {_fmt_seconds(eta)}"
            self._say(text)

    def eta(self) -> float | None:
        """Seconds until the last round completes, by the mean of the rounds seen so far; None before the first."""
        with self._lock:
            if not self._round_seconds or self._last_round_at is None:
                return None
            left = max(0, self.rounds - self._rounds_done)
            per_round = sum(self._round_seconds) / len(self._round_seconds)
            return max(0.0, left * per_round - (self._clock() - self._last_round_at))

    @contextmanager
    def phase(self, label: str, progress_file: Path | None = None) -> Iterator[None]:
        """The server is busy with `label` (round 0's build, an evaluation) until the block ends.

        The live header shows it with its elapsed time and, when `progress_file` (a worker's
        progress.json) says, the step it is at; plain mode prints it when it starts and ends, and
        once every `progress_interval` seconds between.
        """
        with self._lock:
            self._phase = (label, self._clock(), progress_file)
            self._phase_ended.clear()
            self._say(label)
        ticker = None
        if not self.live_mode:
            ticker = threading.Thread(target=self._tick, name="fedhpc-progress-phase", daemon=True)
            ticker.start()
        outcome = "stopped after"
        try:
            yield
            outcome = "finished in"
        finally:
            self._phase_ended.set()
            if ticker is not None:
                ticker.join()
            with self._lock:
                self._say(f"{label}: {outcome} {_fmt_seconds(self._clock() - self._phase[1])}")
                self._phase = None

    def message(self, text: str) -> None:
        """A line the user should read (a rejected update, a resumed run, where the report is)."""
        with self._lock:
            self._say(text)

    def close(self) -> None:
        """Stop the live display, leaving its last frame on screen; idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._live is not None:
                self._live.stop()

    def __enter__(self) -> ProgressView:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- output ----------------------------------------------------------------------

    def _tick(self) -> None:
        """Plain mode: a line about the phase in progress every `progress_interval` seconds."""
        while not self._phase_ended.wait(self.progress_interval):
            with self._lock:
                if self._phase is not None:
                    self._line(self._phase_text(*self._phase))

    def _phase_text(self, label: str, started: float, progress_file: Path | None) -> str:
        step = _read_step(progress_file) if progress_file is not None else None
        return f"{label}{': ' + step if step else ''} ({_fmt_seconds(self._clock() - started)})"

    def _row(self, facility: str) -> _Facility:
        return self._facilities.setdefault(facility, _Facility())

    def _line(self, text: str) -> None:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self._clock()))
        self.console.print(f"{stamp}  {text}", markup=False, highlight=False, soft_wrap=True)

    def _say(self, text: str) -> None:
        if self._live is not None and not self._closed:
            # Printed above the live table, which keeps its place at the bottom.
            stamp = time.strftime("%H:%M:%S", time.localtime(self._clock()))
            self._live.console.print(Text(f"{stamp}  {text}"), highlight=False)
        else:
            self._line(text)

    def _render(self) -> Group:
        with self._lock:
            header = Text.assemble(
                ("fedhpc ", "bold"),
                (self.run_name, "bold cyan"),
                f"   round {self._round}/{self.rounds}",
                f"   ({self._rounds_done} done)   elapsed {_fmt_seconds(self._clock() - self._started)}",
            )
            if self._last_round is not None:
                r, seconds, loss = self._last_round
                header.append(f"   last round {r}: {_fmt_seconds(seconds)}, loss {_fmt_loss(loss)}", "dim")
                header.append(f", {self._epsilon[r]}" if r in self._epsilon else "", "dim")
            eta = self.eta()
            if eta is not None and self._rounds_done < self.rounds:
                header.append(f"   ETA {_fmt_seconds(eta)}", "bold")
            if self._phase is not None:
                header.append(f"\n{self._phase_text(*self._phase)}", "magenta")
            table = Table(expand=False, header_style="bold")
            for column, justify in (
                ("facility", "left"),
                ("state", "left"),
                ("round", "right"),
                ("step", "left"),
                ("loss", "right"),
                ("last round", "right"),
            ):
                table.add_column(column, justify=justify)  # type: ignore[arg-type]
            for name, row in self._facilities.items():
                if row.step is not None and row.local_steps:
                    step: Table | Text = Table.grid(padding=(0, 1))
                    step.add_row(
                        ProgressBar(
                            total=row.local_steps,
                            completed=row.step,
                            width=16,
                            complete_style="green",
                            finished_style="bold green",
                        ),
                        Text(f"{row.step}/{row.local_steps}"),
                    )
                else:
                    step = Text("-")
                table.add_row(
                    name,
                    Text(row.state, STATE_STYLES.get(row.state, "")),
                    "-" if row.round is None else str(row.round),
                    step,
                    _fmt_loss(row.loss),
                    _fmt_seconds(row.last_round_seconds),
                )
            return Group(header, table)


def _read_step(progress_file: Path) -> str | None:
    """What a worker's progress.json says it is doing (``loading``, ``step 3/10``), or None if unreadable yet."""
    try:
        progress = json.loads(progress_file.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(progress, dict) or not isinstance(progress.get("phase"), str):
        return None
    step, total = progress.get("step"), progress.get("local_steps")
    if progress["phase"] == "training" and isinstance(step, int) and isinstance(total, int) and total:
        return f"training step {step}/{total}"
    return progress["phase"][:40]
