"""Move exchange directories through a filesystem the server and the facility both see.

The staging area is a directory (``config.staging_dir``, or the run's
``staging/<facility>``); jobs read and write it at the same path. A directory
is published the way `fedhpc.exchange` writes one: filled under a hidden
temporary sibling, then renamed into place, so the other side sees all of it
or nothing. A push or pull that dies half-way leaves only a hidden
``.<name>.partial-*`` sibling, which nothing reads.

The staging area belongs to the facility: whatever is there may have been
placed by it, so the server checks every path component below the staging
directory before it reads or writes there (a symbolic link is refused, never
followed), opens files only if they are regular (never waiting on a FIFO), and
copies across the boundary in both directions, so no file the server keeps is
one a facility can write to.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from pathlib import Path, PurePosixPath

from fedhpc.config import FilesystemMoverConfig
from fedhpc.errors import ExchangeError, TransferError
from fedhpc.facility.base import Mover
from fedhpc.exchange.manifest import MANIFEST_NAME, MAX_MANIFEST_BYTES
from fedhpc.exchange.safetensors_stream import open_regular, read_regular
from fedhpc.exchange.writer import publish_directory

logger = logging.getLogger(__name__)

PEEK_MAX_BYTES = 1024 * 1024

# link() errors that mean "this filesystem or these permissions will not hard-link": copy instead.
_NO_LINK = {errno.EXDEV, errno.EPERM, errno.EACCES, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP}


class FilesystemMover(Mover):
    """`Mover` over a shared (or local) filesystem.

    Files are copied. A hard link would make the staged global and the server's
    committed one a single file, which the facility could rewrite in place (and
    the same for an update the server accepted). ``config.hardlink: true`` links
    instead, whenever source and destination are on one filesystem: for a
    facility trusted with the server's files, to save the copy (docs/contracts.md
    gives its cost).

    `push` and `pull` return the bytes published at the destination (the size
    of its files, whether copied or linked), or 0 when the destination already
    held the same directory: retrying a transfer that completed is a no-op.
    """

    def __init__(self, config: FilesystemMoverConfig, default_staging: Path):
        self.config = config
        self.staging_dir = Path(config.staging_dir or default_staging).absolute()

    def facility_path(self, relative: str) -> str:
        return str(self._staged(relative))

    def exists(self, relative: str) -> bool:
        return os.path.lexists(self._staged(relative))

    def peek(self, relative: str) -> bytes | None:
        """A small staged file's bytes (a worker's progress.json); None when absent, not a regular file
        (a link, a FIFO) or over `PEEK_MAX_BYTES`."""
        try:
            return read_regular(self._staged(relative), PEEK_MAX_BYTES)
        except (OSError, ExchangeError, TransferError):  # TransferError: a link on the way there
            return None

    def push(self, local_dir: Path, relative: str) -> int:
        """Publish `local_dir` at `relative` in the staging area, complete or not at all."""
        return self._transfer(Path(local_dir), self._staged(relative))

    def pull(self, relative: str, local_dir: Path) -> int:
        """Copy `relative` from the staging area to `local_dir`, which must not exist (or be this same copy)."""
        source = self._staged(relative)
        if not os.path.isdir(source):
            raise TransferError(
                f"cannot pull {source}: no such directory in the staging area of {self.staging_dir} "
                "(the facility has not published it; check the job's .err log)"
            )
        return self._transfer(source, Path(local_dir).absolute())

    def _staged(self, relative: str) -> Path:
        """`relative` under the staging directory, once no component of it there is a symbolic link.

        The facility can replace any directory of its area with a link (to the
        server's files, or anywhere); following one would make the server read
        or write outside the area. Components that do not exist yet are created
        by the server itself.
        """
        parts = PurePosixPath(relative).parts
        if not parts or PurePosixPath(relative).is_absolute() or ".." in parts:
            raise TransferError(f"{relative!r} must be a relative path inside the staging area, without '..'")
        path = self.staging_dir
        for part in parts:
            path = path / part
            try:
                mode = os.lstat(path).st_mode
            except FileNotFoundError:
                break
            except OSError as e:
                raise TransferError(f"cannot look at {path} in the staging area: {e.strerror}") from e
            if stat.S_ISLNK(mode):
                raise TransferError(
                    f"{path} is a symbolic link in the staging area of {self.staging_dir}; the server does not "
                    "follow links a facility could have placed (remove it)"
                )
        return self.staging_dir.joinpath(*parts)

    def _transfer(self, source: Path, dest: Path) -> int:
        if not os.path.isdir(source) or os.path.islink(source):
            raise TransferError(f"cannot copy {source} to {dest}: the source is not a directory")
        if os.path.lexists(dest):
            return _already_there(source, dest)
        try:
            nbytes = publish_directory(
                dest, lambda temp: copy_tree(source, temp, hardlink=self.config.hardlink),
                lambda: _already_there(source, dest),  # another transfer of the same directory won the rename
            )
        except OSError as e:
            raise TransferError(f"cannot copy {source} to {dest}: {e}") from e
        logger.debug("published %s at %s (%d bytes)", source, dest, nbytes)
        return nbytes


def _already_there(source: Path, dest: Path) -> int:
    """0 when `dest` holds the same exchange directory as `source` (same manifest.json); else an error."""
    try:
        same = read_regular(source / MANIFEST_NAME, MAX_MANIFEST_BYTES) == read_regular(
            dest / MANIFEST_NAME, MAX_MANIFEST_BYTES
        )
    except (OSError, ExchangeError):
        same = False
    if not same:
        raise TransferError(
            f"cannot copy {source} to {dest}: the destination exists and does not hold the same "
            f"{MANIFEST_NAME}; exchange directories are written once (remove it or use a new round)"
        )
    logger.debug("%s already holds %s; nothing to do", dest, source)
    return 0


def copy_tree(source: Path, dest: Path, *, hardlink: bool) -> int:
    """Recreate `source` at the new directory `dest`, linking or copying each file; return the bytes.

    Only directories and regular files are taken: a symbolic link could point
    outside the exchange directory, so it is refused rather than followed.
    """
    dest.mkdir()
    nbytes = 0
    link = hardlink and source.stat().st_dev == dest.stat().st_dev
    for entry in sorted(os.scandir(source), key=lambda e: e.name):
        target = dest / entry.name
        if entry.is_symlink() or not (entry.is_dir() or entry.is_file()):
            raise TransferError(f"{entry.path} is not a plain file or directory; exchange directories hold only those")
        if entry.is_dir():
            nbytes += copy_tree(Path(entry.path), target, hardlink=hardlink)
            continue
        if link:
            try:
                os.link(entry.path, target)
                nbytes += entry.stat().st_size
                continue
            except OSError as e:
                if e.errno not in _NO_LINK:
                    raise
                link = False  # this pair of directories will not link; copy the rest
        nbytes += copy_file(Path(entry.path), target)
    return nbytes


def copy_file(source: Path, dest: Path) -> int:
    """Copy one regular file durably (fsynced before the directory is renamed into place); return its size.

    The source is opened with `open_regular`, so a link or a FIFO put in its
    place after the directory was listed is refused rather than followed or
    waited on. The bytes copied are those the file held when it was opened.
    """
    try:
        source_fd = open_regular(source)
    except ExchangeError as e:
        raise TransferError(str(e)) from e
    try:
        size = os.fstat(source_fd).st_size
        dest_fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            _copy_bytes(source_fd, dest_fd, size)
            os.fsync(dest_fd)
            return os.fstat(dest_fd).st_size
        finally:
            os.close(dest_fd)
    finally:
        os.close(source_fd)


def _copy_bytes(source_fd: int, dest_fd: int, size: int) -> None:
    """The first `size` bytes of `source_fd` to `dest_fd`, in the kernel (sendfile) where it can."""
    offset = 0
    while offset < size:
        try:
            sent = os.sendfile(dest_fd, source_fd, offset, min(size - offset, 1 << 30))
        except OSError as e:
            if e.errno not in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP) or offset:
                raise
            sent = _copy_by_reading(source_fd, dest_fd, offset, size)
        if sent == 0:
            break  # the file shrank after it was opened: its checksum will say so
        offset += sent


def _copy_by_reading(source_fd: int, dest_fd: int, offset: int, size: int) -> int:
    """What `_copy_bytes` does where sendfile cannot copy between files; returns the bytes copied."""
    copied = 0
    while offset + copied < size:
        chunk = os.pread(source_fd, min(size - offset - copied, 8 << 20), offset + copied)
        if not chunk:
            break
        view = memoryview(chunk)
        while view:
            view = view[os.write(dest_fd, view):]
        copied += len(chunk)
    return copied
