"""DP-FedAvg on the server — McMahan et al., 2018, "Learning Differentially Private Recurrent Language
Models" — wrapped around any linear aggregation rule.

Per round (or FedBuff server step), in two streaming passes:

1. each update's change from its base (`Update.base`, else the current global) is measured over all
   tensors together (`delta_norm`), giving its clip factor c_k = min(1, C/‖Δ_k‖);
2. tensor by tensor, the noisy mean change

       Δ̃ = (Σ_k c_k · s_k · (u_k − b_k) + N(0, (z_Δ·C)²)) / m

   is formed in fp32 (s_k: FedBuff's staleness discount, else 1), and the inner aggregator is handed ONE
   fresh synthetic update whose tensors are global + Δ̃. FedAvg lands on it, a server optimiser takes Δ̃
   as its pseudo-gradient (the noise goes in before the optimiser step), FedBuff takes its server-lr step.

m is the expected participant count, fixed in advance: dividing by the count that arrived would make
the denominator itself depend on who took part. A facility with several updates in one step (a late
update landing beside a fresh one, a fast facility in a FedBuff buffer) has each clipped to C/n, so its
whole contribution to the step stays within C, the sensitivity the accountant assumes.

Memory stays flat in the number of facilities: the accumulator, the global's tensor, one update's (and,
if stale, its base's) tensor and one chunk. No source is modified. The generator state and, with
adaptive clipping, the current C are kept in `state` under `privacy/` keys, which no tensor name or
FedOpt moment (`<tensor>.m`, `.v`) can take, so a resumed run continues bit-identically.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from fedhpc.aggregate.base import Aggregator, TensorSource, Update
from fedhpc.aggregate.fedbuff import FedBuff
from fedhpc.aggregate.staleness import staleness_weight
from fedhpc.aggregate.streaming import CAST_CHUNK
from fedhpc.config import StalenessConfig
from fedhpc.config.privacy import PrivacyConfig
from fedhpc.privacy.adaptive import count_noise_multiplier, delta_noise_multiplier, next_clip_norm
from fedhpc.privacy.clipping import clip_factor, delta_norms, subtract_into
from fedhpc.privacy.noise import NoiseSource

# Server-state keys. Saved state passes the exchange's checks, which admit float tensors only, so the
# generator's uint8 state is stored as exact fp32 byte values and C as an fp32 scalar (read back from
# the same tensor every round, so an uninterrupted run and a resumed one use the very same C).
GENERATOR_KEY = "privacy/generator"
CLIP_NORM_KEY = "privacy/clip_norm"
SYNTHETIC_FACILITY = "privacy:noisy-mean"


@dataclass(frozen=True)
class PrivacyRound:
    """What one private aggregation did, for the ledger and the report."""

    clip_norm: float  # C this round
    norms: list[float]  # ‖Δ_k‖ per update, in the order given
    clipped: int  # updates whose change was scaled down
    noise_multiplier: float  # z, the multiplier the accountant counts
    delta_noise_multiplier: float  # z_Δ, the one on the change (z unless adaptive)
    noise_std: float  # per coordinate, on the mean change: z_Δ·C/m
    expected_participants: float  # m
    next_clip_norm: float  # C next round (= clip_norm when fixed)


class PrivateAggregation:
    """The `Aggregator` protocol around `inner`: clip, sum, add noise, divide by m, then let `inner` step."""

    def __init__(
        self,
        inner: Aggregator,
        privacy: PrivacyConfig,
        expected_participants: float,
        staleness: StalenessConfig | None = None,
    ):
        """`staleness`: the discount s(τ) of each update; by default FedBuff's own when `inner` is FedBuff,
        else none (the synchronous rules ignore staleness, and so does their private version)."""
        if expected_participants <= 0:
            raise ValueError(f"expected participants must be positive, got {expected_participants}")
        self.inner, self.privacy, self.expected = inner, privacy, float(expected_participants)
        if staleness is None and isinstance(inner, FedBuff):
            staleness = inner.staleness
        self.staleness = staleness
        clipping = privacy.clipping
        self.adaptive = clipping.mode == "adaptive"
        self.count_noise = count_noise_multiplier(clipping.count_noise_multiplier, self.expected)
        self.delta_multiplier = (
            delta_noise_multiplier(privacy.noise_multiplier, self.count_noise)
            if self.adaptive
            else privacy.noise_multiplier
        )
        self.last_round: PrivacyRound | None = None

    def aggregate(
        self, global_: TensorSource, updates: list[Update], state: dict[str, torch.Tensor]
    ) -> Iterator[tuple[str, torch.Tensor]]:
        """No update at all (a Poisson round that asked nobody) still releases a step: the noise alone over m."""
        names = global_.names()
        clip = float(state[CLIP_NORM_KEY]) if self.adaptive and CLIP_NORM_KEY in state else self.privacy.clipping.clip_norm
        bases = [global_ if update.base is None else update.base for update in updates]
        norms = delta_norms([(update.source, base) for update, base in zip(updates, bases, strict=True)], names)
        shares = Counter(update.facility for update in updates)
        factors = [clip_factor(norm, clip / shares[update.facility]) for update, norm in zip(updates, norms, strict=True)]
        scales = [factor * self._discount(update) for update, factor in zip(updates, factors, strict=True)]
        saved = state.get(GENERATOR_KEY)
        noise = NoiseSource(None if saved is None else saved.to(torch.uint8), self.privacy.noise_seed)
        following = clip
        if self.adaptive:
            clipping = self.privacy.clipping
            following = next_clip_norm(
                clip, sum(norm <= clip for norm in norms), len(updates), self.expected,
                clipping.target_quantile, clipping.learning_rate, self.count_noise, noise,
            )
        std = self.delta_multiplier * clip
        terms = [(update, base, scale) for update, base, scale in zip(updates, bases, scales, strict=True)]
        mean = NoisyMean(global_, names, terms, noise, std, self.expected)
        synthetic = Update(
            facility=SYNTHETIC_FACILITY, source=mean, num_samples=1, local_steps=1,
            based_on_round=max((update.based_on_round for update in updates), default=0), tokens=1,
        )
        yield from self.inner.aggregate(global_, [synthetic], state)
        mean.finish()
        state[GENERATOR_KEY] = noise.state().to(torch.float32)
        if self.adaptive:
            state[CLIP_NORM_KEY] = torch.tensor([following], dtype=torch.float32)
        self.last_round = PrivacyRound(
            clip_norm=clip,
            norms=norms,
            clipped=sum(factor < 1.0 for factor in factors),
            noise_multiplier=self.privacy.noise_multiplier,
            delta_noise_multiplier=self.delta_multiplier,
            noise_std=std / self.expected,
            expected_participants=self.expected,
            next_clip_norm=float(state[CLIP_NORM_KEY]) if self.adaptive else following,
        )

    def _discount(self, update: Update) -> float:
        return 1.0 if self.staleness is None else staleness_weight(self.staleness, update.staleness)


class NoisyMean:
    """A `TensorSource` whose tensor `name` is global + Δ̃, computed when asked, in `names` order.

    The noise is drawn in that order, so a resumed run draws the same values for the same tensors: a
    tensor asked for out of order is an error rather than silently different noise. The last tensor is
    kept, so an inner rule that reads it twice gets the same values.
    """

    def __init__(
        self,
        global_: TensorSource,
        names: list[str],
        terms: list[tuple[Update, TensorSource, float]],
        noise: NoiseSource,
        std: float,
        denominator: float,
    ):
        self._global, self._names, self._terms = global_, names, terms
        self._noise, self._std, self._denominator = noise, std, denominator
        self._next = 0
        self._change = torch.empty(CAST_CHUNK, dtype=torch.float32)  # one chunk of u − b, reused for every chunk
        self._current: tuple[str, torch.Tensor] | None = None

    def names(self) -> list[str]:
        return list(self._names)

    def get(self, name: str) -> torch.Tensor:
        if self._current is not None and self._current[0] == name:
            return self._current[1]
        if self._next >= len(self._names) or self._names[self._next] != name:
            expected = self._names[self._next] if self._next < len(self._names) else "nothing more"
            raise RuntimeError(f"private aggregation reads tensors in the global's order: asked {name!r}, next is {expected}")
        self._next += 1
        self._current = None  # drop the previous tensor before building this one
        self._current = (name, self._compute(name))
        return self._current[1]

    def finish(self) -> None:
        """Check every tensor was drawn (the noise stream, and so the saved generator, depends on it)."""
        if self._next != len(self._names):
            raise RuntimeError(f"the inner aggregator read {self._next} of {len(self._names)} tensors")
        self._current = None
        self._change = torch.empty(0)

    def _compute(self, name: str) -> torch.Tensor:
        current = self._global.get(name)
        accumulator = torch.zeros(current.shape, dtype=torch.float32)
        flat_sum, flat_current = accumulator.view(-1), current.reshape(-1)
        for update, base, scale in self._terms:
            tensor = update.source.get(name)
            if tensor.shape != current.shape:
                raise ValueError(f"{name!r} from {update.facility} has shape {list(tensor.shape)}, "
                                 f"expected {list(current.shape)}")
            flat_tensor = tensor.reshape(-1)
            flat_base = flat_current if base is self._global else base.get(name).reshape(-1)
            for start in range(0, flat_sum.numel(), CAST_CHUNK):
                stop = min(start + CAST_CHUNK, flat_sum.numel())
                change = subtract_into(self._change[: stop - start], flat_tensor[start:stop], flat_base[start:stop])
                flat_sum[start:stop].add_(change, alpha=scale)
            del tensor, flat_tensor, flat_base
        if self._std > 0.0:
            self._noise.add_gaussian_(accumulator, self._std)
        accumulator.div_(self._denominator)
        for start in range(0, flat_sum.numel(), CAST_CHUNK):
            flat_sum[start : start + CAST_CHUNK].add_(flat_current[start : start + CAST_CHUNK])
        return accumulator
