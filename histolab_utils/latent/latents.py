"""Tiles of the embedded images, their VQ-GAN latent features, a 2-D UMAP, and reference labels.

Notebook 04 cuts the default set into a grid of non-overlapping tiles (each wholly inside the
train or the held-out region of its image), encodes them with the VQ-GAN of notebook 02, pools
each latent map to one feature vector, and clusters those vectors.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd

from ..data import DEFAULT_SET, HEImage, load_image, load_images

# The two HGSC images are a tumour nest and a stromal area of the same cancer; no tissue-region
# polygons ship for any image we have (those in the wheel belong to a slide without pixels).
HGSC_TISSUE = {"hgsc_nest": "tumour nest", "hgsc_stroma": "stroma"}
GLASS_SATURATION = 0.07  # HSV saturation that plain glass stays under (tiling.tissue's floor)


@dataclass(frozen=True)
class TileSet:
    """uint8 tiles [N, S, S, 3] and one table row per tile (tile_id, image, x, y, window, region, tissue)."""

    tiles: np.ndarray
    table: pd.DataFrame

    def __len__(self) -> int:
        return len(self.tiles)

    def subset(self, mask: np.ndarray) -> "TileSet":
        mask = np.asarray(mask)
        return TileSet(self.tiles[mask], self.table[mask].reset_index(drop=True))


def tile_id(image: str, x: int, y: int, size: int, downsample: int = 1) -> str:
    """A tile's stable name: image, top-left corner, size and scale (so other tilings never collide)."""
    return f"{image}/x{x:05d}_y{y:05d}_s{size}" + (f"_d{downsample}" if downsample > 1 else "")


def _tissue_fraction_table(image: np.ndarray) -> np.ndarray:
    """Summed-area table of the tissue indicator (saturation above the glass floor)."""
    from ..tiling.tissue import tissue_cue

    tissue = (tissue_cue(image, "saturation") > GLASS_SATURATION).astype(np.float64)
    return np.pad(tissue.cumsum(0).cumsum(1), ((1, 0), (1, 0)))


def grid_tiles(images: Sequence[HEImage] | None = None, size: int = 32, min_tissue: float = 0.5,
               max_tiles: int | None = None, seed: int = 0, downsample: int = 1) -> TileSet:
    """Non-overlapping ``size`` px tiles of each image's train, validation and held-out regions with at
    least ``min_tissue`` tissue; a seeded random ``max_tiles`` of them (in grid order) when there are more.
    With ``downsample`` = d each tile covers a ``size * d`` px window, box-averaged to ``size`` px; the
    table's ``window`` column is that span in image pixels.

    One grid is laid over each of the image's ``tile_areas``: a strip image's train and validation regions
    together (the grid that existed before the validation strip, so its tile ids stay the same) and its
    held-out strip; every block of a block design. A tile that reaches from the train region into the
    validation region is a validation tile, so no training tile touches a validation pixel."""
    from ..data.crops import box_downsample

    if size <= 0:
        raise ValueError(f"tile size must be positive, got {size}")
    if int(downsample) != downsample or downsample < 1:
        raise ValueError(f"downsample must be a whole number >= 1, got downsample={downsample}")
    images = load_images(DEFAULT_SET) if images is None else images
    window = size * int(downsample)
    rows, tiles = [], []
    for image in images:
        table = _tissue_fraction_table(image.image)
        for x0, y0, x1, y1 in image.tile_areas():
            for y in range(y0, y1 - window + 1, window):
                for x in range(x0, x1 - window + 1, window):
                    region = image.region_of((x, y, x + window, y + window)) or "validation"
                    area = table[y + window, x + window] - table[y, x + window] - table[y + window, x] + table[y, x]
                    fraction = area / window**2
                    if fraction >= min_tissue:
                        rows.append((tile_id(image.name, x, y, size, downsample), image.name, x, y, window, region,
                                     fraction))
                        tiles.append(box_downsample(image.image[y:y + window, x:x + window], downsample))
    if not tiles:
        raise ValueError(f"no {size} px tile (of {window} px windows) of {[i.name for i in images]} has tissue "
                         f"fraction >= {min_tissue}")
    table = pd.DataFrame(rows, columns=["tile_id", "image", "x", "y", "window", "region", "tissue_fraction"])
    tile_set = TileSet(np.stack(tiles), table)
    if max_tiles is not None and len(tile_set) > max_tiles:
        keep = np.zeros(len(tile_set), bool)
        keep[np.random.default_rng(seed).choice(len(tile_set), max_tiles, replace=False)] = True
        tile_set = tile_set.subset(keep)
    return tile_set


def pool_features(latents: np.ndarray) -> np.ndarray:
    """One vector per latent map [N, C, h, w]: each channel's spatial mean and standard deviation
    (2C values), i.e. what is in the tile and how much it varies, independent of where."""
    latents = np.asarray(latents, dtype=np.float64)
    if latents.ndim != 4:
        raise ValueError(f"latents must be [N, C, h, w], got shape {latents.shape}")
    return np.concatenate([latents.mean(axis=(2, 3)), latents.std(axis=(2, 3))], axis=1)


def standardise(features: np.ndarray) -> np.ndarray:
    """Zero mean, unit variance per column (constant columns stay 0)."""
    features = np.asarray(features, dtype=np.float64)
    std = features.std(axis=0)
    return (features - features.mean(axis=0)) / np.where(std > 0, std, 1.0)


def umap_embedding(features: np.ndarray, n_neighbors: int = 15, seed: int = 0) -> np.ndarray:
    """A 2-D UMAP (McInnes et al. 2018) of the feature vectors, seeded (and so single-threaded)."""
    import umap

    reducer = umap.UMAP(n_components=2, n_neighbors=min(n_neighbors, len(features) - 1), random_state=seed)
    return reducer.fit_transform(features)


def reference_labels(table: pd.DataFrame) -> pd.DataFrame:
    """Labels that exist independently of the clustering, for the tiles of the HGSC images:
    ``tissue`` (tumour nest or stroma, from which image the tile comes) and, in the annotated
    nest, ``nucleus_type`` (the cell type covering most nucleus pixels of the tile, or "none")."""
    rows = table[table["image"].isin(list(HGSC_TISSUE))].copy()
    rows["tissue"] = rows["image"].map(HGSC_TISSUE)
    nest = load_image("hgsc_nest")
    types = []
    for image, x, y, size in zip(rows["image"], rows["x"], rows["y"], rows["window"]):
        if image != "hgsc_nest" or nest.type_mask is None:
            types.append(None)
            continue
        counts = np.bincount(nest.type_mask[y:y + size, x:x + size].ravel(), minlength=1)
        counts[0] = 0
        types.append(nest.type_names.get(int(counts.argmax()), str(counts.argmax())) if counts.any() else "none")
    rows["nucleus_type"] = types
    return rows[["tile_id", "tissue", "nucleus_type"]].reset_index(drop=True)


def external_agreement(table: pd.DataFrame, labels: np.ndarray, references: pd.DataFrame) -> pd.DataFrame:
    """Adjusted Rand index and NMI between cluster labels and each reference labelling, on the
    tiles that have that reference label. 0 is chance agreement, 1 a perfect match."""
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    clusters = pd.Series(np.asarray(labels), index=table["tile_id"].to_numpy())
    out = []
    for reference in ("tissue", "nucleus_type"):
        known = references.dropna(subset=[reference])
        if known[reference].nunique() < 2:
            continue
        predicted = clusters.loc[known["tile_id"]].to_numpy()
        out.append({"reference": reference, "n_tiles": len(known), "classes": known[reference].nunique(),
                    "ari": adjusted_rand_score(known[reference], predicted),
                    "nmi": normalized_mutual_info_score(known[reference], predicted)})
    return pd.DataFrame(out, columns=["reference", "n_tiles", "classes", "ari", "nmi"])
