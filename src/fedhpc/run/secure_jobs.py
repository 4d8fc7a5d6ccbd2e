"""Secure aggregation's short jobs as the server runs them: the key job and the unmask job.

Each is a `WorkerTask` with a `secagg-*` mode, written, staged and submitted through the facility's own
launcher and mover exactly like a training job (so it works with every launcher, at the price of a
queue wait on a batch system), polled by `Launches.poll`, and its one published JSON file pulled back
into the run directory. A job that fails or publishes nothing is recorded and left out: the caller
decides whether what came back is enough.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

from fedhpc.errors import FedhpcError, RunInterrupted
from fedhpc.exchange import WorkerTask
from fedhpc.facility.base import JobSpec
from fedhpc.run.launches import Attempt, Launches

MAX_REPLY_BYTES = 16 * 1024 * 1024


class SecureJobs:
    def __init__(self, launches: Launches):
        self.launches = launches
        self.context = launches.context
        self.events = launches.events
        self.clock = launches.clock

    def run(self, round: int, mode: str, parts: dict[str, dict[str, Any]], file_name: str) -> dict[str, Any]:
        """Run one `mode` job per facility in `parts` (its task's secure_aggregation part); return their JSON."""
        attempts = []
        for facility, part in parts.items():
            try:
                attempts.append(self._launch(round, facility, mode, part))
            except RunInterrupted:
                raise
            except FedhpcError as e:
                self.events.record("job_finished", round, facility, state="failed", reason=str(e), seconds=0.0,
                                   mode=mode)
        results: dict[str, Any] = {}
        pending = list(attempts)
        while pending:
            for attempt in self.launches.poll(pending):
                result = self._pull(round, attempt, file_name)
                if result is not None:
                    results[attempt.facility] = result
            if not pending:
                break
            self.context.stop.check()
            self.clock.sleep_until(min(self.launches.timeout_at(a) for a in pending))
        return results

    def _launch(self, round: int, facility_name: str, mode: str, part: dict[str, Any]) -> Attempt:
        facility = self.launches.facilities[facility_name]
        mover = facility.mover
        attempt_id = self.launches.fresh_attempt_id(facility_name, f"r{round:04d}-{mode}")
        attempt = Attempt(facility_name, round, attempt_id, 0, 0, None, self.clock.now())
        task = WorkerTask(mode=mode, round=round, facility=facility_name, model=facility.recipe.model,
                          update_dir=Path(mover.facility_path(attempt.update_rel)), secure_aggregation=part,
                          device=facility.config.launcher.device)
        task_dir = self.context.run_dir.log_dir(round) / f"{facility_name}-{attempt_id}-task"
        shutil.rmtree(task_dir, ignore_errors=True)
        task.write(task_dir / "task.json")
        mover.push(task_dir, f"tasks/{attempt_id}")
        task_path = mover.facility_path(f"tasks/{attempt_id}/task.json")
        spec = JobSpec(name=f"{facility_name}-{attempt_id}",
                       argv=[sys.executable, "-m", "fedhpc", "worker", "--task", task_path, *mover.worker_args()],
                       log_dir=self.context.run_dir.log_dir(round), walltime_s=self.launches.algorithm.round_timeout,
                       task=task_path)
        self.events.record("secagg_job", round, facility_name, attempt=attempt_id, mode=mode)
        attempt.handle = facility.launcher.submit(spec)
        return attempt

    def _pull(self, round: int, attempt: Attempt, file_name: str) -> Any | None:
        """The job's JSON file, pulled into the run directory; None (recorded) if it is missing or not JSON."""
        destination = self.context.run_dir.update_dir(round, attempt.facility).with_name(
            f"{attempt.facility}-{attempt.attempt_id}")
        shutil.rmtree(destination, ignore_errors=True)
        try:
            self.launches.facilities[attempt.facility].mover.pull(attempt.update_rel, destination)
            path = destination / file_name
            if path.is_symlink() or not path.is_file() or path.stat().st_size > MAX_REPLY_BYTES:
                raise FedhpcError(f"{path}: missing, not a regular file, or over {MAX_REPLY_BYTES} bytes")
            return json.loads(path.read_text())
        except (FedhpcError, ValueError, OSError) as e:
            self.events.record("secagg_rejected", round, attempt.facility, attempt=attempt.attempt_id,
                               reason=str(e)[-2000:])
            return None
