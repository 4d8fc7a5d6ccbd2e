"""Move exchange directories through a filesystem the server and the facility both see.

The staging area is a directory (``config.staging_dir``, or the run's
``staging/<facility>``); jobs read and write it at the same path. A directory
is published the way `fedhpc.exchange` writes one: filled under a hidden
temporary sibling, then renamed into place, so the other side sees all of it
or nothing. A push or pull that dies half-way leaves only a hidden
``.<name>.partial-*`` sibling, which nothing reads.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
from pathlib import Path, PurePosixPath

from fedhpc.config import FilesystemMoverConfig
from fedhpc.errors import TransferError
from fedhpc.exchange.manifest import MANIFEST_NAME
from fedhpc.exchange.writer import publish_directory

logger = logging.getLogger(__name__)

PEEK_MAX_BYTES = 1024 * 1024

# link() errors that mean "this filesystem or these permissions will not hard-link": copy instead.
_NO_LINK = {errno.EXDEV, errno.EPERM, errno.EACCES, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP}


class FilesystemMover:
    """`Mover` over a shared (or local) filesystem.

    With ``config.hardlink`` (the default), files are hard-linked rather than
    copied whenever source and destination are on one filesystem. That is safe
    because exchange files are immutable once published: writers only ever
    create new files in a temporary directory and rename it into place, and no
    one rewrites a published file, so the two names can never come to differ.
    (Deleting one name, e.g. when old rounds are pruned, leaves the other intact.)

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
        return self._staged(relative).exists()

    def peek(self, relative: str) -> bytes | None:
        """A small staged file's bytes (a worker's progress.json); None when absent or over `PEEK_MAX_BYTES`."""
        try:
            with open(self._staged(relative), "rb") as handle:
                data = handle.read(PEEK_MAX_BYTES + 1)
        except OSError:
            return None
        return data if len(data) <= PEEK_MAX_BYTES else None

    def push(self, local_dir: Path, relative: str) -> int:
        """Publish `local_dir` at `relative` in the staging area, complete or not at all."""
        return self._transfer(Path(local_dir), self._staged(relative))

    def pull(self, relative: str, local_dir: Path) -> int:
        """Copy `relative` from the staging area to `local_dir`, which must not exist (or be this same copy)."""
        source = self._staged(relative)
        if not source.is_dir():
            raise TransferError(
                f"cannot pull {source}: no such directory in the staging area of {self.staging_dir} "
                "(the facility has not published it; check the job's .err log)"
            )
        return self._transfer(source, Path(local_dir).absolute())

    def _staged(self, relative: str) -> Path:
        parts = PurePosixPath(relative).parts
        if not parts or PurePosixPath(relative).is_absolute() or ".." in parts:
            raise TransferError(f"{relative!r} must be a relative path inside the staging area, without '..'")
        return self.staging_dir.joinpath(*parts)

    def _transfer(self, source: Path, dest: Path) -> int:
        if not source.is_dir():
            raise TransferError(f"cannot copy {source} to {dest}: the source is not a directory")
        if dest.exists():
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
        same = (source / MANIFEST_NAME).read_bytes() == (dest / MANIFEST_NAME).read_bytes()
    except OSError:
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
    """Copy one file durably (fsynced before the directory is renamed into place); return its size."""
    shutil.copyfile(source, dest)
    fd = os.open(dest, os.O_RDONLY)
    try:
        os.fsync(fd)
        return os.fstat(fd).st_size
    finally:
        os.close(fd)
