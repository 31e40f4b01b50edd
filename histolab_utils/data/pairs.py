"""Image–mask pairs: H&E crops with the nuclei type and instance maps under them (NASDM stage 2).

Two images of the embedded set carry nuclei labels at pixel level:

* ``hgsc_nest``: its shipped instance and type rasters (HGSC type ids mapped to the project's
  vocabulary, :data:`~histolab_utils.data.nuclei.NUCLEUS_CLASSES`);
* ``hgsc_stroma``: its nucleus polygons, rasterised.

Crops follow the fixed region split of every image (:mod:`~histolab_utils.data.datasets`: strips, or
``hgsc_nest``'s blocks) and lie wholly inside one box of one region, so no pixel of a held-out pair is
ever seen in training. With ``downsample``
d > 1 the image is averaged over d x d blocks and the masks take every d-th pixel, so pairs match
the scale of the mask generator's tiles (notebook 06's smoke profile works at d = 2).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..paths import data_dir
from .datasets import IMAGES, Box, Region, downsampled_box, load_image
from .nuclei import (IMAGE_CONTEXTS, NUCLEUS_CLASSES, TISSUE_CONTEXTS, _image_raster, grid_cells, nuclei_seen,
                     overlapping_pairs, renumber_instances, vocabulary_name)

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

    def outside_region(self, root: Path | None = None) -> int:
        """How many tiles do not lie wholly inside one box of their ``region`` (0 for pairs this module drew)."""
        return sum(load_image(name, root).region_of(tuple(int(v) for v in box)) != self.region
                   for name, box in zip(self.sources, self.boxes))

    def subset(self, index) -> "ImageMaskPairs":
        return ImageMaskPairs(self.images[index], self.types[index], self.instances[index], self.contexts[index],
                              self.sources[index], self.boxes[index], self.region, self.downsample)

    def apart(self, order, count: int) -> np.ndarray:
        """Up to ``count`` pair indices taken in ``order`` (a ranking of the pairs, best first), skipping every pair
        whose box overlaps one already taken in the same source image: crops that show different tissue (a gallery
        of random crops ranked by their nuclei otherwise shows one crowded spot several times)."""
        order = np.asarray(order, dtype=np.int64).ravel()
        if order.size and (order.min() < 0 or order.max() >= len(self)):
            raise ValueError(f"order holds indices outside 0..{len(self) - 1}")
        if int(count) != count or count < 0:
            raise ValueError(f"count must be a whole number >= 0; got {count}")
        taken: list[int] = []
        for i in order:
            if len(taken) == count:
                break
            x0, y0, x1, y1 = self.boxes[i]
            if not any(self.sources[j] == self.sources[i] and x0 < self.boxes[j][2] and self.boxes[j][0] < x1
                       and y0 < self.boxes[j][3] and self.boxes[j][1] < y1 for j in taken):
                taken.append(int(i))
        return np.array(taken, dtype=np.int64)


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


def _region_windows(name: str, region: Region, size: int, downsample: int, root: Path | None) -> list[Box]:
    """The region's boxes of ``name`` at ``downsample`` (x0, y0, x1, y1) that hold a ``size`` px crop; an error
    when none does."""
    if region not in ("train", "validation", "heldout"):
        raise ValueError(f"region must be 'train', 'validation' or 'heldout', not {region!r}")
    pixels = pair_rasters(name, downsample, root)[0]
    windows, sizes = [], []
    for box in load_image(name, root).region_boxes(region):
        x0, y0, x1, y1 = downsampled_box(box, downsample)
        x1, y1 = min(x1, pixels.shape[1]), min(y1, pixels.shape[0])
        sizes.append(f"{x1 - x0} x {y1 - y0}")
        if x1 - x0 >= size and y1 - y0 >= size:
            windows.append((x0, y0, x1, y1))
    if not windows:
        raise ValueError(f"{name}'s {region} region ({' + '.join(sizes)} px at downsample {downsample}) is too "
                         f"small for {size} px crops")
    return windows


def _crops(name: str, xs: np.ndarray, ys: np.ndarray, size: int, downsample: int, root: Path | None) -> dict:
    """The crops of ``name`` at top-left corners (xs, ys), in downsampled pixels, as ImageMaskPairs fields."""
    pixels, types, instances = pair_rasters(name, downsample, root)
    count = len(xs)
    window = lambda a, x, y: a[y:y + size, x:x + size]  # noqa: E731
    return dict(
        images=np.stack([window(pixels, x, y) for x, y in zip(xs, ys)]) if count else np.zeros((0, size, size, 3), np.uint8),
        types=np.stack([window(types, x, y) for x, y in zip(xs, ys)]) if count else np.zeros((0, size, size), np.uint8),
        instances=(np.stack([renumber_instances(window(instances, x, y)) for x, y in zip(xs, ys)]).astype(np.uint16)
                   if count else np.zeros((0, size, size), np.uint16)),
        contexts=np.full(count, TISSUE_CONTEXTS.index(IMAGE_CONTEXTS[name]), dtype=np.int64),
        sources=np.full(count, name, dtype=object),
        boxes=np.stack([xs, ys, np.asarray(xs) + size, np.asarray(ys) + size], axis=1).astype(np.float64) * downsample,
    )


def _joined(parts: list[dict], region: str, downsample: int) -> ImageMaskPairs:
    return ImageMaskPairs(**{key: np.concatenate([p[key] for p in parts]) for key in parts[0]}, region=region,
                          downsample=int(downsample))


def image_mask_pairs(size: int, region: Region, n: int, seed: int = 0, *, sources=PAIR_SOURCES,
                     downsample: int = 1, root: Path | None = None) -> ImageMaskPairs:
    """``n`` seeded random crops of ``size`` px with their masks, shared out evenly over ``sources``,
    each wholly inside ``region`` ("train", "validation" or "heldout"). Random crops may overlap: for
    units that must be independent (test tiles, disjoint pools) use :func:`grid_pairs`."""
    if size <= 0 or n < 0:
        raise ValueError(f"need size > 0 and n >= 0; got size={size}, n={n}")
    rng = np.random.default_rng(seed)
    parts = []
    for k, name in enumerate(sources):
        count = n // len(sources) + (k < n % len(sources))
        windows = np.asarray(_region_windows(name, region, size, downsample, root))
        positions = (windows[:, 2] - windows[:, 0] - size + 1) * (windows[:, 3] - windows[:, 1] - size + 1)
        x0, y0, x1, y1 = windows[rng.choice(len(windows), size=count, p=positions / positions.sum())].T
        xs = rng.integers(x0, x1 - size + 1)
        ys = rng.integers(y0, y1 - size + 1)
        parts.append(_crops(name, xs, ys, size, downsample, root))
    return _joined(parts, region, downsample)


def grid_pairs(size: int, region: Region, *, sources=PAIR_SOURCES, downsample: int = 1, n=None, seed: int = 0,
               root: Path | None = None) -> ImageMaskPairs:
    """Every tile of non-overlapping ``size`` px grids, one laid from the top-left corner of each box of ``region``
    in each of ``sources`` (row by row, box after box, source after source): no pixel lies in two tiles, so tiles
    are separate units for a bootstrap, and any split of them is disjoint in pixels. The border a grid does not
    fill is left out.

    ``n`` keeps a seeded subset, still in grid order: an int keeps at most ``n`` tiles of the whole grid (every tile
    when it holds fewer: a held-out set scored at the size there is); a dict {source: count} keeps at most that many
    of each source's tiles (a floor drawn with another set's share of sources, :func:`source_counts`)."""
    if size <= 0:
        raise ValueError(f"need size > 0; got size={size}")
    parts = []
    for name in sources:
        for window in _region_windows(name, region, size, downsample, root):
            cells = grid_cells(window, size).astype(np.int64)
            parts.append(_crops(name, cells[:, 0], cells[:, 1], size, downsample, root))
    tiles = _joined(parts, region, downsample)
    return tiles if n is None else tiles.subset(_seeded_subset(tiles.sources, n, seed))


def _seeded_subset(sources: np.ndarray, n, seed: int) -> np.ndarray:
    """Sorted indices of a seeded subset: at most ``n`` of all (an int), or at most ``n[name]`` of each source's."""
    rng = np.random.default_rng(seed)
    if isinstance(n, dict):
        unknown = set(n) - set(sources.tolist())
        if unknown or any(int(c) != c or c < 0 for c in n.values()):
            raise ValueError(f"n must map sources of these tiles ({sorted(set(sources.tolist()))}) to whole numbers "
                             f">= 0; got {n}")
        picked = [rng.choice(where, min(int(n[name]), len(where)), replace=False)
                  for name in n for where in [np.flatnonzero(sources == name)]]
        return np.sort(np.concatenate(picked)).astype(np.int64) if picked else np.zeros(0, np.int64)
    if int(n) != n or n < 0:
        raise ValueError(f"n must be a whole number >= 0, a dict {{source: count}} or None; got {n!r}")
    return np.sort(rng.choice(len(sources), min(int(n), len(sources)), replace=False))


def source_counts(pairs: ImageMaskPairs) -> dict[str, int]:
    """How many tiles of ``pairs`` come from each source (``grid_pairs(n=...)`` draws a floor with the same share)."""
    return {str(name): int(count) for name, count in zip(*np.unique(pairs.sources.astype(str), return_counts=True))}


def distinct_nuclei(pairs: ImageMaskPairs, root: Path | None = None) -> dict[str, int]:
    """How many different nuclei of their source images the tiles of ``pairs`` show, per source and in all: a
    nucleus seen by two overlapping tiles, or cut by a tile border, counts once. (Overlapping random crops show far
    fewer distinct nuclei than their count of nuclei per tile suggests.)"""
    counts = {}
    for name in dict.fromkeys(pairs.sources.tolist()):
        instances = pair_rasters(name, pairs.downsample, root)[2]
        counts[name] = nuclei_seen(instances, (pairs.boxes[pairs.sources == name] / pairs.downsample).astype(int))
    counts["all"] = sum(counts.values())
    return counts


def pairs_summary(pairs: ImageMaskPairs, root: Path | None = None) -> dict:
    """What a set of pairs (a held-out set, its floor) rests on, measured: its ``n`` tiles (per source), how many pairs of them overlap,
    the distinct nuclei they show (:func:`distinct_nuclei`) and a sentence saying so (printed, and kept in records)."""
    overlaps, distinct = overlapping_pairs(pairs.boxes, pairs.sources), distinct_nuclei(pairs, root)["all"]
    design = "non-overlapping (no two share a pixel)" if overlaps == 0 else f"{overlaps} pairs of them overlapping"
    per_source = ", ".join(f"{count} {name}" for name, count in source_counts(pairs).items())
    return {"n": len(pairs), "per_source": source_counts(pairs), "overlapping_pairs": overlaps,
            "distinct_nuclei": distinct,
            "statement": f"{len(pairs)} {pairs.region} pairs of {pairs.size} px ({per_source}), {design}, showing "
                         f"{distinct:,} distinct nuclei"}
