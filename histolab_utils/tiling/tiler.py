"""Cut slides into tiles: plan the grid on a thumbnail, then read only the tiles that are kept.

Planning is cheap (a thumbnail, a tissue mask, summed-area tables), so a notebook widget can
redraw the grid for any tile size, overlap or threshold without reading the slide. Writing
reads each row of kept tiles with one ``read_region`` call and slices tiles out of it.

Output layout (all paths in the manifest are relative to the output folder)::

    manifest.csv
    tiles/<slide>/<slide>_x<X>_y<Y>.png          RGB tiles
    masks/<slide>/<slide>_x<X>_y<Y>_label.png    class ids (with annotations)
    masks/<slide>/<slide>_x<X>_y<Y>_instance.png polygon ids, 16-bit (with annotations)

Each slide's files are written to a temporary folder that is renamed into place only when the
slide is complete, and the manifest is written last, atomically.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import warnings
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from ..paths import atomic_path
from ..data.annotations import Annotations, read_annotations, rasterize
from .slide import Slide, SlideError, open_slide
from .tissue import TissueMethod, tissue_mask

MANIFEST_COLUMNS = ["slide", "level", "x", "y", "size", "mpp", "tissue_fraction"]
THUMBNAIL_SIZE = 1024


@dataclass(frozen=True)
class TilingParams:
    """How to cut a slide. Either ``level`` or ``mpp`` picks the resolution (default: level 0)."""

    tile_size: int = 256
    overlap: float = 0.5
    min_tissue: float = 0.5
    level: int | None = None
    mpp: float | None = None
    target_label: str | None = None
    min_label: float = 0.1
    tissue_method: TissueMethod = "saturation"
    png_compress_level: int = 1

    def __post_init__(self) -> None:
        if self.tile_size < 8:
            raise ValueError(f"tile_size must be at least 8 pixels, got {self.tile_size}")
        if not 0 <= self.overlap < 1:
            raise ValueError(f"overlap must be in [0, 1), got {self.overlap}")
        for name in ("min_tissue", "min_label"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.level is not None and self.mpp is not None:
            raise ValueError("give either level or mpp, not both")
        if self.mpp is not None and self.mpp <= 0:
            raise ValueError(f"mpp must be positive, got {self.mpp}")


@dataclass
class TilePlan:
    """Every grid position of one slide, with its fractions and whether it is kept."""

    slide: str
    level: int
    read_size: int  # pixels read at ``level`` per tile (resized to tile_size when different)
    footprint: float  # tile side in level-0 pixels
    mpp: float | None  # of the output tiles
    grid: pd.DataFrame  # x, y (level 0), tissue_fraction, frac_<class>..., keep
    thumbnail: np.ndarray
    mask: np.ndarray  # tissue, at thumbnail resolution
    thumb_scale: float  # thumbnail pixels per level-0 pixel
    label_map: np.ndarray | None = None  # class ids at thumbnail resolution
    classes: tuple[str, ...] = field(default=())

    @property
    def kept(self) -> pd.DataFrame:
        return self.grid[self.grid["keep"]]


def _summed_area(mask: np.ndarray) -> np.ndarray:
    table = np.zeros((mask.shape[0] + 1, mask.shape[1] + 1), dtype=np.float64)
    table[1:, 1:] = mask.astype(np.float64).cumsum(0).cumsum(1)
    return table


def _box_means(table: np.ndarray, x0: np.ndarray, y0: np.ndarray, x1: np.ndarray, y1: np.ndarray) -> np.ndarray:
    """Mean of the mask over each box [y0:y1, x0:x1] (integer thumbnail coordinates)."""
    total = table[y1, x1] - table[y0, x1] - table[y1, x0] + table[y0, x0]
    return total / np.maximum((x1 - x0) * (y1 - y0), 1)


def _resolution(slide: Slide, params: TilingParams) -> tuple[int, float, float | None]:
    """(level, total downsample of the output tiles, output mpp)."""
    if params.mpp is not None:
        if slide.mpp is None:
            warnings.warn(f"{slide.path.name} has no mpp (microns per pixel) in its properties; "
                          f"tiling at level 0 instead of {params.mpp} µm/px", stacklevel=3)
            return 0, 1.0, None
        downsample = params.mpp / slide.mpp
        return slide.best_level_for_downsample(downsample), downsample, params.mpp
    level = params.level or 0
    if not 0 <= level < slide.level_count:
        raise ValueError(f"{slide.path}: level {level} does not exist (the slide has {slide.level_count})")
    downsample = slide.level_downsamples[level]
    return level, downsample, None if slide.mpp is None else slide.mpp * downsample


def plan_tiles(
    slide: Slide,
    params: TilingParams = TilingParams(),
    annotations: Annotations | None = None,
    thumbnail_size: int = THUMBNAIL_SIZE,
    thumbnail: np.ndarray | None = None,
) -> TilePlan:
    """Lay the grid over the slide and decide which tiles to keep, from the thumbnail alone."""
    level, downsample, mpp = _resolution(slide, params)
    width, height = slide.dimensions
    footprint = params.tile_size * downsample
    if footprint > width or footprint > height:
        raise ValueError(f"{slide.path}: a {params.tile_size} px tile covers {footprint:.0f} level-0 px, "
                         f"larger than the slide ({width}x{height})")
    stride = footprint * (1 - params.overlap)
    xs = np.floor(np.arange(0, width - footprint + 1e-6, stride)).astype(np.int64)
    ys = np.floor(np.arange(0, height - footprint + 1e-6, stride)).astype(np.int64)
    gx, gy = (a.ravel() for a in np.meshgrid(xs, ys))  # row-major: y, then x

    thumb = slide.thumbnail(thumbnail_size) if thumbnail is None else thumbnail
    mask = tissue_mask(thumb, params.tissue_method)
    sx, sy = thumb.shape[1] / width, thumb.shape[0] / height

    def thumb_boxes():
        x0 = np.clip(np.floor(gx * sx).astype(int), 0, thumb.shape[1] - 1)
        y0 = np.clip(np.floor(gy * sy).astype(int), 0, thumb.shape[0] - 1)
        x1 = np.clip(np.ceil((gx + footprint) * sx).astype(int), x0 + 1, thumb.shape[1])
        y1 = np.clip(np.ceil((gy + footprint) * sy).astype(int), y0 + 1, thumb.shape[0])
        return x0, y0, x1, y1

    boxes = thumb_boxes()
    grid = pd.DataFrame({"x": gx, "y": gy, "tissue_fraction": _box_means(_summed_area(mask), *boxes)})
    keep = grid["tissue_fraction"].to_numpy() >= params.min_tissue
    label_map = None
    classes: tuple[str, ...] = ()
    if annotations is not None:
        classes = annotations.classes
        label_map = rasterize(annotations, (0, 0, width, height), thumb.shape[:2])["label"]
        for class_id, name in enumerate(classes, start=1):
            grid[f"frac_{name}"] = _box_means(_summed_area(label_map == class_id), *boxes)
    if params.target_label is not None:
        if annotations is None:
            raise ValueError("target_label needs annotations")
        annotations.label_of(params.target_label)  # a clear error for an unknown class
        keep &= grid[f"frac_{params.target_label}"].to_numpy() >= params.min_label
    grid["keep"] = keep
    read_size = int(round(footprint / slide.level_downsamples[level]))
    return TilePlan(slide=slide.name, level=level, read_size=read_size, footprint=footprint, mpp=mpp,
                    grid=grid, thumbnail=thumb, mask=mask, thumb_scale=sx, label_map=label_map, classes=classes)


def _save_png(array: np.ndarray, path: Path, compress_level: int) -> None:
    from PIL import Image

    if array.dtype == np.int32:
        image = Image.fromarray(array.astype(np.uint16 if array.max(initial=0) > 255 else np.uint8))
    else:
        image = Image.fromarray(array)
    image.save(path, compress_level=compress_level)


def _iter_tiles(slide: Slide, plan: TilePlan, tile_size: int, max_band_pixels: int = 1 << 25):
    """Yield (x, y, tile RGB) for the kept tiles, reading each row of tiles in few large reads."""
    from PIL import Image

    ds = slide.level_downsamples[plan.level]
    kept = plan.kept
    for y, row in kept.groupby("y", sort=True):
        xs = np.sort(row["x"].to_numpy())
        start = 0
        while start < len(xs):
            # Grow a band of consecutive tiles until it would exceed max_band_pixels.
            end = start + 1
            while end < len(xs) and ((xs[end] - xs[start]) / ds + plan.read_size) * plan.read_size <= max_band_pixels:
                end += 1
            x_first = int(xs[start])
            band_width = int(math.ceil((xs[end - 1] - x_first) / ds)) + plan.read_size
            band = slide.read_region(x_first, int(y), plan.level, (band_width, plan.read_size))
            for x in xs[start:end]:
                offset = int(round((x - x_first) / ds))
                tile = band[:, offset:offset + plan.read_size]
                if tile.shape[1] < plan.read_size:  # the last tile of a band rounding down
                    tile = np.pad(tile, ((0, 0), (0, plan.read_size - tile.shape[1]), (0, 0)), mode="edge")
                if plan.read_size != tile_size:
                    tile = np.asarray(Image.fromarray(tile).resize((tile_size, tile_size), Image.Resampling.LANCZOS))
                yield int(x), int(y), tile
            start = end


def write_tiles(
    slide: Slide, plan: TilePlan, out_dir: Path, params: TilingParams, annotations: Annotations | None = None
) -> pd.DataFrame:
    """Read and write the kept tiles of one slide; return its manifest rows.

    Files go to a temporary folder renamed into ``tiles/<slide>`` (and ``masks/<slide>``) only
    once every tile is written, so a failure leaves the previous output untouched.
    """
    out_dir = Path(out_dir)
    staging = Path(tempfile.mkdtemp(prefix=f".{plan.slide}-", dir=_ensure(out_dir)))
    rows = []
    try:
        (staging / "tiles").mkdir()
        if annotations is not None:
            (staging / "masks").mkdir()
        level = params.png_compress_level
        # Pillow releases the GIL while encoding PNG, so threads overlap encoding with reading.
        with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as encoder:
            pending = []
            for x, y, tile in _iter_tiles(slide, plan, params.tile_size):
                stem = f"{plan.slide}_x{x}_y{y}"
                pending.append(encoder.submit(_save_png, tile, staging / "tiles" / f"{stem}.png", level))
                row = {"x": x, "y": y, "path": f"tiles/{plan.slide}/{stem}.png"}
                if annotations is not None:
                    box = (x, y, x + plan.footprint, y + plan.footprint)
                    rasters = rasterize(annotations, box, (params.tile_size, params.tile_size))
                    for kind in ("label", "instance"):
                        path = staging / "masks" / f"{stem}_{kind}.png"
                        pending.append(encoder.submit(_save_png, rasters[kind], path, level))
                        row[f"{'mask' if kind == 'label' else kind}_path"] = f"masks/{plan.slide}/{stem}_{kind}.png"
                rows.append(row)
            for future in pending:
                future.result()  # re-raise any write error before the folder is renamed into place
        for kind in ("tiles", "masks"):
            target = out_dir / kind / plan.slide
            if target.exists():
                shutil.rmtree(target)
            if (staging / kind).exists():
                target.parent.mkdir(parents=True, exist_ok=True)
                (staging / kind).rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    written = pd.DataFrame(rows, columns=["x", "y", "path"] + (["mask_path", "instance_path"] if annotations else []))
    return _manifest_rows(plan, params, written)


def _ensure(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _manifest_rows(plan: TilePlan, params: TilingParams, written: pd.DataFrame) -> pd.DataFrame:
    kept = plan.kept.drop(columns="keep").merge(written, on=["x", "y"], how="inner", validate="one_to_one")
    kept.insert(0, "slide", plan.slide)
    kept.insert(1, "level", plan.level)
    kept.insert(4, "size", params.tile_size)
    kept.insert(5, "mpp", np.nan if plan.mpp is None else round(plan.mpp, 6))
    return kept.sort_values(["y", "x"], kind="stable").reset_index(drop=True)


def tile_slide(
    path: str | Path, out_dir: str | Path, params: TilingParams = TilingParams(),
    annotations: str | Path | Annotations | None = None,
) -> pd.DataFrame:
    """Plan and write the tiles of one slide; return its manifest rows (not the CSV)."""
    if annotations is not None and not isinstance(annotations, Annotations):
        annotations = read_annotations(annotations)
    with open_slide(path) as slide:
        plan = plan_tiles(slide, params, annotations)
        if not plan.grid["keep"].any():
            warnings.warn(f"{slide.path.name}: no tile reaches min_tissue={params.min_tissue}"
                          + (f" and min_label={params.min_label}" if params.target_label else "")
                          + " (is there tissue on this slide?)", stacklevel=2)
        return write_tiles(slide, plan, Path(out_dir), params, annotations)


def _tile_one(job: tuple) -> pd.DataFrame:
    path, out_dir, params, annotations = job
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rows = tile_slide(path, out_dir, params, annotations)
    rows.attrs["warnings"] = [str(w.message) for w in caught]
    return rows


def tile_slides(
    paths: Sequence[str | Path],
    out_dir: str | Path,
    params: TilingParams = TilingParams(),
    annotations: Sequence[str | Path | None] | None = None,
    workers: int = 1,
    progress: bool = True,
) -> pd.DataFrame:
    """Tile several slides (in parallel with ``workers`` processes) and write ``manifest.csv``.

    Rows are ordered by slide (as given), then y, then x, whatever the number of workers.
    ``annotations``, when given, has one entry (a file or None) per slide.
    """
    from tqdm.auto import tqdm

    paths = [Path(p) for p in paths]
    if not paths:
        raise ValueError("no slides given")
    for path in paths:  # fail before any work, naming the file
        if not path.exists():
            raise FileNotFoundError(f"slide file does not exist: {path}")
    stems = [p.stem for p in paths]
    duplicates = sorted({s for s in stems if stems.count(s) > 1})
    if duplicates:
        raise ValueError(f"several slides share the name {duplicates}; their tiles would collide")
    annotations = list(annotations) if annotations is not None else [None] * len(paths)
    if len(annotations) != len(paths):
        raise ValueError(f"got {len(annotations)} annotation files for {len(paths)} slides; give one per slide")
    out_dir = Path(out_dir)
    jobs = [(p, out_dir, params, a) for p, a in zip(paths, annotations)]
    bar = tqdm(total=len(jobs), desc="slides", unit="slide", disable=not progress)
    results = []
    if workers > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(max_workers=min(workers, len(jobs))) as pool:
            for rows in pool.map(_tile_one, jobs):  # map keeps the input order
                results.append(rows)
                bar.update()
    else:
        for job in jobs:
            results.append(_tile_one(job))
            bar.update()
    bar.close()
    for rows in results:
        for message in rows.attrs.get("warnings", []):
            warnings.warn(message, stacklevel=2)
    manifest = _combine(results)
    write_manifest(manifest, out_dir / "manifest.csv")
    return manifest


def _combine(results: list[pd.DataFrame]) -> pd.DataFrame:
    frames = [r for r in results if len(r)]
    if not frames:
        return pd.DataFrame(columns=MANIFEST_COLUMNS + ["path"])
    manifest = pd.concat(frames, ignore_index=True, sort=False)
    fractions = sorted(c for c in manifest.columns if c.startswith("frac_"))
    masks = [c for c in ("mask_path", "instance_path") if c in manifest.columns]
    for column in fractions:
        manifest[column] = manifest[column].fillna(0.0)
    return manifest[MANIFEST_COLUMNS + fractions + ["path"] + masks]


def write_manifest(manifest: pd.DataFrame, path: Path) -> None:
    """Write the manifest CSV atomically, with fractions rounded so reruns compare equal."""
    rounded = manifest.copy()
    for column in ["tissue_fraction"] + [c for c in manifest.columns if c.startswith("frac_")]:
        rounded[column] = rounded[column].astype(float).round(6)
    with atomic_path(path, suffix=".csv") as tmp:
        rounded.to_csv(tmp, index=False)


__all__ = ["TilingParams", "TilePlan", "plan_tiles", "write_tiles", "tile_slide", "tile_slides",
           "write_manifest", "SlideError"]
