"""A seam score for inpainting: is the region's border sharper than the image just inside it?

A visible seam is an edge that follows the region's outline. So compare the mean gradient
magnitude (Sobel, on grey levels) on a thin band along the border with the mean on a band of the
same width just inside the region: a ratio near 1 means no seam; well above 1, the border shows.
"""

from __future__ import annotations

import numpy as np


def seam_score(image: np.ndarray, region: np.ndarray, band_px: int = 2, ignore_edge_px: int = 0) -> dict:
    """``border`` and ``inside`` mean gradient magnitudes and their ``ratio`` for one uint8
    image [H, W, 3] inpainted in the bool ``region`` [H, W]; both bands leave out the ``ignore_edge_px`` px along
    the image's own edge (where the region's outline is the image's, not a seam)."""
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
    if ignore_edge_px:
        away = np.zeros(region.shape, bool)
        away[ignore_edge_px:-ignore_edge_px, ignore_edge_px:-ignore_edge_px] = True
        border, inside = border & away, inside & away
    if not border.any() or not inside.any():
        raise ValueError(f"the region is too small for {band_px}-px bands")
    b, i = float(gradient[border].mean()), float(gradient[inside].mean())
    return {"border": b, "inside": i, "ratio": b / i if i > 0 else float("inf")}


def tile_grid(height: int, width: int, tile: int, offset: int = 0) -> np.ndarray:
    """bool [H, W] checkerboard of ``tile`` px squares with corners at ``offset`` + multiples of ``tile``: its outline
    is every border of a tiling of the canvas into ``tile`` px tiles."""
    if tile < 1:
        raise ValueError(f"tile must be >= 1 px; got {tile}")
    ys, xs = np.indices((height, width))
    return (((ys - offset) // tile + (xs - offset) // tile) % 2).astype(bool)


def tile_seam_score(image: np.ndarray, tile: int, band_px: int = 2) -> dict:
    """:func:`seam_score` at every border of a ``tile`` px tiling of a uint8 canvas [H, W, 3]: the mean gradient on
    the tile borders over the mean just inside the tiles (1: the borders look like the rest; the real image's own
    score at the same grid is the reference, since tissue has edges of its own)."""
    image = np.asarray(image)
    return seam_score(image, tile_grid(*image.shape[:2], tile), band_px, ignore_edge_px=3 * band_px)
