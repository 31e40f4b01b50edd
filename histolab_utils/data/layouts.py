"""Nucleus layouts: where each nucleus of a tile sits and what type it is (CoSyn's input, Min et al. 2024).

A layout is, per tile, an int array [M, 3] of (y, x, type id) rows: a nucleus centroid in tile
pixels and its type, 1..K = ``NUCLEUS_CLASSES`` (0 is background and not a nucleus). An empty
layout (M = 0) is valid: a tile without nuclei.

Point maps
----------
The model sees a layout as K maps, one per type (CoSyn uses one map holding the class id at each
centroid pixel; per-type maps avoid ordering the types as numbers). Each centroid is drawn as a
small Gaussian blob, ``exp(-d^2 / 2 sigma^2)`` of the distance d to the nearest centroid of that
type, rather than as a single pixel: a lone pixel reaches the first convolution through one of its
nine taps and is halved by every pooling, while a blob of sigma = 1 px gives a smooth, denser
signal at every level of the UNet. The blob is exactly 1 at a centroid and below
``exp(-1 / 2 sigma^2)`` everywhere else, so :func:`read_layouts` reads the centroids back exactly,
even for touching nuclei.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .nuclei import NUCLEUS_CLASSES, MaskTiles, instance_table

K = len(NUCLEUS_CLASSES)
LAYOUT_SIGMA = 1.0  # px: the blob of each centroid in the point maps


@dataclass(frozen=True)
class Layouts:
    """Layouts of ``len(points)`` tiles of ``size`` x ``size`` px; ``points[i]`` is int [M_i, 3] (y, x, type id)."""

    points: tuple[np.ndarray, ...]
    size: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "points", tuple(check_layout(p, self.size, f"tile {i}")
                                                 for i, p in enumerate(self.points)))

    def __len__(self) -> int:
        return len(self.points)

    def subset(self, index) -> "Layouts":
        return Layouts(tuple(self.points[i] for i in np.arange(len(self))[index]), self.size)

    @property
    def counts(self) -> np.ndarray:
        """int [N, K]: nuclei of each type per tile."""
        return np.stack([np.bincount(p[:, 2], minlength=K + 1)[1:] for p in self.points]) if self.points \
            else np.zeros((0, K), int)

    def table(self):
        """One row per nucleus: tile, y, x, type id and class name (a pandas DataFrame)."""
        import pandas as pd

        rows = [(i, *row) for i, p in enumerate(self.points) for row in p.tolist()]
        frame = pd.DataFrame(rows, columns=["tile", "y", "x", "type"])
        return frame.assign(class_name=[NUCLEUS_CLASSES[t - 1] for t in frame["type"]])


def check_layout(points, size: int, where: str = "layout") -> np.ndarray:
    """One tile's layout as int [M, 3] (y, x, type id), or an error naming the bad centroid or type.

    Types may be ids (1..K) or names from ``NUCLEUS_CLASSES``; coordinates must be whole pixels in
    0..size-1, and no two nuclei of one type may share a pixel (they could not be told apart).
    """
    rows = [tuple(row) for row in (points.tolist() if isinstance(points, np.ndarray) else points)]
    out = np.zeros((len(rows), 3), dtype=np.int64)
    for j, row in enumerate(rows):
        if len(row) != 3:
            raise ValueError(f"{where}: nucleus {j} is {row!r}; each nucleus is (y, x, type)")
        y, x, kind = row
        if isinstance(kind, str):
            if kind not in NUCLEUS_CLASSES:
                raise ValueError(f"{where}: nucleus {j} has unknown type {kind!r}; types are {list(NUCLEUS_CLASSES)}")
            kind = NUCLEUS_CLASSES.index(kind) + 1
        if not (float(kind).is_integer() and 1 <= kind <= K):
            raise ValueError(f"{where}: nucleus {j} has unknown type id {kind!r}; ids are 1..{K} = {list(NUCLEUS_CLASSES)}")
        if not (float(y).is_integer() and float(x).is_integer()):
            raise ValueError(f"{where}: centroid {j} at (y={y}, x={x}) is not on a whole pixel")
        if not (0 <= y < size and 0 <= x < size):
            raise ValueError(f"{where}: centroid {j} at (y={y}, x={x}) lies outside the {size} x {size} px tile")
        out[j] = int(y), int(x), int(kind)
    keys = out[:, 0] * size * (K + 1) + out[:, 1] * (K + 1) + out[:, 2]
    if len(np.unique(keys)) < len(keys):
        seen, repeated = set(), None
        for key, row in zip(keys, out):
            if key in seen:
                repeated = row
                break
            seen.add(key)
        raise ValueError(f"{where}: two {NUCLEUS_CLASSES[repeated[2] - 1]} nuclei share the pixel "
                         f"(y={repeated[0]}, x={repeated[1]})")
    return out


def layouts_from_masks(types: np.ndarray, instances: np.ndarray) -> Layouts:
    """The layout of each mask [N, S, S]: every instance's centroid (rounded) and majority type.

    A centroid that falls outside its own nucleus (a crescent, or a nucleus cut by the tile edge)
    moves to the nucleus's pixel nearest to it, so every layout point lies in the nucleus it names.
    """
    types, instances = np.asarray(types), np.asarray(instances)
    if types.shape != instances.shape or types.ndim != 3 or types.shape[1] != types.shape[2]:
        raise ValueError(f"need square type and instance maps [N, S, S] of one shape; got {types.shape}, {instances.shape}")
    size, layouts = types.shape[-1], []
    for typ, inst in zip(types, instances):
        table = instance_table(typ, inst)
        rows = []
        for instance, y, x, kind in table[["instance", "y", "x", "type"]].itertuples(index=False):
            cy, cx = int(round(y)), int(round(x))
            cy, cx = min(max(cy, 0), size - 1), min(max(cx, 0), size - 1)
            if inst[cy, cx] != instance:
                ys, xs = np.nonzero(inst == instance)
                nearest = np.argmin((ys - y) ** 2 + (xs - x) ** 2)
                cy, cx = int(ys[nearest]), int(xs[nearest])
            rows.append((cy, cx, int(kind)))
        layouts.append(np.asarray(rows, dtype=np.int64).reshape(-1, 3))
    return Layouts(tuple(layouts), size)


def layouts_from_tiles(tiles: MaskTiles) -> Layouts:
    """The layouts of mask tiles (e.g. the HGSC slide's polygons, notebook 06)."""
    return layouts_from_masks(tiles.types, tiles.instances)


def layout_maps(layouts: Layouts, sigma: float = LAYOUT_SIGMA) -> np.ndarray:
    """float32 [N, K, S, S] point maps: per type, exp(-d^2 / 2 sigma^2) of the distance d to the
    nearest centroid of that type (1 at each centroid; 0 in a map without centroids)."""
    from scipy.ndimage import distance_transform_edt

    if sigma <= 0:
        raise ValueError(f"sigma must be > 0 px, got {sigma}")
    size = layouts.size
    maps = np.zeros((len(layouts), K, size, size), dtype=np.float32)
    for i, points in enumerate(layouts.points):
        for k in range(K):
            here = points[points[:, 2] == k + 1]
            if len(here):
                empty = np.ones((size, size), bool)
                empty[here[:, 0], here[:, 1]] = False
                distance = distance_transform_edt(empty)
                maps[i, k] = np.exp(-distance ** 2 / (2 * sigma ** 2))
    return maps


def read_layouts(maps: np.ndarray) -> Layouts:
    """The layouts encoded in point maps [N, K, S, S] (the pixels where a map is 1)."""
    maps = np.asarray(maps)
    if maps.ndim != 4 or maps.shape[1] != K:
        raise ValueError(f"need point maps [N, {K}, S, S]; got shape {maps.shape}")
    peaks = maps >= 1 - 1e-3
    layouts = []
    for tile in peaks:
        kind, ys, xs = np.nonzero(tile)
        order = np.lexsort((kind, xs, ys))
        layouts.append(np.stack([ys[order], xs[order], kind[order] + 1], axis=1).astype(np.int64))
    return Layouts(tuple(layouts), maps.shape[-1])


def random_layouts(n: int, size: int, count: int, proportions: Sequence[float] = (1, 1, 1), min_distance: float = 3.0,
                   seed: int = 0) -> Layouts:
    """``n`` synthetic layouts of up to ``count`` nuclei each, at least ``min_distance`` px apart,
    types drawn with ``proportions`` (one weight per type of ``NUCLEUS_CLASSES``)."""
    weights = np.asarray(proportions, dtype=float)
    if weights.shape != (K,) or (weights < 0).any() or weights.sum() <= 0:
        raise ValueError(f"proportions need {K} non-negative weights ({list(NUCLEUS_CLASSES)}), not all zero; "
                         f"got {list(proportions)}")
    rng = np.random.default_rng(seed)
    layouts = []
    for _ in range(n):
        kept: list[tuple[int, int]] = []
        for y, x in rng.integers(0, size, (max(4 * count, 1), 2)):
            if len(kept) == count:
                break
            if all((y - a) ** 2 + (x - b) ** 2 >= min_distance ** 2 for a, b in kept):
                kept.append((int(y), int(x)))
        kinds = rng.choice(K, size=len(kept), p=weights / weights.sum()) + 1
        layouts.append(np.column_stack([np.asarray(kept, dtype=np.int64).reshape(-1, 2), kinds]))
    return Layouts(tuple(layouts), size)


def thinned(layouts: Layouts, keep: float, proportions: Sequence[float] | None = None, seed: int = 0) -> Layouts:
    """A copy keeping each nucleus with probability ``keep``, its type redrawn with ``proportions``
    when given (same positions, another mix of types)."""
    if not 0 <= keep <= 1:
        raise ValueError(f"keep must be a probability in [0, 1], got {keep}")
    rng = np.random.default_rng(seed)
    weights = None if proportions is None else np.asarray(proportions, dtype=float)
    if weights is not None and (weights.shape != (K,) or (weights < 0).any() or weights.sum() <= 0):
        raise ValueError(f"proportions need {K} non-negative weights, not all zero; got {list(proportions)}")
    out = []
    for points in layouts.points:
        points = points[rng.random(len(points)) < keep].copy()
        if weights is not None:
            points[:, 2] = rng.choice(K, size=len(points), p=weights / weights.sum()) + 1
        # two nuclei of one pixel can end up with the same type: keep the first
        _, first = np.unique(points[:, 0] * layouts.size * (K + 1) + points[:, 1] * (K + 1) + points[:, 2],
                             return_index=True)
        out.append(points[np.sort(first)])
    return Layouts(tuple(out), layouts.size)


def interior_nucleus_areas(instances: np.ndarray) -> np.ndarray:
    """Pixel areas of the nuclei [N, S, S] that do not touch their tile's border (a border-cut nucleus shows only
    part of its size)."""
    instances = np.asarray(instances)
    areas = []
    for inst in instances:
        border = np.unique(np.concatenate([inst[0], inst[-1], inst[:, 0], inst[:, -1]]))
        counts = np.bincount(inst.ravel().astype(np.int64))
        areas += [int(counts[i]) for i in np.flatnonzero(counts) if i and i not in border]
    return np.asarray(areas, dtype=np.int64)


def area_scale(reference_instances: np.ndarray, other_instances: np.ndarray, min_nuclei: int = 20) -> float:
    """How much larger (linearly) ``other``'s nuclei are than ``reference``'s: sqrt of the ratio of their median
    interior areas. A layout source drawn at another resolution than the images shows it (1.0 = the same scale);
    drawing that source's tiles at ``downsample * area_scale`` brings it to the reference's scale."""
    ref, other = interior_nucleus_areas(reference_instances), interior_nucleus_areas(other_instances)
    if len(ref) < min_nuclei or len(other) < min_nuclei:
        raise ValueError(f"too few whole nuclei to compare scales: {len(ref)} and {len(other)} (need {min_nuclei})")
    return float(np.sqrt(np.median(other) / np.median(ref)))
