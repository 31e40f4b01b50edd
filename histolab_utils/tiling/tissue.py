"""Tissue masks at thumbnail resolution.

Glass is bright and grey; stained tissue is coloured and absorbs light. Two standard cues:

* ``"saturation"``: the HSV saturation of each pixel (tissue is pink/purple, glass grey);
* ``"od"``: optical density summed over RGB, ``-log10(I / 255)`` (tissue absorbs, glass does not).

Otsu's threshold splits the cue into two classes. Otsu always finds *some* split, even on an
empty slide, so the threshold is never allowed below a floor that plain glass does not reach.
Small holes inside tissue are filled and specks removed.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

TissueMethod = Literal["saturation", "od"]
# Cue values that background glass stays under (saturation in [0, 1]; OD summed over RGB).
THRESHOLD_FLOOR = {"saturation": 0.07, "od": 0.3}


def tissue_cue(rgb: np.ndarray, method: TissueMethod = "saturation") -> np.ndarray:
    """Per-pixel tissue evidence (float) of an RGB uint8 image."""
    if method == "saturation":
        # HSV saturation, (max - min) / max, computed directly: skimage's rgb2hsv works in
        # float64 on all three HSV channels and is ~10x slower on a thumbnail.
        values = rgb.astype(np.float32)
        high, low = values.max(axis=-1), values.min(axis=-1)
        return np.where(high > 0, (high - low) / np.maximum(high, 1.0), 0.0).astype(np.float32)
    if method == "od":
        return (-np.log10(np.maximum(rgb.astype(np.float32), 1.0) / 255.0)).sum(axis=-1)
    raise ValueError(f"tissue method must be 'saturation' or 'od', not {method!r}")


def tissue_mask(rgb: np.ndarray, method: TissueMethod = "saturation", min_object_fraction: float = 1e-3) -> np.ndarray:
    """Boolean tissue mask of an RGB uint8 thumbnail (Otsu with a floor, holes filled, specks removed)."""
    from skimage.filters import threshold_otsu
    from skimage.morphology import remove_small_holes, remove_small_objects

    cue = tissue_cue(rgb, method)
    floor = THRESHOLD_FLOOR[method]
    if float(cue.max()) <= floor:
        return np.zeros(cue.shape, dtype=bool)
    threshold = max(float(threshold_otsu(cue)), floor)
    mask = cue > threshold
    min_size = max(4, int(min_object_fraction * mask.size))
    mask = remove_small_objects(mask, max_size=min_size)
    return remove_small_holes(mask, max_size=min_size)
