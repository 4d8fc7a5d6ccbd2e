"""The one JSON Lines reader behind datasets, training data and predictions files: line numbers and errors."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from fedhpc.errors import DataError
from fedhpc.json_lines import read_json_lines


def test_values_come_with_their_line_numbers_blank_lines_skipped(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text('{"a": 1}\n\n   \n[2, "é"]\n"text"\n', encoding="utf-8")
    assert list(read_json_lines(path, "anything")) == [(1, {"a": 1}), (4, [2, "é"]), (5, "text")]


def test_errors_name_the_file_the_line_and_what_is_expected(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text('{"a": 1}\n{"a": \n', encoding="utf-8")
    with pytest.raises(DataError, match=rf"^{re.escape(str(path))}:2: not valid JSON \(.+\); one object a line$"):
        list(read_json_lines(path, "one object a line"))
    path.write_bytes(b'{"a": "\xff"}\n')
    with pytest.raises(DataError, match=rf"^{re.escape(str(path))}: not UTF-8 text \(.+\); one object a line$"):
        list(read_json_lines(path, "one object a line"))
    with pytest.raises(DataError, match=rf"^{re.escape(str(tmp_path / 'missing.jsonl'))}: cannot read: "):
        list(read_json_lines(tmp_path / "missing.jsonl", "one object a line"))


def test_a_reader_that_stops_early_never_reaches_a_later_bad_line(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text('{"a": 1}\n{broken\n', encoding="utf-8")
    lines = read_json_lines(path, "one object a line")
    assert next(lines) == (1, {"a": 1})
    lines.close()
