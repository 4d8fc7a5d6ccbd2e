"""What every `Launcher` promises (facility/base.py, docs/contracts.md), asked of each backend the same way.

The backends (launcher_cases.py's `launcher_case`): local (real torchrun), Parsl on its LocalProvider (mpich's
mpiexec for two ranks), Globus Compute at its HTTP edge (the registered function run here), and the
simulated launcher on a virtual clock. Each test states one promise; what only one backend does stays
in that backend's test file.
"""

from __future__ import annotations

import time

import pytest

from fedhpc.errors import SubmitError
from fedhpc.facility.base import JobHandle, JobSpec, JobState, JobStatus
from launcher_cases import (  # noqa: F401 - launcher_case: the fixture
    BRIEF, FAILS, SLEEPS, LauncherCase, launcher_case, matches,
)


def test_a_job_that_fails_says_why_with_its_stderr_tail(launcher_case: LauncherCase):
    launcher = launcher_case.launcher()
    status = launcher_case.finish(launcher, launcher.submit(launcher_case.spec("alpha-r0001-a0", FAILS)))
    assert (status.state, status.returncode) == (JobState.FAILED, launcher_case.failure_returncode)
    assert matches(launcher_case.failure, status.reason), status.reason


def test_cancel_ends_a_running_job_on_every_rank_and_is_idempotent(launcher_case: LauncherCase):
    launcher = launcher_case.launcher(ranks=2)
    handle = launcher.submit(launcher_case.spec("alpha-r0002-a0", SLEEPS))
    launcher_case.until_running(launcher, handle, ranks=2)
    assert launcher.poll(handle).state is JobState.RUNNING
    started = time.monotonic()
    launcher.cancel(handle)
    assert time.monotonic() - started < 10
    status = launcher.poll(handle)
    assert (status.state, status.reason) == (JobState.CANCELLED, "cancelled")
    assert status.returncode is None or launcher_case.cancel_keeps_returncode
    assert launcher_case.left_running(handle) == []
    launcher.cancel(handle)
    assert launcher.poll(handle) == status


def test_a_job_runs_to_done_and_a_restarted_server_finds_it_while_it_runs(launcher_case: LauncherCase):
    """One job for both promises: every job the contract runs is a real process (or worker) somewhere."""
    spec = launcher_case.spec("alpha-r0003-a0", BRIEF)
    first = launcher_case.launcher()
    submitted = first.submit(spec)
    assert submitted.spec == spec and submitted.job_id
    second = launcher_case.launcher()  # a new server process: knows nothing of the job
    handle = second.reattach(spec, submitted.submitted_at)
    assert handle is not None and handle.job_id == submitted.job_id and handle.spec == spec
    assert second.poll(handle).state is launcher_case.first_state

    assert launcher_case.finish(first, submitted) == JobStatus(JobState.DONE, 0)
    assert first.poll(submitted) == JobStatus(JobState.DONE, 0)  # the end is kept
    status = launcher_case.finish(second, handle)
    assert (status.state, status.returncode) == (JobState.DONE, launcher_case.reattached_returncode)


def test_reattach_finds_no_job_that_was_never_submitted(launcher_case: LauncherCase):
    launcher = launcher_case.launcher()
    found = launcher.reattach(launcher_case.spec("gamma-r0003-a0", SLEEPS), 0.0)
    if launcher_case.replays_jobs:  # virtual jobs are re-created, the same job the lost server had
        assert found is not None and found.spec.name == "gamma-r0003-a0"
    else:
        assert found is None


def test_a_handle_it_did_not_make_is_unknown_and_a_bad_job_name_is_refused(launcher_case: LauncherCase):
    launcher = launcher_case.launcher()
    foreign = JobHandle("local-1", JobSpec("x", [], launcher_case.tmp_path), submitted_at=0.0)
    assert launcher.poll(foreign).state is JobState.UNKNOWN
    launcher.cancel(foreign)  # nothing to do, and nothing raised
    good = launcher_case.spec("alpha-r0004-a0", BRIEF)
    with pytest.raises(SubmitError, match="plain file name"):
        launcher.submit(JobSpec("a/b", good.argv, good.log_dir, task=good.task))


def test_close_ends_the_run_and_may_be_called_again(launcher_case: LauncherCase):
    launcher = launcher_case.launcher()
    assert launcher.close() is None
    assert launcher.close() is None
