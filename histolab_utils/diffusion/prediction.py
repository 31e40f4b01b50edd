"""What a diffusion network predicts (ε, v or x₀), and the diagnostic that shows why it matters.

The forward process is ``x_t = a_t x₀ + s_t ε`` with ``a_t = √ᾱ_t``, ``s_t = √(1 − ᾱ_t)`` and
``a_t² + s_t² = 1``. Every sampler needs an estimate x̂₀ of the clean image, and each
parameterisation gives it differently:

* ``epsilon`` (Ho et al., 2020): the network predicts ε; ``x̂₀ = (x_t − s_t ε̂) / a_t``. An error δ in
  ε̂ becomes an error ``(s_t / a_t) δ = δ / √SNR(t)`` in x̂₀: unbounded as ᾱ_t → 0. At high noise
  the network can predict ε almost perfectly (x_t *is* almost ε) and still tell nothing about x₀,
  so the low-frequency content decided there (the mean colour of an H&E crop) is never learned.
* ``v_prediction`` (Salimans & Ho, 2022, "Progressive distillation"): the network predicts
  ``v = a_t ε − s_t x₀``; ``x̂₀ = a_t x_t − s_t v̂``. An error δ in v̂ becomes ``s_t δ ≤ δ`` in x̂₀, at
  every t. At ᾱ_t → 0, v → −x₀, so the network must learn the data itself where the noise is pure.
* ``sample``: the network predicts x₀ directly.

:func:`x0_error_by_t` measures the x̂₀ error of a trained model at each t on real crops, beside
the error of always predicting the data's mean colour (what the best estimator tends to as
ᾱ_t → 0). A model whose x̂₀ is worse than that constant at high t cannot sample the right colours.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import pandas as pd
import torch

PREDICTION_TYPES: tuple[str, ...] = ("epsilon", "v_prediction", "sample")
# Measured on this project's crops (notebook 03, and the figures in the README): with ε the x₀
# estimate at high t is worse than predicting the mean colour, and DDIM / DPM-Solver++ samples
# come out grey or as saturated colour noise; with v all three samplers give H&E colours.
DEFAULT_PREDICTION_TYPE = "v_prediction"

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def check_prediction_type(prediction_type: str) -> str:
    """Return ``prediction_type`` if it is one of :data:`PREDICTION_TYPES`, else raise a ValueError."""
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"unknown prediction type {prediction_type!r}; use one of {PREDICTION_TYPES}")
    return prediction_type


def _alpha_bar(scheduler, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """ᾱ_t from the scheduler, shaped to broadcast against ``like`` [N, C, H, W]."""
    alpha_bar = scheduler.alphas_cumprod.to(like.device)[t.to(like.device)]
    return alpha_bar.to(like.dtype).view(-1, *([1] * (like.ndim - 1)))


def training_target(scheduler, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """What the network learns to output for ``x_t = add_noise(x0, noise, t)``, by the scheduler's
    ``prediction_type``: the noise, the velocity (diffusers' ``get_velocity``) or x0 itself."""
    prediction_type = check_prediction_type(scheduler.config.prediction_type)
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "v_prediction":
        return scheduler.get_velocity(x0, noise, t)
    return x0


def min_snr_weight(scheduler, t: torch.Tensor, gamma: float = 5.0) -> torch.Tensor:
    """Min-SNR-γ loss weights [N] for timesteps ``t`` (Hang, Gu, Li, Bao, Chen, Hu, Geng & Guo, "Efficient
    Diffusion Training via Min-SNR Weighting Strategy", ICCV 2023): the x0-space weight min(SNR, γ), written for
    the scheduler's prediction type, whose MSE already weighs x0 errors by SNR (ε), SNR + 1 (v) or 1 (x0):

        ε: min(SNR, γ) / SNR      v: min(SNR, γ) / (SNR + 1)      x0: min(SNR, γ)

    with SNR(t) = ᾱ_t / (1 − ᾱ_t). High-SNR (nearly clean) steps, which plain ε- or v-MSE over-weights, are
    capped at γ, so the conflicting gradients of easy denoising steps stop dominating training.
    """
    alpha_bar = scheduler.alphas_cumprod.to(t.device)[t].float()
    snr = alpha_bar / (1 - alpha_bar).clamp_min(1e-20)
    capped = snr.clamp(max=gamma)
    prediction_type = check_prediction_type(scheduler.config.prediction_type)
    if prediction_type == "epsilon":
        return capped / snr.clamp_min(1e-20)
    if prediction_type == "v_prediction":
        return capped / (snr + 1)
    return capped


def predicted_x0(scheduler, prediction: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The x0 estimate implied by a network output under the scheduler's ``prediction_type``."""
    prediction_type = check_prediction_type(scheduler.config.prediction_type)
    alpha_bar = _alpha_bar(scheduler, t, x_t)
    a, s = alpha_bar.sqrt(), (1 - alpha_bar).sqrt()
    if prediction_type == "epsilon":
        return (x_t - s * prediction) / a
    if prediction_type == "v_prediction":
        return a * x_t - s * prediction
    return prediction


def as_model_space(data) -> torch.Tensor:
    """uint8 images [N, H, W, 3] -> float [N, 3, H, W] in [-1, 1]; float [N, C, H, W] (latents) as they are."""
    tensor = torch.as_tensor(np.asarray(data))
    if tensor.dtype == torch.uint8:
        if tensor.ndim != 4 or tensor.shape[-1] != 3:
            raise ValueError(f"images must be uint8 [N, H, W, 3], got {tuple(tensor.shape)}")
        return tensor.permute(0, 3, 1, 2).float() / 127.5 - 1.0
    if tensor.ndim != 4 or not tensor.is_floating_point():
        raise ValueError(f"expected uint8 images [N, H, W, 3] or float latents [N, C, H, W], "
                         f"got {tuple(tensor.shape)} {tensor.dtype}")
    return tensor.float()


def channel_mean(data) -> torch.Tensor:
    """The per-channel mean [C] of images or latents, in model space (the mean predictor's output)."""
    return as_model_space(data).mean(dim=(0, 2, 3))


@torch.no_grad()
def x0_error_by_t(
    denoiser: Denoiser,
    scheduler,
    data,
    timesteps=(0, 100, 250, 500, 750, 900, 950, 990, 999),
    reference_mean=None,
    seed: int = 0,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
) -> pd.DataFrame:
    """The x̂₀ error of a trained model at each ``t``, beside the error of predicting the mean colour.

    ``data`` are real crops (uint8 [N, H, W, 3]) or latents (float [N, C, H, W]) the model did not
    train on; ``scheduler`` carries the model's schedule and ``prediction_type`` (a saved pipeline's
    scheduler does). Each crop is noised to every t with the same seeded noise; the model's output
    is turned into x̂₀ (:func:`predicted_x0`) and compared with the crop.

    ``reference_mean`` is the constant the mean predictor outputs, per channel in model space
    (default: :func:`channel_mean` of ``data``; pass the training set's to keep the held-out crops
    out of it). Returns one row per t: ``t``, ``alpha_bar``, ``log_snr``, ``prediction_type``,
    ``x0_mse`` (the model), ``mean_predictor_mse``, ``prediction_mse`` (the error in the model's own
    target: ε, v or x₀) and ``n``. Errors are mean squared errors in model space ([-1, 1] for images).
    """
    x0_all = as_model_space(data)
    if len(x0_all) == 0:
        raise ValueError("x0_error_by_t needs at least one crop")
    mean = (channel_mean(data) if reference_mean is None else torch.as_tensor(reference_mean, dtype=torch.float32))
    if mean.shape != (x0_all.shape[1],):
        raise ValueError(f"reference_mean needs one value per channel ({x0_all.shape[1]}), "
                         f"got shape {tuple(mean.shape)}")
    steps = len(scheduler.alphas_cumprod)
    if any(not 0 <= int(t) < steps for t in timesteps):
        raise ValueError(f"timesteps must lie in 0..{steps - 1}, got {list(timesteps)}")
    generator = torch.Generator().manual_seed(seed)
    noise_all = torch.randn(x0_all.shape, generator=generator)
    mean_mse = float(((x0_all - mean.view(1, -1, 1, 1)) ** 2).mean())
    alpha_bar_all = scheduler.alphas_cumprod.double()
    rows = []
    for t in timesteps:
        squared = {"x0": 0.0, "prediction": 0.0}
        for start in range(0, len(x0_all), batch_size):
            x0 = x0_all[start:start + batch_size].to(device)
            noise = noise_all[start:start + batch_size].to(device)
            t_batch = torch.full((len(x0),), int(t), dtype=torch.long, device=device)
            x_t = scheduler.add_noise(x0, noise, t_batch)
            prediction = denoiser(x_t, t_batch).float()
            target = training_target(scheduler, x0, noise, t_batch)
            squared["x0"] += float(((predicted_x0(scheduler, prediction, x_t, t_batch) - x0) ** 2).sum())
            squared["prediction"] += float(((prediction - target) ** 2).sum())
        alpha_bar = float(alpha_bar_all[int(t)])
        rows.append({
            "t": int(t), "alpha_bar": alpha_bar,
            "log_snr": float(np.log(alpha_bar) - np.log1p(-alpha_bar)) if 0 < alpha_bar < 1 else float("-inf"),
            "prediction_type": scheduler.config.prediction_type,
            "x0_mse": squared["x0"] / x0_all.numel(), "mean_predictor_mse": mean_mse,
            "prediction_mse": squared["prediction"] / x0_all.numel(), "n": len(x0_all),
        })
    return pd.DataFrame(rows)


def zero_output_x0_mse(scheduler, t, second_moment: float) -> np.ndarray:
    """The expected MSE of x̂₀ at each step ``t`` for a network that always outputs zeros, under the scheduler's
    ``prediction_type``, on data whose mean square is ``second_moment`` (E[x₀²] in model space) and unit noise:

        ε: (1 − ᾱ) / ᾱ      v: (1 − ᾱ)² E[x₀²] + ᾱ (1 − ᾱ)      x₀: E[x₀²]

    A model that learned nothing (an untrained UNet's output is near 0) scores about this; a trained one must
    score below it wherever the data has structure to learn. For v on zero-mean unit-variance data it equals the
    best estimator that ignores spatial structure, so the gap is what the network learned beyond that.
    """
    if not np.isfinite(second_moment) or second_moment < 0:
        raise ValueError(f"second_moment must be a finite mean square >= 0, got {second_moment}")
    steps = len(scheduler.alphas_cumprod)
    t = np.asarray(t, dtype=np.int64)
    if ((t < 0) | (t >= steps)).any():
        raise ValueError(f"t must lie in 0..{steps - 1}, got {t.tolist()}")
    alpha_bar = scheduler.alphas_cumprod.double().numpy()[t]
    prediction_type = check_prediction_type(scheduler.config.prediction_type)
    if prediction_type == "epsilon":
        return (1 - alpha_bar) / alpha_bar
    if prediction_type == "v_prediction":
        return (1 - alpha_bar) ** 2 * second_moment + alpha_bar * (1 - alpha_bar)
    return np.full(alpha_bar.shape, float(second_moment))


def x0_error_amplification(alpha_bar: np.ndarray) -> pd.DataFrame:
    """How much an error of size 1 in the network's output grows in x̂₀, per prediction type:
    ``sqrt((1 - ᾱ) / ᾱ)`` for ε, ``sqrt(1 - ᾱ)`` for v, 1 for x₀ (see the module docstring)."""
    alpha_bar = np.asarray(alpha_bar, dtype=np.float64)
    with np.errstate(divide="ignore"):
        factors = {"epsilon": np.sqrt((1 - alpha_bar) / alpha_bar), "v_prediction": np.sqrt(1 - alpha_bar),
                   "sample": np.ones_like(alpha_bar)}
    return pd.concat([pd.DataFrame({"t": np.arange(len(alpha_bar)), "prediction_type": name, "amplification": value})
                      for name, value in factors.items()], ignore_index=True)


def plot_x0_error(tables: dict[str, pd.DataFrame], ax=None):
    """x̂₀ error against t for several models (``tables`` from :func:`x0_error_by_t`, by name), with
    the mean-colour predictor's error as a dashed line."""
    import matplotlib.pyplot as plt

    ax = ax or plt.gca()
    for name, table in tables.items():
        ax.plot(table["t"], table["x0_mse"], marker="o", label=name)
    mean_mse = next(iter(tables.values()))["mean_predictor_mse"].iloc[0]
    ax.axhline(mean_mse, color="k", linestyle="--", label="predict the mean colour")
    ax.set_yscale("log")
    ax.set_xlabel("t")
    ax.set_ylabel("MSE of the x0 estimate")
    ax.legend(fontsize=8)
    return ax
