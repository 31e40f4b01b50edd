"""Stain normalisation, batched in torch so it runs on whatever device the tiles are on.

* **Reinhard** (Reinhard et al., IEEE CG&A 21:34, 2001): convert to the decorrelated lαβ colour
  space and match each channel's mean and standard deviation to the target image's.
* **Macenko** (Macenko et al., ISBI 2009): in optical density (OD = -ln(I / I0)) each pixel is a
  non-negative mix of two stain vectors. Their plane is spanned by the two main eigenvectors of
  the OD covariance; the extreme angles (1st / 99th percentile) in that plane give the
  haematoxylin and eosin vectors. Each image's stain concentrations are rescaled so their 99th
  percentile matches the target's, then recombined with the target's stain vectors.

Why not a library: torchstain (the maintained option) normalises one CHW image at a time; tiles
come in batches, and the per-image fit here is a 3x3 eigendecomposition, so we batch the rest.
Inputs: uint8 [H, W, 3] or [N, H, W, 3], as numpy arrays or torch tensors; outputs match.
"""

from __future__ import annotations

import numpy as np
import torch

_RGB_TO_LMS = torch.tensor([[0.3811, 0.5783, 0.0402], [0.1967, 0.7244, 0.0782], [0.0241, 0.1288, 0.8444]],
                           dtype=torch.float64)
_LOG_LMS_TO_LAB = torch.diag(torch.tensor([3 ** -0.5, 6 ** -0.5, 2 ** -0.5], dtype=torch.float64)) @ torch.tensor(
    [[1.0, 1.0, 1.0], [1.0, 1.0, -2.0], [1.0, -1.0, 0.0]], dtype=torch.float64)


def _as_batch(images) -> tuple[torch.Tensor, bool, bool]:
    """(uint8 tensor [N, H, W, 3], was numpy, was a single image)."""
    was_numpy = isinstance(images, np.ndarray)
    tensor = torch.from_numpy(np.array(images, copy=True)) if was_numpy else images  # arrays may be read-only
    if tensor.dtype != torch.uint8 or tensor.shape[-1] != 3 or tensor.ndim not in (3, 4):
        raise ValueError(f"expected uint8 RGB images [H, W, 3] or [N, H, W, 3], got {tuple(tensor.shape)} {tensor.dtype}")
    single = tensor.ndim == 3
    return (tensor[None] if single else tensor), was_numpy, single


def _restore(batch: torch.Tensor, was_numpy: bool, single: bool):
    out = batch[0] if single else batch
    return out.cpu().numpy() if was_numpy else out


def _to_uint8(values: torch.Tensor) -> torch.Tensor:
    return values.round().clamp(0, 255).to(torch.uint8)


def rgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """Reinhard's lαβ of RGB values in [0, 255] (any leading shape, last dim 3)."""
    rgb = rgb.to(torch.float64).clamp_min(1.0) / 255.0
    lms = rgb @ _RGB_TO_LMS.to(rgb.device).T
    return torch.log10(lms.clamp_min(1e-6)) @ _LOG_LMS_TO_LAB.to(rgb.device).T


def lab_to_rgb(lab: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`rgb_to_lab`, RGB in [0, 255] (float, unclipped)."""
    log_lms = lab @ torch.linalg.inv(_LOG_LMS_TO_LAB).to(lab.device).T
    return (10 ** log_lms) @ torch.linalg.inv(_RGB_TO_LMS).to(lab.device).T * 255.0


class ReinhardNormalizer:
    """Match per-channel lαβ mean and standard deviation to a target image."""

    def fit(self, target) -> "ReinhardNormalizer":
        batch, _, _ = _as_batch(target)
        lab = rgb_to_lab(batch.reshape(-1, 3))
        self.target_mean, self.target_std = lab.mean(0), lab.std(0)
        return self

    def transform(self, images):
        batch, was_numpy, single = _as_batch(images)
        lab = rgb_to_lab(batch.reshape(batch.shape[0], -1, 3))
        mean, std = lab.mean(1, keepdim=True), lab.std(1, keepdim=True).clamp_min(1e-6)
        target_mean, target_std = self.target_mean.to(lab.device), self.target_std.to(lab.device)
        matched = (lab - mean) / std * target_std + target_mean
        return _restore(_to_uint8(lab_to_rgb(matched)).reshape(batch.shape), was_numpy, single)


class MacenkoNormalizer:
    """Macenko stain normalisation. ``stain_matrix`` rows are the H and E optical-density vectors."""

    def __init__(self, io: float = 240.0, alpha: float = 1.0, beta: float = 0.15, max_pixels: int = 1 << 20):
        self.io, self.alpha, self.beta, self.max_pixels = io, alpha, beta, max_pixels

    def optical_density(self, rgb: torch.Tensor) -> torch.Tensor:
        return -torch.log((rgb.to(torch.float64) + 1.0) / self.io)

    def _tissue_od(self, od: torch.Tensor) -> torch.Tensor:
        tissue = od[(od >= self.beta).all(dim=-1)]
        if len(tissue) < 16:
            raise ValueError(f"too few stained pixels ({len(tissue)}) to estimate stain vectors "
                             f"(optical density >= {self.beta} in every channel)")
        if len(tissue) > self.max_pixels:  # quantiles need a bounded sample; a fixed stride is reproducible
            tissue = tissue[:: len(tissue) // self.max_pixels + 1]
        return tissue

    def stain_matrix(self, rgb: torch.Tensor) -> torch.Tensor:
        """[2, 3] unit OD vectors (haematoxylin, eosin) of one RGB uint8 image [H, W, 3]."""
        od = self._tissue_od(self.optical_density(rgb.reshape(-1, 3)))
        _, vectors = torch.linalg.eigh(torch.cov(od.T))
        plane = vectors[:, 1:3]  # the two largest eigenvalues
        projected = od @ plane
        angles = torch.atan2(projected[:, 1], projected[:, 0])
        low = torch.quantile(angles, self.alpha / 100)
        high = torch.quantile(angles, 1 - self.alpha / 100)
        v1 = plane @ torch.stack([torch.cos(low), torch.sin(low)])
        v2 = plane @ torch.stack([torch.cos(high), torch.sin(high)])
        stains = torch.stack([v1, v2])
        stains = stains * torch.sign(stains.sum(dim=1, keepdim=True))  # OD vectors are non-negative
        stains = stains / torch.linalg.norm(stains, dim=1, keepdim=True)
        # Haematoxylin absorbs red the most: it has the larger red OD component.
        return stains if stains[0, 0] >= stains[1, 0] else stains.flip(0)

    def _concentrations(self, od: torch.Tensor, stains: torch.Tensor) -> torch.Tensor:
        """Least-squares concentrations [..., P, 2] of OD pixels [..., P, 3] for stains [..., 2, 3]."""
        return od @ torch.linalg.pinv(stains)

    def fit(self, target) -> "MacenkoNormalizer":
        batch, _, _ = _as_batch(target)
        rgb = batch[0]
        self.target_stains = self.stain_matrix(rgb)
        od = self._tissue_od(self.optical_density(rgb.reshape(-1, 3)))
        self.target_max = torch.quantile(self._concentrations(od, self.target_stains), 0.99, dim=0)
        return self

    def transform(self, images):
        batch, was_numpy, single = _as_batch(images)
        n = batch.shape[0]
        stains = torch.stack([self.stain_matrix(image) for image in batch])  # [N, 2, 3]
        od = self.optical_density(batch.reshape(n, -1, 3))
        concentrations = self._concentrations(od, stains)  # [N, P, 2]
        source_max = torch.stack([
            torch.quantile(self._concentrations(self._tissue_od(od[i]), stains[i]), 0.99, dim=0) for i in range(n)
        ])
        target_stains = self.target_stains.to(od.device)
        scaled = concentrations * (self.target_max.to(od.device) / source_max.clamp_min(1e-6))[:, None, :]
        rgb = self.io * torch.exp(-(scaled @ target_stains))
        return _restore(_to_uint8(rgb).reshape(batch.shape), was_numpy, single)
