"""The job's side of the proxystore mover: fetch what it reads from the store, publish what it writes.

With ``fedhpc worker --store JSON`` the task, the global and the update live
in the store rather than on a filesystem the server writes: every path in the
task is under the mover's ``facility_dir``, and its place there names its
objects (``facility_dir/global/r0003`` is ``global/r0003``), exactly as the
server's `ProxyStoreMover.facility_path` made them. The job (`worker.main`, `worker.train_recipe`)
calls in here before it reads and after it writes.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from pydantic import ValidationError

from fedhpc.errors import ConfigError, TransferError
from fedhpc.exchange.proxystore_connectors import StoreSpec, open_objects

logger = logging.getLogger(__name__)

# Least seconds between two progress reports sent during training (a phase change is always sent):
# a Redis or File object is rewritten in place, a Globus one costs a transfer.
PROGRESS_INTERVAL = {"redis": 1.0, "file": 1.0, "globus": 60.0}


class FacilityStore:
    def __init__(self, spec: StoreSpec):
        self.facility_dir = spec.mover.facility_dir
        self.objects = open_objects(spec)
        self.progress_interval = PROGRESS_INTERVAL[spec.mover.connector]
        self._progress_sent: tuple[str, float] | None = None  # (phase, monotonic time) of the last report sent

    @classmethod
    def from_json(cls, text: str) -> FacilityStore:
        """The store a ``--store`` argument describes (the server's `ProxyStoreMover.worker_args`)."""
        try:
            spec = StoreSpec.model_validate_json(text)
        except ValidationError as e:
            raise ConfigError(f"not a store description: {e}", key="--store") from e
        return cls(spec)

    def fetch(self, directory: Path) -> None:
        """Unpack the store's copy of `directory` there, unless it is there already (then it is checked)."""
        moved = self.objects.fetch(self.relative(directory), directory)
        if moved:
            logger.info("fetched %s from %s (%d bytes)", directory, self.objects.store.where, moved)

    def publish(self, directory: Path) -> None:
        moved = self.objects.publish(directory, self.relative(directory))
        logger.info("published %s to %s (%d bytes)", directory, self.objects.store.where, moved)

    def publish_progress(self, path: Path, phase: str) -> None:
        """Send progress.json on a change of phase, and otherwise at most every `progress_interval` seconds.

        Best effort: progress only feeds the server's live view, so a store that cannot
        take it now costs a warning, not the job (the update's publication does fail it).
        """
        now = time.monotonic()
        last = self._progress_sent
        if last is not None and last[0] == phase and now - last[1] < self.progress_interval:
            return
        try:
            self.objects.put_file(self.relative(path), path.read_bytes())
        except TransferError as e:
            logger.warning("progress not sent: %s", e)
            return
        self._progress_sent = (phase, now)

    def relative(self, path: Path) -> str:
        """`path`'s name in the store: where it lies under ``facility_dir``."""
        try:
            return Path(path).relative_to(self.facility_dir).as_posix()
        except ValueError:
            raise ConfigError(
                f"{path} is not under the mover's facility_dir {self.facility_dir}, so it has no object in the store; "
                "the task and --store must come from the same server"
            ) from None
