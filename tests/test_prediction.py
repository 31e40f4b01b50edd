from __future__ import annotations

import numpy as np
import pytest
import torch

from histolab_utils.diffusion.prediction import (PREDICTION_TYPES, as_model_space, channel_mean, predicted_x0, training_target,
                                                 x0_error_by_t, zero_output_x0_mse)
from histolab_utils.diffusion.sampling import unet_denoiser
from histolab_utils.diffusion.schedules import make_scheduler
from histolab_utils.diffusion.training import DiffusionTrainer, TrainConfig


@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
def test_the_x0_estimate_inverts_the_training_target(prediction_type):
    scheduler = make_scheduler("ddpm", "cosine", prediction_type=prediction_type)
    generator = torch.Generator().manual_seed(0)
    x0 = torch.rand((4, 3, 8, 8), generator=generator) * 2 - 1
    noise = torch.randn(x0.shape, generator=generator)
    t = torch.tensor([0, 300, 700, 950])
    x_t = scheduler.add_noise(x0, noise, t)
    target = training_target(scheduler, x0, noise, t)
    assert torch.allclose(predicted_x0(scheduler, target, x_t, t), x0, atol=2e-3)


@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
def test_the_zero_output_x0_error_matches_a_network_that_outputs_zeros(prediction_type):
    """The closed form against the diagnostic of a network that returns zeros, on data with a nonzero mean."""
    scheduler = make_scheduler("ddpm", "linear", prediction_type=prediction_type)
    generator = torch.Generator().manual_seed(1)
    latents = (torch.randn((64, 4, 8, 8), generator=generator) * 0.9 + 0.3).numpy()
    timesteps = (250, 500, 800)
    table = x0_error_by_t(lambda x_t, t: torch.zeros_like(x_t), scheduler, latents, timesteps=timesteps, seed=2)
    expected = zero_output_x0_mse(scheduler, timesteps, float((latents ** 2).mean()))
    assert expected.shape == (3,)
    np.testing.assert_allclose(table["x0_mse"], expected, rtol=0.05)


def test_the_zero_output_x0_error_rejects_bad_input():
    scheduler = make_scheduler("ddpm", "linear", prediction_type="v_prediction")
    with pytest.raises(ValueError, match="second_moment"):
        zero_output_x0_mse(scheduler, [500], -1.0)
    with pytest.raises(ValueError, match="t must lie"):
        zero_output_x0_mse(scheduler, [1000], 1.0)


def test_the_diagnostic_of_an_exact_model_has_no_x0_error_and_reports_the_mean_predictor():
    """Data that is one image: the exact model knows it, so its x0 error is 0 at every t, while the
    mean predictor's error is the image's own variance around the given mean colour."""
    image = np.zeros((1, 8, 8, 3), np.uint8)
    image[:, :4] = (200, 100, 180)
    image[:, 4:] = (120, 60, 160)
    x0 = as_model_space(image)
    scheduler = make_scheduler("ddpm", "linear", prediction_type="v_prediction")

    def exact(x_t, t):
        alpha_bar = scheduler.alphas_cumprod[t].view(-1, 1, 1, 1)
        noise = (x_t - alpha_bar.sqrt() * x0) / (1 - alpha_bar).sqrt()
        return training_target(scheduler, x0.expand_as(x_t), noise, t)

    data = np.repeat(image, 5, axis=0)
    table = x0_error_by_t(exact, scheduler, data, timesteps=(0, 500, 999), reference_mean=channel_mean(image))
    assert list(table["t"]) == [0, 500, 999] and (table["n"] == 5).all()
    assert table["x0_mse"].max() < 1e-6 and table["prediction_mse"].max() < 1e-6
    expected = float(((x0 - x0.mean(dim=(0, 2, 3)).view(1, 3, 1, 1)) ** 2).mean())
    assert table["mean_predictor_mse"].iloc[0] == pytest.approx(expected, rel=1e-5)
    assert table["alpha_bar"].is_monotonic_decreasing and (table["prediction_type"] == "v_prediction").all()


def toy_set(n: int, seed: int) -> np.ndarray:
    """Flat pink or dark-purple 16 px crops with a little pixel noise: the mean colour is known."""
    rng = np.random.default_rng(seed)
    colours = np.array([[230, 120, 200], [60, 30, 120]], np.float64)
    images = colours[rng.integers(0, 2, n)][:, None, None, :] + rng.normal(0, 8, (n, 16, 16, 3))
    return np.clip(images.round(), 0, 255).astype(np.uint8)


TOY_MEAN = np.array([145, 75, 160]) / 127.5 - 1  # the two colours' mean, in model space


@pytest.fixture(scope="module")
def toy_diagnostics(tmp_path_factory):
    """The diagnostic of a tiny ε-model and a tiny v-model, trained alike on the toy set."""
    train, heldout = toy_set(256, seed=0), toy_set(64, seed=1)
    tables = {}
    for prediction_type in ("epsilon", "v_prediction"):
        config = TrainConfig(schedule="cosine", prediction_type=prediction_type, image_size=16, batch_size=16,
                             steps=300, block_out_channels=(16, 32), learning_rate=2e-3, warmup_steps=10,
                             ema_decay=0.9, checkpoint_every=1000)
        trainer = DiffusionTrainer(config, train, tmp_path_factory.mktemp(prediction_type), progress=False)
        trainer.train()
        tables[prediction_type] = x0_error_by_t(unet_denoiser(trainer.ema_unet()), trainer.noise_scheduler, heldout,
                                                timesteps=(100, 500, 800, 990), reference_mean=TOY_MEAN)
    return tables


def test_at_high_noise_v_estimates_x0_better_than_the_mean_colour_and_epsilon_does_not(toy_diagnostics):
    eps, v = (toy_diagnostics[p].set_index("t") for p in ("epsilon", "v_prediction"))
    mean_mse = v.loc[800, "mean_predictor_mse"]
    assert mean_mse == pytest.approx(eps.loc[800, "mean_predictor_mse"])
    assert 0.2 < mean_mse < 0.25, "the mean predictor's error is the toy colours' spread (about 0.227)"
    # t = 800 on the cosine schedule: alpha_bar = 0.09, SNR 0.1 per pixel
    assert v.loc[800, "x0_mse"] < mean_mse, "v should beat the mean colour where the crop's colour is still visible"
    assert eps.loc[800, "x0_mse"] > mean_mse, "ε's x0 estimate divides its error by sqrt(alpha_bar)"
    # near pure noise: ε's x0 error explodes while its own ε error stays small; v's stays near the mean's
    assert eps.loc[990, "x0_mse"] > 100 * mean_mse and eps.loc[990, "prediction_mse"] < 0.1
    assert v.loc[990, "x0_mse"] < 1.25 * mean_mse


def test_the_diagnostic_rejects_bad_input():
    scheduler = make_scheduler("ddpm", "linear", prediction_type="epsilon")
    images = np.zeros((2, 8, 8, 3), np.uint8)

    def zero(x, t):
        return torch.zeros_like(x)

    with pytest.raises(ValueError, match=r"one value per channel \(3\)"):
        x0_error_by_t(zero, scheduler, images, reference_mean=[0.0, 0.0])
    with pytest.raises(ValueError, match=r"timesteps must lie in 0..999"):
        x0_error_by_t(zero, scheduler, images, timesteps=(1000,))
    with pytest.raises(ValueError, match="at least one crop"):
        x0_error_by_t(zero, scheduler, images[:0])
    with pytest.raises(ValueError, match=r"uint8 images \[N, H, W, 3\] or float latents"):
        x0_error_by_t(zero, scheduler, np.zeros((2, 8, 8), np.int64))
