"""Server optimisers (FedAvgM, FedAdam, FedYogi, FedAdagrad) against a reference written out by hand.

The reference below is the update rule of Reddi et al., 2021 (Algorithm 2) and Hsu et al., 2019, one
coordinate at a time in Python floats, so it shares no code with `fedhpc.aggregate.fedopt`. Three
facilities train for three rounds; the moments must carry from one round to the next.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from fedhpc.aggregate import FedAvg, FedOpt, Update, make_aggregator
from fedhpc.aggregate.fedopt import DEFAULT_LR, pseudo_gradient
from fedhpc.config import AlgorithmConfig, load_experiment
from fedhpc.errors import ConfigError
from fedhpc.exchange import ExchangeDir, ExchangeMeta, write_state_dict

from conftest import QUICKSTART

RULES = ["fedavgm", "fedadam", "fedyogi", "fedadagrad"]
HYPER = dict(momentum=0.8, beta1=0.9, beta2=0.99, tau=1e-3)
LR = {"fedavgm": 0.7, "fedadam": 0.1, "fedyogi": 0.1, "fedadagrad": 0.2}
SAMPLES, STEPS = [10, 30, 60], [2, 4, 2]
WEIGHTS = {"equal": [1 / 3] * 3, "samples": [0.1, 0.3, 0.6], "steps": [0.25, 0.5, 0.25]}

X0 = [0.5, -0.5, 1.0, 0.0, 0.25]  # w (2×2) then b (1), flattened
# CHANGES[round][facility]: what each facility's training adds to the global it received.
# Round 2 is small, so FedYogi's v shrinks there (sign(v − Δ²) = +1) after growing in round 1.
CHANGES = [
    [[1.0, -2.0, 0.5, 0.0, 2.0], [3.0, 0.0, -1.0, 1.0, -1.0], [-1.0, 1.0, 2.0, 0.5, 0.0]],
    [[0.1, 0.05, -0.2, 0.0, 0.01], [-0.1, 0.0, 0.1, 0.02, 0.02], [0.0, 0.1, 0.05, -0.05, -0.01]],
    [[2.0, -1.0, 0.0, 1.0, 1.0], [0.5, 0.5, 0.5, 0.5, 0.5], [-2.0, 0.0, 1.0, -1.0, 0.0]],
]


class DictSource:
    def __init__(self, tensors: dict[str, torch.Tensor]):
        self.tensors = tensors

    def names(self) -> list[str]:
        return list(self.tensors)

    def get(self, name: str) -> torch.Tensor:
        return self.tensors[name]  # the stored tensor itself: the aggregator must not write into it


def as_tensors(flat: list[float], dtype=torch.float32) -> dict[str, torch.Tensor]:
    return {"w": torch.tensor(flat[:4], dtype=dtype).reshape(2, 2), "b": torch.tensor(flat[4:], dtype=dtype)}


def flat(tensors: dict[str, torch.Tensor]) -> list[float]:
    return tensors["w"].reshape(-1).tolist() + tensors["b"].tolist()


def updates_for(x: list[float], changes: list[list[float]], dtype=torch.float32) -> list[Update]:
    return [
        Update(name, DictSource(as_tensors([a + c for a, c in zip(x, change)], dtype)), samples, steps, 0)
        for name, change, samples, steps in zip(["alpha", "beta", "gamma"], changes, SAMPLES, STEPS)
    ]


def reference_round(rule, x, locals_, weights, m, v, lr, momentum, beta1, beta2, tau):
    """One server step, coordinate by coordinate, as the papers write it."""
    x, m, v = list(x), list(m), list(v)
    for i in range(len(x)):
        delta = sum(p * (local[i] - x[i]) for p, local in zip(weights, locals_))
        if rule == "fedavgm":
            m[i] = momentum * m[i] + delta
            x[i] = x[i] + lr * m[i]
            continue
        m[i] = beta1 * m[i] + (1 - beta1) * delta
        if rule == "fedadam":
            v[i] = beta2 * v[i] + (1 - beta2) * delta**2
        elif rule == "fedyogi":
            v[i] = v[i] - (1 - beta2) * delta**2 * math.copysign(1.0, v[i] - delta**2)
        else:
            v[i] = v[i] + delta**2
        x[i] = x[i] + lr * m[i] / (math.sqrt(v[i]) + tau)
    return x, m, v


@pytest.mark.parametrize("weighting", ["equal", "samples", "steps"])
@pytest.mark.parametrize("rule", RULES)
def test_three_rounds_match_the_reference(rule: str, weighting: str) -> None:
    aggregator = FedOpt(rule, weighting, lr=LR[rule], **HYPER)
    state: dict[str, torch.Tensor] = {}
    x, m, v = X0, [0.0] * 5, [HYPER["tau"] ** 2] * 5  # m starts at 0, v at τ²
    yogi_shrank = False
    for changes in CHANGES:
        updates = updates_for(x, changes)
        result = dict(aggregator.aggregate(DictSource(as_tensors(x)), updates, state))
        locals_ = [[a + c for a, c in zip(x, change)] for change in changes]
        v_before = v
        x, m, v = reference_round(rule, x, locals_, WEIGHTS[weighting], m, v, LR[rule], **HYPER)
        yogi_shrank |= any(after < before for after, before in zip(v, v_before))
        assert all(t.dtype == torch.float32 for t in result.values())
        torch.testing.assert_close(flat(result), x, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(flat({"w": state["w.m"], "b": state["b.m"]}), m, rtol=1e-5, atol=1e-6)
        if rule != "fedavgm":
            torch.testing.assert_close(flat({"w": state["w.v"], "b": state["b.v"]}), v, rtol=1e-5, atol=1e-7)
        x = flat(result)  # the next round trains from the new global, as the server would
    expected_keys = {"w.m", "b.m"} if rule == "fedavgm" else {"w.m", "w.v", "b.m", "b.v"}
    assert set(state) == expected_keys
    assert all(t.dtype == torch.float32 for t in state.values())
    if rule == "fedyogi":
        assert yogi_shrank, "the data should exercise Yogi's sign(v − Δ²) = +1 branch"


def test_weighting_changes_the_result() -> None:
    results = {}
    for weighting in ("equal", "samples", "steps"):
        updates = updates_for(X0, CHANGES[0])
        aggregator = FedOpt("fedadam", weighting, lr=0.1)
        results[weighting] = flat(dict(aggregator.aggregate(DictSource(as_tensors(X0)), updates, {})))
    assert results["equal"] != results["samples"] != results["steps"] != results["equal"]


def test_zero_momentum_unit_lr_fedavgm_is_fedavg() -> None:
    updates = updates_for(X0, CHANGES[0])
    plain_momentum = FedOpt("fedavgm", "samples", lr=1.0, momentum=0.0)
    fedavgm = dict(plain_momentum.aggregate(DictSource(as_tensors(X0)), updates, {}))
    fedavg = dict(FedAvg("samples").aggregate(DictSource(as_tensors(X0)), updates, {}))
    for name in fedavg:
        torch.testing.assert_close(fedavgm[name], fedavg[name], rtol=0, atol=1e-6)


def test_bf16_updates_are_accumulated_in_fp32() -> None:
    """Δ = 1/8 · 2⁻⁷ = 2⁻¹⁰ is exact in fp32; a bf16 accumulator at 1.0 (spacing 2⁻⁷) would lose it."""
    one = torch.tensor(1.0, dtype=torch.bfloat16)
    next_up = torch.tensor(1.0078125, dtype=torch.bfloat16)
    updates = [
        Update("alpha", DictSource({"w": one.expand(4).clone()}), 7, 1, 0),
        Update("beta", DictSource({"w": next_up.expand(4).clone()}), 1, 1, 0),
    ]
    global_ = DictSource({"w": torch.ones(4)})
    delta = pseudo_gradient("w", torch.ones(4), updates, [7 / 8, 1 / 8])
    assert delta.dtype == torch.float32 and torch.equal(delta, torch.full((4,), 2.0**-10))
    result = dict(FedOpt("fedavgm", "samples", lr=1.0, momentum=0.0).aggregate(global_, updates, {}))
    assert result["w"].dtype == torch.float32 and torch.equal(result["w"], torch.full((4,), 1 + 2.0**-10))
    state: dict[str, torch.Tensor] = {}
    dict(FedOpt("fedadam", "samples").aggregate(global_, updates, state))
    # m = (1 − β1)·Δ exactly as fp32 computes it from the exact Δ
    assert torch.equal(state["w.m"], torch.full((4,), 2.0**-10, dtype=torch.float32) * (1 - 0.9))


def test_sources_are_not_modified() -> None:
    global_tensors, updates = as_tensors(X0), updates_for(X0, CHANGES[0])
    before = [flat(global_tensors)] + [flat(u.source.tensors) for u in updates]
    dict(FedOpt("fedadam", "samples").aggregate(DictSource(global_tensors), updates, {}))
    assert [flat(global_tensors)] + [flat(u.source.tensors) for u in updates] == before


def test_state_saved_and_reloaded_continues_bit_for_bit(tmp_path: Path) -> None:
    """What the server does on resume: the state written after round 2, read back, drives round 3."""
    aggregator = FedOpt("fedyogi", "samples", lr=0.1)
    state: dict[str, torch.Tensor] = {}
    x = X0
    for changes in CHANGES[:2]:
        x = flat(dict(aggregator.aggregate(DictSource(as_tensors(x)), updates_for(x, changes), state)))
    write_state_dict(tmp_path / "state", state, ExchangeMeta(kind="global", round=2, base_fingerprint="test"))
    saved = ExchangeDir(tmp_path / "state")
    reloaded = {name: saved.get(name) for name in saved.names()}
    continued = dict(aggregator.aggregate(DictSource(as_tensors(x)), updates_for(x, CHANGES[2]), state))
    resumed = dict(aggregator.aggregate(DictSource(as_tensors(x)), updates_for(x, CHANGES[2]), reloaded))
    assert all(torch.equal(continued[name], resumed[name]) for name in continued)
    assert all(torch.equal(state[name], reloaded[name]) for name in state)


def test_registry_builds_each_optimiser_from_the_config() -> None:
    for rule in RULES:
        aggregator = make_aggregator(AlgorithmConfig(name=rule, weighting="steps"))
        assert isinstance(aggregator, FedOpt)
        assert (aggregator.rule, aggregator.weighting, aggregator.lr) == (rule, "steps", DEFAULT_LR[rule])
        assert (aggregator.momentum, aggregator.beta1, aggregator.beta2, aggregator.tau) == (0.9, 0.9, 0.99, 1e-3)
    tuned = make_aggregator(
        AlgorithmConfig(name="fedadam", server={"lr": 0.05, "beta1": 0.5, "beta2": 0.9, "tau": 1e-6})
    )
    assert (tuned.lr, tuned.beta1, tuned.beta2, tuned.tau) == (0.05, 0.5, 0.9, 1e-6)


def test_server_options_load_from_the_experiment_file() -> None:
    experiment = load_experiment(
        QUICKSTART, ["algorithm.name=fedyogi", "algorithm.server.lr=0.03", "algorithm.proximal_mu=0.01"]
    )
    assert experiment.algorithm.server.lr == 0.03 and experiment.algorithm.proximal_mu == 0.01


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("algorithm.server.lrr=0.1", "algorithm.server.lrr"),
        ("algorithm.server.beta2=1.0", "algorithm.server.beta2"),
        ("algorithm.server.tau=0", "algorithm.server.tau"),
        ("algorithm.name=fedadamw", "algorithm.name"),
        ("algorithm.proximal_mu=-1", "algorithm.proximal_mu"),
    ],
)
def test_bad_server_options_fail_at_load_time_naming_the_key(override: str, key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_experiment(QUICKSTART, [override])
    assert caught.value.key == key
    assert key in str(caught.value)
