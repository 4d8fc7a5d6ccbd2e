"""DP building blocks on real tensors: the joint norm, the noise generator, adaptive clipping, the accountant.

The accountant is checked against dp-accounting's own direct computation of the same schedule, and
against the figure issue 20 quotes (4 facilities, q = 1, z = 1, 100 rounds, δ = 1e-5: ε "about 90").
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import dp_accounting
import pytest
import torch
from dp_accounting.rdp import RdpAccountant
from safetensors.torch import load_file, save_file

import fedhpc.privacy.clipping as clipping
import fedhpc.privacy.noise as noise_module
from fedhpc.errors import PrivacyRefused
from fedhpc.privacy import (
    NoiseSource,
    clip_factor,
    delta_noise_multiplier,
    delta_norm,
    delta_norms,
    epsilon_after,
    next_clip_norm,
    noise_for_epsilon,
)
from test_fedopt import DictSource


def random_model(seed: int, dtype=torch.float32) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    shapes = {"embed": (37, 16), "attn.q": (16, 16), "norm": (16,), "head": (3, 5, 7)}
    return {name: torch.randn(shape, generator=generator).to(dtype) for name, shape in shapes.items()}


@pytest.mark.parametrize("chunk", [clipping.CAST_CHUNK, 7])  # 7: every tensor spans several chunks
def test_delta_norm_is_the_joint_l2_norm_over_all_tensors(monkeypatch, chunk: int) -> None:
    monkeypatch.setattr(clipping, "CAST_CHUNK", chunk)
    base, update = random_model(0), random_model(1, torch.bfloat16)
    expected = torch.cat([(update[n].double() - base[n].double()).reshape(-1) for n in base]).norm().item()
    names = list(base)
    assert delta_norm(DictSource(update), DictSource(base), names) == pytest.approx(expected, rel=1e-6)  # differences in fp32, sums in fp64
    assert delta_norm(DictSource(base), DictSource(base), names) == 0.0


def test_norms_of_a_round_read_a_shared_base_once_per_tensor() -> None:
    reads: list[str] = []

    class Counted(DictSource):
        def get(self, name: str) -> torch.Tensor:
            reads.append(name)
            return super().get(name)

    base, other_base = Counted(random_model(0)), DictSource(random_model(9))
    updates = [DictSource(random_model(seed, torch.bfloat16 if seed == 2 else torch.float32)) for seed in (1, 2, 3)]
    pairs = [(updates[0], base), (updates[1], other_base), (updates[2], base)]
    norms = delta_norms(pairs, list(base.tensors))
    assert reads == list(base.tensors)  # once per tensor for two updates
    assert norms == [delta_norm(u, b, list(base.tensors)) for u, b in pairs]


def test_delta_norm_names_a_tensor_whose_shape_differs() -> None:
    base, update = random_model(0), random_model(1)
    update["norm"] = torch.zeros(15)
    with pytest.raises(ValueError, match="'norm' has shape \\[15\\] in the update, \\[16\\] in its base"):
        delta_norm(DictSource(update), DictSource(base), list(base))


def test_clipped_changes_are_within_c_jointly_and_small_ones_untouched() -> None:
    base = random_model(0)
    names, clip = list(base), 3.0
    for seed in range(2, 8):
        update = random_model(seed)
        norm = delta_norm(DictSource(update), DictSource(base), names)
        factor = clip_factor(norm, clip)
        clipped = torch.cat([(factor * (update[n] - base[n])).reshape(-1) for n in names])
        assert norm > clip and clipped.norm().item() <= clip * (1 + 1e-6)
    small = {n: base[n] + 1e-3 for n in names}
    assert clip_factor(delta_norm(DictSource(small), DictSource(base), names), clip) == 1.0
    assert clip_factor(0.0, clip) == 1.0


def test_noise_has_the_requested_std_and_the_same_seed_draws_the_same_values() -> None:
    draws = NoiseSource(None, seed=11).gaussian((2_000_000,), 0.25)
    assert draws.dtype == torch.float32
    assert draws.std().item() == pytest.approx(0.25, rel=0.01)
    assert abs(draws.mean().item()) < 0.25 * 0.01
    assert torch.equal(draws, NoiseSource(None, seed=11).gaussian((2_000_000,), 0.25))
    assert not torch.equal(draws, NoiseSource(None, seed=12).gaussian((2_000_000,), 0.25))


def test_unseeded_sources_draw_from_os_entropy() -> None:
    assert not torch.equal(NoiseSource(None, None).gaussian((64,), 1.0), NoiseSource(None, None).gaussian((64,), 1.0))


def test_state_saved_to_safetensors_continues_the_same_stream(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(noise_module, "CAST_CHUNK", 1000)  # the chunked path: a draw spans several chunks
    source = NoiseSource(None, seed=5)
    source.gaussian((2500,), 1.0)
    save_file({"state": source.state()}, tmp_path / "noise.safetensors")
    continued = source.gaussian((3, 1000), 2.0)
    resumed = NoiseSource(load_file(tmp_path / "noise.safetensors")["state"], seed=None).gaussian((3, 1000), 2.0)
    assert torch.equal(continued, resumed)


def test_add_gaussian_refuses_a_tensor_it_cannot_fill_in_place() -> None:
    with pytest.raises(ValueError, match="contiguous float32"):
        NoiseSource(None, seed=0).add_gaussian_(torch.zeros(4, dtype=torch.bfloat16), 1.0)


@pytest.mark.parametrize(("quantile", "expected"), [(0.5, 5.0), (0.8, 8.0)])
def test_adaptive_clip_norm_tracks_the_target_quantile(quantile: float, expected: float) -> None:
    """Norms uniform on [0, 10]: the γ-quantile is 10γ; from C = 0.5, C gets there and stays near it."""
    norms_generator, noise = torch.Generator().manual_seed(3), NoiseSource(None, seed=4)
    participants, clip, late = 100, 0.5, []
    for round in range(300):
        norms = torch.rand(participants, generator=norms_generator) * 10.0
        unclipped = int((norms <= clip).sum())
        clip = next_clip_norm(clip, unclipped, participants, participants, quantile, 0.2, participants / 20, noise)
        if round >= 200:
            late.append(clip)
    assert sum(late) / len(late) == pytest.approx(expected, rel=0.05)
    assert min(late) > 0.8 * expected and max(late) < 1.2 * expected


def test_adaptive_delta_noise_leaves_the_accounted_multiplier_at_z() -> None:
    z, count_noise = 1.0, 5.0
    z_delta = delta_noise_multiplier(z, count_noise)
    assert z_delta > z
    assert (z_delta**-2 + (2 * count_noise) ** -2) ** -0.5 == pytest.approx(z, rel=1e-12)
    assert delta_noise_multiplier(0.0, 0.15) == 0.0


def test_adaptive_refuses_count_noise_that_spends_the_whole_budget() -> None:
    with pytest.raises(PrivacyRefused, match="2·σ_b > z") as raised:
        delta_noise_multiplier(1.0, 0.2)  # 4 facilities: the default σ_b = 4/20
    assert raised.value.key == "privacy.clipping.count_noise_multiplier"


def direct(event: dp_accounting.DpEvent, delta: float) -> float:
    return RdpAccountant().compose(event).get_epsilon(delta)


def test_epsilon_equals_the_librarys_direct_computation() -> None:
    gaussian = dp_accounting.GaussianDpEvent
    assert epsilon_after(1.0, 1.0, 100, 1e-5) == direct(dp_accounting.SelfComposedDpEvent(gaussian(1.0), 100), 1e-5)
    poisson = dp_accounting.PoissonSampledDpEvent(0.3, gaussian(1.5))
    assert epsilon_after(1.5, 0.3, 40, 1e-6) == direct(dp_accounting.SelfComposedDpEvent(poisson, 40), 1e-6)


def test_the_issues_figure_four_facilities_z1_100_rounds() -> None:
    """Issue 20 says ε ≈ 90; the RDP accountant gives 96.1: nearly no protection either way."""
    epsilon = epsilon_after(1.0, 1.0, 100, 1e-5)
    assert epsilon == pytest.approx(96.12, abs=0.01)


def test_epsilon_edges() -> None:
    assert epsilon_after(0.0, 1.0, 10, 1e-5) == math.inf
    assert epsilon_after(1.0, 1.0, 0, 1e-5) == 0.0
    assert epsilon_after(1.0, 1.0, 10, 1e-5) < epsilon_after(1.0, 1.0, 11, 1e-5)
    with pytest.raises(ValueError, match="sampling rate"):
        epsilon_after(1.0, 1.5, 10, 1e-5)


@pytest.mark.parametrize(("target", "rate", "rounds"), [(10.0, 1.0, 100), (3.0, 0.1, 100)])
def test_calibration_round_trip(target: float, rate: float, rounds: int) -> None:
    z = noise_for_epsilon(target, rate, rounds, 1e-5)
    spent = epsilon_after(z, rate, rounds, 1e-5)
    assert spent <= target and spent == pytest.approx(target, rel=1e-3)


def test_the_librarys_convergence_notes_stay_quiet(caplog) -> None:
    with caplog.at_level(logging.WARNING):
        epsilon_after(1.0, 0.1, 100, 1e-5)
    assert [r for r in caplog.records if r.name == "absl"] == []
    assert logging.getLogger("absl").level != logging.ERROR  # restored afterwards
