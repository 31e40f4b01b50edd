"""Stain and colour jitter of a training batch: the classic augmentation of nuclei segmenters.

HED jitter (Tellez et al. 2018, "Whole-slide mitosis detection in H&E breast histology using
PHH3 as a reference"): each image's optical density ``OD = -ln(I)`` is unmixed into its
haematoxylin, eosin and DAB amounts with Ruifrok & Johnston's matrix (scikit-image's
``hed_from_rgb``), every stain's amount is scaled by ``alpha ~ U(1 - s, 1 + s)`` and shifted by
``beta ~ U(-s, s)``, and the image is mixed back. Brightness and contrast jitter follow. Every
draw comes from the caller's generator, so a seeded, checkpointed batch source stays exact.
"""

from __future__ import annotations

import numpy as np
import torch

_EPS = 1e-6


def _matrices(device) -> tuple[torch.Tensor, torch.Tensor]:
    from skimage.color import hed_from_rgb, rgb_from_hed

    return (torch.as_tensor(np.asarray(hed_from_rgb), dtype=torch.float32, device=device),
            torch.as_tensor(np.asarray(rgb_from_hed), dtype=torch.float32, device=device))


def stain_jitter(x: torch.Tensor, generator: torch.Generator, stain_sigma: float = 0.05, brightness: float = 0.1,
                 contrast: float = 0.1) -> torch.Tensor:
    """A jittered copy of images ``x`` [B, 3, H, W] in [-1, 1] (returned in [-1, 1]); the random
    numbers are drawn on the CPU from ``generator``."""
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"stain jitter needs RGB batches [B, 3, H, W]; got shape {tuple(x.shape)}")
    b = len(x)
    draws = torch.rand(b, 8, generator=generator).to(x.device) * 2 - 1  # U(-1, 1)
    alpha = 1 + stain_sigma * draws[:, 0:3]
    beta = stain_sigma * draws[:, 3:6]
    to_hed, to_rgb = _matrices(x.device)
    rgb = ((x.float() + 1) / 2).clamp(_EPS, 1).permute(0, 2, 3, 1)  # B, H, W, 3
    hed = (-torch.log(rgb)) @ to_hed
    hed = hed * alpha[:, None, None] + beta[:, None, None]
    rgb = torch.exp(-(hed @ to_rgb)).clamp(0, 1).permute(0, 3, 1, 2)
    mean = rgb.mean(dim=(1, 2, 3), keepdim=True)
    rgb = (rgb - mean) * (1 + contrast * draws[:, 6].view(-1, 1, 1, 1)) + mean
    rgb = rgb * (1 + brightness * draws[:, 7].view(-1, 1, 1, 1))
    return (rgb.clamp(0, 1) * 2 - 1).to(x.dtype)
