"""`fedhpc validate` on damaged experiment files: an exit-2 error naming the file (or --set) and the key, never a
traceback, never a hang, and nothing written.

Seeded mutations of every shipped example (byte flips, truncation, lines deleted or duplicated, values replaced
with extreme or wrong-typed ones, deep nesting, alias bombs, non-UTF-8 bytes, long and odd paths, broken --set
values) run in process through the real CLI. Each mutated file sits in a temporary copy of its example's folder
(the folder's entries linked in), so relative paths still resolve and the examples stay untouched.
"""

from __future__ import annotations

import os
import random
import re
import signal
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedhpc.cli import app

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*/*.yaml"))
SECONDS_PER_CASE = 10  # a mutation that takes longer is a hang

EXTREME_VALUES = [
    "0", "-1", "1e20", "100000000000000000000", "1.0e+20", "-1e400", ".inf", "-.inf", ".nan", "1e-400",
    "18446744073709551617", "0x7fffffffffffffff", "0o777", "0b101", "2**64", "''", "~", "null", "[]", "{}",
    "[1, 2]", "{a: b}", "yes", "no", "on", "2001-12-14", "12:30:45", '"\\x00"', '"a\\u0000b"', "!!binary aGk=",
    "!!python/object/apply:os.system [true]", "!!set {a, b}", "&x [*x]", "[[[[", "}", "'", '"', "*undefined",
    "a" * 5000, "/dev/null", "/dev/zero", "/proc/self/fd/0", "/", ".", "..", "~nouser_fedhpc/x", "~/x",
    "/" + "x" * 300, "x/" * 3000, "data", "data/alpha.jsonl/run", "[/red]markup[/]", "$HOME", "%TAG", "- x",
    "é", "\t", "1:2:3", "-", "?", "|", ">",
]
BROKEN_SET_VALUES = ["[", "{", "]", "}", "a: b: c", "*x", "&a", "!!binary ???", "'", '"', "[" * 200,
                     "[" * 70 + "]" * 70, "{a: [", "- a\n- b: [", "\x00", "\xff", "%YAML 9.9", "a\tb: c"]
SET_KEYS = ["algorithm.rounds", "name", "run_dir", "data.seq_len", "facilities.0.launcher.nprocs",
            "facilities.0.data", "facilities.9.name", "facilities.x", "model", "algorithm.rounds.deeper", "",
            "a..b", "facilities.0.mover.staging_dir", "model.lora.r", "exchange.shard_size"]
BOMB = "lol: &l0 [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]\n" for i in range(1, 9)
)
VALUE_LINE = re.compile(rb"^(\s*(?:- )?[A-Za-z_][\w.-]*:[ \t]+)(\S.*)$")


@dataclass
class Case:
    example: Path
    text: bytes
    overrides: list[str] = field(default_factory=list)
    kind: str = ""


def _lines(text: bytes) -> list[bytes]:
    return text.split(b"\n")


def mutate(rng: random.Random, example: Path) -> Case:
    """One seeded mutation of `example`; `kind` names the mutation for the failure message."""
    text = example.read_bytes()
    lines = _lines(text)
    kind = rng.choice(["flip", "truncate", "delete", "duplicate", "swap", "value", "value", "value", "path", "deep",
                       "bomb", "encoding", "special", "set", "set", "set_bad_key", "empty"])
    value_lines = [i for i, line in enumerate(lines) if VALUE_LINE.match(line)]
    if kind == "flip":
        data = bytearray(text)
        for _ in range(rng.randint(1, 6)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        text = bytes(data)
    elif kind == "truncate":
        text = text[: rng.randrange(len(text))]
    elif kind == "delete":
        del lines[rng.randrange(len(lines))]
        text = b"\n".join(lines)
    elif kind == "duplicate":
        i = rng.randrange(len(lines))
        lines.insert(i, lines[i])
        text = b"\n".join(lines)
    elif kind == "swap":
        i, j = rng.randrange(len(lines)), rng.randrange(len(lines))
        lines[i], lines[j] = lines[j], lines[i]
        text = b"\n".join(lines)
    elif kind in ("value", "path"):
        i = rng.choice(value_lines)
        pool = EXTREME_VALUES if kind == "value" else [v for v in EXTREME_VALUES if "/" in v or "~" in v]
        value = rng.choice(pool).encode()
        lines[i] = VALUE_LINE.sub(lambda m: m[1] + value, lines[i])
        text = b"\n".join(lines)
    elif kind == "deep":
        depth = rng.choice([65, 200, 1000, 5000])
        nested = rng.choice([b"[" * depth + b"]" * depth, b"{a: " * depth + b"1" + b"}" * depth])
        i = rng.choice(value_lines)
        lines[i] = VALUE_LINE.sub(lambda m: m[1] + nested, lines[i])
        text = b"\n".join(lines)
    elif kind == "bomb":
        text = text + b"\n" + BOMB.encode() if rng.random() < 0.5 else BOMB.encode()
    elif kind == "encoding":
        at = rng.randrange(len(text))
        text = text[:at] + rng.choice([b"\xff\xfe", b"\xe9", b"\xc3", b"\x80\x80", b"\xed\xa0\x80"]) + text[at:]
    elif kind == "special":
        at = rng.randrange(len(text))
        text = text[:at] + rng.choice([b":", b"- ", b"\t", b"{", b"[", b"&", b"*", b"!", b"%", b"@", b"`", b"\x00",
                                       b"\x1b", b"? ", b"|", b"#", b"'", b'"']) + text[at:]
    elif kind == "set":
        return Case(example, text, [f"{rng.choice(SET_KEYS)}={rng.choice(BROKEN_SET_VALUES + EXTREME_VALUES)}"],
                    kind)
    elif kind == "set_bad_key":
        return Case(example, text, [rng.choice(["=1", "novalue", "facilities.-1.name=x", "a.b.c.d.e.f=1",
                                                "name.sub=1", "facilities.0=1", "x" * 5000 + "=1",
                                                "model." + "a." * 3000 + "b=1"])], kind)
    else:
        text = rng.choice([b"", b"# only a comment\n", b"---\n---\n", b"\xef\xbb\xbf", b"null", b"[]", b"42"])
    return Case(example, text, [], kind)


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every entry under `root` (links not followed) with its size and modification time."""
    found = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder, name)
            status = path.lstat()
            found[str(path.relative_to(root))] = (status.st_size, status.st_mtime_ns)
    return found


@contextmanager
def _time_limit(seconds: int) -> Iterator[None]:
    def _hung(signum: int, frame: object) -> None:
        raise TimeoutError(f"no answer within {seconds} s")

    previous = signal.signal(signal.SIGALRM, _hung)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _stage(case: Case, workspace: Path) -> Path:
    """The mutated file in a fresh folder beside links to everything else of examples/ (``../quickstart/data``)."""
    examples = case.example.parent.parent
    for entry in examples.iterdir():
        if entry != case.example.parent:
            (workspace / entry.name).symlink_to(entry)
    folder = workspace / case.example.parent.name
    folder.mkdir()
    for entry in case.example.parent.iterdir():
        if entry.name != case.example.name:
            (folder / entry.name).symlink_to(entry)
    path = folder / case.example.name
    path.write_bytes(case.text)
    return path


def run_validate(case: Case, workspace: Path):
    """`fedhpc validate` on the case, from a working directory of its own inside `workspace`."""
    path = _stage(case, workspace)
    cwd = workspace / "cwd"
    cwd.mkdir()
    before = _snapshot(workspace)
    previous = os.getcwd()
    os.chdir(cwd)
    try:
        with _time_limit(SECONDS_PER_CASE):
            result = CliRunner().invoke(app, ["validate", str(path), *(f"--set={o}" for o in case.overrides)])
    finally:
        os.chdir(previous)
    assert _snapshot(workspace) == before, f"{case.kind} of {case.example.name} wrote into {workspace}"
    return result


def fuzz(count: int, seed: int, tmp_path: Path) -> Counter:
    """Run `count` mutations; fail at the first traceback or unexpected exit code, naming the mutation."""
    rng = random.Random(seed)
    examples_before = _snapshot(ROOT / "examples")
    outcomes: Counter = Counter()
    for n in range(count):
        case = mutate(rng, rng.choice(EXAMPLES))
        workspace = tmp_path / f"case{n:05d}"
        workspace.mkdir()
        result = run_validate(case, workspace)
        crashed = result.exception is not None and not isinstance(result.exception, SystemExit)
        assert not crashed and result.exit_code in (0, 2), (
            f"case {n} ({case.kind} of {case.example.name}, --set {case.overrides}): exit {result.exit_code}, "
            f"{result.exception!r}\n{result.output[-2000:]}\nfile: {case.text[:3000]!r}"
        )
        outcomes["valid" if result.exit_code == 0 else "exit 2"] += 1
    assert _snapshot(ROOT / "examples") == examples_before, "the examples folder changed"
    return outcomes


def test_a_hundred_mutations_never_show_a_traceback(tmp_path: Path):
    started = time.monotonic()
    outcomes = fuzz(100, seed=16, tmp_path=tmp_path)
    print(f"100 mutations: {outcomes['valid']} valid, {outcomes['exit 2']} exit 2, 0 tracebacks, "
          f"{time.monotonic() - started:.1f} s")
    assert outcomes["exit 2"] > 50  # the mutations do break most files


@pytest.mark.slow
def test_fifteen_hundred_mutations_never_show_a_traceback(tmp_path: Path):
    started = time.monotonic()
    outcomes = fuzz(1500, seed=1616, tmp_path=tmp_path)
    print(f"1500 mutations: {outcomes['valid']} valid, {outcomes['exit 2']} exit 2, 0 tracebacks, "
          f"{time.monotonic() - started:.1f} s")


# --- one case per root cause found by the fuzz, each naming where to look ----------------------------------------


QUICKSTART = ROOT / "examples" / "quickstart" / "experiment.yaml"


def _validate(tmp_path: Path, text: bytes | str, *overrides: str) -> tuple[int, str, Path]:
    case = Case(QUICKSTART, text.encode() if isinstance(text, str) else text, list(overrides), "explicit")
    workspace = tmp_path / "w"
    workspace.mkdir()
    started = time.monotonic()
    result = run_validate(case, workspace)
    assert time.monotonic() - started < 5
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, " ".join(result.output.split()), workspace / "quickstart" / QUICKSTART.name


def _quickstart() -> str:
    return QUICKSTART.read_text()


def test_non_utf8_bytes_name_the_file_and_line(tmp_path: Path):
    code, output, path = _validate(tmp_path, _quickstart().replace("name: quickstart", "name: caf\xe9").encode("latin-1"))
    assert code == 2
    assert f"{path}: is not UTF-8 text" in output and "(line 5, in 'name: caf" in output


def test_deep_nesting_is_refused_at_its_section(tmp_path: Path):
    code, output, path = _validate(tmp_path, _quickstart().replace("seq_len: 96", "seq_len: " + "[" * 1000 + "]" * 1000))
    assert code == 2
    assert f"{path}: data: not valid YAML at line 12, column 74" in output and "nested deeper than 64 levels" in output


def test_a_broken_set_value_names_the_set_argument_and_key(tmp_path: Path):
    code, output, _ = _validate(tmp_path, _quickstart(), "algorithm.rounds=[")
    assert code == 2
    assert "--set algorithm.rounds=[: algorithm.rounds: not valid YAML at line 1, column 2" in output
    assert "<unicode string>" not in output


def test_a_set_key_deeper_than_any_file_may_nest_is_refused(tmp_path: Path):
    key = "facilities.0.launcher.env." + "a." * 100 + "b"
    code, output, _ = _validate(tmp_path, _quickstart(), f"{key}=1")
    assert code == 2
    assert f"--set {key}"[:200] in output and "the key has 105 parts, more than 64" in output


def test_a_valid_set_value_out_of_range_names_the_set_argument(tmp_path: Path):
    code, output, _ = _validate(tmp_path, _quickstart(), "algorithm.rounds=0")
    assert code == 2
    assert "--set algorithm.rounds=0: algorithm.rounds: Input should be greater than 0" in output


def test_a_path_name_too_long_names_the_key(tmp_path: Path):
    code, output, path = _validate(tmp_path, _quickstart().replace("data/alpha.jsonl", "x" * 300))
    assert code == 2
    assert f"{path}: facilities.0.data: cannot use" in output and "File name too long" in output


def test_an_unknown_user_in_a_path_names_the_key(tmp_path: Path):
    code, output, path = _validate(tmp_path, _quickstart() + "run_dir: ~nouser_fedhpc/runs\n")
    assert code == 2
    assert f"{path}: run_dir: ~nouser_fedhpc/runs: ~nouser_fedhpc names no user on this machine" in output


def test_a_huge_seq_len_is_refused_before_the_memory_plan(tmp_path: Path):
    code, output, path = _validate(tmp_path, _quickstart().replace("seq_len: 96", "seq_len: 100000000000000000000"))
    assert code == 2
    assert f"{path}: data.seq_len: Input should be less than or equal to 1048576" in output


def test_an_alias_bomb_is_refused_at_once(tmp_path: Path):
    code, output, path = _validate(tmp_path, _quickstart() + BOMB)
    assert code == 2
    assert f"{path}: l5: line " in output and "expands to more than 100,000 values through its aliases" in output


def test_an_alias_inside_its_own_anchor_is_refused(tmp_path: Path):
    code, output, path = _validate(tmp_path, _quickstart() + "extra: &loop [*loop]\n")
    assert code == 2
    assert f"{path}: extra: line 29, column 8: an alias (*name) refers to the value that contains it" in output


@pytest.mark.parametrize("run_dir", ["/dev/null", "data/alpha.jsonl/run"])
def test_a_run_dir_that_cannot_be_a_directory_is_refused(tmp_path: Path, run_dir: str):
    code, output, path = _validate(tmp_path, _quickstart() + f"run_dir: {run_dir}\n")
    assert code == 2
    assert f"{path}: run_dir: " in output and "exists and is not a directory" in output


def test_a_run_dir_inside_a_facilitys_data_is_refused(tmp_path: Path):
    text = _quickstart().replace("data/alpha.jsonl", "data") + "run_dir: data/runs\n"  # alpha's data: a folder
    code, output, path = _validate(tmp_path, text)
    assert code == 2
    assert f"{path}: run_dir: " in output and "is inside facility alpha's data" in output


def test_a_staging_dir_inside_the_data_is_refused(tmp_path: Path):
    text = _quickstart().replace("data/alpha.jsonl", "data").replace("launcher: {kind: local, nprocs: 1}",
                                 "launcher: {kind: local, nprocs: 1}\n    mover: {staging_dir: data/stage}")
    code, output, path = _validate(tmp_path, text)
    assert code == 2
    assert f"{path}: facilities.0.mover.staging_dir: facility alpha's staging directory" in output
    assert "overlap" in output


@pytest.mark.parametrize(("text", "key"), [("nprocs: 2", "facilities.1.launcher.nprocs"),
                                           ("rounds: 3", "algorithm.rounds"), ("batch_size: 8", "algorithm.batch_size"),
                                           ("local_steps: 12", "algorithm.local_steps")])
def test_counts_no_run_could_use_are_refused(tmp_path: Path, text: str, key: str):
    name = text.split(":")[0]
    code, output, path = _validate(tmp_path, _quickstart().replace(text, f"{name}: 100000000000000000000"))
    assert code == 2
    assert f"{path}: {key}: Input should be less than or equal to" in output


def test_an_infinite_timeout_is_refused(tmp_path: Path):
    code, output, path = _validate(tmp_path, _quickstart().replace("round_timeout: 600", "round_timeout: .inf"))
    assert code == 2
    assert f"{path}: algorithm.round_timeout: Input should be a finite number" in output


def test_an_oversized_file_is_refused_unread(tmp_path: Path):
    code, output, path = _validate(tmp_path, _quickstart() + "#" * (2 * 1024 * 1024) + "\n")
    assert code == 2
    assert f"{path}: is larger than 1024 KiB" in output


def test_a_fifo_is_refused_without_waiting_for_a_writer(tmp_path: Path):
    fifo = tmp_path / "experiment.yaml"
    os.mkfifo(fifo)
    with _time_limit(5):
        result = CliRunner().invoke(app, ["validate", str(fifo)])
    assert result.exit_code == 2
    assert f"{fifo}: is not a regular file" in " ".join(result.output.split())


def test_markup_in_a_key_is_printed_not_interpreted(tmp_path: Path):
    code, output, path = _validate(tmp_path, _quickstart() + "'[/red]x[/]': 1\n")
    assert code == 2
    assert f"{path}: [/red]x[/]: unknown key" in output
