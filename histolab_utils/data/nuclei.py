"""One nucleus vocabulary for the project, and nuclei-mask tiles cut from typed polygons.

Vocabulary
----------
``NUCLEUS_CLASSES`` are the three types that every annotated source here shares; type id
``i + 1`` is ``NUCLEUS_CLASSES[i]`` and 0 is background. ``NUCLEUS_NAME_MAP`` says where every
other name goes (``None``: left out of the typed maps):

* ``macrophage_cell`` and ``macrophage_nucleus`` (the HGSC slide) are inflammatory cells.
* ``dead`` (the HGSC slide, PanNuke) is left out: an apoptotic or necrotic nucleus has lost the
  morphology that says its lineage, no other source types it, and it is 0.3 % of the slide's
  nuclei (1,670 of 592,349). Tiles keep those pixels as background.
* Lizard's neutrophil, lymphocyte, plasma and eosinophil are inflammatory; its connective is
  connective. Lizard's and PanNuke's ``epithelial`` do not say neoplastic or not: left out.
* The cellseg patches' type ids have no published names: they map nowhere, and may serve as
  binary nuclei.

Mask tiles
----------
:func:`mask_tiles` cuts square tiles with at least one nucleus out of the whole HGSC slide's
592,349 polygons (``source="wsi"``) or out of the nest and stroma images' polygons. Every tile
carries a type map, an instance map, centroids with types and a tissue context. The split is
spatial and fixed: the right ``HELDOUT_FRACTION`` (25 %) of the slide's extent, or of each image
(the region split of every other notebook), is held out; the bottom ``VALIDATION_FRACTION`` of the
rest is the validation strip; a tile lies wholly inside one of the three regions.
The held-out nest and stroma masks are the segmentation test set: no model trains on them.
:func:`mask_tiles` draws random windows, which may overlap; :func:`grid_mask_tiles` cuts the tiles of a
non-overlapping grid instead (held-out sets, whose tiles a bootstrap and a floor treat as separate units), and
:func:`distinct_mask_nuclei` counts the nuclei a set of tiles shows, each once.
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Sequence

import numpy as np
import pandas as pd

from ..paths import atomic_path, data_dir
from .annotations import AnnotationError, Annotations, rasterize, read_annotations
from .datasets import IMAGES, HELDOUT_FRACTION, SPLIT_VERSION, VALIDATION_FRACTION, downsampled_box, load_image
from .store import require_file

NUCLEUS_CLASSES: tuple[str, ...] = ("neoplastic", "inflammatory", "connective")

NUCLEUS_NAME_MAP: dict[str, str | None] = {
    **{name: name for name in NUCLEUS_CLASSES},
    "macrophage_cell": "inflammatory",  # HGSC slide
    "macrophage_nucleus": "inflammatory",  # HGSC slide
    "dead": None,  # HGSC slide, PanNuke: lineage unknown (see the module docstring)
    "neutrophil": "inflammatory",  # Lizard
    "lymphocyte": "inflammatory",  # Lizard
    "plasma": "inflammatory",  # Lizard
    "eosinophil": "inflammatory",  # Lizard
    "epithelial": None,  # Lizard, PanNuke: neoplastic or not is not said
}

# Tissue contexts: the HGSC slide's tissue-region classes, then "none" (no region covers most of a tile).
TISSUE_CONTEXTS: tuple[str, ...] = ("tumor", "stroma", "omental_fat", "hemorragia", "necrosis", "serum", "none")
NO_CONTEXT = TISSUE_CONTEXTS.index("none")

WSI_NUCLEI = "hgsc_nuclei_wsi.parquet"
WSI_TISSUE = "hgsc_tissue_wsi.parquet"
# The nest and stroma images have no tissue polygons; each is one kind of tissue as a whole.
IMAGE_CONTEXTS = {"hgsc_nest": "tumor", "hgsc_stroma": "stroma"}
MASK_SOURCES: tuple[str, ...] = ("wsi", *IMAGE_CONTEXTS)
Region = Literal["train", "validation", "heldout"]
REGIONS: tuple[str, ...] = ("train", "validation", "heldout")

# a nucleus is in a tile when at least this many of its pixels are (a 2 x 2 block): what a condition requests
# and what a generated mask is scored as holding use this one rule (present_types)
MIN_NUCLEUS_PX = 4
_TISSUE_CELL = 16  # level-0 px per cell of the coarse tissue raster that gives tile contexts
_CACHE_VERSION = 2  # 2: the validation strip left the train region


def vocabulary_name(name: str, source: str = "") -> str | None:
    """The project's class for a source's nucleus class name (``None``: left out); an unknown name
    is an error naming the source and the name."""
    if name not in NUCLEUS_NAME_MAP:
        raise AnnotationError(f"{source or 'nuclei'}: unknown nucleus class {name!r}; known classes: "
                              f"{sorted(NUCLEUS_NAME_MAP)} (add it to histolab_utils.data.nuclei.NUCLEUS_NAME_MAP)")
    return NUCLEUS_NAME_MAP[name]


def context_index(context: str | int) -> int:
    """Index of a tissue context in ``TISSUE_CONTEXTS``, with a clear error outside the vocabulary."""
    if isinstance(context, (int, np.integer)) and not isinstance(context, bool):
        if 0 <= int(context) < len(TISSUE_CONTEXTS):
            return int(context)
    elif context in TISSUE_CONTEXTS:
        return TISSUE_CONTEXTS.index(context)
    raise ValueError(f"tissue context {context!r} is not in the vocabulary {list(TISSUE_CONTEXTS)}")


def read_nuclei(path: str | Path, *, repair: bool = False):
    """Typed nucleus polygons in the project's vocabulary: an ``Annotations`` whose classes are
    ``NUCLEUS_CLASSES``; polygons whose class maps to ``None`` are left out (``table.attrs["left_out"]``
    counts them by name). Unknown classes and invalid geometry are errors naming the file (and
    row); ``repair=True`` fixes invalid geometry with ``shapely.make_valid`` and says how many."""
    raw = read_annotations(path, repair=repair)
    mapped = raw.table["class_name"].map(lambda name: vocabulary_name(name, str(path)))
    kept = mapped.notna().to_numpy()
    table = raw.table.loc[kept].assign(class_name=mapped[kept].to_numpy()).reset_index(drop=True)
    table.attrs["left_out"] = raw.table.loc[~kept, "class_name"].value_counts().to_dict()
    return Annotations(table=table, classes=NUCLEUS_CLASSES, source=raw.source, repaired=raw.repaired)


def edge_map(instance_map: np.ndarray) -> np.ndarray:
    """Boundary pixels of an instance map (NASDM, SDM): a pixel is an edge when any of its
    4-neighbours has a different instance id, background (0) included, so both sides of every
    boundary are marked. Works on [..., H, W]; returns bool of the same shape."""
    inst = np.asarray(instance_map)
    if inst.ndim < 2:
        raise ValueError(f"edge_map needs an [..., H, W] instance map, got shape {inst.shape}")
    edge = np.zeros(inst.shape, dtype=bool)
    vertical = inst[..., 1:, :] != inst[..., :-1, :]
    edge[..., 1:, :] |= vertical
    edge[..., :-1, :] |= vertical
    horizontal = inst[..., :, 1:] != inst[..., :, :-1]
    edge[..., :, 1:] |= horizontal
    edge[..., :, :-1] |= horizontal
    return edge


@dataclass(frozen=True)
class MaskTiles:
    """Nuclei-mask tiles of one source and region.

    ``types``: uint8 [N, S, S], 0 = background, i + 1 = ``NUCLEUS_CLASSES[i]``; ``instances``:
    uint16 [N, S, S], 0 = background, 1..n within each tile; ``contexts``: int [N], indices into
    ``TISSUE_CONTEXTS``; ``boxes``: float [N, 4], each tile's level-0 (x0, y0, x1, y1).
    """

    types: np.ndarray
    instances: np.ndarray
    contexts: np.ndarray
    boxes: np.ndarray
    source: str
    region: str
    downsample: float = 1.0

    def __len__(self) -> int:
        return len(self.types)

    @property
    def size(self) -> int:
        return self.types.shape[-1]

    @property
    def multi_hot(self) -> np.ndarray:
        """bool [N, K]: which nucleus types each tile holds (its NASDM condition; :func:`present_types`)."""
        return present_types(self.types, self.instances)

    @property
    def context_names(self) -> list[str]:
        return [TISSUE_CONTEXTS[c] for c in self.contexts]

    def subset(self, index) -> "MaskTiles":
        return MaskTiles(self.types[index], self.instances[index], self.contexts[index], self.boxes[index],
                         self.source, self.region, self.downsample)

    def centroids(self) -> pd.DataFrame:
        """One row per nucleus: tile, instance, centroid (y, x, in tile pixels), type id and class."""
        frames = [instance_table(t, i).assign(tile=k) for k, (t, i) in enumerate(zip(self.types, self.instances))]
        table = pd.concat(frames, ignore_index=True) if frames else instance_table(np.zeros((1, 1)), np.zeros((1, 1)))
        return table[["tile", "instance", "y", "x", "type", "class_name"]]


def present_types(types: np.ndarray, instances: np.ndarray, min_px: int = MIN_NUCLEUS_PX) -> np.ndarray:
    """bool [N, K]: which nucleus types each tile [N, H, W] holds, the one definition of "present" for
    real and generated masks alike: type k is present when some instance of at least ``min_px`` pixels
    inside the tile has k as its type (the most frequent type among its pixels). A sliver of a nucleus
    cut by the tile's border, smaller than that, is not a nucleus the tile holds."""
    types, instances = np.asarray(types), np.asarray(instances)
    if types.shape != instances.shape or types.ndim != 3:
        raise ValueError(f"need type and instance maps of one shape [N, H, W]; got {types.shape} and {instances.shape}")
    out = np.zeros((len(types), len(NUCLEUS_CLASSES)), dtype=bool)
    for i, (typ, inst) in enumerate(zip(types, instances)):
        table = instance_table(typ, inst)
        out[i, table.loc[table["area"] >= min_px, "type"].to_numpy() - 1] = True
    return out


def instance_table(types: np.ndarray, instances: np.ndarray) -> pd.DataFrame:
    """Per instance of one tile: id, pixel count, centroid (y, x) and its type (the most frequent
    type id among its pixels) with the class name."""
    flat_inst = np.asarray(instances, dtype=np.int64).ravel()
    n = int(flat_inst.max(initial=0)) + 1
    rows, cols = np.indices(np.shape(instances))
    count = np.bincount(flat_inst, minlength=n)
    y = np.bincount(flat_inst, weights=rows.ravel(), minlength=n)
    x = np.bincount(flat_inst, weights=cols.ravel(), minlength=n)
    votes = np.zeros((n, len(NUCLEUS_CLASSES) + 1), dtype=np.int64)
    np.add.at(votes, (flat_inst, np.asarray(types, dtype=np.int64).ravel()), 1)
    ids = np.flatnonzero(count[1:]) + 1
    type_ids = votes[ids, 1:].argmax(axis=1) + 1
    return pd.DataFrame({
        "instance": ids, "area": count[ids], "y": y[ids] / count[ids], "x": x[ids] / count[ids],
        "type": type_ids, "class_name": [NUCLEUS_CLASSES[t - 1] for t in type_ids],
    })


# -- polygons in, tiles out ---------------------------------------------------------------------
@functools.lru_cache(maxsize=4)
def _wsi_nuclei(root: Path):
    return read_nuclei(require_file("hgsc", WSI_NUCLEI, root))


@functools.lru_cache(maxsize=4)
def _wsi_tissue(root: Path):
    """The slide's tissue regions rasterised at one label per ``_TISSUE_CELL`` px (0 = none, i + 1 =
    ``TISSUE_CONTEXTS[i]``; later polygons are drawn over earlier ones), and its level-0 origin."""
    tissue = read_annotations(require_file("hgsc", WSI_TISSUE, root), classes=TISSUE_CONTEXTS[:-1])
    x0, y0, x1, y1 = wsi_extent(root)
    width, height = int(np.ceil((x1 - x0) / _TISSUE_CELL)), int(np.ceil((y1 - y0) / _TISSUE_CELL))
    box = (x0, y0, x0 + width * _TISSUE_CELL, y0 + height * _TISSUE_CELL)
    return rasterize(tissue, box, (height, width))["label"].astype(np.uint8), (x0, y0)


@functools.lru_cache(maxsize=4)
def _wsi_extent(root: Path) -> tuple[float, float, float, float]:
    import shapely

    x0, y0, x1, y1 = shapely.total_bounds(_wsi_nuclei(root).table["geometry"].to_numpy())
    return float(np.floor(x0)), float(np.floor(y0)), float(np.ceil(x1)), float(np.ceil(y1))


def wsi_extent(root: Path | None = None) -> tuple[float, float, float, float]:
    """Level-0 (x0, y0, x1, y1) covered by the HGSC slide's nuclei."""
    return _wsi_extent(Path(root) if root else data_dir())


def wsi_split_x(root: Path | None = None) -> float:
    """The level-0 x where the slide's held-out strip (its right ``HELDOUT_FRACTION``) begins."""
    x0, _, x1, _ = wsi_extent(root)
    return x0 + (1.0 - HELDOUT_FRACTION) * (x1 - x0)


def wsi_validation_y(root: Path | None = None) -> float:
    """The level-0 y where the slide's validation strip (the bottom ``VALIDATION_FRACTION`` left of the
    held-out strip) begins."""
    _, y0, _, y1 = wsi_extent(root)
    return y0 + (1.0 - VALIDATION_FRACTION) * (y1 - y0)


def wsi_region_box(region: Region, root: Path | None = None) -> tuple[float, float, float, float]:
    """Level-0 box of the slide's train (left 75 %, top 75 %), validation (left 75 %, bottom 25 %) or
    held-out (right 25 %) region."""
    x0, y0, x1, y1 = wsi_extent(root)
    split, band = wsi_split_x(root), wsi_validation_y(root)
    if region == "train":
        return x0, y0, split, band
    if region == "validation":
        return x0, band, split, y1
    if region == "heldout":
        return split, y0, x1, y1
    raise ValueError(f"region must be one of {REGIONS}, not {region!r}")


def wsi_nuclei(root: Path | None = None):
    """The whole slide's nucleus polygons in the project's vocabulary (read once per process)."""
    return _wsi_nuclei(Path(root) if root else data_dir())


def wsi_tissue_raster(root: Path | None = None) -> tuple[np.ndarray, tuple[float, float], int]:
    """(labels, level-0 origin, px per cell) of the slide's coarse tissue-region raster."""
    labels, origin = _wsi_tissue(Path(root) if root else data_dir())
    return labels, origin, _TISSUE_CELL


def tissue_context(boxes: np.ndarray, root: Path | None = None) -> np.ndarray:
    """The tissue context of each level-0 box: the region class covering most of it, or ``none``
    when uncovered slide is the largest share (read on the coarse tissue raster)."""
    labels, (ox, oy), cell = wsi_tissue_raster(root)
    out = np.empty(len(boxes), dtype=np.int64)
    for i, (x0, y0, x1, y1) in enumerate(np.asarray(boxes, dtype=np.float64)):
        c0, r0 = int((x0 - ox) // cell), int((y0 - oy) // cell)
        c1, r1 = max(c0 + 1, int(np.ceil((x1 - ox) / cell))), max(r0 + 1, int(np.ceil((y1 - oy) / cell)))
        votes = np.bincount(labels[max(r0, 0):r1, max(c0, 0):c1].ravel(), minlength=len(TISSUE_CONTEXTS))
        winner = int(votes.argmax())
        out[i] = NO_CONTEXT if winner == 0 else winner - 1
    return out


def renumber_instances(instances: np.ndarray) -> np.ndarray:
    """Instance ids renumbered 1..n in order of the old ids (0 stays background)."""
    ids, inverse = np.unique(instances, return_inverse=True)
    fresh = inverse.reshape(np.shape(instances))
    return fresh if ids[0] == 0 else fresh + 1


def _relabelled(types: np.ndarray, instances: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return types.astype(np.uint8), renumber_instances(instances).astype(np.uint16)


def _raster_tile(annotations, box, size: int) -> tuple[np.ndarray, np.ndarray]:
    raster = rasterize(annotations, box, (size, size))
    return _relabelled(raster["label"], raster["instance"])


def _region_box_holding(region: Region, span: float, what: str, root: Path | None) -> tuple[float, ...]:
    """The slide's ``region`` box (level 0), refused when a square ``what`` of ``span`` px cannot fit in it."""
    rx0, ry0, rx1, ry1 = wsi_region_box(region, root)
    if rx1 - rx0 < span or ry1 - ry0 < span:
        raise ValueError(f"the slide's {region} region ({rx1 - rx0:.0f} x {ry1 - ry0:.0f} px) is smaller than a "
                         f"{span:.0f} px {what}")
    return rx0, ry0, rx1, ry1


def _draw_wsi_tiles(size: int, downsample: float, region: Region, n: int, seed: int, root: Path | None) -> MaskTiles:
    import shapely

    annotations = wsi_nuclei(root)
    span = size * downsample
    rx0, ry0, rx1, ry1 = _region_box_holding(region, span, "tile", root)
    rng = np.random.default_rng(seed)
    types, instances, boxes = [], [], []
    tree = annotations._tree
    attempts = 0
    while len(types) < n:
        attempts += 1
        if attempts > 50:
            raise RuntimeError(f"found only {len(types)} of {n} {region} tiles with nuclei after 50 rounds")
        # Draw candidates in bulk, keep those whose box meets a polygon, rasterise those.
        m = max(64, 2 * (n - len(types)))
        x0 = rng.uniform(rx0, rx1 - span, m)
        y0 = rng.uniform(ry0, ry1 - span, m)
        candidates = np.stack([x0, y0, x0 + span, y0 + span], axis=1)
        hit_boxes, _ = tree.query(shapely.box(*candidates.T), predicate="intersects")
        for box in candidates[np.unique(hit_boxes)]:
            typ, inst = _raster_tile(annotations, tuple(box), size)
            if inst.any():
                types.append(typ)
                instances.append(inst)
                boxes.append(box)
                if len(types) == n:
                    break
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return MaskTiles(np.stack(types), np.stack(instances), tissue_context(boxes, root), boxes, "wsi", region,
                     downsample)


@functools.lru_cache(maxsize=8)
def _image_raster(name: str, downsample: float, root: Path) -> tuple[np.ndarray, np.ndarray]:
    annotations = read_nuclei(require_file(*IMAGES[name].polygons, root))
    height, width = load_image(name, root).shape
    shape = (int(round(height / downsample)), int(round(width / downsample)))
    raster = rasterize(annotations, (0, 0, shape[1] * downsample, shape[0] * downsample), shape)
    return raster["label"].astype(np.uint8), raster["instance"]


def _draw_image_tiles(name: str, size: int, downsample: float, region: Region, n: int, seed: int,
                      root: Path | None) -> MaskTiles:
    root = Path(root) if root else data_dir()
    label, instance = _image_raster(name, downsample, root)
    windows = [downsampled_box(box, downsample) for box in load_image(name, root).region_boxes(region)]
    windows = np.asarray([w for w in windows if w[2] - w[0] >= size and w[3] - w[1] >= size]).reshape(-1, 4)
    if not len(windows):
        raise ValueError(f"{name}'s {region} region has no box of {size} x {size} px at downsample {downsample}: "
                         f"too small for {size} px tiles")
    positions = (windows[:, 2] - windows[:, 0] - size + 1) * (windows[:, 3] - windows[:, 1] - size + 1)
    rng = np.random.default_rng(seed)
    types, instances, boxes = [], [], []
    for _ in range(50 * n):
        if len(types) == n:
            break
        x0, y0, x1, y1 = windows[rng.choice(len(windows), p=positions / positions.sum())]
        x, y = int(rng.integers(x0, x1 - size + 1)), int(rng.integers(y0, y1 - size + 1))
        inst = instance[y:y + size, x:x + size]
        if inst.any():
            typ, inst = _relabelled(label[y:y + size, x:x + size], inst)
            types.append(typ)
            instances.append(inst)
            boxes.append([x * downsample, y * downsample, (x + size) * downsample, (y + size) * downsample])
    if len(types) < n:
        raise RuntimeError(f"found only {len(types)} of {n} {region} tiles with nuclei in {name}")
    contexts = np.full(n, TISSUE_CONTEXTS.index(IMAGE_CONTEXTS[name]), dtype=np.int64)
    return MaskTiles(np.stack(types), np.stack(instances), contexts, np.asarray(boxes, np.float64), name, region,
                     downsample)


def _check_tile_request(source: str, size: int, region: str, n: int | None, downsample: float) -> None:
    if source not in MASK_SOURCES:
        raise ValueError(f"unknown mask-tile source {source!r}; use one of {list(MASK_SOURCES)}")
    if region not in REGIONS:
        raise ValueError(f"region must be one of {REGIONS}, not {region!r}")
    if size <= 0 or (n is not None and n < 0) or downsample <= 0:
        raise ValueError(f"need size > 0, n >= 0 and downsample > 0; got size={size}, n={n}, downsample={downsample}")


def _cached_tiles(name: str, key: dict, build, source: str, region: str, downsample: float, root: Path | None,
                  cache: bool) -> MaskTiles:
    """Tiles built by ``build()``, cached under ``data/cache/mask_tiles/`` by ``key`` (``name`` starts the file name)."""
    if not cache:
        return build()
    text = json.dumps(key, sort_keys=True)
    path = (Path(root) if root else data_dir()) / "cache" / "mask_tiles" / \
        f"{name}-{hashlib.sha1(text.encode()).hexdigest()[:8]}.npz"
    if path.is_file():
        with np.load(path) as stored:
            return MaskTiles(stored["types"], stored["instances"], stored["contexts"], stored["boxes"], source, region,
                             downsample)
    tiles = build()
    with atomic_path(path, suffix=".npz") as tmp:
        np.savez_compressed(tmp, types=tiles.types, instances=tiles.instances, contexts=tiles.contexts,
                            boxes=tiles.boxes)
    return tiles


def mask_tiles(source: str, size: int, region: Region, n: int, seed: int = 0, *, downsample: float = 1.0,
               root: Path | None = None, cache: bool = True) -> MaskTiles:
    """``n`` seeded tiles of ``size`` px, each with at least one nucleus, from ``source`` (``"wsi"``,
    ``"hgsc_nest"`` or ``"hgsc_stroma"``), wholly inside ``region`` of the fixed spatial split.

    A tile covers ``size * downsample`` level-0 px (``downsample=2`` halves the slide's resolution).
    Tiles are cached under ``data/cache/mask_tiles/`` by their parameters: the first call builds
    them, later ones load them. They are random crops and may overlap one another: for units that must be
    independent (held-out sets that a bootstrap or a floor treats as separate tiles) use :func:`grid_mask_tiles`.
    """
    _check_tile_request(source, size, region, n, downsample)

    def build() -> MaskTiles:
        if source == "wsi":
            return _draw_wsi_tiles(size, downsample, region, n, seed, root)
        return _draw_image_tiles(source, size, downsample, region, n, seed, root)

    key = {"v": _CACHE_VERSION, "source": source, "size": size, "region": region, "n": n, "seed": seed,
           "downsample": downsample, "split": SPLIT_VERSION}
    name = f"{source}-{region}-{size}px-x{downsample:g}-n{n}-seed{seed}"
    return _cached_tiles(name, key, build, source, region, downsample, root, cache)


# -- non-overlapping grids: independent tiles -------------------------------------------------------
def grid_cells(box: Sequence[float], span: float) -> np.ndarray:
    """float [M, 4]: the cells (x0, y0, x1, y1) of a grid of ``span`` px laid from the top-left corner of ``box``,
    row by row; the border the grid does not fill is left out."""
    x0, y0, x1, y1 = (float(v) for v in box)
    xs = x0 + span * np.arange(int((x1 - x0) // span))
    ys = y0 + span * np.arange(int((y1 - y0) // span))
    gy, gx = np.meshgrid(ys, xs, indexing="ij")
    return np.stack([gx.ravel(), gy.ravel(), gx.ravel() + span, gy.ravel() + span], axis=1).reshape(-1, 4)


def _grid_order(count: int, n: int | None, seed: int) -> np.ndarray:
    """The order in which grid cells are tried: grid order for every cell, a seeded permutation for a subset."""
    return np.arange(count) if n is None else np.random.default_rng(seed).permutation(count)


def _grid_wsi_tiles(size: int, downsample: float, region: Region, n: int | None, seed: int,
                    root: Path | None) -> MaskTiles:
    import shapely

    annotations = wsi_nuclei(root)
    cells = grid_cells(_region_box_holding(region, size * downsample, "tile", root), size * downsample)
    hits, _ = annotations._tree.query(shapely.box(*cells.T), predicate="intersects")
    candidates = np.unique(hits)  # cells whose box meets a polygon; a raster may still hold none of its pixels
    types, instances, boxes = [], [], []
    for cell in candidates[_grid_order(len(candidates), n, seed)]:
        if n is not None and len(types) == n:
            break
        typ, inst = _raster_tile(annotations, tuple(cells[cell]), size)
        if inst.any():
            types.append(typ)
            instances.append(inst)
            boxes.append(cells[cell])
    return _tiles_or_none(types, instances, np.asarray(boxes, np.float64).reshape(-1, 4), None, "wsi", region,
                          downsample, size, root)


def _grid_image_tiles(name: str, size: int, downsample: float, region: Region, n: int | None, seed: int,
                      root: Path | None) -> MaskTiles:
    root = Path(root) if root else data_dir()
    label, instance = _image_raster(name, downsample, root)
    windows = [downsampled_box(box, downsample) for box in load_image(name, root).region_boxes(region)]
    cells = np.concatenate([grid_cells((x0, y0, min(x1, label.shape[1]), min(y1, label.shape[0])), size)
                            for x0, y0, x1, y1 in windows]).astype(np.int64)
    if not len(cells):
        raise ValueError(f"{name}'s {region} region has no box of {size} x {size} px at downsample {downsample}: "
                         f"too small for {size} px tiles")
    types, instances, boxes = [], [], []
    for x0, y0, x1, y1 in cells[_grid_order(len(cells), n, seed)]:
        if n is not None and len(types) == n:
            break
        if instance[y0:y1, x0:x1].any():
            typ, inst = _relabelled(label[y0:y1, x0:x1], instance[y0:y1, x0:x1])
            types.append(typ)
            instances.append(inst)
            boxes.append([x0 * downsample, y0 * downsample, x1 * downsample, y1 * downsample])
    contexts = np.full(len(types), TISSUE_CONTEXTS.index(IMAGE_CONTEXTS[name]), dtype=np.int64)
    return _tiles_or_none(types, instances, np.asarray(boxes, np.float64).reshape(-1, 4), contexts, name, region,
                          downsample, size, root)


def _tiles_or_none(types: list, instances: list, boxes: np.ndarray, contexts: np.ndarray | None, source: str,
                   region: str, downsample: float, size: int, root: Path | None) -> MaskTiles:
    """MaskTiles of what a grid gave (contexts read from the slide when ``None``); an error when it gave no tile."""
    if not types:
        raise ValueError(f"the {size} px grid over {source}'s {region} region holds no tile with a nucleus")
    if contexts is None:
        contexts = tissue_context(boxes, root)
    return MaskTiles(np.stack(types), np.stack(instances), contexts, boxes, source, region, downsample)


def grid_mask_tiles(source: str, size: int, region: Region, n: int | None = None, seed: int = 0, *,
                    downsample: float = 1.0, root: Path | None = None, cache: bool = True) -> MaskTiles:
    """Tiles of a non-overlapping grid of ``size`` px over ``region`` of ``source`` (``"wsi"``, ``"hgsc_nest"`` or
    ``"hgsc_stroma"``), each with at least one nucleus, in the format of :func:`mask_tiles`.

    The grid is laid from the top-left corner of each box of the region (the slide's region is one box), and the
    border it does not fill is left out: no pixel lies in two tiles, so the tiles are separate units for a bootstrap
    and a floor. ``n``: a seeded subset of at most ``n`` of the grid's tiles with nuclei, in a seeded random order (so
    any first k of them are a random draw too); fewer when the grid holds fewer. ``None``: every such tile, in grid
    order (the whole slide's held-out region holds about 10^5 at 64 level-0 px: ask for ``n``). Cached like
    :func:`mask_tiles`; :func:`distinct_mask_nuclei` counts the nuclei the tiles show.
    """
    _check_tile_request(source, size, region, n, downsample)

    def build() -> MaskTiles:
        if source == "wsi":
            return _grid_wsi_tiles(size, downsample, region, n, seed, root)
        return _grid_image_tiles(source, size, downsample, region, n, seed, root)

    key = {"v": _CACHE_VERSION, "grid": True, "source": source, "size": size, "region": region, "n": n, "seed": seed,
           "downsample": downsample, "split": SPLIT_VERSION}
    name = f"grid-{source}-{region}-{size}px-x{downsample:g}-n{n if n is not None else 'all'}-seed{seed}"
    return _cached_tiles(name, key, build, source, region, downsample, root, cache)


def distinct_mask_nuclei(tiles: MaskTiles, root: Path | None = None) -> int:
    """How many different nuclei of the source the tiles show (at least one pixel in some tile): a nucleus seen by
    two overlapping tiles, or cut by the border of two neighbouring ones, counts once. Random tiles that overlap
    show fewer distinct nuclei than their nuclei per tile suggest; a grid's count is the number of units a nucleus
    score rests on."""
    if tiles.source != "wsi":
        instance = _image_raster(tiles.source, tiles.downsample, Path(root) if root else data_dir())[1]
        return nuclei_seen(instance, np.rint(tiles.boxes / tiles.downsample).astype(np.int64))
    annotations = wsi_nuclei(root)  # the slide's nuclei have slide-wide ids: rasterise each tile on its own
    seen: set[int] = set()
    for box in tiles.boxes:
        seen.update(np.unique(rasterize(annotations, tuple(box), (tiles.size, tiles.size))["instance"]).tolist())
    seen.discard(0)
    return len(seen)


def nuclei_seen(instance: np.ndarray, boxes: np.ndarray) -> int:
    """How many different nonzero ids of the instance raster ``instance`` [H, W] the integer pixel ``boxes``
    [N, 4] (x0, y0, x1, y1) show between them: an id seen by two boxes counts once."""
    seen: set[int] = set()
    for x0, y0, x1, y1 in boxes:
        seen.update(np.unique(instance[y0:y1, x0:x1]).tolist())
    seen.discard(0)
    return len(seen)


def overlapping_pairs(boxes: np.ndarray, groups: Sequence | None = None) -> int:
    """How many pairs of boxes [N, 4] (x0, y0, x1, y1) share area (within one group: boxes of different ``groups``,
    e.g. source images, never overlap). 0 for the tiles of a grid."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    same = np.ones((len(boxes), len(boxes)), bool) if groups is None else \
        np.asarray(groups)[:, None] == np.asarray(groups)[None, :]
    overlap = ((boxes[:, None, 0] < boxes[None, :, 2]) & (boxes[None, :, 0] < boxes[:, None, 2])
               & (boxes[:, None, 1] < boxes[None, :, 3]) & (boxes[None, :, 1] < boxes[:, None, 3]) & same)
    return int(np.triu(overlap, k=1).sum())


def tiles_summary(tiles: MaskTiles, root: Path | None = None) -> dict:
    """What a set of mask tiles (a held-out set) rests on, measured: its ``n`` tiles, how many pairs of them overlap, the
    distinct nuclei they show (:func:`distinct_mask_nuclei`) and a sentence saying so (printed, and kept in records)."""
    overlaps, distinct = overlapping_pairs(tiles.boxes), distinct_mask_nuclei(tiles, root)
    design = "non-overlapping (no two share a pixel)" if overlaps == 0 else f"{overlaps} pairs of them overlapping"
    return {"n": len(tiles), "overlapping_pairs": overlaps, "distinct_nuclei": distinct,
            "statement": f"{len(tiles)} {tiles.region} mask tiles of {tiles.size} px from {tiles.source}, {design}, "
                         f"showing {distinct:,} distinct nuclei"}


def split_table(root: Path | None = None) -> pd.DataFrame:
    """The fixed spatial split of every mask source: each region's boxes in level-0 px, and its design."""
    strips = f"strips: right {HELDOUT_FRACTION:.0%} held out, bottom {VALIDATION_FRACTION:.0%} of the rest validation"
    rows = [{"source": "wsi", **{region: [wsi_region_box(region, root)] for region in REGIONS}, "design": strips}]
    for name in IMAGE_CONTEXTS:
        image = load_image(name, root)
        design = strips if image.design is None else (
            f"{image.design.grid} x {image.design.grid} blocks, one held-out and one validation block per row and column")
        rows.append({"source": name, **{region: image.region_boxes(region) for region in REGIONS}, "design": design})
    return pd.DataFrame(rows)


def wsi_density(bins: int = 64, root: Path | None = None) -> tuple[np.ndarray, tuple[float, float, float, float]]:
    """Nuclei per bin of the slide, by type: counts [K, rows, bins] over the slide's extent."""
    import shapely

    table = wsi_nuclei(root).table
    centres = shapely.get_coordinates(shapely.centroid(table["geometry"].to_numpy()))
    x0, y0, x1, y1 = wsi_extent(root)
    rows = max(1, int(round(bins * (y1 - y0) / (x1 - x0))))
    counts = np.stack([
        np.histogram2d(centres[table["class_name"].to_numpy() == name, 1],
                       centres[table["class_name"].to_numpy() == name, 0],
                       bins=(rows, bins), range=((y0, y1), (x0, x1)))[0]
        for name in NUCLEUS_CLASSES])
    return counts, (x0, y0, x1, y1)


def describe_tiles(tiles: MaskTiles) -> pd.DataFrame:
    """One row per tile: context, nuclei per type (the instances whose pixels carry the type, as PQ counts them;
    a typed pixel without an instance is no nucleus), foreground fraction."""
    counts = np.stack([[len(np.unique(inst[(typ == k + 1) & (inst > 0)])) for k in range(len(NUCLEUS_CLASSES))]
                       for typ, inst in zip(tiles.types, tiles.instances)]) if len(tiles) else np.zeros((0, 3))
    frame = pd.DataFrame(counts, columns=[f"n_{name}" for name in NUCLEUS_CLASSES])
    frame.insert(0, "context", tiles.context_names)
    frame["foreground"] = (tiles.types > 0).mean(axis=(1, 2)) if len(tiles) else []
    return frame


def as_multi_hot(types: Sequence[str] | np.ndarray) -> np.ndarray:
    """A multi-hot vector from type names (or a length-K 0/1 vector), checked."""
    if not isinstance(types, np.ndarray) and all(isinstance(t, str) for t in types):
        unknown = [t for t in types if t not in NUCLEUS_CLASSES]
        if unknown:
            raise ValueError(f"unknown nucleus types {unknown}; use {list(NUCLEUS_CLASSES)}")
        return np.array([name in types for name in NUCLEUS_CLASSES])
    vector = np.asarray(types)
    if vector.shape != (len(NUCLEUS_CLASSES),) or not np.isin(vector, (0, 1)).all():
        raise ValueError(f"a multi-hot type vector has {len(NUCLEUS_CLASSES)} entries of 0 or 1 "
                         f"({', '.join(NUCLEUS_CLASSES)}); got {vector.tolist()}")
    return vector.astype(bool)


# -- fields larger than a tile (notebook 10) ---------------------------------------------------
def tissue_context_map(box: Sequence[float], shape: tuple[int, int], root: Path | None = None) -> np.ndarray:
    """int [H, W]: the tissue context (index into ``TISSUE_CONTEXTS``) at each pixel of a level-0 ``box``
    (x0, y0, x1, y1) drawn at ``shape``, read from the slide's coarse tissue raster (nearest cell)."""
    labels, (ox, oy), cell = wsi_tissue_raster(root)
    x0, y0, x1, y1 = (float(v) for v in box)
    height, width = shape
    rows = ((y0 + (np.arange(height) + 0.5) * (y1 - y0) / height - oy) // cell).astype(np.int64)
    cols = ((x0 + (np.arange(width) + 0.5) * (x1 - x0) / width - ox) // cell).astype(np.int64)
    inside = ((rows[:, None] >= 0) & (rows[:, None] < labels.shape[0])
              & (cols[None] >= 0) & (cols[None] < labels.shape[1]))
    read = labels[np.clip(rows, 0, labels.shape[0] - 1)][:, np.clip(cols, 0, labels.shape[1] - 1)]
    label = np.where(inside, read, 0)
    return np.where(label == 0, NO_CONTEXT, label.astype(np.int64) - 1)


def wsi_field(x0: float, y0: float, size: int, downsample: float, root: Path | None = None) -> MaskTiles:
    """One square field of the slide's polygons: ``size`` px at ``downsample`` (so ``size * downsample`` level-0 px)
    from level-0 (x0, y0), as a one-tile :class:`MaskTiles` (its context: the majority one), rasterised like every
    mask tile. An error names a field that leaves the slide."""
    sx0, sy0, sx1, sy1 = wsi_extent(root)
    span = size * downsample
    if x0 < sx0 or y0 < sy0 or x0 + span > sx1 or y0 + span > sy1:
        raise ValueError(f"the field ({x0:.0f}, {y0:.0f}) + {span:.0f} px leaves the slide's extent "
                         f"({sx0:.0f}, {sy0:.0f}, {sx1:.0f}, {sy1:.0f})")
    box = (float(x0), float(y0), float(x0 + span), float(y0 + span))
    types, instances = _raster_tile(wsi_nuclei(root), box, size)
    boxes = np.asarray([box], dtype=np.float64)
    return MaskTiles(types[None], instances[None], tissue_context(boxes, root), boxes, "wsi",
                     region_of_box(box, root), downsample)


def region_of_box(box: Sequence[float], root: Path | None = None) -> str:
    """The split region a level-0 box lies wholly inside, or an error naming the regions it straddles."""
    x0, y0, x1, y1 = box
    for region in REGIONS:
        rx0, ry0, rx1, ry1 = wsi_region_box(region, root)
        if rx0 <= x0 and ry0 <= y0 and x1 <= rx1 and y1 <= ry1:
            return region
    raise ValueError(f"the box {tuple(round(v) for v in box)} straddles the slide's split regions; fields lie in one")


def densest_field(region: Region, size: int, downsample: float, candidates: int = 64, seed: int = 0,
                  root: Path | None = None) -> tuple[float, float]:
    """Level-0 (x0, y0) of the field of ``size`` px at ``downsample`` with the most nuclei among ``candidates``
    seeded positions wholly inside ``region`` (a field of tissue, not of glass)."""
    import shapely

    span = size * downsample
    rx0, ry0, rx1, ry1 = _region_box_holding(region, span, "field", root)
    rng = np.random.default_rng(seed)
    xs, ys = rng.uniform(rx0, rx1 - span, candidates), rng.uniform(ry0, ry1 - span, candidates)
    hits, _ = wsi_nuclei(root)._tree.query(shapely.box(xs, ys, xs + span, ys + span), predicate="intersects")
    best = int(np.bincount(hits, minlength=candidates).argmax())
    return float(xs[best]), float(ys[best])
