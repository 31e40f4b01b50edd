"""The hybrid loss with a learned variance (Nichol & Dhariwal 2021, "Improved DDPM", Sec. 3.1),
used by NASDM (Shrivastava & Fletcher 2023; eq. 6 and Sec. 4.1, λ = 0.001, of its extended version).

The network outputs twice the data's channels: the usual prediction (ε, v or x0) and a vector v
that interpolates, in log space, between the two natural reverse variances:

    log Σ_θ(x_t, t) = frac · log β_t + (1 - frac) · log β̃_t,    frac = (v + 1) / 2

with β̃_t = β_t (1 - ᾱ_{t-1}) / (1 - ᾱ_t) the variance of the true posterior q(x_{t-1} | x_t, x_0).
The loss is L_simple + λ L_vlb with λ = 0.001, where L_vlb is the variational bound's term at the
sampled t, in bits per dimension:

    L_t = KL( q(x_{t-1} | x_t, x_0) || p_θ(x_{t-1} | x_t) )   for t > 0
    L_0 = -log p_θ(x_0 | x_1)   (a Gaussian discretised to 256 bins of [-1, 1])

The mean inside L_vlb is computed from a *detached* prediction, so L_vlb trains only the variance
and L_simple only the mean (the paper's "stop-gradient"). diffusers' ``DDPMScheduler`` with
``variance_type="learned_range"`` samples with the same parametrisation.
"""

from __future__ import annotations

import math

import torch

from .prediction import predicted_x0


def normal_kl(mean1: torch.Tensor, logvar1: torch.Tensor, mean2: torch.Tensor, logvar2: torch.Tensor) -> torch.Tensor:
    """KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2))), element-wise, in nats."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2)
                  + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def _standard_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0)))


def discretized_gaussian_log_likelihood(x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """log P(x) of data in [-1, 1] on 256 levels under N(mean, exp(log_scale)²), each level a bin of
    width 2/255 (the end bins reach to ±infinity), element-wise, in nats."""
    centred = x - mean
    inv_std = torch.exp(-log_scale)
    cdf_plus = _standard_normal_cdf(inv_std * (centred + 1.0 / 255.0))
    cdf_min = _standard_normal_cdf(inv_std * (centred - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    log_delta = torch.log((cdf_plus - cdf_min).clamp(min=1e-12))
    return torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_min, log_delta))


def _gather(values: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return values.to(like.device)[t.to(like.device)].float().view(-1, *([1] * (like.ndim - 1)))


def _schedule(scheduler) -> dict[str, torch.Tensor]:
    """Per-timestep β_t, ᾱ_{t-1} and the clipped log β̃_t (β̃_0 = 0 replaced by β̃_1) of a scheduler."""
    alpha_bar = scheduler.alphas_cumprod.float()
    alpha_bar_prev = torch.cat([alpha_bar.new_ones(1), alpha_bar[:-1]])
    betas = 1.0 - alpha_bar / alpha_bar_prev
    variance = betas * (1.0 - alpha_bar_prev) / (1.0 - alpha_bar)
    return {"alpha_bar": alpha_bar, "alpha_bar_prev": alpha_bar_prev, "betas": betas,
            "log_posterior_variance": torch.log(torch.cat([variance[1:2], variance[1:]]))}


def posterior(scheduler, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor,
              schedule: dict | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and clipped log variance of the true posterior q(x_{t-1} | x_t, x_0) (``schedule``:
    :func:`_schedule`'s tensors, when the caller already has them)."""
    s = schedule or _schedule(scheduler)
    coef_x0 = s["betas"] * s["alpha_bar_prev"].sqrt() / (1.0 - s["alpha_bar"])
    coef_xt = (1.0 - s["alpha_bar_prev"]) * (1.0 - s["betas"]).sqrt() / (1.0 - s["alpha_bar"])
    mean = _gather(coef_x0, t, x_t) * x0 + _gather(coef_xt, t, x_t) * x_t
    return mean, _gather(s["log_posterior_variance"], t, x_t)


def model_log_variance(scheduler, variance_values: torch.Tensor, t: torch.Tensor,
                       schedule: dict | None = None) -> torch.Tensor:
    """log Σ_θ from the network's variance channels v in [-1, 1] (diffusers' ``learned_range``)."""
    s = schedule or _schedule(scheduler)
    frac = (variance_values.float() + 1.0) / 2.0
    return (frac * _gather(torch.log(s["betas"]), t, variance_values)
            + (1.0 - frac) * _gather(s["log_posterior_variance"], t, variance_values))


def vlb_terms(scheduler, prediction: torch.Tensor, variance_values: torch.Tensor, x0: torch.Tensor,
              x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """L_t per example in bits per dimension: KL for t > 0, the decoder NLL for t = 0.

    ``prediction`` is the network's mean output (ε, v or x0, by the scheduler's prediction type);
    pass it detached to train only the variance with this term.
    """
    schedule = _schedule(scheduler)
    x0_hat = predicted_x0(scheduler, prediction.float(), x_t.float(), t)
    true_mean, true_log_variance = posterior(scheduler, x0.float(), x_t.float(), t, schedule)
    model_mean, _ = posterior(scheduler, x0_hat, x_t.float(), t, schedule)
    log_variance = model_log_variance(scheduler, variance_values, t, schedule)
    kl = normal_kl(true_mean, true_log_variance, model_mean, log_variance).flatten(1).mean(1) / math.log(2.0)
    nll = -discretized_gaussian_log_likelihood(x0.float(), model_mean, 0.5 * log_variance).flatten(1).mean(1)
    return torch.where(t.to(kl.device) == 0, nll / math.log(2.0), kl)


def hybrid_loss(scheduler, output: torch.Tensor, target: torch.Tensor, x0: torch.Tensor, x_t: torch.Tensor,
                t: torch.Tensor, vlb_weight: float = 0.001) -> tuple[torch.Tensor, torch.Tensor]:
    """(L_simple + vlb_weight · L_vlb, L_vlb) for a network ``output`` of 2C channels."""
    prediction, variance_values = output.float().chunk(2, dim=1)
    simple = torch.nn.functional.mse_loss(prediction, target.float())
    vlb = vlb_terms(scheduler, prediction.detach(), variance_values, x0, x_t, t).mean()
    return simple + vlb_weight * vlb, vlb
