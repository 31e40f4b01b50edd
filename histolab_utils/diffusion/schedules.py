"""Variance schedules for DDPMs, and diffusers schedulers that use exactly these betas.

* **linear** (Ho et al., 2020): beta_t evenly spaced from 1e-4 to 0.02.
* **cosine** (Nichol & Dhariwal, 2021): alpha_bar(t) = cos^2(((t/T + s) / (1 + s)) * pi/2), s = 0.008,
  beta_t = 1 - alpha_bar(t) / alpha_bar(t-1) capped at 0.999 (diffusers' ``squaredcos_cap_v2``).
* **sigmoid** (Chen, "On the importance of noise scheduling for diffusion models", 2023):
  alpha_bar(t) = (sigma(-(start + (end - start) t/T) / tau) - sigma(-end / tau)) /
  (sigma(-start / tau) - sigma(-end / tau)), with start = -3, end = 3, tau = 1 (the setting
  lucidrains' denoising-diffusion-pytorch uses), betas derived as for cosine. Two other
  "sigmoid" schedules are in use: diffusers' ``beta_schedule="sigmoid"`` (GeoDiff: a sigmoid
  over the *betas*) and MONAI's ``sigmoid_beta``. We use Chen's because, like cosine, it is
  defined on alpha_bar, so the two are compared on the same footing.

diffusers' DDIM and DPM-Solver schedulers accept a custom schedule only as ``trained_betas``,
so every scheduler here is built from the same beta array, whatever its kind.

**Zero terminal SNR** (Lin et al., "Common diffusion noise schedules and sample steps are
flawed", 2024): none of the three schedules ends at pure noise (ᾱ_T is 4e-5 for linear, 2e-9
for cosine, 3e-7 for sigmoid), yet sampling starts from pure noise, so the model never trained on
what it first sees. ``zero_terminal_snr=True`` shifts and rescales √ᾱ_t so that ᾱ_T = 0 while ᾱ_0
is kept (diffusers' ``rescale_zero_terminal_snr``, their Algorithm 1). √ᾱ_t moves by at most 6e-3
(linear), 5e-4 (sigmoid) or 5e-5 (cosine): what changes is the last step, now pure noise, and
where DDIM starts. With ε-prediction the x₀ estimate at ᾱ_T = 0 divides by zero, so it needs
``v_prediction`` (or ``sample``); DDIM then uses trailing spacing so that sampling starts at t = T,
as the paper recommends.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from .prediction import DEFAULT_PREDICTION_TYPE, check_prediction_type

SCHEDULES: tuple[str, ...] = ("linear", "cosine", "sigmoid")
SAMPLERS: tuple[str, ...] = ("ddpm", "ddim", "dpm", "unipc")
MAX_BETA = 0.999


def _betas_from_alpha_bar(alpha_bar: np.ndarray) -> np.ndarray:
    """beta_t = 1 - alpha_bar(t)/alpha_bar(t-1), for alpha_bar sampled at t = 0..T (T+1 values)."""
    return np.clip(1.0 - alpha_bar[1:] / alpha_bar[:-1], 0.0, MAX_BETA)


def linear_betas(steps: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> np.ndarray:
    return np.linspace(beta_start, beta_end, steps, dtype=np.float64)


def cosine_betas(steps: int, s: float = 0.008) -> np.ndarray:
    t = np.linspace(0, 1, steps + 1, dtype=np.float64)
    return _betas_from_alpha_bar(np.cos((t + s) / (1 + s) * math.pi / 2) ** 2)


def sigmoid_betas(steps: int, start: float = -3.0, end: float = 3.0, tau: float = 1.0) -> np.ndarray:
    def sigmoid(x):
        return 1.0 / (1.0 + np.exp(-x))

    t = np.linspace(0, 1, steps + 1, dtype=np.float64)
    v_start, v_end = sigmoid(start / tau), sigmoid(end / tau)
    alpha_bar = (-sigmoid((t * (end - start) + start) / tau) + v_end) / (v_end - v_start)
    return _betas_from_alpha_bar(alpha_bar)


def make_betas(schedule: str, steps: int = 1000, zero_terminal_snr: bool = False) -> np.ndarray:
    """Betas of a named schedule (float64, length ``steps``), optionally rescaled to zero terminal SNR."""
    makers = {"linear": linear_betas, "cosine": cosine_betas, "sigmoid": sigmoid_betas}
    if schedule not in makers:
        raise ValueError(f"unknown schedule {schedule!r}; use one of {SCHEDULES}")
    if steps < 2:
        raise ValueError(f"a schedule needs at least 2 steps, got {steps}")
    betas = makers[schedule](steps)
    if zero_terminal_snr:
        import torch
        from diffusers.schedulers.scheduling_ddpm import rescale_zero_terminal_snr

        betas = rescale_zero_terminal_snr(torch.from_numpy(betas)).numpy()
    return betas


def schedule_table(schedule: str, steps: int = 1000, zero_terminal_snr: bool = False) -> pd.DataFrame:
    """t, beta_t, alpha_bar_t and log-SNR = log(alpha_bar / (1 - alpha_bar)) per step (-inf where alpha_bar = 0)."""
    betas = make_betas(schedule, steps, zero_terminal_snr)
    alpha_bar = np.clip(np.cumprod(1.0 - betas), 0.0, 1.0)
    with np.errstate(divide="ignore"):
        log_snr = np.log(alpha_bar) - np.log1p(-alpha_bar)
    return pd.DataFrame({
        "schedule": schedule + (" (zero terminal SNR)" if zero_terminal_snr else ""), "t": np.arange(steps),
        "beta": betas, "alpha_bar": alpha_bar, "log_snr": log_snr,
    })


def make_scheduler(
    sampler: str,
    schedule: str,
    steps: int = 1000,
    prediction_type: str = DEFAULT_PREDICTION_TYPE,
    dpm_lambda_min_clipped: float = -5.1,
    zero_terminal_snr: bool = False,
    clip_sample: bool = True,
):
    """A diffusers scheduler (DDPM, DDIM, DPM-Solver++ or UniPC) over the betas of ``schedule``, for a
    network that predicts ``prediction_type`` (``epsilon``, ``v_prediction`` or ``sample``).

    * DDPM: ancestral sampling, x0 estimates clipped to [-1, 1] (``clip_sample``).
    * DDIM: deterministic (eta = 0), ``clip_sample``, ``timestep_spacing="leading"`` (skips the
      near-zero-SNR last step, where an ε-model's x0 estimate divides by √ᾱ_T ≈ 0), and
      ``set_alpha_to_one=True`` so the last step lands on a clean image (with False it stops at
      alpha_bar_0 = 1 - beta_0 and keeps noise of std sqrt(beta_0): an exact denoiser's samples
      missed by up to 5 grey levels).
    * DPM-Solver++ (2nd order, multistep) with ``lambda_min_clipped`` = -5.1: with cosine-like
      schedules alpha_bar at the last step is ~0, the log-SNR runs to minus infinity, and the
      solver's first x0 estimate blows up unless the log-SNR is clipped.
    * UniPC (Zhao et al. 2023; ``unipc``): a 2nd-order multistep predictor with a corrector (bh2,
      x0-prediction form), diffusers' defaults otherwise (linspace spacing); deterministic.

    ``clip_sample`` clips DDPM's and DDIM's x0 estimates to [-1, 1]: right for images, wrong for
    latents, which have unit variance rather than bounds (a latent diffusion model passes False).

    With ``zero_terminal_snr`` every scheduler rescales the betas itself (diffusers'
    ``rescale_betas_zero_snr``, so a config saved with the model reproduces it; DPM-Solver++ then
    sets ᾱ_T to 2^-24 rather than 0 to keep its log-SNR finite), and DDIM uses trailing spacing.
    """
    from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, UniPCMultistepScheduler

    check_prediction_type(prediction_type)
    if zero_terminal_snr and prediction_type == "epsilon":
        raise ValueError("zero_terminal_snr needs prediction_type 'v_prediction' or 'sample': with 'epsilon' "
                         "the x0 estimate at t = T divides by sqrt(alpha_bar_T) = 0")
    betas = make_betas(schedule, steps).tolist()
    common = dict(num_train_timesteps=steps, trained_betas=betas, prediction_type=prediction_type,
                  rescale_betas_zero_snr=zero_terminal_snr)
    if sampler == "ddpm":
        return DDPMScheduler(**common, clip_sample=clip_sample)
    if sampler == "ddim":
        return DDIMScheduler(**common, clip_sample=clip_sample, set_alpha_to_one=True,
                             timestep_spacing="trailing" if zero_terminal_snr else "leading")
    if sampler == "dpm":
        return DPMSolverMultistepScheduler(**common, algorithm_type="dpmsolver++", solver_order=2,
                                           lambda_min_clipped=dpm_lambda_min_clipped)
    if sampler == "unipc":
        return UniPCMultistepScheduler(**common, solver_order=2, solver_type="bh2", predict_x0=True)
    raise ValueError(f"unknown sampler {sampler!r}; use one of {SAMPLERS}")
