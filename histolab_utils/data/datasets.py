"""The embedded default data set: real H&E images, nuclei masks and polygons.

Train / validation / held-out split (``SPLIT_VERSION`` 3)
--------------------------------------------------------
The split is fixed by *region*, never by random crops. Most images keep the strips of split 2: the
right-hand strip (``HELDOUT_FRACTION`` of the width) is held out, and the bottom ``VALIDATION_FRACTION``
of the rest is the validation strip::

    +-----------------+--------+
    |      train      |        |
    |                 |  held  |
    +-----------------+  out   |
    |   validation    |        |
    +-----------------+--------+

``hgsc_nest``, the one large image with typed nuclei, has its tumour in the middle, so no strip of it
holds a representative share of each nucleus type (its right strip held 5 of 288 tumour nuclei). It is
cut into 4 x 4 blocks instead, one held-out (H) and one validation (V) block in every row and column
(a permutation of the columns), the rest train; ``histolab_utils/data/split_design.py`` chose the pattern by a rule stated before
any model trained on it (see ``data/README.md``)::

    +---+---+---+---+
    |   | V |   | H |
    +---+---+---+---+
    | H |   | V |   |
    +---+---+---+---+
    |   | H |   | V |
    +---+---+---+---+
    | V |   | H |   |
    +---+---+---+---+

A region is a list of disjoint boxes (:meth:`HEImage.region_boxes`). Crops and grid tiles are drawn
wholly inside one box, so FID or segmentation numbers computed on held-out crops never see a training
pixel, and every choice (guidance, thresholds, settings) is made on the validation region, which no
model trains on either.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Sequence

import numpy as np
import pandas as pd

from ..paths import data_dir
from .store import DataNotFetchedError, raw_dir, require_file
from .registry import get_source

HELDOUT_FRACTION = 0.25
# a quarter of the height: the 256 px annotated patches keep a 32 px band at half resolution
VALIDATION_FRACTION = 0.25
Region = Literal["train", "validation", "heldout", "all"]
# which split a result was made with (saved in every metrics record): 1 = train / held-out only, the train
# region reaching down to the bottom of the image (results before 2026-11-26); 2 = with the validation strip;
# 3 = hgsc_nest cut into the blocks of BLOCK_DESIGNS (2026-12-03), every other image as in 2
SPLIT_VERSION = 3
Box = tuple[int, int, int, int]  # (x0, y0, x1, y1), end-exclusive

HGSC_TYPE_NAMES = {1: "connective", 2: "inflammatory", 3: "neoplastic"}
# The cellseg fixtures carry type ids without published class names.
CELLSEG_TYPE_NAMES = {k: f"type_{k}" for k in range(1, 7)}


@dataclass(frozen=True)
class ImageSpec:
    """Where one image (and its annotations) lives among the sources."""

    source: str
    filename: str
    fallback: tuple[str, str] | None = None  # (source, filename) used when the first is absent
    inst_mask: tuple[str, str] | None = None
    type_mask: tuple[str, str] | None = None
    polygons: tuple[str, str] | None = None
    type_names: dict[int, str] = field(default_factory=dict)
    note: str = ""


def _cellseg_patch(i: int) -> ImageSpec:
    mat = ("cellseg", f"patch{i}.mat")
    return ImageSpec(
        "cellseg", f"patch{i}.png", inst_mask=mat, type_mask=mat, type_names=CELLSEG_TYPE_NAMES,
        note="256x256 annotated patch" + (" (mirror-padded)" if i == 2 else ""),
    )


IMAGES: dict[str, ImageSpec] = {
    "hgsc_nest": ImageSpec(
        "hgsc_png", "hgsc_nest.png", fallback=("hgsc", "hgsc_nest.jpg"),
        inst_mask=("hgsc", "hgsc_nest_inst_mask.npz"), type_mask=("hgsc", "hgsc_nest_type_mask.npz"),
        polygons=("hgsc", "hgsc_nest.parquet"), type_names=HGSC_TYPE_NAMES,
        note="HGSC tumour nest, 1294 typed nuclei",
    ),
    "hgsc_stroma": ImageSpec(
        "hgsc_png", "hgsc_stromal_he.png", fallback=("hgsc", "hgsc_stromal_he.jpg"),
        polygons=("hgsc", "hgsc_stromal_cells.parquet"), type_names=HGSC_TYPE_NAMES,
        note="HGSC stroma, 423 nuclei polygons",
    ),
    "tiatoolbox_target": ImageSpec("tiatoolbox_target", "target_image.png", note="stain-normalisation target"),
    "cellseg_test1": ImageSpec("cellseg", "test1.png"),
    "cellseg_test2": ImageSpec("cellseg", "test2.png"),
    "cellseg_he": ImageSpec("cellseg", "HE.png"),
    "stardist_histo": ImageSpec("stardist_histo", "histo.jpg"),
    "slideflow_tile": ImageSpec("slideflow_tile", "norm_tile.jpg"),
    "cellseg_patch1": _cellseg_patch(1),
    "cellseg_patch2": _cellseg_patch(2),
    "cellseg_patch3": _cellseg_patch(3),
}

# Every whole H&E image: the default set for generative models.
DEFAULT_SET: tuple[str, ...] = (
    "hgsc_nest", "hgsc_stroma", "tiatoolbox_target", "cellseg_test1", "cellseg_test2",
    "cellseg_he", "stardist_histo", "slideflow_tile",
)
# Images with instance and type rasters: the set for mask-conditioned models and segmenters.
ANNOTATED_SET: tuple[str, ...] = ("hgsc_nest", "cellseg_patch1", "cellseg_patch2", "cellseg_patch3")


@dataclass(frozen=True)
class BlockDesign:
    """An image cut into ``grid`` x ``grid`` equal blocks: the held-out region is block ``(row, heldout[row])``
    of every row, the validation region block ``(row, validation[row])``, the rest is train. Both are
    permutations (one block in each row and column), disjoint from each other."""

    grid: int
    heldout: tuple[int, ...]
    validation: tuple[int, ...]

    def __post_init__(self) -> None:
        for name, columns in (("heldout", self.heldout), ("validation", self.validation)):
            if sorted(columns) != list(range(self.grid)):
                raise ValueError(f"BlockDesign.{name} must be a permutation of 0..{self.grid - 1}, got {columns}")
        if any(h == v for h, v in zip(self.heldout, self.validation)):
            raise ValueError(f"BlockDesign: held-out {self.heldout} and validation {self.validation} share a block")

    def block_region(self, row: int, column: int) -> str:
        """The region of block (row, column)."""
        if self.heldout[row] == column:
            return "heldout"
        return "validation" if self.validation[row] == column else "train"

    def _edges(self, shape: tuple[int, int]) -> tuple[list[int], list[int]]:
        h, w = shape
        return ([round(w * i / self.grid) for i in range(self.grid + 1)],
                [round(h * i / self.grid) for i in range(self.grid + 1)])

    def blocks(self, shape: tuple[int, int]) -> list[Box]:
        """Every block of an image of ``shape`` (h, w), row by row."""
        xs, ys = self._edges(shape)
        return [(xs[c], ys[r], xs[c + 1], ys[r + 1]) for r in range(self.grid) for c in range(self.grid)]

    def boxes(self, region: str, shape: tuple[int, int]) -> list[Box]:
        """The region's boxes in an image of ``shape`` (h, w): its blocks, side-by-side blocks of one row merged."""
        xs, ys = self._edges(shape)
        boxes: list[Box] = []
        for row in range(self.grid):
            run_start = None
            for column in range(self.grid + 1):
                inside = column < self.grid and self.block_region(row, column) == region
                if inside and run_start is None:
                    run_start = column
                elif not inside and run_start is not None:
                    boxes.append((xs[run_start], ys[row], xs[column], ys[row + 1]))
                    run_start = None
        return boxes


# Images whose split is a block pattern rather than strips (chosen by data/split_design.py's rule).
BLOCK_DESIGNS: dict[str, BlockDesign] = {
    "hgsc_nest": BlockDesign(grid=4, heldout=(3, 0, 1, 2), validation=(1, 2, 3, 0)),
}
REGION_NAMES = ("train", "validation", "heldout")


@dataclass(frozen=True)
class HEImage:
    """One RGB uint8 H&E image with its optional masks and its fixed region split."""

    name: str
    image: np.ndarray  # H x W x 3, uint8
    inst_mask: np.ndarray | None = None  # H x W, int32, 0 = background
    type_mask: np.ndarray | None = None  # H x W, int32, 0 = background
    type_names: dict[int, str] = field(default_factory=dict)
    source: str = ""
    heldout_fraction: float = HELDOUT_FRACTION
    validation_fraction: float = VALIDATION_FRACTION
    design: BlockDesign | None = None  # None: the strips of split 2

    @property
    def shape(self) -> tuple[int, int]:
        return self.image.shape[:2]

    @property
    def split_x(self) -> int:
        """First column of the held-out strip (strip images)."""
        return int(round(self.image.shape[1] * (1.0 - self.heldout_fraction)))

    @property
    def validation_y(self) -> int:
        """First row of the validation strip, left of the held-out strip (strip images)."""
        return int(round(self.image.shape[0] * (1.0 - self.validation_fraction)))

    def region_boxes(self, region: Region) -> list[Box]:
        """The region as disjoint boxes (x0, y0, x1, y1), end-exclusive: one box for a strip image's region,
        several blocks for a block design's. A crop or tile lies in the region when it lies in one box."""
        if region == "all":
            return [(0, 0, self.shape[1], self.shape[0])]
        if region not in REGION_NAMES:
            raise ValueError(f"region must be 'train', 'validation', 'heldout' or 'all', not {region!r}")
        if self.design is not None:
            return self.design.boxes(region, self.shape)
        h, w = self.shape
        return [{"train": (0, 0, self.split_x, self.validation_y), "validation": (0, self.validation_y, self.split_x, h),
                 "heldout": (self.split_x, 0, w, h)}[region]]

    def region_mask(self, region: Region) -> np.ndarray:
        """A boolean H x W mask of the region's pixels."""
        mask = np.zeros(self.shape, dtype=bool)
        for x0, y0, x1, y1 in self.region_boxes(region):
            mask[y0:y1, x0:x1] = True
        return mask

    def region_of(self, box: Box) -> str | None:
        """The region one of whose boxes holds ``box`` wholly, or None when it crosses a border."""
        x0, y0, x1, y1 = box
        for region in REGION_NAMES:
            if any(bx0 <= x0 and by0 <= y0 and x1 <= bx1 and y1 <= by1
                   for bx0, by0, bx1, by1 in self.region_boxes(region)):
                return region
        return None

    def tile_areas(self) -> list[Box]:
        """Rectangles whose grids tile the image without crossing the held-out border: for a strip image the
        train-and-validation column and the held-out strip (so split 2's grid tiles keep their places), for a
        block design every block."""
        if self.design is None:
            h, w = self.shape
            return [(0, 0, self.split_x, h), (self.split_x, 0, w, h)]
        return self.design.blocks(self.shape)


def downsampled_box(box: Box, downsample: float) -> Box:
    """``box`` in the pixels of a ``downsample`` x downsampled image: a downsampled pixel covers
    ``downsample`` x ``downsample`` pixels and belongs to the box only when all of them do."""
    x0, y0, x1, y1 = box
    return math.ceil(x0 / downsample), math.ceil(y0 / downsample), int(x1 // downsample), int(y1 // downsample)


def split_description(names: Sequence[str]) -> str:
    """The split of ``names`` in words, for a record: the split version, then each design with the images it cuts
    (in the order of ``names``), e.g. ``split 3; hgsc_nest: 4 x 4 blocks, ...; hgsc_stroma, cellseg_he: right 25 %
    held out, ...``. An unknown name is an error that names it."""
    unknown = [name for name in names if name not in IMAGES]
    if unknown or not names:
        raise ValueError(f"split_description: no such image(s) {unknown} (the images: {sorted(IMAGES)})" if unknown
                         else "split_description needs at least one image name")
    designs: dict[str, list[str]] = {}
    for name in names:
        design = BLOCK_DESIGNS.get(name)
        words = (f"{design.grid} x {design.grid} blocks, one held-out and one validation block per row and column"
                 if design else f"right {100 * HELDOUT_FRACTION:g} % held out, bottom {100 * VALIDATION_FRACTION:g} % "
                 f"of the rest validation")
        designs.setdefault(words, []).append(name)
    return f"split {SPLIT_VERSION}; " + "; ".join(f"{', '.join(group)}: {words}" for words, group in designs.items())


def read_rgb(path: Path) -> np.ndarray:
    """An image file as RGB uint8, with an error that names the file when it is not an image."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"), dtype=np.uint8)
    except OSError as error:
        raise ValueError(f"{path} is not a readable image: {error}") from None


def _read_mask(path: Path, kind: Literal["inst", "type"]) -> np.ndarray:
    if path.suffix == ".npz":
        with np.load(path) as z:
            return z["nuc_raster"].astype(np.int32)
    if path.suffix == ".mat":
        from scipy.io import loadmat

        return loadmat(path)[f"{kind}_map"].astype(np.int32)
    raise ValueError(f"unsupported mask file {path}")


def _locate(spec: ImageSpec, root: Path | None) -> Path:
    primary = raw_dir(spec.source, root) / spec.filename
    if primary.is_file() or spec.fallback is None:
        return require_file(spec.source, spec.filename, root)
    return require_file(*spec.fallback, root)


def _readonly(array: np.ndarray | None) -> np.ndarray | None:
    if array is not None:
        array.setflags(write=False)
    return array


@functools.lru_cache(maxsize=32)
def _load_image_cached(name: str, root: Path | None) -> HEImage:
    spec = IMAGES[name]
    image = read_rgb(_locate(spec, root))
    inst = _read_mask(require_file(*spec.inst_mask, root), "inst") if spec.inst_mask else None
    typ = _read_mask(require_file(*spec.type_mask, root), "type") if spec.type_mask else None
    for label, mask in (("instance", inst), ("type", typ)):
        if mask is not None and mask.shape != image.shape[:2]:
            raise ValueError(f"{name}: {label} mask shape {mask.shape} != image shape {image.shape[:2]}")
    return HEImage(
        name=name, image=_readonly(image), inst_mask=_readonly(inst), type_mask=_readonly(typ),
        type_names=dict(spec.type_names), source=spec.source, design=BLOCK_DESIGNS.get(name),
    )


def load_image(name: str, root: Path | None = None) -> HEImage:
    """Load one image of the embedded set by name (arrays are shared and read-only)."""
    if name not in IMAGES:
        raise KeyError(f"unknown image {name!r}; known images: {sorted(IMAGES)}")
    # Resolve the root first so that the cache follows a change of HISTO_DATA_DIR.
    return _load_image_cached(name, Path(root) if root else data_dir())


def load_images(names: Sequence[str] = DEFAULT_SET, root: Path | None = None) -> list[HEImage]:
    """Load several images; ``DEFAULT_SET`` by default."""
    return [load_image(n, root) for n in names]


def load_polygons(name: str, root: Path | None = None) -> pd.DataFrame:
    """Polygons of an image (``geometry`` as shapely objects, ``class_name``), or a GeoParquet
    file of the ``hgsc`` source by file name (e.g. ``"hgsc_tissue_wsi.parquet"``)."""
    import pyarrow.parquet as pq
    import shapely

    if name in IMAGES:
        if IMAGES[name].polygons is None:
            raise ValueError(f"image {name!r} has no polygon annotations")
        path = require_file(*IMAGES[name].polygons, root)
    else:
        path = require_file("hgsc", name, root)
    table = pq.read_table(path).to_pandas()
    for column in ("geometry", "class_name"):
        if column not in table:
            raise ValueError(f"{path} has no {column!r} column (columns: {list(table.columns)})")
    table["geometry"] = shapely.from_wkb(table["geometry"].to_numpy())
    return table


def polygon_class_counts(filename: str, root: Path | None = None) -> pd.Series:
    """Class counts of a GeoParquet polygon file, reading only its ``class_name`` column."""
    import pyarrow.parquet as pq

    path = require_file("hgsc", filename, root)
    names = pq.read_table(path, columns=["class_name"]).column("class_name").to_pandas()
    return names.value_counts().rename(filename)


def provenance_table(names: Sequence[str] = tuple(IMAGES), root: Path | None = None) -> pd.DataFrame:
    """One row per image: where it came from, its size, masks and licence."""
    rows = []
    for name in names:
        spec = IMAGES[name]
        source = get_source(spec.source)
        try:
            image = load_image(name, root)
            height, width = image.shape
        except DataNotFetchedError:
            image, height, width = None, None, None
        rows.append({
            "image": name, "wheel": source.requirement, "file": spec.filename,
            "height": height, "width": width,
            "masks": "inst+type" if spec.inst_mask else "-",
            "polygons": "yes" if spec.polygons else "-",
            "licence": source.licence, "note": spec.note,
        })
    return pd.DataFrame(rows)
