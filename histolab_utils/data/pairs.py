"""Image–mask pairs: H&E crops with the nuclei type and instance maps under them (NASDM stage 2).

Two images of the embedded set carry nuclei labels at pixel level:

* ``hgsc_nest``: its shipped instance and type rasters (HGSC type ids mapped to the project's
  vocabulary, :data:`~histolab_utils.data.nuclei.NUCLEUS_CLASSES`);
* ``hgsc_stroma``: its nucleus polygons, rasterised.

Crops follow the fixed region split of every image (the right 25 % is held out) and lie wholly
inside one region, so no pixel of a held-out pair is ever seen in training. With ``downsample``
d > 1 the image is averaged over d x d blocks and the masks take every d-th pixel, so pairs match
the scale of the mask generator's tiles (notebook 06's smoke profile works at d = 2).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..paths import data_dir
from .datasets import IMAGES, Region, load_image
from .nuclei import IMAGE_CONTEXTS, NUCLEUS_CLASSES, TISSUE_CONTEXTS, _image_raster, renumber_instances, vocabulary_name

PAIR_SOURCES = ("hgsc_nest", "hgsc_stroma")


@dataclass
class ImageMaskPairs:
    """``images`` uint8 [N, S, S, 3]; ``types`` uint8 [N, S, S] (0 background, i + 1 =
    ``NUCLEUS_CLASSES[i]``); ``instances`` uint16 [N, S, S] (1..n per crop); ``contexts`` int [N]
    (indices into ``TISSUE_CONTEXTS``); ``sources`` str [N]; ``boxes`` float [N, 4]: each crop's
    (x0, y0, x1, y1) in its source image's pixels."""

    images: np.ndarray
    types: np.ndarray
    instances: np.ndarray
    contexts: np.ndarray
    sources: np.ndarray
    boxes: np.ndarray
    region: str
    downsample: int = 1

    def __len__(self) -> int:
        return len(self.images)

    @property
    def size(self) -> int:
        return self.images.shape[1]

    @property
    def context_names(self) -> list[str]:
        return [TISSUE_CONTEXTS[c] for c in self.contexts]

    def subset(self, index) -> "ImageMaskPairs":
        return ImageMaskPairs(self.images[index], self.types[index], self.instances[index], self.contexts[index],
                              self.sources[index], self.boxes[index], self.region, self.downsample)


def _vocabulary_lut(name: str) -> np.ndarray:
    """Source type id -> project type id (0 for background and for classes the vocabulary leaves out)."""
    names = IMAGES[name].type_names
    lut = np.zeros(max(names) + 1, dtype=np.uint8)
    for source_id, class_name in names.items():
        target = vocabulary_name(class_name, name)
        lut[source_id] = 0 if target is None else NUCLEUS_CLASSES.index(target) + 1
    return lut


@functools.lru_cache(maxsize=8)
def pair_rasters(name: str, downsample: int = 1, root: Path | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The whole image of ``name`` with its type and instance maps, at ``downsample`` (read-only)."""
    if name not in PAIR_SOURCES:
        raise ValueError(f"no pixel-level nuclei labels for {name!r}; image-mask pairs come from {list(PAIR_SOURCES)}")
    if int(downsample) != downsample or downsample < 1:
        raise ValueError(f"downsample must be a whole number >= 1, got {downsample}")
    d, root = int(downsample), Path(root) if root else data_dir()
    image = load_image(name, root)
    if image.inst_mask is not None and image.type_mask is not None:
        types = _vocabulary_lut(name)[image.type_mask][::d, ::d]
        instances = np.where(types > 0, image.inst_mask[::d, ::d], 0)  # nuclei the vocabulary leaves out go
    else:
        types, instances = _image_raster(name, float(d), root)
    pixels = image.image
    if d > 1:
        h, w = (pixels.shape[0] // d) * d, (pixels.shape[1] // d) * d
        pixels = pixels[:h, :w].reshape(h // d, d, w // d, d, 3).mean(axis=(1, 3)).round().astype(np.uint8)
    height, width = min(pixels.shape[0], types.shape[0]), min(pixels.shape[1], types.shape[1])
    arrays = pixels[:height, :width], types[:height, :width].astype(np.uint8), instances[:height, :width]
    for array in arrays:
        array.setflags(write=False)
    return arrays


def image_mask_pairs(size: int, region: Region, n: int, seed: int = 0, *, sources=PAIR_SOURCES,
                     downsample: int = 1, root: Path | None = None) -> ImageMaskPairs:
    """``n`` seeded random crops of ``size`` px with their masks, shared out evenly over ``sources``,
    each wholly inside ``region`` ("train", "validation" or "heldout")."""
    if region not in ("train", "validation", "heldout"):
        raise ValueError(f"region must be 'train', 'validation' or 'heldout', not {region!r}")
    if size <= 0 or n < 0:
        raise ValueError(f"need size > 0 and n >= 0; got size={size}, n={n}")
    rng = np.random.default_rng(seed)
    parts = []
    for k, name in enumerate(sources):
        count = n // len(sources) + (k < n % len(sources))
        pixels, types, instances = pair_rasters(name, downsample, root)
        x0, y0, x1, y1 = (v // downsample for v in load_image(name, root).region_box(region))
        x1, y1 = min(x1, pixels.shape[1]), min(y1, pixels.shape[0])
        if x1 - x0 < size or y1 - y0 < size:
            raise ValueError(f"{name}'s {region} region is {x1 - x0} x {y1 - y0} px at downsample {downsample}: "
                             f"too small for {size} px crops")
        xs = rng.integers(x0, x1 - size + 1, count)
        ys = rng.integers(y0, y1 - size + 1, count)
        window = lambda a, x, y: a[y:y + size, x:x + size]  # noqa: E731
        parts.append(dict(
            images=np.stack([window(pixels, x, y) for x, y in zip(xs, ys)]) if count else np.zeros((0, size, size, 3), np.uint8),
            types=np.stack([window(types, x, y) for x, y in zip(xs, ys)]) if count else np.zeros((0, size, size), np.uint8),
            instances=(np.stack([renumber_instances(window(instances, x, y)) for x, y in zip(xs, ys)]).astype(np.uint16)
                       if count else np.zeros((0, size, size), np.uint16)),
            contexts=np.full(count, TISSUE_CONTEXTS.index(IMAGE_CONTEXTS[name]), dtype=np.int64),
            sources=np.full(count, name, dtype=object),
            boxes=np.stack([xs, ys, xs + size, ys + size], axis=1).astype(np.float64) * downsample,
        ))
    joined = {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}
    return ImageMaskPairs(**joined, region=region, downsample=int(downsample))
