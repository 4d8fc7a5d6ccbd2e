"""The server's Gaussian noise: a seeded CPU `torch.Generator` whose whole state is persisted.

The state travels with the server state (`PrivateAggregation` stores it), so a resumed run draws exactly
the noise an uninterrupted one would have: bit-identical globals. Noise is drawn a chunk at a time into
the tensor it perturbs (`add_gaussian_`), so it costs one chunk of memory, not a second model-sized tensor.

A fresh run without `privacy.noise_seed` seeds the generator from the OS's entropy (`secrets`): a seed
anyone can read in the experiment file would let them regenerate the noise and subtract it from the
published globals, which is no privacy at all. The seed and the generator state live only in the server
state. The generator is torch's Mersenne Twister, not a cryptographic generator; the noise it draws is
never shown on its own (only added to the sum of the updates), and docs/privacy.md states this limit.
"""

from __future__ import annotations

import secrets

import torch

from fedhpc.aggregate.streaming import CAST_CHUNK

SEED_BITS = 63  # torch.Generator.manual_seed takes a 64-bit seed; 63 bits keep it a non-negative int64


class NoiseSource:
    """Gaussian draws from one generator: `state` resumes a saved one, else `seed` (None: OS entropy) starts one."""

    def __init__(self, state: torch.Tensor | None, seed: int | None):
        self._generator = torch.Generator(device="cpu")
        if state is not None:
            self._generator.set_state(state.to(torch.uint8).contiguous())
        else:
            self._generator.manual_seed(secrets.randbits(SEED_BITS) if seed is None else seed)

    def add_gaussian_(self, target: torch.Tensor, std: float) -> torch.Tensor:
        """Add N(0, std²) to every element of the contiguous fp32 `target`, in place, a chunk at a time."""
        if target.dtype != torch.float32 or not target.is_contiguous():
            raise ValueError("noise is added to a contiguous float32 tensor")
        flat = target.view(-1)
        buffer = torch.empty(min(CAST_CHUNK, flat.numel()), dtype=torch.float32)
        for start in range(0, flat.numel(), CAST_CHUNK):
            chunk = buffer[: min(CAST_CHUNK, flat.numel() - start)]
            torch.randn(chunk.shape, generator=self._generator, dtype=torch.float32, out=chunk)
            flat[start : start + chunk.numel()].add_(chunk, alpha=std)
        return target

    def gaussian(self, shape: tuple[int, ...] | torch.Size, std: float) -> torch.Tensor:
        """A fresh fp32 tensor of N(0, std²) draws: the same draws `add_gaussian_` would add to zeros."""
        return self.add_gaussian_(torch.zeros(shape, dtype=torch.float32), std)

    def scalar(self, std: float) -> float:
        """One N(0, std²) draw (the adaptive clipping's noisy count)."""
        return float(self.gaussian((1,), std)[0])

    def state(self) -> torch.Tensor:
        """The generator's full state (uint8): `NoiseSource(state, ...)` continues exactly where this one is."""
        return self._generator.get_state()
