"""Latent diffusion conditioned on tile clusters, with classifier-free guidance.

The diffusion model runs on the VQ-GAN's pre-quantisation latents times ``scaling_factor``
(Rombach et al. 2022); the VQ-GAN's decoder quantises and decodes its samples. The UNet has a
class embedding with one entry per cluster plus a "no class" entry. Training replaces the
label by "no class" with probability ``label_dropout``, so one network learns both the
conditional and the unconditional noise prediction, and sampling mixes them (Ho & Salimans 2022):

    ε̂ = ε(x_t, ∅) + s · (ε(x_t, c) - ε(x_t, ∅))

s = 1 is the plain conditional model; s > 1 trades diversity for samples more typical of c.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from ..data import dihedral
from ..data.crops import DIHEDRAL_TRANSFORMS
from ..diffusion.sampling import guided_denoise
from ..engine.trainer import save_pretrained_atomic
from .vqgan import check_tiles, encode

try:
    from diffusers import DiffusionPipeline, ImagePipelineOutput
except ImportError:  # pragma: no cover - diffusers is a dependency
    DiffusionPipeline, ImagePipelineOutput = object, None


class ClassConditionalLDMPipeline(DiffusionPipeline):
    """VQ-GAN + class-conditional UNet2DModel + scheduler; ``save_pretrained``/``from_pretrained``.

    >>> pipeline = ClassConditionalLDMPipeline.from_pretrained("runs/full/ldm/pipeline")
    >>> images = pipeline([0, 0, 3], guidance_scale=2.0, num_inference_steps=20).images  # uint8 NHWC
    """

    def __init__(self, vqvae, unet, scheduler) -> None:
        super().__init__()
        self.register_modules(vqvae=vqvae, unet=unet, scheduler=scheduler)

    @property
    def null_class(self) -> int:
        return self.unet.config.num_class_embeds - 1

    @torch.no_grad()
    def __call__(self, class_labels: Sequence[int], guidance_scale: float = 1.0, num_inference_steps: int = 50,
                 generator: torch.Generator | None = None, output_type: str = "np"):
        labels = torch.as_tensor(list(class_labels), dtype=torch.long)
        if len(labels) and (labels.min() < 0 or labels.max() >= self.null_class):
            raise ValueError(f"class labels must lie in 0..{self.null_class - 1}; got {labels.tolist()}")
        device, unet = self.unet.device, self.unet
        shape = (len(labels), unet.config.in_channels, unet.config.sample_size, unet.config.sample_size)
        x = torch.randn(shape, generator=generator).to(device) * self.scheduler.init_noise_sigma
        labels = labels.to(device)
        null = torch.full_like(labels, self.null_class)
        x = guided_denoise(unet, self.scheduler, x, labels, null, guidance_scale, num_inference_steps, generator,
                           progress=self.progress_bar)
        images = self.vqvae.decode(x / self.vqvae.config.scaling_factor).sample
        images = ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        if output_type == "pil":
            from PIL import Image

            images = [Image.fromarray(image) for image in images]
        return ImagePipelineOutput(images=images)


def latent_training_set(vqmodel, tiles: np.ndarray, labels: np.ndarray, copies: int = 1,
                        batch_size: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """Scaled latents of each tile under ``copies`` dihedral transforms (1-8: identity, then
    rotations, then mirrored rotations), and the matching labels."""
    check_tiles(tiles, vqmodel.config.sample_size)
    if not 1 <= copies <= 8:
        raise ValueError(f"copies must be 1..8 dihedral transforms, got {copies}")
    labels = np.asarray(labels)
    if labels.shape != (len(tiles),):
        raise ValueError(f"need one label per tile: {labels.shape} labels for {len(tiles)} tiles")
    transforms = DIHEDRAL_TRANSFORMS[:copies]
    augmented = np.concatenate([np.stack([dihedral(t, k, flip) for t in tiles]) for k, flip in transforms])
    latents = encode(vqmodel, augmented, batch_size) * vqmodel.config.scaling_factor
    return latents.astype(np.float32), np.tile(labels, copies)


def save_ldm_pipeline(unet, vqmodel, scheduler, folder: str | Path, class_names: Sequence[str],
                      train_config: dict | None = None) -> Path:
    """Save a :class:`ClassConditionalLDMPipeline` atomically, with the class names beside it."""
    pipeline = ClassConditionalLDMPipeline(vqvae=vqmodel, unet=unet, scheduler=scheduler)
    extra = {"class_names.json": {"class_names": list(class_names)}}
    if train_config is not None:
        extra["histolab_train_config.json"] = train_config
    return save_pretrained_atomic(pipeline, folder, extra)


def load_class_names(folder: str | Path) -> list[str]:
    return json.loads((Path(folder) / "class_names.json").read_text())["class_names"]


def sample_classes(pipeline: ClassConditionalLDMPipeline, counts: dict[int, int], guidance_scale: float,
                   steps: int, seed: int = 0, batch_size: int = 64) -> dict[int, np.ndarray]:
    """``counts[c]`` samples of each class c, from one seeded generator."""
    generator = torch.Generator().manual_seed(seed)
    out = {}
    for label, n in counts.items():
        chunks = [pipeline([label] * min(batch_size, n - start), guidance_scale=guidance_scale,
                           num_inference_steps=steps, generator=generator).images
                  for start in range(0, n, batch_size)]
        out[label] = np.concatenate(chunks) if chunks else np.zeros((0, *pipeline_image_shape(pipeline)), np.uint8)
    return out


def pipeline_image_shape(pipeline: ClassConditionalLDMPipeline) -> tuple[int, int, int]:
    size = pipeline.vqvae.config.sample_size
    return size, size, 3


def per_class_scores(samples: dict[int, np.ndarray], real: dict[int, np.ndarray], class_names: Sequence[str],
                     min_tiles: int = 2) -> pd.DataFrame:
    """FID and KID of each class's samples against that class's real (held-out) tiles, at equal n
    (the smaller of the two sets), plus the same for all scored classes pooled. ``real`` holds uint8
    tiles or their Inception features (2-D float), so features can be computed once and reused.
    Classes with fewer than ``min_tiles`` real tiles get NaN."""
    from ..evaluation import metrics

    def features(x: np.ndarray) -> np.ndarray:
        return x if x.ndim == 2 else metrics.inception_features(x)

    rows, all_fake, all_real = [], [], []
    for label, name in enumerate(class_names):
        fake, true = samples.get(label), real.get(label)
        n = 0 if true is None or fake is None else min(len(true), len(fake))
        row = {"class": label, "name": name, "n": n, "fid": np.nan, "kid": np.nan, "kid_std": np.nan}
        if n >= max(min_tiles, 2):
            fake_features, real_features = features(fake[:n]), features(true[:n])
            all_fake.append(fake_features)
            all_real.append(real_features)
            kid, kid_std = metrics.kid(real_features, fake_features)
            row.update(fid=metrics.fid(real_features, fake_features), kid=kid, kid_std=kid_std)
        rows.append(row)
    if all_fake:
        fake_features, real_features = np.concatenate(all_fake), np.concatenate(all_real)
        kid, kid_std = metrics.kid(real_features, fake_features)
        rows.append({"class": -1, "name": "all scored classes", "n": len(fake_features),
                     "fid": metrics.fid(real_features, fake_features), "kid": kid, "kid_std": kid_std})
    return pd.DataFrame(rows)
