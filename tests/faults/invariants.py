"""What must hold after any fault and a resume, checked on the run directory as a user would.

Shared by the fault-matrix tests: the experiment they run (the quickstart, two
rounds of two local steps, both facilities on the local launcher), running its
server with a fault in its environment, the uninterrupted reference global,
and the invariants: every round committed once, from every facility, nothing
lost or claimed twice, the final global bit-identical to the reference, no
process left behind and nothing written outside the run directory.
"""

from __future__ import annotations

import collections
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from conftest import FAULTS_DIR, QUICKSTART, fedhpc_command, processes_mentioning
from fedhpc.exchange import ExchangeDir
from fedhpc.report.metrics_log import read_events
from fedhpc.run.ledger import Event, Ledger

ROUNDS = 2
FACILITIES = ["alpha", "beta"]
RUN_TIMEOUT_S = 300
ORPHAN_GRACE_S = 5.0
"""How long processes of a killed server may take to go (a parent-death signal is immediate; torchrun's
agent then stops its ranks)."""


@dataclass(frozen=True)
class ServerRun:
    returncode: int
    stdout: str
    stderr: str
    seconds: float

    def explain(self) -> str:
        return f"exit {self.returncode} after {self.seconds:.1f} s\nstdout:\n{self.stdout[-3000:]}\n" \
               f"stderr:\n{self.stderr[-3000:]}"


def run_command(run_dir: Path, *overrides: str) -> list[str]:
    """`fedhpc run` of the quickstart into `run_dir`, cut to two short rounds."""
    return fedhpc_command(
        "run", str(QUICKSTART),
        "--set", f"run_dir={run_dir}",
        "--set", f"algorithm.rounds={ROUNDS}",
        "--set", "algorithm.local_steps=2",
        *overrides,
    )  # fmt: skip


def server_env(**faults: str) -> dict[str, str]:
    """The server's environment: tests/faults on PYTHONPATH (workers inherit it), plus the named faults."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEDHPC_TEST_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(FAULTS_DIR), os.environ.get("PYTHONPATH", "")]))
    env.update(faults)
    return env


def run_server(run_dir: Path, cwd: Path, env: dict[str, str], *overrides: str) -> ServerRun:
    """Run the server to its end (or its death), from `cwd`, and time it."""
    started = time.monotonic()
    result = subprocess.run(run_command(run_dir, *overrides), cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=RUN_TIMEOUT_S)
    return ServerRun(result.returncode, result.stdout, result.stderr, time.monotonic() - started)


def orphans_after(run_dir: Path, grace_s: float = ORPHAN_GRACE_S) -> tuple[int, list[str]]:
    """(how many processes mention `run_dir` right after its server died, those still there after `grace_s`)."""
    first = len(processes_mentioning(str(run_dir)))
    deadline = time.monotonic() + grace_s
    left = processes_mentioning(str(run_dir))
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = processes_mentioning(str(run_dir))
    return first, left


def tree_listing(root: Path) -> dict[str, tuple[int, int]]:
    """path -> (size, mtime_ns) of every file under `root`: a change anywhere shows."""
    listing = {}
    for path in sorted(root.rglob("*")):
        stat = path.lstat()
        listing[str(path.relative_to(root))] = (stat.st_size, stat.st_mtime_ns)
    return listing


def final_global(run_dir: Path) -> dict[str, torch.Tensor]:
    global_ = ExchangeDir(run_dir / "global" / f"r{ROUNDS:04d}")
    tensors = {name: global_.get(name).clone() for name in global_.names()}
    global_.close()
    return tensors


def reference_global(tmp_path_factory: pytest.TempPathFactory) -> dict[str, torch.Tensor]:
    """The final global of an uninterrupted run of the same experiment; computed once per session."""
    root = tmp_path_factory.getbasetemp() / "fault-reference"
    run_dir = root / "run"
    if not (root / "done").exists():
        root.mkdir(exist_ok=True)
        result = run_server(run_dir, root, server_env())
        assert result.returncode == 0, result.explain()
        check_rounds(run_dir)
        (root / "done").write_text("")
    return final_global(run_dir)


def differing_tensors(found: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> list[str]:
    """Names of the tensors that differ (or exist on one side only); empty when bit-identical."""
    names = sorted(set(found) | set(expected))
    return [n for n in names if n not in found or n not in expected or not torch.equal(found[n], expected[n])]


def _events(run_dir: Path, event: str) -> list[Event]:
    ledger = Ledger(run_dir / "ledger.sqlite")
    try:
        return ledger.events(event)
    finally:
        ledger.close()


def _round_failures(run_dir: Path, round: int) -> list[str]:
    """`facility attempt: state reason` of each job of `round` that did not end DONE, and each refused update."""
    found = [f"{e.facility} {e.detail.get('attempt')}: {e.detail.get('state')} {str(e.detail.get('reason'))[:300]}"
             for e in _events(run_dir, "job_finished") if e.round == round and e.detail.get("state") != "done"]
    return found + [f"{e.facility}: rejected {e.detail.get('message')}" for e in _events(run_dir, "rejected")
                    if e.round == round]


def check_rounds(run_dir: Path, facilities: dict[int, list[str]] | None = None) -> None:
    """Rounds 0..ROUNDS committed once each, round r from `facilities[r]` (default all); the events log agrees."""
    expected = {r: FACILITIES for r in range(1, ROUNDS + 1)} | (facilities or {})
    ledger = Ledger(run_dir / "ledger.sqlite")
    try:
        assert ledger.completed_rounds() == list(range(ROUNDS + 1))
        aggregated = ledger.events("aggregated")
    finally:
        ledger.close()
    assert collections.Counter(e.round for e in aggregated) == {r: 1 for r in range(ROUNDS + 1)}, \
        "a round aggregated twice, or not at all"
    for event in aggregated:
        if event.round:
            assert event.detail["facilities"] == expected[event.round], \
                f"round {event.round} aggregated from {event.detail['facilities']}, not {expected[event.round]}; " \
                f"its failures: {_round_failures(run_dir, event.round)}"
            assert event.detail["num_updates"] == len(expected[event.round])
    logged = read_events(run_dir / "metrics.jsonl")
    for name, rounds in (("aggregated", range(ROUNDS + 1)), ("round_complete", range(1, ROUNDS + 1))):
        counted = collections.Counter(e.get("round") for e in logged if e["event"] == name)
        assert counted == {r: 1 for r in rounds}, f"metrics.jsonl: `{name}` per round is {dict(counted)}"


def check_attempts(run_dir: Path) -> None:
    """Attempt ids are never reused; every job that ended badly, was cancelled or relaunched, and every update
    refused, says why; and every job a stopped server had launched is accounted for after the resume: it
    ended or was cancelled, its update was taken, or the ledger says it was relaunched (under a new id)."""
    submitted = [(e.round, e.facility, e.detail.get("attempt")) for e in _events(run_dir, "submitted")]
    repeated = [key for key, n in collections.Counter(submitted).items() if n > 1]
    assert not repeated, f"attempt ids submitted more than once: {repeated}"
    stopped = [e for name in ("rejected", "job_cancelled", "job_abandoned", "late_dropped")
               for e in _events(run_dir, name)]
    relaunched = _events(run_dir, "relaunched")
    failed = [e for e in _events(run_dir, "job_finished") if e.detail.get("state") != "done"]
    for event in stopped + relaunched + failed:
        reason = event.detail.get("reason") or event.detail.get("message")
        assert reason, f"{event.event} without a reason: {event}"
    launched = {(e.round, e.facility, e.detail.get("attempt")) for name in ("launching", "submitted")
                for e in _events(run_dir, name)}
    ended = {(e.round, e.facility, e.detail.get("attempt"))
             for name in ("job_finished", "accepted", "collected_after_restart")
             for e in _events(run_dir, name)} | {(e.round, e.facility, e.detail.get("attempt")) for e in stopped}
    ended |= {(e.round, e.facility, e.detail.get("previous")) for e in relaunched}
    unaccounted = sorted(launched - ended, key=str)
    assert not unaccounted, f"jobs launched and never accounted for (ended, taken in or relaunched): {unaccounted}"


def check_no_failed_jobs(run_dir: Path) -> None:
    """Only the server was at fault: no job the server saw end may have failed, no update been refused."""
    failed = [e for e in _events(run_dir, "job_finished") if e.detail.get("state") != "done"]
    assert not failed, "jobs failed after a server fault: " + "; ".join(
        f"round {e.round} {e.facility} {e.detail.get('attempt')}: {str(e.detail.get('reason'))[:300]}"
        for e in failed
    )
    rejected = _events(run_dir, "rejected")
    assert not rejected, f"updates refused after a server fault: {[(e.round, e.facility, e.detail) for e in rejected]}"


def check_left_nothing(run_dir: Path, cwd: Path, outside_before: list[str], example_before: dict) -> None:
    """No process mentions the run directory, and nothing was written beside it or into the example."""
    assert not processes_mentioning(str(run_dir)), "processes left running after the run ended"
    assert sorted(p.name for p in cwd.iterdir()) == [run_dir.name], "files written outside the run directory"
    assert sorted(p.name for p in cwd.parent.iterdir()) == outside_before, "files written beside the test's folder"
    assert tree_listing(QUICKSTART.parent) == example_before, "the example's folder changed"
