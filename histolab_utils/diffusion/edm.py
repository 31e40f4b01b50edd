"""EDM: the preconditioned denoiser, log-normal noise levels and its samplers (Karras, Aittala, Aila & Laine,
"Elucidating the Design Space of Diffusion-Based Generative Models", NeurIPS 2022, Table 1 and section 5).

The network F is wrapped so that the denoiser D has unit-variance inputs and targets at every noise level σ:

    D(x; σ) = c_skip(σ) x + c_out(σ) F(c_in(σ) x; c_noise(σ))
    c_skip = σ_d² / (σ² + σ_d²),  c_out = σ σ_d / √(σ² + σ_d²),  c_in = 1 / √(σ² + σ_d²),  c_noise = ¼ ln σ

Training draws ln σ ~ N(P_mean, P_std²) and minimises λ(σ) ||D(x + σn; σ) − x||² with λ = 1 / c_out², which is
plain MSE between F's output and its effective target (x − c_skip (x + σn)) / c_out. diffusers' EDM schedulers
(``EDMEulerScheduler``, ``EDMDPMSolverMultistepScheduler``) apply the same c_in, c_noise and output mix when
sampling, so a UNet trained here samples with them unchanged (their ``prediction_type="epsilon"`` is EDM's F).
"""

from __future__ import annotations

import torch

SIGMA_DATA = 0.5  # EDM's σ_d: the standard deviation of images scaled to [-1, 1]
P_MEAN, P_STD = -1.2, 1.2  # EDM's log-normal training distribution of σ (Table 1)
SIGMA_MIN, SIGMA_MAX = 0.002, 80.0


def preconditioning(sigma: torch.Tensor, sigma_data: float = SIGMA_DATA) -> dict[str, torch.Tensor]:
    """c_skip, c_out, c_in and c_noise of EDM's Table 1 for noise levels ``sigma`` [N], shaped [N, 1, 1, 1]
    (c_noise [N])."""
    sigma = sigma.float()
    total = sigma ** 2 + sigma_data ** 2
    view = (-1, 1, 1, 1)
    return {"c_skip": (sigma_data ** 2 / total).view(view), "c_out": (sigma * sigma_data / total.sqrt()).view(view),
            "c_in": (1 / total.sqrt()).view(view), "c_noise": 0.25 * sigma.log()}


def training_sigmas(normal: torch.Tensor, p_mean: float = P_MEAN, p_std: float = P_STD) -> torch.Tensor:
    """Noise levels σ = exp(P_mean + P_std · z) from standard normal draws ``normal``."""
    return (p_mean + p_std * normal).exp()


def edm_loss(model, x0: torch.Tensor, noise: torch.Tensor, normal: torch.Tensor, sigma_data: float = SIGMA_DATA,
             p_mean: float = P_MEAN, p_std: float = P_STD, autocast=None, **model_kwargs) -> torch.Tensor:
    """EDM's training loss for a batch: ``noise`` ~ N(0, I) like ``x0``, ``normal`` ~ N(0, 1) one per row.
    ``model(input, c_noise, **model_kwargs).sample`` is F; ``autocast`` wraps its forward (mixed precision)."""
    import contextlib

    sigma = training_sigmas(normal, p_mean, p_std)
    c = preconditioning(sigma, sigma_data)
    noisy = x0 + sigma.view(-1, 1, 1, 1) * noise
    target = (x0 - c["c_skip"] * noisy) / c["c_out"]
    with autocast() if autocast is not None else contextlib.nullcontext():
        output = model(c["c_in"] * noisy, c["c_noise"], **model_kwargs).sample
    return torch.nn.functional.mse_loss(output.float(), target.float())


def edm_scheduler(sampler: str = "dpm", sigma_data: float = SIGMA_DATA):
    """diffusers' EDM sampler for a model trained with :func:`edm_loss`: ``"euler"`` (first order) or ``"dpm"``
    (DPM-Solver++ 2M, second order), on Karras et al.'s ρ = 7 noise levels from σ_max = 80 to σ_min = 0.002."""
    from diffusers import EDMDPMSolverMultistepScheduler, EDMEulerScheduler

    common = dict(sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX, sigma_data=sigma_data, prediction_type="epsilon")
    if sampler == "euler":
        return EDMEulerScheduler(**common)
    if sampler == "dpm":
        return EDMDPMSolverMultistepScheduler(**common, algorithm_type="dpmsolver++", solver_order=2,
                                              final_sigmas_type="zero")
    raise ValueError(f"EDM sampler must be 'euler' or 'dpm', got {sampler!r}")
