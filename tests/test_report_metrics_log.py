"""metrics.jsonl: one strict-JSON event per line, appended, readable after a crash."""

from __future__ import annotations

import json
import logging
import math
import threading
from pathlib import Path

import pytest

from fedhpc.report.metrics_log import MetricsLog, read_events


def test_emit_appends_one_flushed_line_per_event(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "metrics.jsonl"
    log = MetricsLog(path)
    record = log.emit("staged", round=1, facility="a", bytes=10, seconds=0.5, start=100.0)
    # Flushed: another reader sees the line before the log is closed.
    lines = path.read_text().splitlines()
    assert len(lines) == 1 and json.loads(lines[0]) == record
    assert record["event"] == "staged" and isinstance(record["ts"], float)
    log.emit("pulled", round=1, facility="a", bytes=20)
    log.close()
    assert [e["event"] for e in read_events(path)] == ["staged", "pulled"]


def test_reopening_appends(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    with MetricsLog(path) as log:
        log.emit("run_started", name="x", facilities=["a"], rounds=2, resumed_from=0)
    with MetricsLog(path) as log:
        log.emit("run_started", name="x", facilities=["a"], rounds=2, resumed_from=1)
    assert [e["resumed_from"] for e in read_events(path)] == [0, 1]


def test_numpy_scalars_and_paths_are_written_as_plain_json(tmp_path: Path) -> None:
    import numpy as np

    with MetricsLog(tmp_path / "m.jsonl") as log:
        log.emit("pulled", bytes=np.int64(7), seconds=np.float32(0.5), loss=[np.float32("nan")], path=tmp_path)
    (event,) = read_events(tmp_path / "m.jsonl")
    assert event["bytes"] == 7 and event["seconds"] == 0.5 and event["loss"] == [None]
    assert event["path"] == str(tmp_path)


def test_explicit_ts_wins(tmp_path: Path) -> None:
    with MetricsLog(tmp_path / "m.jsonl") as log:
        assert log.emit("eval", ts=12.5, round=0, scores={})["ts"] == 12.5


def test_non_finite_floats_become_null_so_the_file_stays_strict_json(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    with MetricsLog(path) as log:
        log.emit("accepted", round=1, facility="a", loss=[1.0, math.nan, math.inf], scores={"t": {"m": -math.inf}})
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text
    event = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard constant {c}"))
    assert event["loss"] == [1.0, None, None] and event["scores"] == {"t": {"m": None}}


def test_torn_last_line_is_dropped_and_resume_starts_a_new_line(tmp_path: Path, caplog) -> None:
    path = tmp_path / "m.jsonl"
    path.write_text('{"ts": 1, "event": "staged", "round": 1}\n{"ts": 2, "event": "pul')
    assert [e["event"] for e in read_events(path)] == ["staged"]
    with MetricsLog(path) as log:  # the server resumes after being killed mid-write
        log.emit("run_started", name="x")
    with caplog.at_level(logging.WARNING, logger="fedhpc.report.metrics_log"):
        events = read_events(path)
    assert [e["event"] for e in events] == ["staged", "run_started"]
    assert "m.jsonl:2 is not a JSON event" in caplog.text


def test_read_edge_cases(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    with pytest.raises(FileNotFoundError):
        read_events(path)
    path.write_text("")
    assert read_events(path) == []
    path.write_text('\n{"ts": 1, "event": "a"}\n\n[1, 2]\n{"ts": 2, "event": "b"}\n')
    assert [e["event"] for e in read_events(path)] == ["a", "b"]


def test_threads_do_not_interleave_lines(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    with MetricsLog(path) as log:
        def work(n: int) -> None:
            for i in range(200):
                log.emit("progress", facility=f"f{n}", step=i, note="x" * 500)

        threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert len(read_events(path)) == 800


def test_emit_after_close_is_an_error(tmp_path: Path) -> None:
    log = MetricsLog(tmp_path / "m.jsonl")
    log.close()
    with pytest.raises(ValueError, match="closed metrics log"):
        log.emit("late")
