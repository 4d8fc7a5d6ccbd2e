"""`fedhpc data smolinstruct` end to end through the CLI, on the hand-written miniature release."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedhpc.chem.release import read_release
from fedhpc.chem.smolinstruct import load_records
from fedhpc.cli import app
from fedhpc.config import DataConfig
from fedhpc.exchange import ExchangeDir, TrainSettings
from fedhpc.worker.main import run_task
from smolinstruct_release import TASKS, write_release
from test_worker_run import MODEL, init_global, train_task

runner = CliRunner()
TRAIN_COUNTS = {task: len(spec["samples"]["train"]) for task, spec in TASKS.items()}


@pytest.fixture
def release(tmp_path: Path) -> Path:
    return write_release(tmp_path)


def build(release: Path, out: Path, *args: str):
    return runner.invoke(app, ["data", "smolinstruct", "--release", str(release), "--out", str(out), *args])


def key(record: dict) -> tuple:
    """What identifies a train record of the miniature: task, question and answer (SIDER: and target)."""
    return record["task"], record["input"], record["output"], record["target"]


def facility_records(out: Path, name: str) -> list[dict]:
    return load_records(out / "facilities" / name, "train")


def test_by_task_with_a_count_and_a_missing_count(release: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    spec = "polaris=2:s2f+esol,aurora:sider+captioning+retrosynthesis+bbbp"  # aurora: no count, all of its tasks
    result = build(release, out, "--facilities", spec, "--seed", "3")
    assert result.exit_code == 0, result.output
    polaris, aurora = facility_records(out, "polaris"), facility_records(out, "aurora")
    assert len(polaris) == 2 and {r["task"] for r in polaris} <= {"name_conversion-s2f", "property_prediction-esol"}
    aurora_tasks = ("property_prediction-sider", "molecule_captioning", "retrosynthesis", "property_prediction-bbbp")
    assert Counter(r["task"] for r in aurora) == {task: TRAIN_COUNTS[task] for task in aurora_tasks}
    release_train = {key(r) for r in read_release(release / "data", "train")}
    assert {key(r) for r in polaris + aurora} <= release_train
    lines = result.output.splitlines()
    assert lines[1].split() == ["task", "polaris", "aurora", "dataset/train", "dataset/dev", "dataset/test",
                                "dataset/test_subset"]  # fmt: skip
    assert "property_prediction-sider 0 3 3 1 2 1" in [" ".join(line.split()) for line in lines]
    info = json.loads((out / "facilities" / "partition_info.json").read_text())
    assert info["scheme"] == "by_task" and info["facilities"]["polaris"] == Counter(r["task"] for r in polaris)


def test_the_dataset_holds_every_split_as_the_release_gives_it(release: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert build(release, out, "--facilities", "a,b").exit_code == 0
    for split in ("train", "dev", "test", "test_subset"):
        built = load_records(out / "dataset", split)
        original = list(read_release(release / "data", split))
        assert [{**r, "idx": None} for r in built] == [{**r, "idx": None} for r in original], split
        for task in TASKS:  # a built record's idx is its line in the task file
            assert [r["idx"] for r in built if r["task"] == task] == list(range(sum(r["task"] == task for r in built)))
    info = json.loads((out / "dataset" / "dataset_info.json").read_text())
    assert info["dataset"]["retrosynthesis"] == {"train": 1, "dev": 1, "test": 3, "test_subset": 2}


def test_iid_gives_every_train_record_to_exactly_one_facility(release: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert build(release, out, "--facilities", "a,b,c", "--partition", "iid").exit_code == 0
    parts = [facility_records(out, name) for name in ("a", "b", "c")]
    assert sorted(len(p) for p in parts) == [5, 5, 5]
    every = Counter(key(r) for part in parts for r in part)
    assert every == Counter(key(r) for r in read_release(release / "data", "train"))


def test_dirichlet_is_seeded_and_covers_train(release: Path, tmp_path: Path) -> None:
    def split(out: Path, seed: str) -> list[list[tuple]]:
        assert build(release, out, "--facilities", "a,b", "--partition", "dirichlet:0.3", "--seed", seed).exit_code == 0
        return [sorted(key(r) for r in facility_records(out, name)) for name in ("a", "b")]

    first, again, other = split(tmp_path / "one", "7"), split(tmp_path / "two", "7"), split(tmp_path / "three", "8")
    assert first == again and first != other
    assert sum(len(part) for part in first) == sum(TRAIN_COUNTS.values())
    assert json.loads((tmp_path / "one" / "facilities" / "partition_info.json").read_text())["alpha"] == 0.3


def test_selfies_builds_from_raw_selfies(release: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert build(release, out, "--facilities", "a:s2f,b:retrosynthesis", "--selfies").exit_code == 0
    (record,) = facility_records(out, "b")
    assert record["output"] == "From <SELFIES> [C][C][O].[C][I] </SELFIES> ."
    assert all("SMILES" not in r["input"] for r in load_records(out / "dataset", "test"))
    assert json.loads((out / "dataset" / "dataset_info.json").read_text())["selfies"] is True


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--facilities", "a:s2f,b:nope"], "unknown task 'nope'"),
        (["--facilities", "a=0.5:s2f,b:esol"], "give sizes for every facility or for none"),
        (["--facilities", "a=99:s2f,b:esol"], "--facilities: sizes ask for 99 records but there are 6"),
        (["--facilities", "a=1:s2f,b=4:esol"], "--facilities: facility b should hold 4 records but its tasks "
                                               "['property_prediction-esol'] give it 3"),  # fmt: skip
        (["--facilities", "a,b", "--partition", "random"], "use by_task, iid or dirichlet:ALPHA"),
        (["--facilities", "a,b", "--partition", "dirichlet:0"], "ALPHA must be a positive number"),
        (["--facilities", "a:s2f,b:esol", "--partition", "iid"], "only the by_task scheme"),
    ],
)
def test_bad_arguments_exit_2_and_write_nothing(release: Path, tmp_path: Path, args: list[str], message: str) -> None:
    result = build(release, tmp_path / "out", *args)
    assert result.exit_code == 2 and message in " ".join(result.output.split()), result.output
    assert not (tmp_path / "out").exists()


def test_a_missing_or_partial_release_is_named(tmp_path: Path) -> None:
    result = build(tmp_path / "absent", tmp_path / "out", "--facilities", "a,b")
    assert result.exit_code == 2 and "no such directory; download data.zip" in " ".join(result.output.split())
    (tmp_path / "plain").mkdir()
    result = build(tmp_path / "plain", tmp_path / "out", "--facilities", "a,b")
    assert result.exit_code == 2 and "not an extracted SMolInstruct release" in " ".join(result.output.split())
    release = write_release(tmp_path, tasks=("name_conversion-s2f",))
    result = build(release, tmp_path / "out", "--facilities", "a,b", "--selfies")
    assert result.exit_code == 0  # the miniature has raw_selfies/
    (release / "data" / "raw_selfies").rename(release / "data" / "elsewhere")
    result = build(release, tmp_path / "out2", "--facilities", "a,b", "--selfies")
    assert result.exit_code == 2 and "no raw_selfies/ folder" in result.output
    assert not (tmp_path / "out2").exists()


def test_a_bad_record_mid_build_leaves_the_previous_output(release: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert build(release, out, "--facilities", "a,b").exit_code == 0
    before = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    raw = release / "data" / "raw" / "test" / "retrosynthesis.jsonl"
    raw.write_text(raw.read_text().replace('"split": "test"', '"split": "dev"', 1))
    result = build(release, out, "--facilities", "a,b", "--seed", "1")
    assert result.exit_code == 2 and "retrosynthesis.jsonl:1: item of task" in " ".join(result.output.split())
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out")] == []  # no half-written folder left


def test_an_unrelated_folder_is_never_replaced(release: Path, tmp_path: Path) -> None:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("years of work")
    result = build(release, tmp_path / "mine", "--facilities", "a,b")
    assert result.exit_code == 2 and "was not written by fedhpc" in " ".join(result.output.split())
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "years of work"


def write_experiment(path: Path, facilities: dict[str, Path]) -> Path:
    entries = "".join(f"  - name: {name}\n    data: {data}\n" for name, data in facilities.items())
    path.write_text(
        "name: chem\nmodel: {source: tiny-llama}\nalgorithm: {name: fedavg, rounds: 1, local_steps: 2}\n"
        f"run_dir: {path.parent / 'run'}\nfacilities:\n{entries}"
    )
    return path


def listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_validate_reads_each_facilitys_data_and_rejects_a_bad_record(release: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert build(release, out, "--facilities", "a:s2f+esol,b:sider").exit_code == 0
    bad = tmp_path / "bad" / "train" / "property_prediction-sider.jsonl"
    bad.parent.mkdir(parents=True)
    good_line = (out / "facilities" / "b" / "train" / "property_prediction-sider.jsonl").read_text().splitlines()[0]
    bad.write_text(good_line + "\n" + good_line.replace('"output": "', '"output": {"Cardiac disorders": "', 1)
                   .replace('", "raw_input"', '"}, "raw_input"', 1) + "\n")  # fmt: skip
    experiment = write_experiment(tmp_path / "exp.yaml", {"a": out / "facilities" / "a", "raw": release})
    result = runner.invoke(app, ["validate", str(experiment)])
    assert result.exit_code == 0, result.output
    assert "data ok: 1 train file(s)" not in result.output and "data ok: 2 train file(s)" in result.output
    assert "data ok: SMolInstruct release" in " ".join(result.output.split())

    before = listing(tmp_path)
    experiment = write_experiment(tmp_path / "exp.yaml", {"a": out / "facilities" / "a", "b": bad.parent.parent})
    result = runner.invoke(app, ["validate", str(experiment)])
    assert result.exit_code == 2
    assert f"facility b: {bad}:2: 'output' must be a string, got dict" in " ".join(result.output.split())
    assert listing(tmp_path) == before  # nothing written, no run directory


def test_validate_checks_a_remote_facilitys_data_only_where_this_machine_reaches_it(tmp_path: Path) -> None:
    example = Path(__file__).resolve().parent.parent / "examples" / "globus" / "experiment.yaml"
    result = runner.invoke(app, ["validate", str(example)])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "data not checked: /lus/eagle/projects/chem/fedhpc/data/polaris is not reachable from here" in text
    broken = tmp_path / "polaris.jsonl"
    broken.write_text('{"prompt": "p", "completion": "c"}\n{"prompt": "p"}\n')
    result = runner.invoke(app, ["validate", str(example), "--set", f"facilities.0.data={broken}"])
    assert result.exit_code == 2
    assert f"facility polaris: {broken}:2: unknown record layout" in " ".join(result.output.split())


def test_a_tiny_model_trains_on_a_built_dataset_and_on_the_release_itself(release: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert build(release, out, "--facilities", "a:s2f+esol+bbbp,b:sider+captioning+retrosynthesis").exit_code == 0
    global_dir = init_global(tmp_path / "global", MODEL)
    settings = TrainSettings(local_steps=8, lr=1e-2, batch_size=4, seed=0)
    for name, data, count in (("built", out / "facilities" / "b", 6), ("release", release, 15)):
        run_task(train_task(tmp_path, global_dir, name, data=data, data_config=DataConfig(seq_len=160), train=settings))
        update = ExchangeDir(tmp_path / name / "update")
        assert update.manifest.num_samples == count, name
        losses = update.manifest.metrics["loss"]
        assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3, (name, losses)
