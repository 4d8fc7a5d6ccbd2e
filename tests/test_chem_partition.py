"""Splitting training records across facilities: by_task, iid, dirichlet; sizes; the facilities spec."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from fedhpc.chem.partition import (
    FacilitySpec,
    parse_facilities,
    partition,
    partition_facilities,
    write_facility_dirs,
)
from fedhpc.chem.smolinstruct import load_records
from fedhpc.errors import DataError

TASK_SIZES = {
    "name_conversion-s2f": 120,
    "property_prediction-logp": 80,
    "property_prediction-tpsa": 60,
    "property_prediction-lipinski": 40,
}


@pytest.fixture
def records() -> list[dict]:
    return [
        {"task": task, "split": "train", "input": f"q {task} {i}", "output": "a", "sample_id": f"{task}.{i}"}
        for task, size in TASK_SIZES.items()
        for i in range(size)
    ]


def ids(part: list[dict]) -> list[str]:
    return [r["sample_id"] for r in part]


def assert_disjoint(parts: list[list[dict]]) -> set[str]:
    every = [i for part in parts for i in ids(part)]
    assert len(every) == len(set(every)), "a record went to two facilities"
    return set(every)


def test_by_task_facilities_hold_only_their_tasks(records: list[dict]) -> None:
    task_map = [
        ["name_conversion-s2f"],
        ["property_prediction-logp", "property_prediction-tpsa"],
        ["property_prediction-lipinski"],
    ]
    parts = partition(records, "by_task", task_map=task_map, seed=3)
    for part, tasks in zip(parts, task_map, strict=True):
        assert Counter(r["task"] for r in part) == {t: TASK_SIZES[t] for t in tasks}
    assert assert_disjoint(parts) == set(ids(records))


def test_by_task_shared_task_is_divided_and_default_map_deals_round_robin(records: list[dict]) -> None:
    shared = partition(records, "by_task", task_map=[["name_conversion-s2f"], ["name_conversion-s2f"]])
    assert [len(p) for p in shared] == [60, 60]
    assert_disjoint(shared)
    dealt = partition(records, "by_task", n_facilities=2)
    tasks = sorted(TASK_SIZES)
    assert [sorted({r["task"] for r in p}) for p in dealt] == [sorted(tasks[0::2]), sorted(tasks[1::2])]


def test_by_task_with_sizes_samples_each_facility(records: list[dict]) -> None:
    task_map = [["name_conversion-s2f"], ["property_prediction-logp"]]
    parts = partition(records, "by_task", task_map=task_map, sizes=[100, 30])
    assert [len(p) for p in parts] == [100, 30]
    assert {r["task"] for r in parts[1]} == {"property_prediction-logp"}
    with pytest.raises(DataError, match="should hold 200"):
        partition(records, "by_task", task_map=task_map, sizes=[200, 30])
    with pytest.raises(DataError, match="no records"):
        partition(records, "by_task", task_map=[["forward_synthesis"]])


def test_iid_even_sizes_cover_everything(records: list[dict]) -> None:
    parts = partition(records, "iid", n_facilities=3, seed=0)
    assert [len(p) for p in parts] == [100, 100, 100]
    assert assert_disjoint(parts) == set(ids(records))
    assert all(len({r["task"] for r in p}) == 4 for p in parts)


def test_iid_sizes_as_counts_and_shares(records: list[dict]) -> None:
    assert [len(p) for p in partition(records, "iid", sizes=[150, 100, 7])] == [150, 100, 7]
    assert [len(p) for p in partition(records, "iid", sizes=[0.5, 0.3, 0.2])] == [150, 90, 60]
    parts = partition(records, "iid", sizes=[0.1, 0.2])  # shares below 1 leave records unused
    assert [len(p) for p in parts] == [30, 60]
    assert_disjoint(parts)


def test_dirichlet_is_deterministic_and_sums_to_all_records(records: list[dict]) -> None:
    a = partition(records, "dirichlet", n_facilities=3, alpha=0.3, seed=7)
    b = partition(records, "dirichlet", n_facilities=3, alpha=0.3, seed=7)
    c = partition(records, "dirichlet", n_facilities=3, alpha=0.3, seed=8)
    assert [ids(p) for p in a] == [ids(p) for p in b]
    assert [ids(p) for p in a] != [ids(p) for p in c]
    assert assert_disjoint(a) == set(ids(records))
    assert sum(len(p) for p in a) == len(records)


def test_dirichlet_small_alpha_skews_tasks_large_alpha_does_not(records: list[dict]) -> None:
    def top_share(parts: list[list[dict]]) -> float:
        """Mean over tasks of the largest share one facility holds of that task."""
        shares = []
        for task, size in TASK_SIZES.items():
            shares.append(max(sum(r["task"] == task for r in p) for p in parts) / size)
        return sum(shares) / len(shares)

    assert top_share(partition(records, "dirichlet", n_facilities=3, alpha=0.05, seed=1)) > 0.8
    assert top_share(partition(records, "dirichlet", n_facilities=3, alpha=1000.0, seed=1)) < 0.45


@pytest.mark.parametrize("sizes", [[150, 100, 50], [200, 10, 30], [0.5, 0.3, 0.2], [0.05, 0.05, 0.05]])
def test_dirichlet_honours_sizes(records: list[dict], sizes: list) -> None:
    parts = partition(records, "dirichlet", sizes=sizes, alpha=0.5, seed=2)
    expected = sizes if isinstance(sizes[0], int) else [round(s * len(records)) for s in sizes]
    assert [len(p) for p in parts] == expected
    assert_disjoint(parts)


def test_partition_errors(records: list[dict]) -> None:
    with pytest.raises(DataError, match="scheme"):
        partition(records, "random", n_facilities=2)  # type: ignore[arg-type]
    with pytest.raises(DataError, match="ask for 400"):
        partition(records, "iid", sizes=[300, 100])
    with pytest.raises(DataError, match="at most 1"):
        partition(records, "iid", sizes=[0.7, 0.7])
    with pytest.raises(DataError, match="unclear"):
        partition(records, "iid", n_facilities=3, sizes=[10, 10])
    with pytest.raises(DataError, match="at least 5 tasks"):
        partition(records, "by_task", n_facilities=5)
    with pytest.raises(DataError, match="alpha"):
        partition(records, "dirichlet", n_facilities=2, alpha=0)
    with pytest.raises(DataError, match="at least one record"):
        partition(records, "iid", sizes=[0.5, 0.001])


def test_parse_facilities() -> None:
    assert parse_facilities("3") == FacilitySpec(names=("facility-1", "facility-2", "facility-3"))
    assert parse_facilities("alcf,olcf") == FacilitySpec(names=("alcf", "olcf"))
    assert parse_facilities("a=0.5,b=0.25").sizes == (0.5, 0.25)
    assert parse_facilities("a=1200,b=600").sizes == (1200, 600)
    spec = parse_facilities("a:s2f,b:logp+property_prediction-tpsa,c:LIPINSKI")
    assert spec.tasks == (
        ("name_conversion-s2f",),
        ("property_prediction-logp", "property_prediction-tpsa"),
        ("property_prediction-lipinski",),
    )
    assert parse_facilities("a=100:s2f,b=50:logp").sizes == (100, 50)
    for bad in ("a=0.5,b", "a:s2f,b", "a=0.5,b=100", "a,a", "a:nope", "bad name", "0", "a=lots"):
        with pytest.raises(DataError, match="--facilities"):
            parse_facilities(bad)


def test_partition_facilities_and_their_folders(records: list[dict], tmp_path: Path) -> None:
    parts = partition_facilities(records, parse_facilities("a:s2f,b:logp+tpsa"))
    assert set(parts) == {"a", "b"}
    with pytest.raises(DataError, match="by_task"):
        partition_facilities(records, parse_facilities("a:s2f,b:logp"), "iid")
    counts = write_facility_dirs(parts, tmp_path / "fac", info={"scheme": "by_task"})
    assert counts == {
        "a": {"name_conversion-s2f": 120},
        "b": {"property_prediction-logp": 80, "property_prediction-tpsa": 60},
    }
    assert sorted(p.name for p in (tmp_path / "fac" / "b" / "train").iterdir()) == [
        "property_prediction-logp.jsonl",
        "property_prediction-tpsa.jsonl",
    ]
    loaded = load_records(tmp_path / "fac" / "b", "train")
    assert sorted(ids(loaded)) == sorted(ids(parts["b"]))
    write_facility_dirs({"c": parts["a"]}, tmp_path / "fac")  # a rewrite replaces the old facilities whole
    assert sorted(p.name for p in (tmp_path / "fac").iterdir()) == ["c", "partition_info.json"]
    with pytest.raises(DataError, match="only train"):
        write_facility_dirs({"x": [{**records[0], "split": "test"}]}, tmp_path / "other")


def test_by_task_a_facility_without_a_count_keeps_all_of_its_tasks(records: list[dict]) -> None:
    spec = parse_facilities("a=50:s2f+logp,b:tpsa+lipinski")
    assert spec.sizes == (50, None)
    a, b = partition_facilities(records, spec, seed=1).values()
    assert len(a) == 50 and {r["task"] for r in a} <= {"name_conversion-s2f", "property_prediction-logp"}
    assert Counter(r["task"] for r in b) == {"property_prediction-tpsa": 60, "property_prediction-lipinski": 40}
    shared = partition(records, "by_task", sizes=[30, None], task_map=[["name_conversion-s2f"]] * 2, seed=1)
    assert [len(p) for p in shared] == [30, 60]  # the task is halved, then the counted facility samples its half
    assert_disjoint(shared)
    with pytest.raises(DataError, match="only by_task"):
        partition(records, "iid", sizes=[30, None])
    with pytest.raises(DataError, match="give counts, not shares"):
        partition(records, "by_task", sizes=[0.5, None], task_map=[["name_conversion-s2f"]] * 2)
    with pytest.raises(DataError, match="--facilities: give sizes for every facility"):
        parse_facilities("a=50,b")  # without tasks a missing count means nothing
