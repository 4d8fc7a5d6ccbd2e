"""Aggregation math on small literal tensors, checked against sums done by hand.

Three facilities, two tensors; the expected results in the comments are the
arithmetic a reader can redo on paper. The server keeps an fp32 master copy,
so low-precision updates must be averaged in fp32 (ARCHITECTURE.md, "Update
semantics").
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fedhpc.aggregate import FedAvg, Update, aggregation_weights, make_aggregator
from fedhpc.config import AlgorithmConfig
from fedhpc.exchange import ExchangeDir, ExchangeMeta, write_exchange, write_state_dict


class DictSource:
    """An in-memory `TensorSource` that logs every read, to see how the aggregator streams."""

    def __init__(self, label: str, tensors: dict[str, torch.Tensor], log: list[str] | None = None):
        self.label = label
        self.tensors = tensors
        self.log = log if log is not None else []

    def names(self) -> list[str]:
        return list(self.tensors)

    def get(self, name: str) -> torch.Tensor:
        self.log.append(f"{self.label}:{name}")
        return self.tensors[name]  # the stored tensor itself: the aggregator must not write into it


def update(label: str, w: list[list[float]], b: list[float], samples: int, steps: int, dtype=torch.float32, log=None,
           tokens: int = 0) -> Update:
    tensors = {"w": torch.tensor(w, dtype=dtype), "b": torch.tensor(b, dtype=dtype)}
    return Update(label, DictSource(label, tensors, log), num_samples=samples, local_steps=steps, based_on_round=0,
                  tokens=tokens)


GLOBAL = DictSource("global", {"w": torch.zeros(2, 2), "b": torch.zeros(1)})


def three_updates(log=None) -> list[Update]:
    return [
        update("alpha", [[1, 2], [3, 4]], [1], samples=10, steps=2, log=log, tokens=1000),
        update("beta", [[5, 6], [7, 8]], [2], samples=30, steps=4, log=log, tokens=1000),
        update("gamma", [[-1, 0], [1, 2]], [6], samples=60, steps=2, log=log, tokens=2000),
    ]


def run(aggregator, updates: list[Update], global_=GLOBAL) -> dict[str, torch.Tensor]:
    return dict(aggregator.aggregate(global_, updates, {}))


@pytest.mark.parametrize(
    ("weighting", "expected_w", "expected_b"),
    [
        # equal: 1/3 each.  w = ([1,2,3,4] + [5,6,7,8] + [-1,0,1,2]) / 3,  b = (1 + 2 + 6) / 3
        ("equal", [[5 / 3, 8 / 3], [11 / 3, 14 / 3]], [3.0]),
        # samples 10:30:60 -> 0.1, 0.3, 0.6.  w[0,0] = 0.1·1 + 0.3·5 + 0.6·(−1) = 1.0;  b = 0.1 + 0.6 + 3.6
        ("samples", [[1.0, 2.0], [3.0, 4.0]], [4.3]),
        # steps 2:4:2 -> 0.25, 0.5, 0.25.  w[0,0] = 0.25 + 2.5 − 0.25 = 2.5;  b = 0.25 + 1 + 1.5
        ("steps", [[2.5, 3.5], [4.5, 5.5]], [2.75]),
        # tokens 1000:1000:2000 -> 0.25, 0.25, 0.5.  w[0,0] = 0.25 + 1.25 − 0.5 = 1.0;  b = 0.25 + 0.5 + 3
        ("tokens", [[1.0, 2.0], [3.0, 4.0]], [3.75]),
    ],
)
def test_fedavg_by_hand(weighting: str, expected_w, expected_b):
    result = run(FedAvg(weighting), three_updates())
    torch.testing.assert_close(result["w"], torch.tensor(expected_w), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(result["b"], torch.tensor(expected_b), rtol=1e-6, atol=1e-6)


def test_weights_are_normalised():
    updates = three_updates()
    assert aggregation_weights(updates, "equal") == pytest.approx([1 / 3] * 3)
    assert aggregation_weights(updates, "samples") == pytest.approx([0.1, 0.3, 0.6])
    assert aggregation_weights(updates, "steps") == pytest.approx([0.25, 0.5, 0.25])
    assert aggregation_weights(updates, "tokens") == pytest.approx([0.25, 0.25, 0.5])


def test_facilities_with_different_recipes_weigh_by_the_work_they_did():
    """Equal steps are not equal work when micro-batch × accumulation × ranks differ; tokens tell them apart.

    alpha: 4 steps of 2 × 1 × 1 sequences of 64 tokens = 512 tokens; beta: 4 steps of 4 × 4 × 2 of 128 = 16384.
    """
    updates = [update("alpha", [[0, 0], [0, 0]], [0], samples=50, steps=4, tokens=4 * 2 * 64),
               update("beta", [[33, 0], [0, 0]], [0], samples=50, steps=4, tokens=4 * 4 * 4 * 2 * 128)]
    assert aggregation_weights(updates, "steps") == pytest.approx([0.5, 0.5])
    assert aggregation_weights(updates, "samples") == pytest.approx([0.5, 0.5])
    assert aggregation_weights(updates, "tokens") == pytest.approx([1 / 33, 32 / 33])
    assert run(FedAvg("tokens"), updates)["w"][0, 0].item() == pytest.approx(32.0)  # 33 · 32/33


def test_zero_sample_facility_gets_no_weight():
    updates = three_updates()
    updates[2] = update("gamma", [[-1, 0], [1, 2]], [6], samples=0, steps=2)
    assert aggregation_weights(updates, "samples") == pytest.approx([0.25, 0.75, 0.0])
    # 0.25·[1,2,3,4] + 0.75·[5,6,7,8] = [4,5,6,7];  b = 0.25 + 1.5.  gamma's values do not count at all.
    result = run(FedAvg("samples"), updates)
    torch.testing.assert_close(result["w"], torch.tensor([[4.0, 5.0], [6.0, 7.0]]))
    torch.testing.assert_close(result["b"], torch.tensor([1.75]))
    # ...but under `steps` gamma still counts with its 2 steps.
    assert aggregation_weights(updates, "steps") == pytest.approx([0.25, 0.5, 0.25])


def test_all_facilities_report_zero_samples_falls_back_to_equal():
    updates = [update(f"f{i}", [[float(i), 0], [0, 0]], [0], samples=0, steps=0) for i in range(3)]
    assert aggregation_weights(updates, "samples") == pytest.approx([1 / 3] * 3)
    assert aggregation_weights(updates, "steps") == pytest.approx([1 / 3] * 3)
    assert aggregation_weights(updates, "tokens") == pytest.approx([1 / 3] * 3)
    assert run(FedAvg("samples"), updates)["w"][0, 0].item() == pytest.approx(1.0)  # (0 + 1 + 2) / 3


def test_no_updates_is_an_error():
    with pytest.raises(ValueError, match="zero updates"):
        run(FedAvg("equal"), [])


def test_single_update_is_returned_as_fp32_copy():
    (only,) = three_updates()[:1]
    result = run(FedAvg("samples"), [only])
    assert torch.equal(result["w"], torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
    assert result["w"].dtype == torch.float32


def test_bf16_updates_are_averaged_in_fp32():
    one = torch.tensor(1.0, dtype=torch.bfloat16)
    next_up = torch.tensor(1.0078125, dtype=torch.bfloat16)  # the bf16 number after 1.0 (spacing 2**-7)
    assert next_up.item() == 1.0078125
    updates = [
        Update("alpha", DictSource("alpha", {"w": one.expand(4).clone()}), 7, 1, 0),
        Update("beta", DictSource("beta", {"w": next_up.expand(4).clone()}), 1, 1, 0),
    ]
    result = run(FedAvg("samples"), updates, DictSource("global", {"w": torch.zeros(4)}))

    # 7/8 · 1.0 + 1/8 · 1.0078125 = 1.0009765625: a ~1e-3 move, exact in fp32...
    assert result["w"].dtype == torch.float32
    assert torch.equal(result["w"], torch.full((4,), 1.0009765625))
    # ...that accumulating in bf16 would round back to 1.0 (the master copy would never move).
    in_bf16 = one * torch.tensor(7 / 8, dtype=torch.bfloat16) + next_up * torch.tensor(1 / 8, dtype=torch.bfloat16)
    assert in_bf16.item() == 1.0


def test_bf16_result_equals_fp32_mean_of_the_bf16_values():
    generator = torch.Generator().manual_seed(1)
    values = [(torch.randn(64, 32, generator=generator) * 0.01 + 1).to(torch.bfloat16) for _ in range(3)]
    updates = [Update(f"f{i}", DictSource(f"f{i}", {"w": v}), 10 * (i + 1), 1, 0) for i, v in enumerate(values)]
    result = run(FedAvg("samples"), updates, DictSource("global", {"w": torch.zeros(64, 32)}))

    expected = sum(w * v.to(torch.float32) for w, v in zip([1 / 6, 2 / 6, 3 / 6], values))
    assert result["w"].dtype == torch.float32
    torch.testing.assert_close(result["w"], expected, rtol=1e-6, atol=1e-7)
    # and it is not merely the bf16 mean cast up: the fp32 result holds values bf16 cannot represent.
    assert not torch.equal(result["w"], result["w"].to(torch.bfloat16).to(torch.float32))


def test_mixed_dtypes():
    updates = [
        Update("a", DictSource("a", {"w": torch.tensor([1.0, 2.0], dtype=torch.float16)}), 1, 1, 0),
        Update("b", DictSource("b", {"w": torch.tensor([3.0, 4.0], dtype=torch.bfloat16)}), 1, 1, 0),
        Update("c", DictSource("c", {"w": torch.tensor([5.0, 9.0])}), 2, 1, 0),
    ]
    result = run(FedAvg("samples"), updates, DictSource("g", {"w": torch.zeros(2)}))
    assert result["w"].dtype == torch.float32
    torch.testing.assert_close(result["w"], torch.tensor([3.5, 6.0]))  # (1 + 3 + 2·5)/4, (2 + 4 + 2·9)/4


def test_output_order_is_the_global_order():
    global_ = DictSource("global", {"z": torch.zeros(1), "a": torch.zeros(1), "m": torch.zeros(1)})
    updates = [
        Update("x", DictSource("x", {"a": torch.ones(1), "m": torch.ones(1), "z": torch.ones(1)}), 1, 1, 0),
        Update("y", DictSource("y", {"m": torch.ones(1), "z": torch.ones(1), "a": torch.ones(1)}), 1, 1, 0),
    ]
    assert [name for name, _ in FedAvg("equal").aggregate(global_, updates, {})] == ["z", "a", "m"]


def test_streams_one_tensor_at_a_time():
    """Each new global tensor is yielded before the next name is read from any update."""
    log: list[str] = []
    for name, _ in FedAvg("samples").aggregate(GLOBAL, three_updates(log), {}):
        log.append(f"yield:{name}")
    assert log == ["alpha:w", "beta:w", "gamma:w", "yield:w", "alpha:b", "beta:b", "gamma:b", "yield:b"]


def test_inputs_are_not_modified():
    """A source may hand out tensors it keeps (an in-memory global, a cache): they must survive unchanged."""
    updates = three_updates()
    before = {u.facility: {k: v.clone() for k, v in u.source.tensors.items()} for u in updates}
    run(FedAvg("samples"), updates)
    for u in updates:
        for name, tensor in u.source.tensors.items():
            assert torch.equal(tensor, before[u.facility][name])


def test_make_aggregator_follows_the_config():
    aggregator = make_aggregator(AlgorithmConfig(name="fedavg", weighting="steps"))
    torch.testing.assert_close(run(aggregator, three_updates())["b"], torch.tensor([2.75]))


def test_through_exchange_directories(tmp_path: Path):
    """The server's path: bf16 update directories in, an fp32 global directory out."""
    global_meta = ExchangeMeta(kind="global", round=0, base_fingerprint="sha256:" + "0" * 64)
    write_state_dict(tmp_path / "g0", {"w": torch.zeros(2, 2), "b": torch.zeros(1)}, global_meta)
    updates = []
    for source in three_updates():
        tensors = {name: t.to(torch.bfloat16) for name, t in source.source.tensors.items()}
        meta = ExchangeMeta(
            kind="update", round=1, facility=source.facility, based_on_round=0,
            num_samples=source.num_samples, local_steps=source.local_steps, base_fingerprint=global_meta.base_fingerprint,
        )
        write_state_dict(tmp_path / source.facility, tensors, meta, shard_bytes=4)  # one tensor per file
        directory = ExchangeDir(tmp_path / source.facility)
        updates.append(Update(source.facility, directory, directory.manifest.num_samples, directory.manifest.local_steps, 0))
    global_ = ExchangeDir(tmp_path / "g0")

    write_exchange(
        tmp_path / "g1",
        global_.layout(torch.float32),
        FedAvg("samples").aggregate(global_, updates, {}),
        global_meta.model_copy(update={"round": 1}),
    )

    result = ExchangeDir(tmp_path / "g1")
    result.verify(expected_shapes={"w": (2, 2), "b": (1,)})
    assert result.names() == ["w", "b"]
    assert result.manifest.tensors["w"].dtype == "float32"
    torch.testing.assert_close(result.get("w"), torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
    # b: 0.1·1 + 0.3·2 + 0.6·6 = 4.3 (all three inputs are exact in bf16)
    torch.testing.assert_close(result.get("b"), torch.tensor([4.3]))
