"""Features that need no model: the baseline a VQ-GAN's latents must beat at clustering tissue.

Rumman et al. (2025) cluster VQ-GAN latents because they should separate tissue better than pixels do.
That claim needs a baseline that is cheap and knows about H&E: each tile's stain amounts by colour
deconvolution (Ruifrok & Johnston, 2001; scikit-image's ``rgb2hed``) summarised by their mean, spread and
10th/90th percentiles, plus the mean and spread of each RGB channel. Haematoxylin marks nuclei, eosin
cytoplasm and stroma, so these 14 numbers already say "cellular" or "fibrous", "dense" or "sparse".
"""

from __future__ import annotations

import numpy as np

FEATURE_NAMES = tuple(f"{stain}_{stat}" for stain in ("haematoxylin", "eosin") for stat in ("mean", "std", "p10", "p90")) + \
    tuple(f"{channel}_{stat}" for channel in "rgb" for stat in ("mean", "std"))


def stain_features(tiles: np.ndarray) -> np.ndarray:
    """[N, 14] features of ``tiles`` ([N, H, W, 3] uint8), in the order of ``FEATURE_NAMES``."""
    from skimage.color import rgb2hed

    tiles = np.asarray(tiles)
    if tiles.ndim != 4 or tiles.shape[-1] != 3 or tiles.dtype != np.uint8:
        raise ValueError(f"tiles must be [N, H, W, 3] uint8, got shape {tiles.shape} and dtype {tiles.dtype}")
    hed = rgb2hed(tiles.reshape(-1, tiles.shape[2], 3)).reshape(tiles.shape)[..., :2]  # drop DAB: not in H&E
    flat = hed.reshape(len(tiles), -1, 2)
    low, high = np.percentile(flat, [10, 90], axis=1)
    stains = np.stack([flat.mean(axis=1), flat.std(axis=1), low, high], axis=-1)  # [N, 2 stains, 4 stats]
    rgb = tiles.reshape(len(tiles), -1, 3).astype(np.float64) / 255
    colour = np.stack([rgb.mean(axis=1), rgb.std(axis=1)], axis=-1)  # [N, 3 channels, 2 stats]
    return np.concatenate([stains.reshape(len(tiles), -1), colour.reshape(len(tiles), -1)], axis=1)
