"""Move exchange directories with Globus Transfer, between a collection on the server and the facility's.

For facilities whose file systems the server cannot mount: their data transfer
nodes are reached through a Globus collection, and so is the server (Globus
Connect Server, or Globus Connect Personal on the server's machine). Each end's
directory has two names, the collection's and the file system's
(`GlobusTransferMoverConfig`): the server writes and reads ``server_dir``, the
facility's jobs read and write ``facility_dir``, Globus copies between
``server_path`` and ``facility_path``.

`push` transfers into a hidden sibling of the destination at the facility,
``.<name>.partial-globus``, then publishes it with one `operation_rename`, so
the facility's jobs see the whole directory or nothing, as with the filesystem
mover. The sibling's name is fixed rather than random so that a push retried
after a crash reuses it: with ``sync_level`` checksum Globus re-sends only the
files that differ, and ``delete_destination_extra`` leaves it an exact copy.
A directory outside ``server_dir`` is first staged into it (hard links where the
file system allows; exchange files are never rewritten, so links are safe).
`pull` transfers into a hidden directory under ``server_dir``, checks it
against its manifest.json (Globus's checksums guard the copy; the manifest
guards against a facility publishing something other than it claims), then
renames it into place. A destination that already holds the same manifest.json
makes either a no-op returning 0.

Each transfer is one Globus task with ``verify_checksum``, a label naming the
run, facility and directory, and Globus's own deadline shortly after ours, so a
task outlives a killed server by at most that. The server polls it, the interval
doubling from ``poll_interval`` up to `MAX_POLL_INTERVAL_S`, until it succeeds,
fails (raised with Globus's fault description), stops for credentials, or
``deadline`` passes (cancelled). Errors say what to do (`globus_errors`): a
missing consent or an expired login is an `AuthError` naming ``fedhpc login``; a
permission refused by a collection is a `TransferError` pointing at its
administrator or the path.

`peek` returns None: reading one small file is a Globus task, seconds rather
than milliseconds, so the progress view shows no step counts for this facility
and ``mode: persistent`` (which watches heartbeat files) is refused by the
configuration.

The `TransferClient` is injected, or built on first use by
`fedhpc.globus.auth.transfer_client`, so creating a mover never touches
credentials. globus-sdk is imported only when a transfer is made: it is an
optional dependency (``fedhpc[globus]``).
"""

from __future__ import annotations

import datetime
import errno
import logging
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from fedhpc.config import GlobusTransferMoverConfig
from fedhpc.errors import AuthError, FedhpcError, TransferError, UpdateRejected
from fedhpc.exchange import MANIFEST_NAME, ExchangeDir
from fedhpc.exchange.writer import fsync_path, publish_directory
from fedhpc.facility.base import Mover
from fedhpc.facility.movers.filesystem import copy_tree
from fedhpc.facility.movers.globus_errors import describe, explain, sdk, task_failure

if TYPE_CHECKING:
    import globus_sdk

logger = logging.getLogger(__name__)

MAX_POLL_INTERVAL_S = 60.0
"""The longest wait between two looks at a task; also how long after ours Globus's own deadline falls."""
LABEL_MAX = 128
_LABEL_UNSAFE = re.compile(r"[^A-Za-z0-9 _,-]+")  # Globus task labels: letters, digits, space, - _ ,
_PARTIAL = "partial-globus"
_RUNNING_WELL = (None, "OK", "Queued")
class GlobusTransferMover(Mover):
    """`Mover` through Globus Transfer; see the module docstring.

    `default_staging` (``<run_dir>/staging/<facility>``, as for every mover) only names
    the run and the facility in task labels: the server's side is ``server_dir``.
    """

    def __init__(
        self,
        config: GlobusTransferMoverConfig,
        default_staging: Path | None = None,
        client: globus_sdk.TransferClient | None = None,
    ):
        self.config = config
        self.server_dir = Path(config.server_dir).absolute()
        self._client = client
        staging = Path(default_staging) if default_staging is not None else None
        self._label_prefix = f"fedhpc {staging.parent.parent.name} {staging.name}" if staging else "fedhpc"

    @property
    def client(self) -> globus_sdk.TransferClient:
        if self._client is None:
            from fedhpc.globus.auth import transfer_client

            consents = [collection for collection, needed in (
                (self.config.facility_collection, self.config.facility_data_access),
                (self.config.server_collection, self.config.server_data_access),
            ) if needed]
            self._client = transfer_client(consents)
        return self._client

    # --- the Mover protocol ----------------------------------------------------------------------

    def facility_path(self, relative: str) -> str:
        return str(PurePosixPath(self.config.facility_root, *_parts(relative)))

    def exists(self, relative: str) -> bool:
        return self._stat(self._at_facility(relative)) is not None

    def peek(self, relative: str) -> bytes | None:
        """None: reading a file over Globus is a transfer task, not a cheap look (see the module docstring)."""
        return None

    def push(self, local_dir: Path, relative: str) -> int:
        """Publish `local_dir` at `relative` in the facility's staging directory, complete or not at all."""
        source = Path(local_dir).absolute()
        if not source.is_dir():
            raise TransferError(f"cannot push {source}: not a directory")
        dest = self._at_facility(relative)
        if self._stat(dest) is not None:
            return self._already_at_facility(source, dest)
        partial = dest.parent / f".{dest.name}.{_PARTIAL}"
        with self._served(source, relative) as served:
            self._transfer(self.config.server_collection, served, self.config.facility_collection, partial,
                           f"push {relative}")
        coll = self.config.facility_collection
        try:
            self._call(f"publishing {dest} on collection {coll}",
                       lambda client: client.operation_rename(coll, str(partial), str(dest)))
        except TransferError:
            if self._stat(dest) is None:
                raise
            return self._already_at_facility(source, dest)  # another push of the same directory won
        nbytes = _tree_bytes(source)
        logger.debug("published %s at %s on collection %s (%d bytes)", source, dest, coll, nbytes)
        return nbytes

    def pull(self, relative: str, local_dir: Path) -> int:
        """Copy `relative` from the facility to `local_dir` (absent, or holding this same directory), verified."""
        source = self._at_facility(relative)
        dest = Path(local_dir).absolute()
        if self._stat(source) is None:
            raise TransferError(
                f"cannot pull {source} from collection {self.config.facility_collection}: no such directory "
                "(the facility has not published it; check the job's .err log)"
            )
        scratch = self._scratch(relative)
        try:
            self._transfer(self.config.facility_collection, source, self.config.server_collection,
                           self._served_path(scratch), f"pull {relative}")
            _verify_arrival(scratch, source, relative)
            if dest.exists():
                return _already_here(scratch, dest)
            nbytes = _tree_bytes(scratch)
            _move_into_place(scratch, dest)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        return nbytes

    # --- paths -----------------------------------------------------------------------------------

    def _at_facility(self, relative: str) -> PurePosixPath:
        return PurePosixPath(self.config.facility_path, *_parts(relative))

    def _served_path(self, local: Path) -> PurePosixPath:
        """`local`, a path under ``server_dir``, as the server's collection names it."""
        return PurePosixPath(self.config.server_root, *local.relative_to(self.server_dir).parts)

    def _scratch(self, relative: str) -> Path:
        """A new hidden path under ``server_dir`` (the run directory's `.*.partial-*` clean-up pattern)."""
        flat = "-".join(_parts(relative))
        return self.server_dir / f".{flat}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}"

    @contextmanager
    def _served(self, source: Path, relative: str) -> Iterator[PurePosixPath]:
        """`source` as the server's collection names it, staged into ``server_dir`` while in use if outside it."""
        resolved, root = source.resolve(), self.server_dir.resolve()
        if resolved.is_relative_to(root):
            yield PurePosixPath(self.config.server_root, *resolved.relative_to(root).parts)
            return
        staged = self._scratch(relative)
        try:
            self.server_dir.mkdir(parents=True, exist_ok=True)
            copy_tree(source, staged, hardlink=True)
        except OSError as e:
            shutil.rmtree(staged, ignore_errors=True)
            raise TransferError(
                f"cannot stage {source} into mover.server_dir {self.server_dir} for Globus: {e}"
            ) from e
        try:
            yield self._served_path(staged)
        finally:
            shutil.rmtree(staged, ignore_errors=True)

    # --- Globus calls ----------------------------------------------------------------------------

    def _call(self, doing: str, call: Callable[[globus_sdk.TransferClient], Any], *, missing_ok: bool = False) -> Any:
        """`call(client)`, with every Globus error turned into an `AuthError` or `TransferError` that says what to do.

        With `missing_ok`, a path the collection reports as not found gives None.
        """
        globus = sdk()
        try:
            return call(self.client)
        except globus.GlobusError as e:
            if missing_ok and isinstance(e, globus.GlobusAPIError) and e.http_status == 404 and (
                "Endpoint" not in (e.code or "")
            ):
                return None
            raise explain(e, doing, self.config) from e

    def _stat(self, path: PurePosixPath) -> Any:
        coll = self.config.facility_collection
        return self._call(f"looking up {path} on collection {coll}",
                          lambda client: client.operation_stat(coll, str(path)), missing_ok=True)

    def _transfer(
        self, source_collection: str, source: PurePosixPath, dest_collection: str, dest: PurePosixPath, what: str,
        *, recursive: bool = True,
    ) -> None:
        """One Globus task copying `source` to `dest`, waited for; raises unless it succeeded."""
        globus = sdk()
        deadline = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(
            seconds=self.config.deadline + MAX_POLL_INTERVAL_S
        )
        data = globus.TransferData(
            source_collection,
            dest_collection,
            label=self._label(what),
            sync_level=self.config.sync_level,
            verify_checksum=self.config.verify_checksum,
            deadline=deadline,
            delete_destination_extra=recursive,
            notify_on_succeeded=False,  # a run makes several transfers a round: no mail for each
            notify_on_failed=False,  # fedhpc reports the failure itself
        )
        suffix = "/" if recursive else ""
        data.add_item(f"{source}{suffix}", f"{dest}{suffix}", recursive=recursive)
        submitted = self._call(f"{what}: submitting the transfer {source_collection}:{source} -> "
                               f"{dest_collection}:{dest}", lambda client: client.submit_transfer(data))
        task_id = submitted["task_id"]
        logger.info("%s: Globus task %s (%s)", what, task_id, data["label"])
        self._wait(task_id, what)

    def _label(self, what: str) -> str:
        return _LABEL_UNSAFE.sub("-", f"{self._label_prefix} {what}")[:LABEL_MAX].strip()

    def _wait(self, task_id: str, what: str) -> None:
        started = time.monotonic()
        interval = self.config.poll_interval
        reported = None
        while True:
            task = self._call(f"{what}: looking at Globus task {task_id}", lambda client: client.get_task(task_id))
            status, nice = task["status"], task.get("nice_status")
            if status == "SUCCEEDED":
                return
            if status == "FAILED":
                raise TransferError(task_failure(task_id, task, what, self._error_events(task_id)))
            if status == "INACTIVE":
                self._cancel(task_id)
                raise AuthError(
                    f"{what}: Globus task {task_id} stopped (INACTIVE: {describe(task)}): the credentials it runs "
                    "with expired, so it was cancelled. Run `fedhpc login`, then run the experiment again (it resumes)"
                )
            if nice not in _RUNNING_WELL and nice != reported:
                logger.warning("%s: Globus task %s is retrying: %s", what, task_id, describe(task))
                reported = nice
            remaining = self.config.deadline - (time.monotonic() - started)
            if remaining <= 0:
                if self._cancel(task_id) == "SUCCEEDED":
                    return
                lately = f"; it last reported {describe(task)}" if nice not in _RUNNING_WELL else ""
                raise TransferError(
                    f"{what}: Globus task {task_id} did not finish within mover.deadline "
                    f"({self.config.deadline:g} s) and was cancelled{lately}. Raise mover.deadline for a larger "
                    f"model or a slower link; the task's events are at https://app.globus.org/activity/{task_id}"
                )
            time.sleep(min(interval, remaining))
            interval = min(interval * 2, MAX_POLL_INTERVAL_S)

    def _cancel(self, task_id: str) -> str | None:
        """Cancel the task; return its final status (it may have finished first), None if Globus would not say."""
        try:
            self._call(f"cancelling Globus task {task_id}", lambda client: client.cancel_task(task_id))
        except FedhpcError as e:
            logger.warning("could not cancel Globus task %s: %s", task_id, e)
        try:
            return self._call(f"looking at Globus task {task_id}", lambda client: client.get_task(task_id))["status"]
        except FedhpcError:
            return None

    def _error_events(self, task_id: str) -> list[Any]:
        """The failed task's last error events, newest first; none when Globus will not say."""
        try:
            return self._call(f"reading the events of Globus task {task_id}", lambda client: list(
                client.task_event_list(task_id, limit=10, query_params={"filter": "is_error:1"})))
        except FedhpcError:
            return []

    def _already_at_facility(self, source: Path, dest: PurePosixPath) -> int:
        """0 when `dest` at the facility holds `source`'s manifest.json (fetched to compare); else an error."""
        local = source / MANIFEST_NAME
        remote = dest / MANIFEST_NAME
        same = False
        if local.is_file() and self._stat(remote) is not None:
            scratch = self._scratch(f"{dest.name}-manifest")
            try:
                self._transfer(self.config.facility_collection, remote, self.config.server_collection,
                               self._served_path(scratch) / MANIFEST_NAME, f"compare {dest.name}/{MANIFEST_NAME}",
                               recursive=False)
                same = (scratch / MANIFEST_NAME).read_bytes() == local.read_bytes()
            except OSError:
                same = False
            finally:
                shutil.rmtree(scratch, ignore_errors=True)
        if not same:
            raise TransferError(
                f"cannot push {source} to {dest} on collection {self.config.facility_collection}: the destination "
                f"exists and does not hold the same {MANIFEST_NAME}; exchange directories are written once "
                "(remove it at the facility or use a new run)"
            )
        logger.debug("%s already holds %s; nothing to do", dest, source)
        return 0


def _parts(relative: str) -> tuple[str, ...]:
    path = PurePosixPath(relative)
    if not path.parts or path.is_absolute() or ".." in path.parts:
        raise TransferError(f"{relative!r} must be a relative path inside the staging area, without '..'")
    return path.parts


def _tree_bytes(directory: Path) -> int:
    return sum(path.stat().st_size for path in directory.rglob("*") if path.is_file())


def _verify_arrival(local: Path, remote: PurePosixPath, relative: str) -> None:
    """Check an arrived exchange directory against its manifest.json (a directory without one has none to meet)."""
    if not (local / MANIFEST_NAME).is_file():
        return
    try:
        arrived = ExchangeDir(local)
        try:
            arrived.verify(check_finite=False)
        finally:
            arrived.close()
    except UpdateRejected as e:
        raise TransferError(
            f"{relative} arrived from the facility but does not match its manifest: "
            f"{str(e).replace(str(local), str(remote))}; it was damaged at the facility or changed during the transfer"
        ) from e


def _already_here(arrived: Path, dest: Path) -> int:
    try:
        same = (arrived / MANIFEST_NAME).read_bytes() == (dest / MANIFEST_NAME).read_bytes()
    except OSError:
        same = False
    if not same:
        raise TransferError(
            f"cannot pull into {dest}: it exists and does not hold the same {MANIFEST_NAME}; remove it first"
        )
    return 0


def _move_into_place(source: Path, dest: Path) -> None:
    """Rename `source` to `dest`; across file systems, copy to a hidden sibling of `dest` and rename that."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.rename(source, dest)
    except OSError as e:
        if e.errno != errno.EXDEV:
            raise TransferError(f"cannot move the pulled directory into {dest}: {e}") from e
        try:
            publish_directory(dest, lambda temp: copy_tree(source, temp, hardlink=False),
                              lambda: _already_here(source, dest))
        except OSError as e2:
            raise TransferError(f"cannot copy the pulled directory into {dest}: {e2}") from e2
        return
    fsync_path(dest.parent)
