"""How ``hgsc_nest``'s block split (``SPLIT_VERSION`` 3) was chosen, as code that runs again.

``hgsc_nest`` is our one large image with typed nuclei, and its tumour sits in the middle: the right strip that
split 2 held out had 5 of its 288 neoplastic nuclei. No vertical or horizontal strip holds a representative
share of all three types, so the image is cut into ``grid`` x ``grid`` blocks and one block of every row and
column (a permutation of the columns) is held out. The rule, fixed before any model trained on the split:

1. **Representative**: each type's share among the held-out nuclei is within ``tolerance`` (relative, ±30 %) of
   its share in the whole image;
2. **Enough to score**: notebook 09's held-out grid tiles (``geometry`` = 32 px tiles at downsample 2, laid in
   each block, with the other pair sources' held-out tiles) hold at least ``min_per_type`` nuclei of each type, counted by centroid;
3. among the patterns that pass, the smallest largest relative deviation; a tie goes to the first pattern in
   lexicographic order.

The validation blocks are chosen by the same rule (1 and 3) among the permutations that share no block with the
held-out one. Nuclei are counted by the centroid of their instance in the shipped rasters.

>>> choice = choose_design()                 # the BlockDesign in data.datasets.BLOCK_DESIGNS
>>> candidates_table().head()                # every held-out pattern, its counts, deviation and verdict
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from itertools import permutations
from pathlib import Path

import numpy as np
import pandas as pd

from .datasets import BlockDesign, HEImage, downsampled_box, load_image

DESIGNED_IMAGE = "hgsc_nest"
GRID = 4
TOLERANCE = 0.30
MIN_PER_TYPE = 50
# notebook 09's test tiles: 32 px at downsample 2 in the smoke and cpu profiles (the full profile's 64 px at 1
# covers the same 64 image px)
TILE_GEOMETRY = (32, 2)


@dataclass(frozen=True)
class Nuclei:
    """Centroids (x, y in image px) and type names of an image's typed nuclei."""

    x: np.ndarray
    y: np.ndarray
    types: np.ndarray

    def counts(self, inside: np.ndarray | None = None) -> pd.Series:
        """Nuclei per type (all, or those where ``inside`` is True), in a fixed type order."""
        chosen = self.types if inside is None else self.types[inside]
        return pd.Series(chosen).value_counts().reindex(sorted(set(self.types)), fill_value=0)

    def in_boxes(self, boxes) -> np.ndarray:
        """Which centroids fall in any of ``boxes`` (x0, y0, x1, y1), end-exclusive."""
        inside = np.zeros(len(self.x), dtype=bool)
        for x0, y0, x1, y1 in boxes:
            inside |= (self.x >= x0) & (self.x < x1) & (self.y >= y0) & (self.y < y1)
        return inside


@functools.lru_cache(maxsize=4)
def typed_nuclei(name: str = DESIGNED_IMAGE, root: Path | None = None) -> Nuclei:
    """The centroid and type (the project's vocabulary) of every typed nucleus of a pair source (``hgsc_nest``'s
    shipped rasters, ``hgsc_stroma``'s rasterised polygons)."""
    from scipy import ndimage

    from .nuclei import NUCLEUS_CLASSES
    from .pairs import pair_rasters

    _, types, instances = pair_rasters(name, 1, root)
    ids = np.unique(instances[instances > 0])
    centres = np.asarray(ndimage.center_of_mass(np.ones(instances.shape), instances, ids)).reshape(-1, 2)
    # a nucleus's type is the type of most of its pixels (a few instances carry two types at their rims)
    row = np.searchsorted(ids, instances[instances > 0])
    votes = np.zeros((len(ids), len(NUCLEUS_CLASSES) + 1), dtype=np.int64)
    np.add.at(votes, (row, types[instances > 0].astype(int)), 1)
    kinds = votes[:, 1:].argmax(axis=1)
    return Nuclei(x=centres[:, 1], y=centres[:, 0], types=np.asarray(NUCLEUS_CLASSES)[kinds])


def tile_type_counts(boxes: np.ndarray, sources: np.ndarray, root: Path | None = None) -> pd.Series:
    """Nuclei per type whose centroid lies in one of the tiles ``boxes`` (image px, one row per tile) of their
    ``sources`` image: how many nuclei of each type a set of tiles (notebook 09's test tiles, say) shows."""
    from .nuclei import NUCLEUS_CLASSES

    boxes, sources = np.asarray(boxes), np.asarray(sources)
    if len(boxes) != len(sources):
        raise ValueError(f"tile_type_counts: {len(boxes)} boxes but {len(sources)} sources")
    total = pd.Series(0, index=list(NUCLEUS_CLASSES))
    for name in dict.fromkeys(sources.tolist()):
        nuclei = typed_nuclei(name, root)
        total = total.add(nuclei.counts(nuclei.in_boxes(boxes[sources == name])), fill_value=0)
    return total.astype(int)


def share_deviation(region_counts: pd.Series, whole_counts: pd.Series) -> pd.Series:
    """Each type's relative deviation of its share in a region from its share in the whole image."""
    region_share = region_counts / max(region_counts.sum(), 1)
    whole_share = whole_counts / whole_counts.sum()
    return region_share / whole_share - 1.0


def tile_boxes(image: HEImage, region: str, geometry: tuple[int, int] = TILE_GEOMETRY) -> list[tuple[int, int, int, int]]:
    """The image-pixel boxes of notebook 09's grid tiles of ``region``: ``geometry`` = (size, downsample) tiles
    laid from each box's corner, as ``data.pairs.grid_pairs`` lays them."""
    size, d = geometry
    boxes = []
    for box in image.region_boxes(region):
        x0, y0, x1, y1 = downsampled_box(box, d)
        boxes += [(x * d, y * d, (x + size) * d, (y + size) * d) for y in range(y0, y1 - size + 1, size)
                  for x in range(x0, x1 - size + 1, size)]
    return boxes


def _with_design(image: HEImage, design: BlockDesign) -> HEImage:
    from dataclasses import replace

    return replace(image, design=design)


def _other_sources_tile_boxes(region: str, geometry: tuple[int, int], root: Path | None):
    """The grid tiles of ``region`` in the pair sources other than the designed image: (boxes, sources)."""
    from .pairs import PAIR_SOURCES

    boxes, sources = [], []
    for name in PAIR_SOURCES:
        if name != DESIGNED_IMAGE:
            found = tile_boxes(load_image(name, root), region, geometry)
            boxes += found
            sources += [name] * len(found)
    return boxes, sources


def candidates_table(grid: int = GRID, tolerance: float = TOLERANCE, min_per_type: int = MIN_PER_TYPE,
                     geometry: tuple[int, int] = TILE_GEOMETRY, root: Path | None = None) -> pd.DataFrame:
    """Every held-out pattern (a permutation of the columns, one block per row) with its held-out nuclei per
    type, their largest share deviation, the nuclei per type in notebook 09's held-out tiles, and whether it
    passes the rule; sorted best first."""
    image = load_image(DESIGNED_IMAGE, root)
    nuclei = typed_nuclei(DESIGNED_IMAGE, root)
    whole = nuclei.counts()
    other_boxes, other_sources = _other_sources_tile_boxes("heldout", geometry, root)
    rows = []
    for columns in permutations(range(grid)):
        rest = next(p for p in permutations(range(grid)) if all(a != b for a, b in zip(p, columns)))
        candidate = _with_design(image, BlockDesign(grid, tuple(columns), rest))
        held = nuclei.counts(nuclei.in_boxes(candidate.region_boxes("heldout")))
        deviation = share_deviation(held, whole).abs().max()
        boxes = tile_boxes(candidate, "heldout", geometry)
        in_tiles = tile_type_counts(np.asarray(boxes + other_boxes).reshape(-1, 4),
                                    np.asarray([DESIGNED_IMAGE] * len(boxes) + other_sources), root)
        rows.append({"heldout": tuple(columns), **{f"held_{t}": int(c) for t, c in held.items()},
                     "max_share_deviation": float(deviation),
                     **{f"tiles_{t}": int(c) for t, c in in_tiles.items()},
                     "representative": bool(deviation <= tolerance),
                     "enough_in_tiles": bool(in_tiles.min() >= min_per_type)})
    table = pd.DataFrame(rows)
    table["passes"] = table["representative"] & table["enough_in_tiles"]
    return table.sort_values(["passes", "max_share_deviation", "heldout"], ascending=[False, True, True],
                             ignore_index=True)


def validation_table(heldout: tuple[int, ...], grid: int = GRID, tolerance: float = TOLERANCE,
                     root: Path | None = None) -> pd.DataFrame:
    """Every validation pattern that shares no block with ``heldout``, with its nuclei per type and largest share
    deviation; sorted best first."""
    image = load_image(DESIGNED_IMAGE, root)
    nuclei = typed_nuclei(DESIGNED_IMAGE, root)
    whole = nuclei.counts()
    rows = []
    for columns in permutations(range(grid)):
        if any(a == b for a, b in zip(columns, heldout)):
            continue
        candidate = _with_design(image, BlockDesign(grid, tuple(heldout), tuple(columns)))
        counts = nuclei.counts(nuclei.in_boxes(candidate.region_boxes("validation")))
        deviation = share_deviation(counts, whole).abs().max()
        rows.append({"validation": tuple(columns), **{f"validation_{t}": int(c) for t, c in counts.items()},
                     "max_share_deviation": float(deviation), "passes": bool(deviation <= tolerance)})
    return pd.DataFrame(rows).sort_values(["passes", "max_share_deviation", "validation"],
                                          ascending=[False, True, True], ignore_index=True)


def choose_design(grid: int = GRID, tolerance: float = TOLERANCE, min_per_type: int = MIN_PER_TYPE,
                  geometry: tuple[int, int] = TILE_GEOMETRY, root: Path | None = None) -> BlockDesign:
    """The block design the rule of this module picks (see the module docstring); an error when none passes."""
    held = candidates_table(grid, tolerance, min_per_type, geometry, root)
    if not held["passes"].iloc[0]:
        raise ValueError(f"no held-out pattern of {DESIGNED_IMAGE} passes the rule (±{tolerance:.0%} shares, "
                         f">= {min_per_type} nuclei of each type in the test tiles)")
    heldout = tuple(held["heldout"].iloc[0])
    validation = validation_table(heldout, grid, tolerance, root)
    if not validation["passes"].iloc[0]:
        raise ValueError(f"no validation pattern of {DESIGNED_IMAGE} disjoint from {heldout} is within ±{tolerance:.0%}")
    return BlockDesign(grid, heldout, tuple(validation["validation"].iloc[0]))


def region_counts(name: str = DESIGNED_IMAGE, root: Path | None = None) -> pd.DataFrame:
    """Nuclei per type in each region of ``name``'s split, with each type's share deviation from the whole image."""
    image = load_image(name, root)
    nuclei = typed_nuclei(name, root)
    whole = nuclei.counts()
    rows = {"whole image": whole}
    for region in ("train", "validation", "heldout"):
        rows[region] = nuclei.counts(nuclei.in_boxes(image.region_boxes(region)))
    counts = pd.DataFrame(rows).T
    deviations = pd.DataFrame({region: share_deviation(counts.loc[region], whole) for region in rows}).T
    return counts.join(deviations.map(lambda d: f"{d:+.0%}").add_suffix(" share vs whole"))
