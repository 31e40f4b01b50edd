"""Seam scores for inpainting: does the region's border show?

Two ways a border shows. A sharp **edge** along the outline: compare the mean gradient magnitude (Sobel, on grey
levels) on a thin band along the border with the mean on a band of the same width just inside the region; a ratio
near 1 means no edge, well above 1 the border shows. And a **step**: the region repainted paler, darker or in another
tint than its surroundings, which the gradient ratio misses when the repainted texture is as busy as the border (a
pale square of grainy texture scores a ratio near 1). The colour step is the largest per-channel difference of mean
colour between a band just inside the border and a band just outside it, in grey levels; compare it with the same
measure on the untouched image (real tissue has some step across any line by chance).
"""

from __future__ import annotations

import numpy as np


def _bands(region: np.ndarray, band_px: int, ignore_edge_px: int = 0
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The border band (both sides of the outline), the band just inside the region beyond it, and the bands of
    ``band_px`` just inside and just outside the outline; each leaves out the ``ignore_edge_px`` px along the image's
    own edge (where the region's outline is the image's, not a seam)."""
    from scipy.ndimage import binary_dilation, binary_erosion

    grown, shrunk = binary_dilation(region, iterations=band_px), binary_erosion(region, iterations=band_px)
    bands = (grown & ~shrunk, shrunk & ~binary_erosion(shrunk, iterations=2 * band_px), region & ~shrunk,
             grown & ~region)
    if ignore_edge_px:
        away = np.zeros(region.shape, bool)
        away[ignore_edge_px:-ignore_edge_px, ignore_edge_px:-ignore_edge_px] = True
        bands = tuple(band & away for band in bands)
    return bands


def seam_score(image: np.ndarray, region: np.ndarray, band_px: int = 2, ignore_edge_px: int = 0) -> dict:
    """``border`` and ``inside`` mean gradient magnitudes and their ``ratio`` (1 = no edge along the outline), and
    the colour ``step`` across the outline (grey levels, see :func:`colour_step`) for one uint8 image [H, W, 3]
    inpainted in the bool ``region`` [H, W]; the bands leave out ``ignore_edge_px`` px along the image's edge."""
    from skimage.color import rgb2gray
    from skimage.filters import sobel

    region = np.asarray(region, bool)
    if region.shape != image.shape[:2]:
        raise ValueError(f"region {region.shape} does not match the image {image.shape[:2]}")
    border, inside, just_in, just_out = _bands(region, band_px, ignore_edge_px)
    if not border.any() or not inside.any() or not just_out.any():
        raise ValueError(f"the region is too small (or too large) for {band_px}-px bands")
    gradient = sobel(rgb2gray(image))
    b, i = float(gradient[border].mean()), float(gradient[inside].mean())
    step = float(np.abs(image[just_in].astype(np.float64).mean(0) - image[just_out].astype(np.float64).mean(0)).max())
    return {"border": b, "inside": i, "ratio": b / i if i > 0 else float("inf"), "step": step}


def colour_step(image: np.ndarray, region: np.ndarray, band_px: int = 2) -> float:
    """The largest per-channel difference (grey levels, 0-255) between the mean colour of the ``band_px`` just
    inside ``region``'s outline and the ``band_px`` just outside it: a region repainted paler or in another tint
    than its surroundings shows a step the gradient ratio of :func:`seam_score` can miss."""
    return seam_score(image, region, band_px)["step"]


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
