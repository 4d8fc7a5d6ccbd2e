"""Reading JSON Lines files (one JSON value a line) with errors that name the file and the line.

Datasets, a facility's training data and predictions files are all JSON Lines,
read by the worker, `fedhpc data`, `fedhpc eval` and `fedhpc score`; one reader
keeps their errors alike: `<file>:<line>: not valid JSON (<why>); <what the file
should hold>`. Lines are streamed, so a caller that stops early (the first records
of a large training file) reads no further. Needs nothing beyond the standard
library, so the worker's record reading stays free of torch and RDKit.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fedhpc.errors import DataError


def read_json_lines(path: Path, expected: str) -> Iterator[tuple[int, Any]]:
    """(1-based line number, parsed value) of each non-blank line of `path`, in order.

    `expected` says what the file should hold; it ends the error raised for a
    line that is not JSON or a file that is not UTF-8. What each value must be
    is the caller's to check (with the line number it is given).
    """
    try:
        with open(path, encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    value = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}:{number}: not valid JSON ({e.msg}); {expected}") from e
                yield number, value
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e.reason}); {expected}") from e
    except OSError as e:
        raise DataError(f"{path}: cannot read: {e.strerror or e}") from e
