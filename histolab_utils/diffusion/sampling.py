"""Sampling from a trained diffusion model with DDPM, DDIM, DPM-Solver++ or UniPC, to uint8 images."""

from __future__ import annotations

import time

import numpy as np
import torch

from .prediction import DEFAULT_PREDICTION_TYPE, Denoiser
from .conditioning import condition_kwargs
from .schedules import make_scheduler


def unet_denoiser(unet) -> Denoiser:
    """Wrap a diffusers ``UNet2DModel`` as ``denoiser(x, t) -> prediction``."""
    return lambda x, t: unet(x, t).sample


def scheduler_step(scheduler, prediction: torch.Tensor, t, x: torch.Tensor,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """One step of ``scheduler`` from ``x`` at ``t``; the generator goes to the samplers that draw noise (DDPM, DDIM,
    DPM-Solver++ take one; UniPC, deterministic, has no such argument)."""
    import inspect

    if "generator" in inspect.signature(scheduler.step).parameters:
        return scheduler.step(prediction, t, x, generator=generator).prev_sample
    return scheduler.step(prediction, t, x).prev_sample


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """[-1, 1] NCHW float -> uint8 NHWC."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


@torch.no_grad()
def sample_model_space(denoiser: Denoiser, scheduler, n: int, image_size: int, steps: int, seed: int = 0,
                       batch_size: int = 64, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                       channels: int = 3) -> torch.Tensor:
    """``n`` samples as float [n, channels, size, size] in the model's space (images in [-1, 1], or latents),
    drawn with ``scheduler``'s sampler. The noise comes from a seeded generator, so a (model, scheduler, steps,
    seed) is reproducible."""
    generator = torch.Generator(device="cpu").manual_seed(seed)
    out = []
    for start in range(0, n, batch_size):
        count = min(batch_size, n - start)
        scheduler.set_timesteps(steps)
        x = torch.randn((count, channels, image_size, image_size), generator=generator).to(device, dtype)
        x = x * scheduler.init_noise_sigma
        for t in scheduler.timesteps:
            model_input = scheduler.scale_model_input(x, t)
            prediction = denoiser(model_input, t.to(device))
            x = scheduler_step(scheduler, prediction.to(x.dtype), t, x, generator)
        out.append(x.float().cpu())
    return torch.cat(out) if out else torch.zeros((0, channels, image_size, image_size))


def sample(denoiser: Denoiser, scheduler, n: int, image_size: int, steps: int, seed: int = 0, batch_size: int = 64,
           device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, channels: int = 3) -> np.ndarray:
    """``n`` samples as uint8 [n, size, size, channels], drawn with ``scheduler``'s sampler
    (:func:`sample_model_space`, then mapped from [-1, 1])."""
    if n == 0:
        return np.zeros((0, image_size, image_size, channels), np.uint8)
    return to_uint8(sample_model_space(denoiser, scheduler, n, image_size, steps, seed, batch_size, device, dtype,
                                       channels))


@torch.no_grad()
def guided_prediction(unet, x: torch.Tensor, t, condition: torch.Tensor, null: torch.Tensor,
                      guidance_scale: float) -> torch.Tensor:
    """The network's output at (x, t) with classifier-free guidance (Ho & Salimans 2022):

        prediction = p(x_t, ∅) + s · (p(x_t, c) - p(x_t, ∅))

    where p is the network's output (ε, v or x0: the mix is linear in each) and ``condition`` /
    ``null`` are the conditions of c and of "no condition" for every row (class labels, vectors or
    maps: whatever the model takes). s = 1 is the plain conditional model, s = 0 the unconditional
    one; other values run both in one batch. A learned-variance model's variance channels are
    taken from the conditional pass (guidance mixes means, not variances).
    """
    if guidance_scale in (0.0, 1.0):
        return unet(x, t, **condition_kwargs(unet, condition if guidance_scale == 1.0 else null)).sample
    if torch.is_tensor(t) and t.ndim > 0 and t.numel() > 1:  # per-row timesteps go with both halves
        t = torch.cat([t, t])
    both = unet(torch.cat([x, x]), t, **condition_kwargs(unet, torch.cat([condition, null]))).sample
    conditional, unconditional = both.chunk(2)
    if conditional.shape[1] == 2 * x.shape[1]:
        (mean_c, variance), (mean_u, _) = conditional.chunk(2, dim=1), unconditional.chunk(2, dim=1)
        return torch.cat([mean_u + guidance_scale * (mean_c - mean_u), variance], dim=1)
    return unconditional + guidance_scale * (conditional - unconditional)


def guided_denoise(unet, scheduler, x: torch.Tensor, condition: torch.Tensor, null: torch.Tensor,
                   guidance_scale: float, steps: int, generator: torch.Generator | None = None,
                   progress=lambda timesteps: timesteps) -> torch.Tensor:
    """Run ``scheduler``'s sampler from noise ``x`` with classifier-free guidance (see
    :func:`guided_prediction`). A learned-variance output (2x channels) keeps its variance only for a
    scheduler that uses it (DDPM with ``variance_type="learned_range"``); DDIM and DPM-Solver take the mean.
    """
    scheduler.set_timesteps(steps)
    learned = scheduler.config.get("variance_type") in ("learned", "learned_range")
    for t in progress(scheduler.timesteps):
        model_input = scheduler.scale_model_input(x, t)
        prediction = guided_prediction(unet, model_input, t, condition, null, guidance_scale)
        if prediction.shape[1] == 2 * x.shape[1] and not learned:
            prediction = prediction[:, : x.shape[1]]
        x = scheduler_step(scheduler, prediction.to(x.dtype), t, x, generator)
    return x


def sample_timed(denoiser: Denoiser, sampler: str, schedule: str, n: int, image_size: int, steps: int,
                 prediction_type: str = DEFAULT_PREDICTION_TYPE, zero_terminal_snr: bool = False,
                 **kwargs) -> tuple[np.ndarray, dict]:
    """Sample with a named sampler and schedule (the model's ``prediction_type`` and
    ``zero_terminal_snr`` must be those it was trained with); also return NFE and seconds per image."""
    scheduler = make_scheduler(sampler, schedule, prediction_type=prediction_type, zero_terminal_snr=zero_terminal_snr)
    calls = 0

    def counting(x, t):
        nonlocal calls
        calls += 1
        return denoiser(x, t)

    started = time.perf_counter()
    images = sample(counting, scheduler, n, image_size, steps=steps, **kwargs)
    seconds = time.perf_counter() - started
    batches = max(1, -(-n // kwargs.get("batch_size", 64)))
    return images, {"nfe": calls // batches, "seconds_per_image": seconds / max(n, 1)}


def sample_solvers(denoiser: Denoiser, schedule: str, solvers: tuple[str, ...], steps: tuple[int, ...], n: int,
                   image_size: int, prediction_type: str = DEFAULT_PREDICTION_TYPE, **kwargs
                   ) -> dict[tuple[str, int], tuple[np.ndarray, dict]]:
    """One model sampled with every solver of ``solvers`` (names of ``make_scheduler``, e.g. ``"dpm"``, ``"unipc"``)
    at every step count of ``steps``, from the same seed: {(solver, steps): (images, {"nfe", "seconds_per_image"})}
    (:func:`sample_timed`; the seconds are this machine's, measured now). Unknown names and step counts below 1
    are refused before any sampling."""
    from .schedules import SAMPLERS

    unknown = [name for name in solvers if name not in SAMPLERS]
    if unknown:
        raise ValueError(f"unknown sampler {unknown[0]!r} in solvers; use names of {SAMPLERS}")
    if not steps or any(isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1 for k in steps):
        raise ValueError(f"steps must be positive ints, got {steps!r}")
    return {(name, int(k)): sample_timed(denoiser, name, schedule, n, image_size, int(k), prediction_type, **kwargs)
            for name in solvers for k in steps}


def same_noise_distance(images: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """Mean absolute difference (grey levels of 255) of each image to the ``reference`` image drawn from the same
    initial noise (row by row), and to the reference of the next row (another noise). Two deterministic samplers
    that solve the same ODE land close from the same noise: ``same_noise`` far below ``other_noise``."""
    images, reference = np.asarray(images, np.float64), np.asarray(reference, np.float64)
    if images.shape != reference.shape or len(images) < 2:
        raise ValueError(f"images and reference must be two sets of one shape with n >= 2, got {images.shape} and "
                         f"{reference.shape}")
    return {"same_noise": float(np.abs(images - reference).mean()),
            "other_noise": float(np.abs(images - np.roll(reference, 1, axis=0)).mean())}


def sample_grid(images: np.ndarray, ncols: int = 8) -> np.ndarray:
    """Tile uint8 NHWC images into one uint8 image (rows of ``ncols``), padding with white."""
    n, h, w, c = images.shape
    rows = -(-n // ncols)
    grid = np.full((rows * h, ncols * w, c), 255, np.uint8)
    for i, image in enumerate(images):
        r, col = divmod(i, ncols)
        grid[r * h:(r + 1) * h, col * w:(col + 1) * w] = image
    return grid
