"""DP-FedAvg around FedAvg, FedAdam and FedBuff, on real tensors, against references computed by hand.

With no noise and a huge C the private rule must be the plain one; with no noise and a small C it must be
the plain rule applied to the clipped changes; with noise, a fixed seed must give the same bits twice, and a
run whose server state goes through the exchange's safetensors files between rounds the same bits as one
that never stopped.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from fedhpc.aggregate import FedAvg, FedBuff, FedOpt, Update
from fedhpc.config import AlgorithmConfig, StalenessConfig
from fedhpc.config.privacy import PrivacyConfig
from fedhpc.errors import PrivacyRefused
from fedhpc.exchange import ExchangeDir, ExchangeMeta, write_state_dict
from fedhpc.privacy import (
    CLIP_NORM_KEY,
    GENERATOR_KEY,
    NoiseSource,
    PrivateAggregation,
    make_private,
    refusal,
)
from test_fedopt import DictSource

SHAPES = {"embed": (37, 16), "attn.q": (16, 16), "norm": (16,), "head": (3, 5, 7)}
SERVER_LR = 0.7


def perturbed(base: dict[str, torch.Tensor], seed: int, scale: float, dtype=torch.float32) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {name: (t + scale * torch.randn(t.shape, generator=generator)).to(dtype) for name, t in base.items()}


GLOBAL = perturbed({name: torch.zeros(shape) for name, shape in SHAPES.items()}, 0, 1.0)
OLD_GLOBAL = perturbed(GLOBAL, 99, 0.1)  # the base of a stale FedBuff update


def inner(name: str):
    if name == "fedavg":
        return FedAvg("equal")
    if name == "fedadam":
        return FedOpt("fedadam", "equal", lr=0.05)
    return FedBuff(SERVER_LR, StalenessConfig(), "equal")


def round_updates(algorithm: str, global_: dict[str, torch.Tensor], round: int = 0) -> list[Update]:
    """Three facilities with changes of norm about 0.3, 30 and 60 (C = 5 clips the last two)."""
    result = []
    for index, scale in enumerate([0.01, 1.0, 2.0]):
        stale = algorithm == "fedbuff" and index == 2  # trained from an older global, two versions back
        base = OLD_GLOBAL if stale else global_
        dtype = torch.bfloat16 if index == 1 else torch.float32
        source = DictSource(perturbed(base, 10 * round + index + 1, scale, dtype))
        result.append(Update(f"f{index}", source, num_samples=10 * (index + 1), local_steps=5, based_on_round=round,
                             staleness=2 if stale else 0, base=DictSource(OLD_GLOBAL) if stale else None))
    return result


def private(algorithm: str, participants: float = 3, **privacy) -> PrivateAggregation:
    return PrivateAggregation(inner(algorithm), PrivacyConfig(**privacy), participants)  # FedBuff: its own s(τ)


def run(aggregator, global_: dict[str, torch.Tensor], updates: list[Update], state=None) -> dict[str, torch.Tensor]:
    return dict(aggregator.aggregate(DictSource(global_), updates, {} if state is None else state))


def changes(update: Update, global_: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    base = global_ if update.base is None else update.base.tensors
    return {name: update.source.get(name).float() - base[name] for name in global_}


def joint_norm(tensors: dict[str, torch.Tensor]) -> float:
    return torch.cat([t.double().reshape(-1) for t in tensors.values()]).norm().item()


ALGORITHMS = ["fedavg", "fedadam", "fedbuff"]


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_no_noise_and_a_huge_clip_is_the_plain_rule(algorithm: str) -> None:
    updates = round_updates(algorithm, GLOBAL)
    plain = run(inner(algorithm), GLOBAL, updates)
    made_private = run(private(algorithm, noise_multiplier=0.0, clipping={"clip_norm": 1e9}), GLOBAL, updates)
    assert list(made_private) == list(GLOBAL)
    for name in GLOBAL:
        assert made_private[name].dtype == torch.float32
        torch.testing.assert_close(made_private[name], plain[name], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_no_noise_and_a_small_clip_is_the_plain_rule_on_clipped_changes(algorithm: str) -> None:
    clip, updates = 5.0, round_updates(algorithm, GLOBAL)
    aggregator = private(algorithm, noise_multiplier=0.0, clipping={"clip_norm": clip})
    made_private = run(aggregator, GLOBAL, updates)
    clipped = []  # by hand: each change scaled by min(1, C/‖Δ‖) over all tensors together
    for update in updates:
        change = changes(update, GLOBAL)
        factor = min(1.0, clip / joint_norm(change))
        clipped.append({name: factor * t for name, t in change.items()})
    assert [joint_norm(c) <= clip * (1 + 1e-6) for c in clipped] == [True] * 3
    if algorithm == "fedavg":
        expected = {name: GLOBAL[name] + sum(c[name] for c in clipped) / 3 for name in GLOBAL}
    elif algorithm == "fedbuff":  # w + η Σ s(τ)·Δ/K, s(τ) = (1 + τ)^-½, the third update two versions stale
        discounts = [1.0, 1.0, 3**-0.5]
        expected = {
            name: GLOBAL[name] + SERVER_LR * sum(s * c[name] for s, c in zip(discounts, clipped, strict=True)) / 3
            for name in GLOBAL
        }
    else:  # the plain server optimiser fed the clipped models
        clipped_models = [
            Update(u.facility, DictSource({n: GLOBAL[n] + c[n] for n in GLOBAL}), 1, 1, 0)
            for u, c in zip(updates, clipped, strict=True)
        ]
        expected = run(inner("fedadam"), GLOBAL, clipped_models)
    for name in GLOBAL:
        torch.testing.assert_close(made_private[name], expected[name], rtol=1e-5, atol=1e-6)
    record = aggregator.last_round
    assert record is not None and record.clipped == 2 and record.clip_norm == clip == record.next_clip_norm
    assert record.norms == pytest.approx([joint_norm(changes(u, GLOBAL)) for u in updates], rel=1e-6)
    assert record.noise_std == 0.0


def test_noise_on_the_mean_has_std_z_c_over_m() -> None:
    big = {"w": torch.linspace(-1, 1, 1_500_000)}
    unchanged = [Update(f"f{i}", DictSource(dict(big)), 1, 1, 0) for i in range(3)]  # zero change: only noise
    aggregator = private("fedavg", participants=4, noise_multiplier=2.0, clipping={"clip_norm": 0.5}, noise_seed=1)
    noise = run(aggregator, big, unchanged)["w"] - big["w"]
    assert noise.std().item() == pytest.approx(2.0 * 0.5 / 4, rel=0.01)
    assert abs(noise.mean().item()) < 0.01 * 0.25
    assert aggregator.last_round.noise_std == 0.25 and aggregator.last_round.expected_participants == 4


def test_a_facility_with_two_updates_in_one_step_stays_within_c() -> None:
    """A late update landing beside a fresh one: the facility's whole contribution is still bounded by C."""
    updates = [Update("same", DictSource(perturbed(GLOBAL, seed, 1.0)), 1, 1, 0) for seed in (1, 2)]
    moved = run(private("fedavg", participants=1, noise_multiplier=0.0, clipping={"clip_norm": 2.0}), GLOBAL, updates)
    assert joint_norm({n: moved[n] - GLOBAL[n] for n in GLOBAL}) <= 2.0 * (1 + 1e-6)


def test_sources_are_not_modified() -> None:
    updates = round_updates("fedbuff", GLOBAL)
    before = [{n: t.clone() for n, t in GLOBAL.items()}] + [{n: t.clone() for n, t in u.source.tensors.items()}
                                                            for u in updates]
    run(private("fedbuff", noise_multiplier=1.0, clipping={"clip_norm": 1.0}, noise_seed=0), GLOBAL, updates)
    after = [GLOBAL] + [u.source.tensors for u in updates]
    assert all(torch.equal(a[n], b[n]) for a, b in zip(before, after, strict=True) for n in a)


def test_adaptive_clip_norm_moves_by_the_formula_and_is_kept_in_state() -> None:
    """One round by hand: b̃ = (unclipped − n/2 + N(0, σ_b²))/m + ½, C' = C·exp(−η(b̃ − γ)), N the seed's first draw."""
    clipping = {"mode": "adaptive", "clip_norm": 5.0, "target_quantile": 0.5, "learning_rate": 0.2,
                "count_noise_multiplier": 1.0}
    state: dict[str, torch.Tensor] = {}
    aggregator = private("fedavg", noise_multiplier=0.0, clipping=clipping, noise_seed=3)
    run(aggregator, GLOBAL, round_updates("fedavg", GLOBAL), state)
    fraction = (1 - 1.5 + NoiseSource(None, seed=3).scalar(1.0)) / 3 + 0.5  # one of three left unclipped
    expected = 5.0 * math.exp(-0.2 * (fraction - 0.5))
    assert state[CLIP_NORM_KEY].item() == pytest.approx(expected, rel=1e-6)
    assert aggregator.last_round.next_clip_norm == state[CLIP_NORM_KEY].item()
    run(aggregator, GLOBAL, round_updates("fedavg", GLOBAL), state)
    assert aggregator.last_round.clip_norm == pytest.approx(expected, rel=1e-6)  # the next round uses it


def copy(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A state to resume from twice: the aggregators update FedOpt's moments in place."""
    return {name: tensor.clone() for name, tensor in state.items()}


def rounds(algorithm: str, aggregator_for, global_, first: int, last: int, state, save_to: Path | None = None):
    """Rounds first..last, each from the previous global; with `save_to`, the state goes through disk each round."""
    outputs = []
    for round in range(first, last + 1):
        aggregator = aggregator_for()
        global_ = run(aggregator, global_, round_updates(algorithm, global_, round), state)
        outputs.append(global_)
        if save_to is not None:  # what the server does between rounds, and what a resumed one reads back
            folder = save_to / f"r{round}"
            write_state_dict(folder, state, ExchangeMeta(kind="global", round=round, base_fingerprint="test"))
            saved = ExchangeDir(folder)
            saved.verify()
            state = {name: saved.get(name) for name in saved.names()}
            saved.close()
    return outputs, state


@pytest.mark.parametrize(("algorithm", "seed"), [("fedavg", 7), ("fedadam", 7), ("fedbuff", None)])
def test_a_run_resumed_from_saved_state_is_bit_identical(tmp_path: Path, algorithm: str, seed: int | None) -> None:
    clipping = {"mode": "adaptive", "clip_norm": 5.0, "count_noise_multiplier": 2.0}

    def aggregator():
        return private(algorithm, noise_multiplier=0.5, clipping=clipping, noise_seed=seed)

    through_disk, state = rounds(algorithm, aggregator, GLOBAL, 1, 2, {}, save_to=tmp_path)
    resumed, resumed_state = rounds(algorithm, aggregator, through_disk[-1], 3, 4, copy(state))
    if seed is not None:  # the same seed, never stopped: the same bits
        uninterrupted, final_state = rounds(algorithm, aggregator, GLOBAL, 1, 4, {})
        assert all(torch.equal(a[n], b[n]) for a, b in zip(uninterrupted, through_disk + resumed, strict=True)
                   for n in GLOBAL)
        assert set(final_state) == set(resumed_state)
        assert all(torch.equal(final_state[k], resumed_state[k]) for k in final_state)
    continued, _ = rounds(algorithm, aggregator, through_disk[-1], 3, 4, copy(state))  # resumed twice: same noise
    assert all(torch.equal(a[n], b[n]) for a, b in zip(continued, resumed, strict=True) for n in GLOBAL)
    assert GENERATOR_KEY in resumed_state and CLIP_NORM_KEY in resumed_state
    assert resumed_state[CLIP_NORM_KEY].item() != 5.0  # adaptive clipping moved C
    noiseless = rounds(algorithm, lambda: private(algorithm, noise_multiplier=0.0, clipping=clipping, noise_seed=seed),
                       through_disk[-1], 3, 3, copy(state))[0]
    assert not torch.equal(noiseless[0]["embed"], resumed[0]["embed"])  # the noise is really there


def test_unseeded_runs_draw_different_noise() -> None:
    outputs = [run(private("fedavg", noise_multiplier=1.0), GLOBAL, round_updates("fedavg", GLOBAL)) for _ in range(2)]
    assert not torch.equal(outputs[0]["embed"], outputs[1]["embed"])


@pytest.mark.parametrize(
    ("algorithm", "key", "reason"),
    [
        ({"name": "fedasync", "weighting": "equal"}, "algorithm.name", "no fixed denominator"),
        ({"name": "fedcompass", "weighting": "equal"}, "algorithm.name", "no fixed denominator"),
        ({"name": "fedavg", "weighting": "samples"}, "algorithm.weighting", "must be equal with privacy"),
        ({"name": "fedadam", "weighting": "tokens"}, "algorithm.weighting", "must be equal with privacy"),
    ],
)
def test_combinations_that_cannot_be_accounted_are_refused_with_the_reason(algorithm: dict, key: str, reason: str):
    config = AlgorithmConfig(**algorithm)
    assert refusal(config).startswith(key) and reason in refusal(config)
    with pytest.raises(PrivacyRefused, match=reason) as raised:
        make_private(FedAvg("equal"), config, PrivacyConfig(noise_multiplier=1.0), 4)
    assert raised.value.key == key


def test_make_private_divides_by_the_expected_participants_and_discounts_fedbuffs_stale_updates() -> None:
    assert refusal(AlgorithmConfig(name="fedyogi", weighting="equal")) is None
    sampled = AlgorithmConfig(weighting="equal", participation=0.3)
    assert make_private(FedAvg("equal"), sampled, PrivacyConfig(noise_multiplier=1.0), 10).expected == 3.0
    fedbuff = AlgorithmConfig(name="fedbuff", weighting="equal", buffer_size=5, staleness={"a": 0.7})
    wrapped = make_private(FedBuff(1.0, fedbuff.staleness, "equal"), fedbuff, PrivacyConfig(noise_multiplier=1.0), 8)
    assert wrapped.expected == 5 and wrapped.staleness == fedbuff.staleness


def test_a_round_nobody_was_sampled_for_releases_the_noise_alone() -> None:
    """Poisson sampling can ask no facility: the fixed-denominator mean is then N(0, (zC)²)/m around the global."""
    quiet = run(private("fedavg", participants=2, noise_multiplier=0.0, clipping={"clip_norm": 1.0}), GLOBAL, [])
    assert all(torch.equal(quiet[name], GLOBAL[name]) for name in GLOBAL)
    aggregator = private("fedavg", participants=2, noise_multiplier=1.0, clipping={"clip_norm": 1.0}, noise_seed=4)
    noisy = run(aggregator, GLOBAL, [])
    expected = NoiseSource(None, seed=4)
    for name in GLOBAL:  # the tensors' noise in the global's order, each N(0, (zC)²) then divided by m
        torch.testing.assert_close(noisy[name], GLOBAL[name] + expected.gaussian(GLOBAL[name].shape, 1.0) / 2)
    assert aggregator.last_round.norms == [] and aggregator.last_round.clipped == 0


def test_an_inner_rule_reading_tensors_out_of_order_is_an_error_not_different_noise() -> None:
    class Backwards:
        def aggregate(self, global_, updates, state):
            for name in reversed(global_.names()):
                yield name, updates[0].source.get(name)

    aggregator = PrivateAggregation(Backwards(), PrivacyConfig(noise_multiplier=1.0, noise_seed=0), 3)
    with pytest.raises(RuntimeError, match="reads tensors in the global's order: asked 'head', next is embed"):
        run(aggregator, GLOBAL, round_updates("fedavg", GLOBAL))
