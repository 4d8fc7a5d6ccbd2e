"""The synchronous policy on its own: who is asked to train, when a round may close, and its config checks."""

from __future__ import annotations

import pytest

from conftest import QUICKSTART
from fedhpc.config import AlgorithmConfig, load_experiment
from fedhpc.errors import ConfigError
from fedhpc.run.scheduling import SyncPolicy

FACILITIES = [f"site{i}" for i in range(10)]


def test_full_participation_asks_everyone_in_order():
    policy = SyncPolicy(AlgorithmConfig(), FACILITIES)
    assert policy.participants(1) == FACILITIES
    assert [a.facility for a in policy.assignments(7)] == FACILITIES


def test_participation_is_a_seeded_sample_per_round_and_the_same_after_a_restart():
    algorithm = AlgorithmConfig(participation=0.3, seed=5)
    policy = SyncPolicy(algorithm, FACILITIES)
    per_round = {round: policy.participants(round) for round in range(1, 6)}
    for round, chosen in per_round.items():
        assert len(chosen) == 3  # 0.3 of 10 is exactly 3, not 4 from float rounding
        assert chosen == sorted(chosen, key=FACILITIES.index), "configuration order"
    assert len({tuple(c) for c in per_round.values()}) > 1, "a new sample every round"
    restarted = SyncPolicy(AlgorithmConfig(participation=0.3, seed=5), list(FACILITIES))
    assert {round: restarted.participants(round) for round in range(1, 6)} == per_round
    other_seed = SyncPolicy(AlgorithmConfig(participation=0.3, seed=6), FACILITIES)
    assert {round: other_seed.participants(round) for round in range(1, 6)} != per_round


def test_participation_never_asks_fewer_than_the_quorum():
    policy = SyncPolicy(AlgorithmConfig(participation=0.1, min_facilities=4), FACILITIES)
    assert len(policy.participants(1)) == 4
    assert len(SyncPolicy(AlgorithmConfig(participation=0.34), ["a", "b", "c"]).participants(1)) == 2


def test_without_a_deadline_a_round_waits_for_every_job():
    policy = SyncPolicy(AlgorithmConfig(min_facilities=1), FACILITIES)
    assert not policy.may_close(round_started_at=0.0, accepted=5, now=1e9)
    assert policy.timeout_at(100.0) == 100.0 + 3600.0


def test_with_a_deadline_a_round_closes_once_past_it_with_a_quorum():
    policy = SyncPolicy(AlgorithmConfig(min_facilities=2, round_deadline=60, round_timeout=600), FACILITIES)
    assert not policy.may_close(round_started_at=0.0, accepted=2, now=59.0)
    assert not policy.may_close(round_started_at=0.0, accepted=1, now=61.0)
    assert policy.may_close(round_started_at=0.0, accepted=2, now=60.0)
    assert policy.late_updates == "drop"
    assert SyncPolicy(AlgorithmConfig(round_deadline=60, late_updates="next_round"), []).late_updates == "next_round"


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["algorithm.participation=0"], "algorithm.participation"),
        (["algorithm.participation=1.5"], "algorithm.participation"),
        (["algorithm.round_deadline=600"], "algorithm.round_deadline"),  # the quickstart's round_timeout is 600
        (["algorithm.round_deadline=-1"], "algorithm.round_deadline"),
        (["algorithm.late_updates=next_round"], "algorithm.late_updates"),
        (["algorithm.round_deadline=30", "algorithm.late_updates=later"], "algorithm.late_updates"),
    ],
)
def test_bad_sync_options_name_their_key(overrides: list[str], key: str):
    with pytest.raises(ConfigError) as caught:
        load_experiment(QUICKSTART, overrides)
    assert caught.value.key == key, str(caught.value)
    assert key in str(caught.value)


def test_good_sync_options_load():
    experiment = load_experiment(
        QUICKSTART,
        ["algorithm.participation=0.5", "algorithm.round_deadline=30", "algorithm.late_updates=next_round"],
    )
    assert experiment.algorithm.round_deadline == 30.0
    assert experiment.algorithm.late_updates == "next_round"
