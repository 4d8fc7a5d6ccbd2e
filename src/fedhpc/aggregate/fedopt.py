"""Server optimisers — Reddi et al., 2021, "Adaptive Federated Optimization" (FedAdagrad, FedAdam, FedYogi),
and server momentum — Hsu et al., 2019, "Measuring the Effects of Non-Identical Data Distribution for
Federated Visual Classification" (FedAvgM).

The server treats the weighted mean of the facilities' changes as a pseudo-gradient and takes one
optimiser step with it (Reddi et al., Algorithm 2; weights p_k as FedAvg's `weighting`):

    Δ = Σ_k p_k · (x_k − x)
    fedavgm:     m ← β·m + Δ                                  x ← x + η·m
    fedadam:     m ← β1·m + (1−β1)·Δ,  v ← β2·v + (1−β2)·Δ²   x ← x + η·m / (√v + τ)
    fedyogi:     m as fedadam,         v ← v − (1−β2)·Δ²·sign(v − Δ²)
    fedadagrad:  m as fedadam,         v ← v + Δ²

m starts at 0 and v at τ² (the paper's v₋₁ ≥ τ²); there is no bias correction, as in the paper.
fedavgm with β = 0 and η = 1 is FedAvg. All math is fp32 whatever the dtype of the updates; the
moments live in `state` as fp32 tensors named `<tensor>.m` and `<tensor>.v`, one pair per global
tensor, and the caller persists them between rounds.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal

import torch

from fedhpc.aggregate.base import TensorSource, Update, Weighting, aggregation_weights
from fedhpc.aggregate.streaming import CAST_CHUNK, Buffers, flat_dtypes, for_each_piece

Rule = Literal["fedavgm", "fedadam", "fedyogi", "fedadagrad"]

# η when `algorithm.server.lr` is not set: FedAvgM's 1.0 keeps FedAvg's step size; the adaptive
# rules take steps of about η per coordinate, so η is of the order of the change a round should make.
DEFAULT_LR: dict[str, float] = {"fedavgm": 1.0, "fedadam": 1e-2, "fedyogi": 1e-2, "fedadagrad": 1e-1}


class FedOpt:
    def __init__(
        self,
        rule: Rule,
        weighting: Weighting = "samples",
        *,
        lr: float | None = None,
        momentum: float = 0.9,
        beta1: float = 0.9,
        beta2: float = 0.99,
        tau: float = 1e-3,
    ):
        if rule not in DEFAULT_LR:
            raise ValueError(f"unknown server optimiser {rule!r}; expected one of {', '.join(DEFAULT_LR)}")
        self.rule, self.weighting = rule, weighting
        self.lr = DEFAULT_LR[rule] if lr is None else lr
        self.momentum, self.beta1, self.beta2, self.tau = momentum, beta1, beta2, tau

    def aggregate(
        self, global_: TensorSource, updates: list[Update], state: dict[str, torch.Tensor]
    ) -> Iterator[tuple[str, torch.Tensor]]:
        weights = aggregation_weights(updates, self.weighting)
        for name in global_.names():
            x = global_.get(name).to(torch.float32, copy=True)  # a copy: the source is never written
            delta = pseudo_gradient(name, x, updates, weights)
            m = _moment(state, f"{name}.m", x, 0.0)
            if self.rule == "fedavgm":
                m.mul_(self.momentum).add_(delta)
                x.add_(m, alpha=self.lr)
            else:
                v = _moment(state, f"{name}.v", x, self.tau**2)
                m.mul_(self.beta1).add_(delta, alpha=1 - self.beta1)
                squared = delta.mul_(delta)
                if self.rule == "fedadam":
                    v.mul_(self.beta2).add_(squared, alpha=1 - self.beta2)
                elif self.rule == "fedyogi":
                    v.addcmul_(squared, torch.sign(v - squared), value=-(1 - self.beta2))
                else:
                    v.add_(squared)
                x.addcdiv_(m, v.sqrt().add_(self.tau), value=self.lr)
            del delta
            yield name, x


def pseudo_gradient(name: str, x: torch.Tensor, updates: list[Update], weights: list[float]) -> torch.Tensor:
    """Δ = Σ_k weights[k] · (updates[k][name] − x), in fp32.

    The differences are taken per update rather than as mean − x, so a small change to a large
    weight is not lost to the rounding of the mean. Updates that serve the tensor in pieces
    (`FlatSource`) are reduced piece by piece on every core; the others a 16 MiB chunk at a time.
    Either way each element gets fp32(u_k) − x added with weight k, in update order.
    """
    delta = torch.empty(x.shape, dtype=torch.float32)
    target, center = delta.view(-1), x.reshape(-1)
    dtypes = flat_dtypes(name, [update.source for update in updates], x.shape)
    if dtypes is not None:

        def reduce_piece(start: int, piece: torch.Tensor, buffers: Buffers) -> None:
            piece.zero_()
            middle = center[start : start + piece.numel()]
            difference = buffers.get(torch.float32, piece.numel())
            for weight, update, dtype in zip(weights, updates, dtypes, strict=True):
                values = buffers.get(dtype, piece.numel()) if dtype != torch.float32 else difference
                update.source.read_elements(name, start, values)  # type: ignore[attr-defined]
                torch.sub(values, middle, out=difference)
                piece.add_(difference, alpha=weight)

        for_each_piece(target, reduce_piece)
        return delta
    target.zero_()
    for weight, update in zip(weights, updates, strict=True):
        tensor = update.source.get(name)
        if tensor.shape != x.shape:
            raise ValueError(
                f"{name!r} from {update.facility} has shape {list(tensor.shape)}, expected {list(x.shape)}"
            )
        source = tensor.reshape(-1)
        for start in range(0, source.numel(), CAST_CHUNK):
            chunk = slice(start, start + CAST_CHUNK)
            target[chunk].add_(source[chunk].to(torch.float32) - center[chunk], alpha=weight)
        del tensor, source
    return delta


def _moment(state: dict[str, torch.Tensor], key: str, like: torch.Tensor, initial: float) -> torch.Tensor:
    """The fp32 moment `key` from `state`, created as `initial` everywhere on the first round."""
    moment = state.get(key)
    if moment is None:
        moment = state[key] = torch.full(like.shape, initial, dtype=torch.float32)
    elif moment.shape != like.shape or moment.dtype != torch.float32:
        raise ValueError(
            f"server state {key!r} is {moment.dtype}{list(moment.shape)}, expected float32{list(like.shape)}"
        )
    return moment
