"""The piecewise reduction (`fedhpc.aggregate.streaming`) against the tensor-at-a-time one, bit for bit.

Large tensors from exchange directories are reduced piece by piece on several
threads; that must change nothing in the result: the same terms, in the same
facility order, per element. The cases use a tensor just over the piecewise
threshold with a ragged last piece, real safetensors files and weights that
do not round exactly.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fedhpc.aggregate import FedAvg, FedOpt, Update
from fedhpc.aggregate.streaming import PIECE, PIECEWISE_MIN, _tensorwise_sum, weighted_sum
from fedhpc.exchange import ExchangeDir, ExchangeMeta, write_state_dict

ROWS, COLS = PIECEWISE_MIN // 1000 + 7, 1000  # just over the threshold; the last piece is partial
META = ExchangeMeta(kind="update", round=1, facility="f", based_on_round=0, num_samples=1,
                    base_fingerprint="sha256:" + "7" * 64)  # fmt: skip


class Whole:
    """A source that only offers whole tensors: forces the tensor-at-a-time path."""

    def __init__(self, source: ExchangeDir):
        self.source = source

    def names(self) -> list[str]:
        return self.source.names()

    def get(self, name: str) -> torch.Tensor:
        return self.source.get(name)


def write_updates(root: Path, dtype: torch.dtype, count: int = 3) -> list[ExchangeDir]:
    generator = torch.Generator().manual_seed(5)
    dirs = []
    for index in range(count):
        state = {
            "big": (torch.randn(ROWS, COLS, generator=generator) * 10 ** (index - 1)).to(dtype),
            "small": torch.randn(5, generator=generator).to(dtype),
        }
        write_state_dict(root / f"u{index}", state, META)
        dirs.append(ExchangeDir(root / f"u{index}"))
    return dirs


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_piecewise_equals_tensorwise_bit_for_bit(tmp_path: Path, dtype: torch.dtype) -> None:
    assert ROWS * COLS % PIECE != 0 and ROWS * COLS >= PIECEWISE_MIN
    dirs = write_updates(tmp_path, dtype)
    weights = [0.1, 0.3, 0.6000000001]
    terms = [(f"f{k}", source, weight) for k, (source, weight) in enumerate(zip(dirs, weights, strict=True))]
    piecewise = weighted_sum("big", terms)
    tensorwise = _tensorwise_sum("big", terms)
    assert piecewise.dtype == torch.float32 and piecewise.shape == (ROWS, COLS)
    assert torch.equal(piecewise.view(torch.int32), tensorwise.view(torch.int32))  # bits, signed zeros included
    # the plain definition, one facility after another in fp32
    expected = torch.zeros(ROWS, COLS)
    for source, weight in zip(dirs, weights, strict=True):
        expected.add_(source.get("big").float(), alpha=weight)
    assert torch.equal(piecewise, expected)


def test_fedavg_over_exchange_dirs_equals_fedavg_over_whole_tensors(tmp_path: Path) -> None:
    dirs = write_updates(tmp_path, torch.bfloat16)
    updates = [Update(f"f{k}", d, num_samples=10 * (k + 1), local_steps=1, based_on_round=0) for k, d in enumerate(dirs)]
    plain = [Update(u.facility, Whole(u.source), u.num_samples, u.local_steps, 0) for u in updates]
    fast = dict(FedAvg("samples").aggregate(dirs[0], updates, {}))
    slow = dict(FedAvg("samples").aggregate(Whole(dirs[0]), plain, {}))
    assert fast.keys() == slow.keys() == {"big", "small"}
    for name in fast:
        assert torch.equal(fast[name].view(torch.int32), slow[name].view(torch.int32)), name


def test_a_source_whose_tensor_has_another_shape_is_named(tmp_path: Path) -> None:
    dirs = write_updates(tmp_path, torch.float32, count=1)
    write_state_dict(tmp_path / "odd", {"big": torch.zeros(ROWS + 1, COLS), "small": torch.zeros(5)}, META)
    terms = [("alpha", dirs[0], 0.5), ("beta", ExchangeDir(tmp_path / "odd"), 0.5)]
    with pytest.raises(ValueError, match=r"'big' from beta has shape"):
        weighted_sum("big", terms)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_fedadam_pseudo_gradient_piecewise_equals_whole_tensors(tmp_path: Path, dtype: torch.dtype) -> None:
    """The server optimiser's Δ = Σ p_k (u_k − x) piece by piece, bit for bit what whole tensors give."""
    dirs = write_updates(tmp_path, dtype)
    generator = torch.Generator().manual_seed(9)
    write_state_dict(tmp_path / "global", {"big": torch.randn(ROWS, COLS, generator=generator),
                                           "small": torch.randn(5, generator=generator)},
                     META.model_copy(update={"kind": "global", "facility": None, "based_on_round": None}))  # fmt: skip
    global_ = ExchangeDir(tmp_path / "global")
    updates = [Update(f"f{k}", d, num_samples=k + 1, local_steps=1, based_on_round=0) for k, d in enumerate(dirs)]
    plain = [Update(u.facility, Whole(u.source), u.num_samples, u.local_steps, 0) for u in updates]
    fast_state: dict[str, torch.Tensor] = {}
    slow_state: dict[str, torch.Tensor] = {}
    fast = dict(FedOpt("fedadam", lr=0.01).aggregate(global_, updates, fast_state))
    slow = dict(FedOpt("fedadam", lr=0.01).aggregate(Whole(global_), plain, slow_state))
    for name in ("big", "small"):
        assert torch.equal(fast[name].view(torch.int32), slow[name].view(torch.int32)), name
    for key in slow_state:
        assert torch.equal(fast_state[key], slow_state[key]), key
