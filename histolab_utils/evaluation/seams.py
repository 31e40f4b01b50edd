"""A seam score for inpainting: is the region's border sharper than the image just inside it?

A visible seam is an edge that follows the region's outline. So compare the mean gradient
magnitude (Sobel, on grey levels) on a thin band along the border with the mean on a band of the
same width just inside the region: a ratio near 1 means no seam; well above 1, the border shows.
"""

from __future__ import annotations

import numpy as np


def seam_score(image: np.ndarray, region: np.ndarray, band_px: int = 2) -> dict:
    """``border`` and ``inside`` mean gradient magnitudes and their ``ratio`` for one uint8
    image [H, W, 3] inpainted in the bool ``region`` [H, W]."""
    from scipy.ndimage import binary_dilation, binary_erosion
    from skimage.color import rgb2gray
    from skimage.filters import sobel

    region = np.asarray(region, bool)
    if region.shape != image.shape[:2]:
        raise ValueError(f"region {region.shape} does not match the image {image.shape[:2]}")
    gradient = sobel(rgb2gray(image))
    border = binary_dilation(region, iterations=band_px) & ~binary_erosion(region, iterations=band_px)
    core = binary_erosion(region, iterations=band_px)
    inside = core & ~binary_erosion(core, iterations=2 * band_px)
    if not border.any() or not inside.any():
        raise ValueError(f"the region is too small for {band_px}-px bands")
    b, i = float(gradient[border].mean()), float(gradient[inside].mean())
    return {"border": b, "inside": i, "ratio": b / i if i > 0 else float("inf")}
