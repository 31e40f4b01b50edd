from __future__ import annotations

import numpy as np
import pytest
import torch

from histolab_utils.sampling import sample, sample_grid, sample_timed
from histolab_utils.schedules import SAMPLERS, SCHEDULES, make_betas, make_scheduler, schedule_table


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_schedules_are_valid(schedule):
    betas = make_betas(schedule, 1000)
    assert betas.shape == (1000,) and (betas > 0).all() and (betas <= 0.999).all()
    table = schedule_table(schedule)
    assert table["alpha_bar"].is_monotonic_decreasing and table["log_snr"].is_monotonic_decreasing
    assert table["alpha_bar"].iloc[0] > 0.99 and table["alpha_bar"].iloc[-1] < 0.01


def test_schedules_match_their_definitions():
    from diffusers import DDPMScheduler

    assert np.allclose(make_betas("linear"), DDPMScheduler(beta_schedule="linear").betas.double().numpy(), atol=1e-7)
    assert np.allclose(make_betas("cosine"), DDPMScheduler(beta_schedule="squaredcos_cap_v2").betas.double().numpy(),
                       atol=1e-6)
    # Chen (2023): alpha_bar(t) at t = T/2 with start=-3, end=3 is exactly one half.
    alpha_bar = np.cumprod(1 - make_betas("sigmoid", 1000))
    assert alpha_bar[499] == pytest.approx(0.5, abs=0.01)
    with pytest.raises(ValueError, match="unknown schedule"):
        make_betas("quadratic")


def oracle(x0: torch.Tensor, schedule: str, prediction_type: str):
    """The exact denoiser for data that is always ``x0``."""
    alpha_bar = torch.from_numpy(np.cumprod(1 - make_betas(schedule))).float()

    def denoise(x, t):
        a = alpha_bar[int(t)]
        eps = (x - a.sqrt() * x0) / (1 - a).sqrt()
        return eps if prediction_type == "epsilon" else a.sqrt() * eps - (1 - a).sqrt() * x0

    return denoise


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("sampler,steps", [("ddpm", 1000), ("ddim", 50), ("dpm", 20)])
@pytest.mark.parametrize("schedule", SCHEDULES)
def test_every_sampler_recovers_the_answer_of_an_exact_denoiser(schedule, sampler, steps, prediction_type):
    """A known answer: if the data is one image, a correct sampler must return that image."""
    x0 = torch.linspace(-0.8, 0.8, 3 * 8 * 8).reshape(1, 3, 8, 8)
    scheduler = make_scheduler(sampler, schedule, prediction_type=prediction_type)
    images = sample(oracle(x0, schedule, prediction_type), scheduler, n=2, image_size=8, steps=steps, seed=1)
    expected = ((x0.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    assert images.shape == (2, 8, 8, 3)
    assert np.abs(images.astype(int) - expected.astype(int)).max() <= 2, f"{schedule}/{sampler} misses the answer"


def test_sample_timed_counts_function_evaluations():
    x0 = torch.zeros(1, 3, 4, 4)
    images, info = sample_timed(oracle(x0, "sigmoid", "epsilon"), "dpm", "sigmoid", n=3, image_size=4, steps=10)
    assert info["nfe"] == 10 and info["seconds_per_image"] > 0 and images.shape == (3, 4, 4, 3)
    with pytest.raises(ValueError, match="unknown sampler"):
        make_scheduler("euler", "linear")


def test_sample_grid():
    images = np.zeros((5, 4, 4, 3), np.uint8)
    grid = sample_grid(images, ncols=3)
    assert grid.shape == (8, 12, 3) and grid[4:, 8:].min() == 255 and grid[:4, :4].max() == 0
