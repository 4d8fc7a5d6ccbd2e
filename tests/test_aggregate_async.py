"""FedAsync, FedCompass and FedBuff against references written out by hand.

The references below are the papers' update rules, one coordinate at a time in Python floats, and the
staleness discounts s(τ) are a table of numbers worked out on paper, so they share no code with
`fedhpc.aggregate`. Each sequence runs several consecutive aggregations in which updates arrive
trained from older globals (stale), and the aggregator's output is fed back as the next global, as
the server would.
"""

from __future__ import annotations

import math

import pytest
import torch

from fedhpc.aggregate import FedAvg, FedBuff, StalenessMixing, Update, make_aggregator, staleness_weight
from fedhpc.config import AlgorithmConfig, StalenessConfig

FACILITIES = ["alpha", "beta", "gamma"]
SAMPLES, STEPS = [10, 30, 60], [2, 4, 2]
RAW_WEIGHT = {"equal": [1, 1, 1], "samples": SAMPLES, "steps": STEPS}
WEIGHTINGS = ["equal", "samples", "steps"]

STALENESS = {
    "constant": StalenessConfig(function="constant"),
    "polynomial": StalenessConfig(function="polynomial", a=0.5),
    "hinge": StalenessConfig(function="hinge", a=10, b=4),
}
# s(τ) worked out by hand: polynomial (1 + τ)^−½; hinge 1 up to τ = b = 4, then 1/(10·(τ − 4) + 1).
S = {
    "constant": {0: 1.0, 1: 1.0, 2: 1.0, 3: 1.0, 4: 1.0, 5: 1.0, 6: 1.0},
    "polynomial": {0: 1.0, 1: 1 / math.sqrt(2), 2: 1 / math.sqrt(3), 3: 0.5, 4: 1 / math.sqrt(5),
                   5: 1 / math.sqrt(6), 6: 1 / math.sqrt(7)},
    "hinge": {0: 1.0, 1: 1.0, 2: 1.0, 3: 1.0, 4: 1.0, 5: 1 / 11, 6: 1 / 21},
}

X0 = [0.5, -0.5, 1.0, 0.0, 0.25]  # w (2×2) then b (1), flattened
# What each facility's training adds to the global it was given, one per facility.
CHANGES = {
    "alpha": [1.0, -2.0, 0.5, 0.0, 2.0],
    "beta": [3.0, 0.0, -1.0, 1.0, -1.0],
    "gamma": [-1.0, 1.0, 2.0, 0.5, 0.0],
}


class DictSource:
    def __init__(self, tensors: dict[str, torch.Tensor], log: list[str] | None = None, label: str = ""):
        self.tensors, self.log, self.label = tensors, log, label

    def names(self) -> list[str]:
        return list(self.tensors)

    def get(self, name: str) -> torch.Tensor:
        if self.log is not None:
            self.log.append(f"{self.label}:{name}")
        return self.tensors[name]  # the stored tensor itself: the aggregator must not write into it


def as_tensors(flat: list[float], dtype=torch.float32) -> dict[str, torch.Tensor]:
    return {"w": torch.tensor(flat[:4], dtype=dtype).reshape(2, 2), "b": torch.tensor(flat[4:], dtype=dtype)}


def flat(tensors: dict[str, torch.Tensor]) -> list[float]:
    return tensors["w"].reshape(-1).tolist() + tensors["b"].tolist()


def local_model(base: list[float], facility: str, scale: float = 1.0) -> list[float]:
    return [x + scale * c for x, c in zip(base, CHANGES[facility])]


def make_update(facility: str, local: list[float], staleness: int, base=None, dtype=torch.float32) -> Update:
    i = FACILITIES.index(facility)
    return Update(facility, DictSource(as_tensors(local, dtype)), SAMPLES[i], STEPS[i], 0, staleness, base)


def batch_weights(facilities: list[str], weighting: str) -> list[float]:
    raw = [RAW_WEIGHT[weighting][FACILITIES.index(f)] for f in facilities]
    return [r / sum(raw) for r in raw]


def run(aggregator, global_: list[float], updates: list[Update]) -> dict[str, torch.Tensor]:
    state: dict[str, torch.Tensor] = {}
    result = dict(aggregator.aggregate(DictSource(as_tensors(global_)), updates, state))
    assert state == {}, "the asynchronous rules are stateless"
    assert list(result) == ["w", "b"] and all(t.dtype == torch.float32 for t in result.values())
    return result


# --- s(τ) ------------------------------------------------------------------------------------


@pytest.mark.parametrize("function", ["constant", "polynomial", "hinge"])
def test_staleness_weight_matches_the_hand_table(function: str) -> None:
    for tau, expected in S[function].items():
        assert staleness_weight(STALENESS[function], tau) == pytest.approx(expected, rel=1e-12), tau


def test_staleness_weight_defaults_and_edges() -> None:
    default = StalenessConfig()  # polynomial, a = 0.5
    assert staleness_weight(default, 0) == 1.0
    assert staleness_weight(default, 3) == 0.5  # (1 + 3)^−½
    assert staleness_weight(default, 8) == pytest.approx(1 / 3)  # (1 + 8)^−½
    assert staleness_weight(StalenessConfig(function="polynomial", a=2), 1) == 0.25  # (1 + 1)^−2
    hinge = StalenessConfig(function="hinge", a=0.5, b=0)
    assert staleness_weight(hinge, 0) == 1.0
    assert staleness_weight(hinge, 2) == 0.5  # 1/(0.5·2 + 1)


def test_negative_staleness_is_an_error() -> None:
    for function in STALENESS.values():
        with pytest.raises(ValueError, match="staleness must be ≥ 0"):
            staleness_weight(function, -1)
    update = make_update("alpha", X0, staleness=-1)
    with pytest.raises(ValueError, match="staleness must be ≥ 0"):
        run(StalenessMixing(0.5, StalenessConfig(), "equal"), X0, [update])


# --- FedAsync --------------------------------------------------------------------------------


def test_fedasync_by_hand() -> None:
    # α = 0.6, τ = 3, polynomial a = ½: α_t = 0.6 · (1 + 3)^−½ = 0.3.
    # w = 0.7·[1, 1, 1, 1] + 0.3·[1, 2, 3, 4] = [1.0, 1.3, 1.6, 1.9];  b = 0.7·2 + 0.3·8 = 3.8
    update = make_update("alpha", [1.0, 2.0, 3.0, 4.0, 8.0], staleness=3)
    result = run(StalenessMixing(0.6, StalenessConfig(), "samples"), [1.0, 1.0, 1.0, 1.0, 2.0], [update])
    torch.testing.assert_close(result["w"], torch.tensor([[1.0, 1.3], [1.6, 1.9]]))
    torch.testing.assert_close(result["b"], torch.tensor([3.8]))


# (facility, the global version it trained from) for arrivals 0..8; arrival t meets global version t,
# so τ = t − version: 0, 1, 1, 3, 0, 5, 0, 6, 4 — both sides of the hinge's b = 4, and b itself.
ARRIVALS = [
    ("alpha", 0), ("beta", 0), ("gamma", 1), ("alpha", 0), ("beta", 4),
    ("gamma", 0), ("alpha", 6), ("beta", 1), ("gamma", 4),
]


@pytest.mark.parametrize("weighting", WEIGHTINGS)
@pytest.mark.parametrize("function", ["constant", "polynomial", "hinge"])
def test_fedasync_sequence_matches_xie_et_al(function: str, weighting: str) -> None:
    alpha = 0.6
    aggregator = StalenessMixing(alpha, STALENESS[function], weighting)
    history = [X0]  # every global version, as the server would keep them
    taus = []
    for t, (facility, version) in enumerate(ARRIVALS):
        tau = t - version
        taus.append(tau)
        local = local_model(history[version], facility)
        x = history[-1]
        result = run(aggregator, x, [make_update(facility, local, tau)])
        # Xie et al.: x ← (1 − α_t)·x + α_t·x_new,  α_t = α·s(τ); one update, whatever the weighting
        a_t = alpha * S[function][tau]
        expected = [(1 - a_t) * xi + a_t * li for xi, li in zip(x, local)]
        torch.testing.assert_close(flat(result), expected, rtol=1e-5, atol=1e-6)
        history.append(flat(result))
    assert sorted(set(taus)) == [0, 1, 3, 4, 5, 6]
    assert history[-1] != history[-2]


def test_fedasync_hinge_discounts_only_beyond_b() -> None:
    """τ = 4 = b mixes fully, τ = 5 at 1/11 of α: w moves α·(local − w) and α/11·(local − w)."""
    hinge = StalenessMixing(0.5, STALENESS["hinge"], "equal")
    local = [x + 11.0 for x in X0]
    at_b = run(hinge, X0, [make_update("alpha", local, 4)])
    beyond = run(hinge, X0, [make_update("alpha", local, 5)])
    torch.testing.assert_close(flat(at_b), [x + 5.5 for x in X0])
    torch.testing.assert_close(flat(beyond), [x + 0.5 for x in X0])


# --- FedCompass ------------------------------------------------------------------------------


def test_fedcompass_group_of_one_moves_one_nth_of_the_way() -> None:
    # N = 4, α = 1, fresh: α_1 = 1 · 1 · (1 · 1/4) = ¼.  w = ¾·0 + ¼·[4, 8, 12, 16];  b = ¼·20
    update = make_update("beta", [4.0, 8.0, 12.0, 16.0, 20.0], staleness=0)
    result = run(StalenessMixing(1.0, StalenessConfig(), "samples", 4), [0.0] * 5, [update])
    torch.testing.assert_close(result["w"], torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
    torch.testing.assert_close(result["b"], torch.tensor([5.0]))


@pytest.mark.parametrize("weighting", WEIGHTINGS)
def test_fedcompass_all_fresh_group_with_alpha_one_is_fedavg(weighting: str) -> None:
    locals_ = {f: local_model(X0, f) for f in FACILITIES}
    updates = [make_update(f, locals_[f], 0) for f in FACILITIES]
    compass = run(StalenessMixing(1.0, StalenessConfig(), weighting, 3), X0, updates)
    fedavg = run(FedAvg(weighting), X0, updates)
    p = batch_weights(FACILITIES, weighting)
    expected = [sum(pk * locals_[f][i] for pk, f in zip(p, FACILITIES)) for i in range(5)]
    torch.testing.assert_close(flat(compass), expected, rtol=1e-6, atol=1e-6)
    for name in fedavg:
        torch.testing.assert_close(compass[name], fedavg[name], rtol=0, atol=1e-6)


# Groups arriving one after another: (members, the global version each trained from). Arrival t meets
# version t. Groups of 1, 2 and all 3, fresh and stale.
GROUPS = [
    (["alpha", "beta", "gamma"], [0, 0, 0]),
    (["gamma"], [0]),
    (["alpha", "beta"], [1, 0]),
    (["beta"], [3]),
    (["alpha", "beta", "gamma"], [3, 4, 1]),
]


@pytest.mark.parametrize("weighting", WEIGHTINGS)
@pytest.mark.parametrize("function", ["polynomial", "hinge"])
def test_fedcompass_sequence_matches_the_reference(function: str, weighting: str) -> None:
    alpha, n_facilities = 0.8, 3
    aggregator = StalenessMixing(alpha, STALENESS[function], weighting, n_facilities)
    history = [X0]
    for t, (members, versions) in enumerate(GROUPS):
        taus = [t - v for v in versions]
        locals_ = [local_model(history[v], f, scale=0.5 + t) for f, v in zip(members, versions)]
        x = history[-1]
        result = run(aggregator, x, [make_update(f, l, tau) for f, l, tau in zip(members, locals_, taus)])
        # α_i = α · s(τ_i) · p_i · n/N;  x ← (1 − Σα_i)·x + Σ α_i·x_i
        p = batch_weights(members, weighting)
        a = [alpha * S[function][tau] * pi * len(members) / n_facilities for tau, pi in zip(taus, p)]
        expected = [(1 - sum(a)) * x[i] + sum(ai * li[i] for ai, li in zip(a, locals_)) for i in range(5)]
        torch.testing.assert_close(flat(result), expected, rtol=1e-5, atol=1e-6)
        history.append(flat(result))


def test_fedcompass_group_larger_than_n_is_an_error() -> None:
    updates = [make_update(f, X0, 0) for f in FACILITIES]
    with pytest.raises(ValueError, match="at most one update per facility"):
        run(StalenessMixing(1.0, StalenessConfig(), "equal", 2), X0, updates)


def test_mixing_weights_are_reported() -> None:
    updates = [make_update("alpha", X0, 3), make_update("gamma", X0, 0)]
    # samples 10:60 → 1/7, 6/7; ×2/4 for a group of 2 of N = 4; ×α = 0.5; alpha's τ = 3 → ×½
    weights = StalenessMixing(0.5, StalenessConfig(), "samples", 4).mixing_weights(updates)
    assert weights == pytest.approx([0.5 * 0.5 * (1 / 7) * 0.5, 0.5 * 1.0 * (6 / 7) * 0.5])


# --- FedBuff ---------------------------------------------------------------------------------


def test_fedbuff_by_hand() -> None:
    # x = [1, 1, 1, 1 | 2].  alpha trained from b_A = 0 (τ = 3, s = ½) to [1, 2, 3, 4 | 4]: change [1, 2, 3, 4 | 4].
    # beta is fresh (base None: the current global) at [2, 1, 1, 2 | 2]: change [1, 0, 0, 1 | 0].  p = ½ each, η = 1.
    # x + ½·½·[1, 2, 3, 4 | 4] + ½·[1, 0, 0, 1 | 0] = [1.75, 1.5, 1.75, 2.5 | 3]
    old_global = DictSource(as_tensors([0.0] * 5))
    updates = [
        make_update("alpha", [1.0, 2.0, 3.0, 4.0, 4.0], staleness=3, base=old_global),
        make_update("beta", [2.0, 1.0, 1.0, 2.0, 2.0], staleness=0),
    ]
    result = run(FedBuff(None, StalenessConfig(), "equal"), [1.0, 1.0, 1.0, 1.0, 2.0], updates)
    torch.testing.assert_close(result["w"], torch.tensor([[1.75, 1.5], [1.75, 2.5]]))
    torch.testing.assert_close(result["b"], torch.tensor([3.0]))


# Buffers of K = 3 flushed one after another: (facility, the global version it trained from).
# Buffer t meets version t. Two updates of buffer 2 share a base, one is fresh.
BUFFERS = [
    [("alpha", 0), ("beta", 0), ("gamma", 0)],
    [("gamma", 0), ("alpha", 1), ("beta", 0)],
    [("beta", 1), ("alpha", 1), ("gamma", 2)],
    [("alpha", 0), ("gamma", 3), ("beta", 2)],
]


@pytest.mark.parametrize("weighting", WEIGHTINGS)
@pytest.mark.parametrize(("function", "server_lr"), [("polynomial", 0.7), ("hinge", 1.5), ("constant", None)])
def test_fedbuff_sequence_matches_nguyen_et_al(function: str, server_lr: float | None, weighting: str) -> None:
    aggregator = FedBuff(server_lr, STALENESS[function], weighting)
    eta = 1.0 if server_lr is None else server_lr
    history = [X0]
    sources = [DictSource(as_tensors(X0))]  # one source per global version, shared like the server's
    for t, buffer in enumerate(BUFFERS):
        members = [f for f, _ in buffer]
        taus = [t - v for _, v in buffer]
        bases = [history[v] for _, v in buffer]
        locals_ = [local_model(base, f, scale=1.0 / (t + 1)) for f, base in zip(members, bases)]
        updates = [
            make_update(f, l, tau, None if v == t else sources[v])
            for f, l, tau, (_, v) in zip(members, locals_, taus, buffer)
        ]
        x = history[-1]
        result = run(aggregator, x, updates)
        # x ← x + η · Σ_i p_i · s(τ_i) · (x_i − b_i)
        p = batch_weights(members, weighting)
        expected = [
            x[i] + eta * sum(pi * S[function][tau] * (li[i] - bi[i]) for pi, tau, li, bi in zip(p, taus, locals_, bases))
            for i in range(5)
        ]
        torch.testing.assert_close(flat(result), expected, rtol=1e-5, atol=1e-6)
        history.append(flat(result))
        sources.append(DictSource(as_tensors(history[-1])))


@pytest.mark.parametrize("weighting", WEIGHTINGS)
def test_fedbuff_fresh_buffer_with_unit_lr_is_fedavg(weighting: str) -> None:
    updates = [make_update(f, local_model(X0, f), 0) for f in FACILITIES]
    fedbuff = run(FedBuff(1.0, StalenessConfig(), weighting), X0, updates)
    fedavg = run(FedAvg(weighting), X0, updates)
    for name in fedavg:
        torch.testing.assert_close(fedbuff[name], fedavg[name], rtol=0, atol=1e-6)


def test_fedbuff_reads_a_shared_base_once_and_a_fresh_one_not_at_all() -> None:
    log: list[str] = []
    global_ = DictSource(as_tensors(X0), log, "global")
    old = DictSource(as_tensors([0.0] * 5), log, "old")
    updates = [
        Update(f, DictSource(as_tensors(local_model(X0, f)), log, f), 1, 1, 0, 1 if f != "gamma" else 0,
               None if f == "gamma" else old)
        for f in FACILITIES
    ]
    for name, _ in FedBuff(1.0, StalenessConfig(), "equal").aggregate(global_, updates, {}):
        log.append(f"yield:{name}")
    per_tensor = ["global", "alpha", "old", "beta", "gamma"]
    assert log == [f"{s}:w" for s in per_tensor] + ["yield:w"] + [f"{s}:b" for s in per_tensor] + ["yield:b"]


def test_fedbuff_base_of_the_wrong_shape_is_named() -> None:
    bad_base = DictSource({"w": torch.zeros(3), "b": torch.zeros(1)})
    updates = [make_update("alpha", X0, 1, bad_base)]
    with pytest.raises(ValueError, match=r"'w' from the base of alpha has shape \[3\], expected \[2, 2\]"):
        run(FedBuff(1.0, StalenessConfig(), "equal"), X0, updates)


# --- precision, streaming, inputs ------------------------------------------------------------


@pytest.mark.parametrize("global_dtype", [torch.float32, torch.bfloat16])
def test_bf16_update_is_mixed_in_fp32(global_dtype: torch.dtype) -> None:
    """½·1 + ½·(1 + 2⁻⁷) = 1 + 2⁻⁸: exact in fp32, halfway between two bf16 numbers (so lost in bf16).

    FedBuff with a bf16 base 1 + 2⁻⁷ and a bf16 update 1 + 2⁻⁶ adds ½·2⁻⁷ = 2⁻⁸ to the global: the same.
    """
    global_ = DictSource({"w": torch.ones(4, dtype=global_dtype)})
    next_up = torch.full((4,), 1.0078125, dtype=torch.bfloat16)
    update = Update("alpha", DictSource({"w": next_up}), 1, 1, 0, 0)
    mixed = dict(StalenessMixing(0.5, StalenessConfig(), "equal").aggregate(global_, [update], {}))
    base = DictSource({"w": next_up})
    trained = Update("alpha", DictSource({"w": torch.full((4,), 1.015625, dtype=torch.bfloat16)}), 1, 1, 0, 0, base)
    buffered = dict(FedBuff(0.5, StalenessConfig(), "equal").aggregate(global_, [trained], {}))
    for result in (mixed, buffered):
        assert result["w"].dtype == torch.float32 and torch.equal(result["w"], torch.full((4,), 1 + 2.0**-8))


def random_bf16(generator: torch.Generator) -> torch.Tensor:
    return (torch.randn(64, 32, generator=generator) * 0.01 + 1).to(torch.bfloat16)


def test_bf16_inputs_accumulate_in_fp32_for_every_rule() -> None:
    """The reference is the float64 rule applied to the bf16 values upcast; fp32 accumulation stays within fp32 rounding."""
    generator = torch.Generator().manual_seed(3)
    global_ = torch.randn(64, 32, generator=generator) * 0.01 + 1  # the server's fp32 master copy
    old_base = random_bf16(generator)
    locals_ = [random_bf16(generator) for _ in FACILITIES]
    taus = [0, 2, 5]
    upcast = [l.double() for l in locals_]
    p = [0.1, 0.3, 0.6]  # samples

    def updates(with_base: bool) -> list[Update]:
        return [
            Update(f, DictSource({"w": l}), SAMPLES[i], STEPS[i], 0, taus[i],
                   DictSource({"w": old_base}) if with_base and i else None)
            for i, (f, l) in enumerate(zip(FACILITIES, locals_))
        ]

    s = [S["hinge"][tau] for tau in taus]
    a = [0.9 * si * pi for si, pi in zip(s, p)]  # FedCompass with N = 3 and the whole group: n/N = 1
    expected_mix = (1 - sum(a)) * global_.double() + sum(ai * li for ai, li in zip(a, upcast))
    bases = [global_.double()] + [old_base.double()] * 2
    expected_buff = global_.double() + 0.5 * sum(pi * si * (li - bi) for pi, si, li, bi in zip(p, s, upcast, bases))

    results = {
        "mix": dict(StalenessMixing(0.9, STALENESS["hinge"], "samples", 3).aggregate(DictSource({"w": global_}), updates(False), {})),
        "buff": dict(FedBuff(0.5, STALENESS["hinge"], "samples").aggregate(DictSource({"w": global_}), updates(True), {})),
    }
    for key, expected in (("mix", expected_mix), ("buff", expected_buff)):
        result = results[key]["w"]
        assert result.dtype == torch.float32
        torch.testing.assert_close(result.double(), expected, rtol=0, atol=1e-6)
        assert not torch.equal(result, result.to(torch.bfloat16).to(torch.float32)), key


@pytest.mark.parametrize(
    "aggregator",
    [StalenessMixing(0.6, StalenessConfig(), "samples"), StalenessMixing(1.0, StalenessConfig(), "samples", 3),
     FedBuff(None, StalenessConfig(), "samples")],
    ids=["fedasync", "fedcompass", "fedbuff"],
)
def test_streams_in_global_order_and_leaves_inputs_and_state_alone(aggregator) -> None:
    log: list[str] = []
    global_tensors = {"z": torch.ones(2), "a": torch.full((2,), 2.0)}
    base = DictSource({"a": torch.zeros(2), "z": torch.zeros(2)}, log, "base")
    updates = [
        Update("alpha", DictSource({"a": torch.ones(2), "z": torch.ones(2)}, log, "alpha"), 1, 1, 0, 1, base),
        Update("beta", DictSource({"z": torch.zeros(2), "a": torch.ones(2)}, log, "beta"), 1, 1, 0, 0),
    ]
    before = [{k: v.clone() for k, v in s.tensors.items()} for s in [base] + [u.source for u in updates]]
    global_before = {k: v.clone() for k, v in global_tensors.items()}
    state = {"unrelated": torch.ones(1)}
    for name, _ in aggregator.aggregate(DictSource(global_tensors, log, "global"), updates, state):
        log.append(f"yield:{name}")
    assert [entry for entry in log if entry.startswith("yield")] == ["yield:z", "yield:a"]
    assert log.index("yield:z") < min(i for i, entry in enumerate(log) if entry.endswith(":a"))
    assert list(state) == ["unrelated"] and torch.equal(state["unrelated"], torch.ones(1))
    for source, saved in zip([base] + [u.source for u in updates], before):
        assert all(torch.equal(source.tensors[k], v) for k, v in saved.items())
    assert all(torch.equal(global_tensors[k], v) for k, v in global_before.items())


# --- the registry ----------------------------------------------------------------------------


def test_registry_builds_the_asynchronous_aggregators_from_the_config() -> None:
    fedasync = make_aggregator(AlgorithmConfig(name="fedasync", weighting="steps"))
    assert isinstance(fedasync, StalenessMixing)
    assert (fedasync.alpha, fedasync.num_facilities, fedasync.weighting) == (0.6, None, "steps")
    assert fedasync.staleness == StalenessConfig()

    compass = make_aggregator(AlgorithmConfig(name="fedcompass"), num_facilities=5)
    assert isinstance(compass, StalenessMixing) and (compass.alpha, compass.num_facilities) == (1.0, 5)

    tuned = make_aggregator(
        AlgorithmConfig(name="fedcompass", alpha=0.4, staleness={"function": "hinge", "a": 2, "b": 1}), 2
    )
    assert (tuned.alpha, tuned.staleness.function, tuned.staleness.a, tuned.staleness.b) == (0.4, "hinge", 2, 1)

    fedbuff = make_aggregator(AlgorithmConfig(name="fedbuff"), 3)
    assert isinstance(fedbuff, FedBuff) and fedbuff.server_lr == 1.0
    assert make_aggregator(AlgorithmConfig(name="fedbuff", server={"lr": 0.3})).server_lr == 0.3
