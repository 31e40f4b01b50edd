"""Colour deconvolution of H&E (Ruifrok & Johnston, Anal. Quant. Cytol. Histol. 23:291, 2001).

Light through a stained section follows Beer-Lambert: the optical density
``OD = -log10(I / I0)`` of each RGB channel is a linear mix of the stains' amounts,
``OD = C @ M`` with one row of ``M`` per stain (haematoxylin, eosin, DAB). Inverting ``M``
separates the stains. scikit-image implements exactly this (``rgb2hed`` / ``hed2rgb``); we
wrap it to return per-stain images that can be shown side by side.
"""

from __future__ import annotations

import numpy as np

STAINS = ("haematoxylin", "eosin", "dab")


def _check_rgb(image: np.ndarray) -> None:
    if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an H x W x 3 uint8 RGB image, got shape {image.shape} and dtype {image.dtype}")


def stain_concentrations(image: np.ndarray) -> np.ndarray:
    """H x W x 3 float array of haematoxylin, eosin and DAB concentrations."""
    from skimage.color import rgb2hed

    _check_rgb(image)
    return rgb2hed(image)


def separate_stains(image: np.ndarray) -> dict[str, np.ndarray]:
    """Each stain alone, rendered back to RGB uint8 (what the slide would look like with only it)."""
    from skimage.color import hed2rgb

    hed = stain_concentrations(image)
    out = {}
    for i, name in enumerate(STAINS):
        only = np.zeros_like(hed)
        only[..., i] = hed[..., i]
        out[name] = (np.clip(hed2rgb(only), 0, 1) * 255).round().astype(np.uint8)
    return out
