"""Small files that a reader in another process sees whole or not at all.

Progress files, task files, job records and results are read while they are
being rewritten (the server peeks at a worker's progress every poll; a resumed
server reads the records its predecessor left). Writing a temporary sibling and
renaming it over the target is atomic on POSIX filesystems, so a reader gets
the old content or the new, never half of either. The temporary name carries
the process and thread, so two writers never share one.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any


def atomic_write_bytes(path: Path, data: bytes, *, make_parents: bool = False) -> None:
    """Replace `path` with `data`.

    `make_parents` creates its folder first. Off by default: where a vanished folder means
    something (a persistent worker's deleted inbox), the write must fail, not recreate it.
    """
    path = Path(path)
    if make_parents:
        path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        partial.write_bytes(data)
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str, *, make_parents: bool = False) -> None:
    """Replace `path` with `text` (UTF-8)."""
    atomic_write_bytes(path, text.encode("utf-8"), make_parents=make_parents)


def atomic_write_json(path: Path, payload: Any, *, indent: int | None = None, make_parents: bool = False) -> None:
    """Replace `path` with `payload` as JSON (`indent` as `json.dumps` takes it)."""
    atomic_write_text(path, json.dumps(payload, indent=indent), make_parents=make_parents)
