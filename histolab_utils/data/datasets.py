"""The embedded default data set: real H&E images, nuclei masks and polygons.

Train / validation / held-out split
-----------------------------------
The split is fixed by *region*, never by random crops: the right-hand strip of every image
(``HELDOUT_FRACTION`` of its width) is held out, and the bottom ``VALIDATION_FRACTION`` of the rest
(a band under the train region, left of the held-out strip) is the validation strip::

    +-----------------+--------+
    |      train      |        |
    |                 |  held  |
    +-----------------+  out   |
    |   validation    |        |
    +-----------------+--------+

Crops are drawn wholly inside one region, so FID or segmentation numbers computed on held-out crops
never see a training pixel, and every choice (guidance, thresholds, settings) is made on the
validation strip, which no model trains on either.
"""

from __future__ import annotations

import functools
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
# region reaching down to the bottom of the image (results before 2026-11-26); 2 = with the validation strip
SPLIT_VERSION = 2

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

    @property
    def shape(self) -> tuple[int, int]:
        return self.image.shape[:2]

    @property
    def split_x(self) -> int:
        """First column of the held-out strip."""
        return int(round(self.image.shape[1] * (1.0 - self.heldout_fraction)))

    @property
    def validation_y(self) -> int:
        """First row of the validation strip (left of the held-out strip)."""
        return int(round(self.image.shape[0] * (1.0 - self.validation_fraction)))

    def region_box(self, region: Region) -> tuple[int, int, int, int]:
        """(x0, y0, x1, y1) of a region, end-exclusive."""
        h, w = self.shape
        if region == "train":
            return 0, 0, self.split_x, self.validation_y
        if region == "validation":
            return 0, self.validation_y, self.split_x, h
        if region == "heldout":
            return self.split_x, 0, w, h
        if region == "all":
            return 0, 0, w, h
        raise ValueError(f"region must be 'train', 'validation', 'heldout' or 'all', not {region!r}")


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
        type_names=dict(spec.type_names), source=spec.source,
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
