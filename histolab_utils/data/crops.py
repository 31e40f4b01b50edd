"""Random crops from one region of the embedded images, with dihedral augmentation.

The real H&E here is small (about 13 megapixels), so models train on random crops. Each crop
lies wholly inside the train or the held-out region of its image, and crop positions are drawn
uniformly over all valid positions of all images (large images give proportionally more crops).
With ``downsample`` = d, each crop covers ``size * d`` pixels of the image and is box-averaged down
to ``size``: a 32 px crop at d = 2 shows a 64 px field (several nuclei and some architecture) for the
cost of a 32 px one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .datasets import HEImage, Region, load_images


@dataclass(frozen=True)
class Crops:
    """A batch of crops; masks are present when every source image has them."""

    images: np.ndarray  # N x S x S x 3 uint8
    inst_masks: np.ndarray | None  # N x S x S int32
    type_masks: np.ndarray | None  # N x S x S int32
    origins: np.ndarray  # N x 3: image index, x, y of the top-left corner (before augmentation)


# The 8 dihedral transforms as (quarter turns, mirror): identity, then rotations, then mirrored rotations.
DIHEDRAL_TRANSFORMS = tuple((k, flip) for flip in (False, True) for k in range(4))


def box_downsample(images: np.ndarray, factor: int) -> np.ndarray:
    """Average ``factor`` x ``factor`` pixel blocks of uint8 images [..., H, W, C] (rounded); H and W
    must be multiples of ``factor``."""
    if factor == 1:
        return images
    *lead, h, w, c = images.shape
    if h % factor or w % factor:
        raise ValueError(f"box_downsample: {h}x{w} px is not a multiple of factor={factor}")
    blocks = images.reshape(*lead, h // factor, factor, w // factor, factor, c).astype(np.float32)
    return np.rint(blocks.mean(axis=(-4, -2))).astype(np.uint8)


def dihedral(array: np.ndarray, k: int, flip: bool) -> np.ndarray:
    """Rotate the first two axes by ``k`` quarter turns, then mirror left-right if ``flip``."""
    out = np.rot90(array, k, axes=(0, 1))
    return out[:, ::-1] if flip else out


class CropSampler:
    """Draw ``size`` x ``size`` crops from one region of a list of images.

    >>> sampler = CropSampler(load_images(), size=64, region="train", seed=0)
    >>> batch = sampler.sample(16)          # uint8 [16, 64, 64, 3]

    ``downsample`` = d draws ``size * d`` px windows and box-averages them to ``size`` px (masks
    keep the top-left pixel of each block).
    """

    def __init__(
        self,
        images: Sequence[HEImage],
        size: int,
        region: Region = "train",
        *,
        augment: bool = True,
        seed: int | None = 0,
        downsample: int = 1,
    ) -> None:
        if size <= 0:
            raise ValueError(f"crop size must be positive, got size={size}")
        if int(downsample) != downsample or downsample < 1:
            raise ValueError(f"downsample must be a whole number >= 1, got downsample={downsample}")
        self.downsample = int(downsample)
        window = size * self.downsample
        if not images:
            raise ValueError("CropSampler needs at least one image")
        self.size, self.region, self.augment = size, region, augment
        self.rng = np.random.default_rng(seed)
        self.images: list[HEImage] = []
        self.windows: list[tuple[int, int, int, int, int]] = []  # (image index, x0, y0, nx, ny) of each box
        counts, skipped = [], []
        for image in images:
            fits = []
            for x0, y0, x1, y1 in image.region_boxes(region):
                nx, ny = x1 - x0 - window + 1, y1 - y0 - window + 1
                if nx > 0 and ny > 0:
                    fits.append((len(self.images), x0, y0, nx, ny))
            if not fits:
                sizes = " + ".join(f"{x1 - x0}x{y1 - y0}" for x0, y0, x1, y1 in image.region_boxes(region))
                skipped.append(f"{image.name} ({sizes})")
                continue
            self.images.append(image)
            self.windows.extend(fits)
            counts.extend(nx * ny for *_, nx, ny in fits)
        if not self.images:
            raise ValueError(
                f"no image has a {region} region large enough for {window}px crops "
                f"({size}px at downsample {self.downsample}): {', '.join(skipped)}"
            )
        self.skipped = skipped
        self.weights = np.asarray(counts, dtype=np.float64) / sum(counts)
        self.has_masks = all(im.inst_mask is not None and im.type_mask is not None for im in self.images)

    def _positions(self, n: int) -> np.ndarray:
        """``n`` rows of (image index, x, y): a box drawn in proportion to its crop positions, then a position."""
        which = self.rng.choice(len(self.windows), size=n, p=self.weights)
        origins = np.empty((n, 3), dtype=np.int64)
        for k, (image_index, x0, y0, nx, ny) in enumerate(self.windows):
            picked = which == k
            origins[picked, 0] = image_index
            origins[picked, 1] = x0 + self.rng.integers(0, nx, size=picked.sum())
            origins[picked, 2] = y0 + self.rng.integers(0, ny, size=picked.sum())
        return origins

    def sample_with_masks(self, n: int) -> Crops:
        """``n`` crops, with instance and type masks cropped and augmented identically."""
        if n < 0:
            raise ValueError(f"n must be non-negative, got n={n}")
        s, d = self.size, self.downsample
        origins = self._positions(n)
        images = np.empty((n, s, s, 3), dtype=np.uint8)
        inst = np.empty((n, s, s), dtype=np.int32) if self.has_masks else None
        typ = np.empty((n, s, s), dtype=np.int32) if self.has_masks else None
        turns = self.rng.integers(0, 4, size=n) if self.augment else np.zeros(n, dtype=int)
        flips = self.rng.random(n) < 0.5 if self.augment else np.zeros(n, dtype=bool)
        for j, (i, x, y) in enumerate(origins):
            source = self.images[i]
            window = (slice(y, y + s * d), slice(x, x + s * d))
            strided = (slice(y, y + s * d, d), slice(x, x + s * d, d))
            images[j] = dihedral(box_downsample(source.image[window], d), turns[j], flips[j])
            if self.has_masks:
                inst[j] = dihedral(source.inst_mask[strided], turns[j], flips[j])
                typ[j] = dihedral(source.type_mask[strided], turns[j], flips[j])
        return Crops(images=images, inst_masks=inst, type_masks=typ, origins=origins)

    def sample(self, n: int) -> np.ndarray:
        """``n`` RGB crops, uint8 [n, size, size, 3]."""
        return self.sample_with_masks(n).images


def training_crops(image_size: int, n: int, seed: int = 0, downsample: int = 1) -> np.ndarray:
    """``n`` random crops from the train region of the default set (never the held-out strip)."""
    return CropSampler(load_images(), image_size, "train", seed=seed, downsample=downsample).sample(n)


def heldout_eval_crops(image_size: int, n: int, seed: int, downsample: int = 1) -> np.ndarray:
    """The held-out crops a model is scored on (unaugmented; the same on every machine for one seed)."""
    return CropSampler(load_images(), image_size, "heldout", augment=False, seed=seed + 7,
                       downsample=downsample).sample(n)
