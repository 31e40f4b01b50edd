"""RePaint inpainting (Lugmayr et al. 2022) with any of the project's denoisers, and a DDIM variant.

Only a region is unknown. At every reverse step from t to t' < t the known part is *not* denoised
but drawn afresh from the forward process of the original x_0, and the two are joined by the mask:

    x_{t'}^known   = √ᾱ_{t'} x_0 + √(1 - ᾱ_{t'}) ε
    x_{t'}^unknown = a reverse step of the model from x_t
    x_{t'}         = m ⊙ x_{t'}^known + (1 - m) ⊙ x_{t'}^unknown          (m = 1 where known)

Joining two independently made halves leaves them out of harmony; RePaint's *resampling* fixes
that: after every ``jump_length`` reverse steps it noises the result back up by as many steps,
x_t = √(ᾱ_t/ᾱ_{t'}) x_{t'} + √(1 - ᾱ_t/ᾱ_{t'}) ε, and walks down again, ``jump_n_sample`` times
in all, so the model sees the known context many times at every noise level.

The reverse step is the generalised one of DDIM (Song et al. 2021) with noise level η:

    x_{t'} = √ᾱ_{t'} x̂_0 + √(1 - ᾱ_{t'} - σ²) ε̂ + σ z,   σ = η √((1-ᾱ_{t'})/(1-ᾱ_t)) √(1 - ᾱ_t/ᾱ_{t'})

η = 1 is RePaint's ancestral DDPM step (σ² = the posterior variance β̃ of the respaced schedule);
η = 0 is deterministic DDIM, which stays faithful with far fewer steps: the "faster variant" (a profile's
``repaint_fast``) runs 50 steps with short jumps instead of 250 steps with 10 x 10 resampling.

Diffusers' ``RePaintPipeline`` is deprecated and takes no conditional UNet; this loop takes any
``denoiser(x, t) -> network output`` (a closure over the model, its condition and guidance).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from .prediction import _alpha_bar, check_prediction_type, predicted_x0


@dataclass(frozen=True)
class RePaintSettings:
    """The jump schedule: ``t_T`` respaced reverse steps; every ``jump_length`` of them, go back up
    ``jump_length`` steps, ``jump_n_sample - 1`` times; ``eta`` the noise of each reverse step."""

    t_T: int = 250
    jump_length: int = 10
    jump_n_sample: int = 10
    eta: float = 1.0

    def __post_init__(self) -> None:
        if self.t_T < 1 or self.jump_length < 1 or self.jump_n_sample < 1:
            raise ValueError(f"t_T, jump_length and jump_n_sample must be >= 1; got {self}")
        if not 0.0 <= self.eta <= 1.0:
            raise ValueError(f"eta must lie in [0, 1]; got {self.eta}")


REPAINT = RePaintSettings()  # the paper's default: 250 steps, 10 x 10 resampling, ancestral steps


def jump_schedule(settings: RePaintSettings) -> list[int]:
    """The sequence of respaced step indices, from ``t_T - 1`` down to -1 (clean), with jumps back up."""
    jumps = {j: settings.jump_n_sample - 1 for j in range(0, settings.t_T - settings.jump_length, settings.jump_length)}
    t, times = settings.t_T, []
    while t >= 1:
        t -= 1
        times.append(t)
        if jumps.get(t, 0) > 0:
            jumps[t] -= 1
            for _ in range(settings.jump_length):
                t += 1
                times.append(t)
    return times + [-1]


def model_evaluations(settings: RePaintSettings) -> int:
    """How many network calls one inpainting run takes (each downward step is one)."""
    times = jump_schedule(settings)
    return sum(b < a for a, b in zip(times[:-1], times[1:]))


def check_region(region: np.ndarray, shape: tuple[int, ...] | None = None) -> np.ndarray:
    """A bool [H, W] (or [N, H, W]) region to repaint: not empty, not the whole image."""
    region = np.asarray(region).astype(bool)
    if shape is not None and region.shape[-2:] != tuple(shape[-2:]):
        raise ValueError(f"the inpainting region is {region.shape[-2:]} but the image is {tuple(shape[-2:])}")
    flat = region.reshape(-1, *region.shape[-2:])
    if not flat.any(axis=(1, 2)).all():
        raise ValueError("the inpainting region is empty: nothing to repaint (mark pixels True to regenerate)")
    if flat.all(axis=(1, 2)).any():
        raise ValueError("the inpainting region covers the whole image: nothing is known, so sample instead")
    return region


def repaint(denoiser: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], scheduler, x0: torch.Tensor,
            known: torch.Tensor, settings: RePaintSettings = REPAINT, generator: torch.Generator | None = None,
            clip: bool = True) -> torch.Tensor:
    """Inpaint ``x0`` [N, C, H, W] (model space) where ``known`` [N or 1, 1, H, W] is False.

    ``scheduler`` gives ᾱ and the prediction type (a diffusers scheduler the model was trained
    with); ``clip`` bounds the x0 estimates to [-1, 1] (pixels: yes; latents: no). The returned
    tensor equals ``x0`` exactly where ``known`` is True.
    """
    check_prediction_type(scheduler.config.prediction_type)
    num_train = scheduler.config.num_train_timesteps
    stride = num_train // settings.t_T
    if stride < 1:
        raise ValueError(f"t_T = {settings.t_T} exceeds the model's {num_train} training timesteps")
    alpha_bar = scheduler.alphas_cumprod.to(x0.device, torch.float32)
    known = known.to(x0.device, x0.dtype)

    def train_t(index: int) -> int:
        return index * stride

    def abar(index: int) -> torch.Tensor:
        return alpha_bar.new_tensor(1.0) if index < 0 else alpha_bar[train_t(index)]

    def noise_like(x: torch.Tensor) -> torch.Tensor:
        return torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)

    times = jump_schedule(settings)
    x = noise_like(x0)
    for now, nxt in zip(times[:-1], times[1:]):
        a_now, a_next = abar(now), abar(nxt)
        if nxt > now:  # resampling: one forward step back up, q(x_next | x_now)
            x = (a_next / a_now).sqrt() * x + (1 - a_next / a_now).sqrt() * noise_like(x)
            continue
        t = torch.full((len(x),), train_t(now), device=x.device, dtype=torch.long)
        output = denoiser(x, t)[:, : x.shape[1]].float()
        x0_hat, eps_hat = _x0_and_eps(scheduler, output, x, t)
        if clip:
            x0_hat = x0_hat.clamp(-1, 1)
            eps_hat = (x - a_now.sqrt() * x0_hat) / (1 - a_now).sqrt()
        sigma = settings.eta * ((1 - a_next) / (1 - a_now) * (1 - a_now / a_next)).clamp(min=0).sqrt()
        unknown = a_next.sqrt() * x0_hat + (1 - a_next - sigma ** 2).clamp(min=0).sqrt() * eps_hat
        if nxt >= 0 and settings.eta > 0:
            unknown = unknown + sigma * noise_like(x)
        known_part = x0 if nxt < 0 else a_next.sqrt() * x0 + (1 - a_next).sqrt() * noise_like(x)
        x = known * known_part + (1 - known) * unknown
    return torch.where(known.bool().expand_as(x), x0, x)


def _x0_and_eps(scheduler, output: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor):
    """(x0, ε) implied by a network output: x0 by :func:`~.prediction.predicted_x0`; ε as the network
    gives it (ε-prediction), from v, or from x0."""
    alpha_bar = _alpha_bar(scheduler, t, x_t).float()
    a, s = alpha_bar.sqrt(), (1 - alpha_bar).sqrt()
    x0 = predicted_x0(scheduler, output, x_t, t)
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return x0, output
    if kind == "v_prediction":
        return x0, s * x_t + a * output
    return x0, (x_t - a * x0) / s
