from __future__ import annotations

import numpy as np
import pytest
import torch

from histolab_utils.diffusion.prediction import PREDICTION_TYPES
from histolab_utils.diffusion.sampling import sample, sample_grid, same_noise_distance, sample_solvers, sample_timed
from histolab_utils.diffusion.schedules import SAMPLERS, SCHEDULES, make_betas, make_scheduler, schedule_table


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


def oracle(x0: torch.Tensor, scheduler):
    """The exact denoiser for data that is always ``x0``, in the scheduler's schedule and prediction type."""
    alpha_bar = scheduler.alphas_cumprod.double()
    prediction_type = scheduler.config.prediction_type

    def denoise(x, t):
        a = alpha_bar[int(t)]
        eps = ((x.double() - a.sqrt() * x0) / (1 - a).sqrt()).float()
        if prediction_type == "epsilon":
            return eps
        return (a.sqrt() * eps - (1 - a).sqrt() * x0).float() if prediction_type == "v_prediction" else x0.expand_as(x)

    return denoise


def recovers_the_answer(scheduler, steps: int) -> bool:
    """A known answer: if the data is one image, a correct sampler must return that image."""
    x0 = torch.linspace(-0.8, 0.8, 3 * 8 * 8).reshape(1, 3, 8, 8)
    images = sample(oracle(x0, scheduler), scheduler, n=2, image_size=8, steps=steps, seed=1)
    expected = ((x0.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    assert images.shape == (2, 8, 8, 3)
    return np.abs(images.astype(int) - expected.astype(int)).max() <= 2


@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
@pytest.mark.parametrize("sampler,steps", [("ddpm", 1000), ("ddim", 50), ("dpm", 20), ("dpm", 10), ("unipc", 20),
                                           ("unipc", 10)])
@pytest.mark.parametrize("schedule", SCHEDULES)
def test_every_sampler_recovers_the_answer_of_an_exact_denoiser(schedule, sampler, steps, prediction_type):
    scheduler = make_scheduler(sampler, schedule, prediction_type=prediction_type)
    assert recovers_the_answer(scheduler, steps), f"{schedule}/{sampler}/{prediction_type} misses the answer"


@pytest.mark.parametrize("prediction_type", ["v_prediction", "sample"])
@pytest.mark.parametrize("sampler,steps", [("ddpm", 1000), ("ddim", 50), ("dpm", 20), ("unipc", 10)])
@pytest.mark.parametrize("schedule", SCHEDULES)
def test_zero_terminal_snr_schedules_sample_the_answer_too(schedule, sampler, steps, prediction_type):
    scheduler = make_scheduler(sampler, schedule, prediction_type=prediction_type, zero_terminal_snr=True)
    assert recovers_the_answer(scheduler, steps), f"{schedule}/{sampler}/{prediction_type} misses the answer"
    if sampler == "ddim":  # trailing spacing: sampling starts from pure noise at t = T
        scheduler.set_timesteps(steps)
        assert int(scheduler.timesteps[0]) == 999


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_zero_terminal_snr_ends_at_pure_noise_and_keeps_the_start(schedule):
    plain, rescaled = (np.cumprod(1 - make_betas(schedule, zero_terminal_snr=z)) for z in (False, True))
    assert plain[-1] > 0 and rescaled[-1] == pytest.approx(0, abs=1e-12)
    assert rescaled[0] == pytest.approx(plain[0], rel=1e-9)
    assert np.abs(np.sqrt(plain) - np.sqrt(rescaled)).max() < 0.01
    table = schedule_table(schedule, zero_terminal_snr=True)
    assert table["log_snr"].iloc[-1] == -np.inf and table["schedule"].iloc[0].endswith("(zero terminal SNR)")
    assert np.allclose(make_scheduler("ddpm", schedule, prediction_type="v_prediction",
                                      zero_terminal_snr=True).alphas_cumprod.numpy(), rescaled, atol=1e-6)


def test_bad_prediction_types_are_named():
    with pytest.raises(ValueError, match="unknown prediction type 'x0'"):
        make_scheduler("ddim", "cosine", prediction_type="x0")
    with pytest.raises(ValueError, match="zero_terminal_snr needs prediction_type 'v_prediction' or 'sample'"):
        make_scheduler("ddim", "cosine", prediction_type="epsilon", zero_terminal_snr=True)


def test_sample_timed_counts_function_evaluations():
    x0 = torch.zeros(1, 3, 4, 4)
    scheduler = make_scheduler("dpm", "sigmoid", prediction_type="epsilon")
    images, info = sample_timed(oracle(x0, scheduler), "dpm", "sigmoid", n=3, image_size=4, steps=10,
                                prediction_type="epsilon")
    assert info["nfe"] == 10 and info["seconds_per_image"] > 0 and images.shape == (3, 4, 4, 3)
    with pytest.raises(ValueError, match="unknown sampler"):
        make_scheduler("euler", "linear")


def test_sample_solvers_times_every_solver_at_every_step_count_and_refuses_bad_names():
    x0 = torch.full((1, 3, 4, 4), 0.5)
    scheduler = make_scheduler("unipc", "cosine", prediction_type="v_prediction")
    runs = sample_solvers(oracle(x0, scheduler), "cosine", ("dpm", "unipc"), (10, 20), n=2, image_size=4,
                          prediction_type="v_prediction")
    assert list(runs) == [("dpm", 10), ("dpm", 20), ("unipc", 10), ("unipc", 20)]
    for (name, steps), (images, info) in runs.items():
        assert info["nfe"] == steps and info["seconds_per_image"] > 0, name
        assert images.shape == (2, 4, 4, 3) and np.abs(images.astype(int) - 191).max() <= 2, name  # 0.5 -> 191
    with pytest.raises(ValueError, match="unknown sampler 'euler' in solvers"):
        sample_solvers(oracle(x0, scheduler), "cosine", ("euler",), (10,), n=1, image_size=4)
    with pytest.raises(ValueError, match=r"steps must be positive ints, got \(0,\)"):
        sample_solvers(oracle(x0, scheduler), "cosine", ("dpm",), (0,), n=1, image_size=4)


def test_same_noise_distance_by_hand():
    reference = np.stack([np.full((2, 2, 3), 0, np.uint8), np.full((2, 2, 3), 100, np.uint8)])
    assert same_noise_distance(reference + 3, reference) == {"same_noise": 3.0, "other_noise": 100.0}
    with pytest.raises(ValueError, match="two sets of one shape with n >= 2"):
        same_noise_distance(reference[:1], reference[:1])


def test_sample_grid():
    images = np.zeros((5, 4, 4, 3), np.uint8)
    grid = sample_grid(images, ncols=3)
    assert grid.shape == (8, 12, 3) and grid[4:, 8:].min() == 255 and grid[:4, :4].max() == 0
