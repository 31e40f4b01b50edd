"""Morphology of nuclei masks: per-nucleus and per-tile features, distances between two sets of
masks, validity of decoded instances, and a naive baseline (random ellipses).

* Per nucleus (``skimage.measure.regionprops_table``): area, eccentricity, solidity, type.
* Per tile: nuclei of each type, the fraction of the tile covered, and the mean distance from
  each centroid to its nearest neighbour. A tile with fewer than two nuclei has no such distance:
  it is NaN there, such tiles are left out of that feature's distance, and their share is
  reported beside it (``sparse_tiles``), so a model that draws too many near-empty tiles shows.
* Distances: per feature, the 1-D Wasserstein distance (``scipy.stats.wasserstein_distance``)
  divided by the reference set's standard deviation; and the Fréchet distance between Gaussians
  fitted to the per-tile features defined for every tile (counts per type and coverage),
  standardised by the reference set: the "morphology FD". It is computed like FID but on four
  hand-made features, not Inception features: never call it FID.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..data.nuclei import NUCLEUS_CLASSES

NUCLEUS_FEATURES = ("area", "eccentricity", "solidity")
TILE_FEATURES = (*(f"n_{name}" for name in NUCLEUS_CLASSES), "coverage", "nn_distance")
FD_FEATURES = TILE_FEATURES[:-1]  # defined for every tile (nn_distance is not, for tiles under two nuclei)


def nucleus_features(types: np.ndarray, instances: np.ndarray) -> pd.DataFrame:
    """One row per nucleus of a stack of tiles [N, H, W]: tile, label, area, eccentricity,
    solidity, centroid, type (the most frequent type id among its pixels)."""
    from skimage.measure import regionprops_table

    frames = []
    for tile, (typ, inst) in enumerate(zip(np.asarray(types), np.asarray(instances))):
        if not inst.any():
            continue
        props = regionprops_table(inst.astype(np.int32), intensity_image=typ.astype(np.int32),
                                  properties=("label", "area", "eccentricity", "solidity", "centroid"),
                                  extra_properties=(_majority,))
        frame = pd.DataFrame(props).rename(columns={"centroid-0": "y", "centroid-1": "x", "_majority": "type"})
        frames.append(frame.assign(tile=tile))
    columns = ["tile", "label", *NUCLEUS_FEATURES, "y", "x", "type"]
    if not frames:
        return pd.DataFrame(columns=columns)
    table = pd.concat(frames, ignore_index=True)[columns]
    table["type"] = table["type"].astype(int)
    return table


def _majority(region_mask: np.ndarray, intensity: np.ndarray) -> int:
    values = intensity[region_mask].astype(np.int64)
    values = values[values > 0]
    return int(np.bincount(values).argmax()) if len(values) else 0


def tile_features(types: np.ndarray, instances: np.ndarray, nuclei: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per tile: nuclei per type, covered fraction, mean nearest-neighbour distance (NaN for
    a tile with fewer than two nuclei)."""
    from scipy.spatial import cKDTree

    types = np.asarray(types)
    nuclei = nucleus_features(types, instances) if nuclei is None else nuclei
    size = types.shape[-1]
    rows = []
    for tile in range(len(types)):
        mine = nuclei[nuclei["tile"] == tile]
        row = {f"n_{name}": int((mine["type"] == k + 1).sum()) for k, name in enumerate(NUCLEUS_CLASSES)}
        row["coverage"] = float((instances[tile] > 0).mean())
        if len(mine) >= 2:
            distances, _ = cKDTree(mine[["y", "x"]].to_numpy()).query(mine[["y", "x"]].to_numpy(), k=2)
            row["nn_distance"] = float(distances[:, 1].mean())
        else:
            row["nn_distance"] = float("nan")
        rows.append(row)
    return pd.DataFrame(rows, columns=list(TILE_FEATURES))


def morphology_features(types: np.ndarray, instances: np.ndarray) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(nucleus table, tile table) of a stack of masks."""
    nuclei = nucleus_features(types, instances)
    return nuclei, tile_features(types, instances, nuclei)


def morphology_distances(reference: tuple[pd.DataFrame, pd.DataFrame],
                         other: tuple[pd.DataFrame, pd.DataFrame]) -> dict[str, float]:
    """Distances of ``other`` masks from ``reference`` masks, each given as (nucleus table, tile
    table): per-feature Wasserstein / reference std (``w_<feature>``; ``w_nn_distance`` over the tiles
    with two nuclei or more), their mean (``w_mean``), the morphology FD on the standardised tile
    features every tile has (``morphology_fd``), and the share of ``other``'s tiles under two nuclei
    (``sparse_tiles``) with its gap from the reference's (``sparse_gap``)."""
    from scipy.stats import wasserstein_distance

    from .metrics import fid

    ref_nuclei, ref_tiles = reference
    nuclei, tiles = other
    out = {}
    for feature in NUCLEUS_FEATURES:
        out[f"w_{feature}"] = _scaled_wasserstein(ref_nuclei[feature], nuclei[feature], wasserstein_distance)
    for feature in TILE_FEATURES:
        out[f"w_{feature}"] = _scaled_wasserstein(ref_tiles[feature], tiles[feature], wasserstein_distance)
    out["w_mean"] = float(np.nanmean([out[f"w_{f}"] for f in (*NUCLEUS_FEATURES, *TILE_FEATURES)]))
    columns = list(FD_FEATURES)
    mean = ref_tiles[columns].mean().to_numpy(dtype=np.float64)
    std = ref_tiles[columns].std().replace(0, 1).fillna(1).to_numpy(dtype=np.float64)
    a = (ref_tiles[columns].to_numpy(dtype=np.float64) - mean) / std
    b = (tiles[columns].to_numpy(dtype=np.float64) - mean) / std
    out["morphology_fd"] = fid(a, b) if len(a) >= 2 and len(b) >= 2 else float("nan")
    out["sparse_tiles"] = float(tiles["nn_distance"].isna().mean()) if len(tiles) else float("nan")
    out["sparse_gap"] = abs(out["sparse_tiles"] - float(ref_tiles["nn_distance"].isna().mean()))
    return out


def _scaled_wasserstein(reference: pd.Series, other: pd.Series, distance) -> float:
    reference, other = reference.dropna().to_numpy(float), other.dropna().to_numpy(float)
    if not len(reference) or not len(other):
        return float("nan")
    scale = reference.std() or 1.0
    return float(distance(reference, other) / scale)


def mask_validity(types: np.ndarray, instances: np.ndarray, boundary: np.ndarray | None = None) -> dict[str, float]:
    """Properties of decoded masks that a broken generator fails (the decoder guarantees none of them):

    * ``single_type``: the share of instances whose pixels all carry one type (a blob painted half
      one type, half another, fails it);
    * ``unclaimed``: the share of foreground pixels (type > 0) in no instance, i.e. in fragments too
      small to keep (speckle fails it);
    * with ``boundary`` (the model's own boundary channel > 0, [N, H, W]): ``edge_dice``, the Dice
      between that channel and the edge map of the decoded instances; a model whose boundary channel
      disagrees with its type channels fails it. Real masks through the encode / decode round trip
      score about 1 on each (their ceiling)."""
    from ..data.nuclei import edge_map

    types, instances = np.asarray(types), np.asarray(instances)
    total = pure = 0
    for typ, inst in zip(types, instances):
        ids = inst.ravel().astype(np.int64)
        kinds = np.zeros((int(ids.max(initial=0)) + 1, int(typ.max(initial=0)) + 1), dtype=bool)
        kinds[ids, typ.ravel().astype(np.int64)] = True
        counts = kinds[1:].sum(axis=1)
        total += int((counts > 0).sum())
        pure += int((counts == 1).sum())
    foreground = types > 0
    out = {"instances": total, "single_type": pure / total if total else float("nan"),
           "unclaimed": float((foreground & (instances == 0)).sum() / max(int(foreground.sum()), 1))}
    if boundary is not None:
        drawn, decoded = np.asarray(boundary, dtype=bool), edge_map(instances)
        both = int(drawn.sum()) + int(decoded.sum())
        out["edge_dice"] = 2.0 * float((drawn & decoded).sum()) / both if both else 1.0
    return out


def instance_recall(reference: np.ndarray, other: np.ndarray, iou: float = 0.5, min_px: int = 1) -> float:
    """The fraction of ``reference`` instances (over a stack [N, H, W]) that some instance of
    ``other`` overlaps with IoU above ``iou``; reference instances under ``min_px`` pixels are not counted."""
    found = total = 0
    for ref, oth in zip(np.asarray(reference, dtype=np.int64), np.asarray(other, dtype=np.int64)):
        ref_ids, oth_ids = np.unique(ref), np.unique(oth)
        ref_index, oth_index = np.searchsorted(ref_ids, ref), np.searchsorted(oth_ids, oth)
        overlap = np.zeros((len(ref_ids), len(oth_ids)), dtype=np.int64)
        np.add.at(overlap, (ref_index.ravel(), oth_index.ravel()), 1)
        ref_area, oth_area = overlap.sum(axis=1), overlap.sum(axis=0)
        union = ref_area[:, None] + oth_area[None, :] - overlap
        scores = overlap / np.maximum(union, 1)
        keep_ref, keep_oth = (ref_ids != 0) & (ref_area >= min_px), oth_ids != 0
        best = scores[np.ix_(keep_ref, keep_oth)].max(axis=1, initial=0.0)
        found += int((best > iou).sum())
        total += int(keep_ref.sum())
    return found / total if total else float("nan")


def ellipse_masks(reference_nuclei: pd.DataFrame, reference_tiles: pd.DataFrame, multi_hot: np.ndarray,
                  size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A naive baseline: for each requested multi-hot row, random ellipses with a real tile's
    counts (a reference tile with the same types when there is one) and real nuclei's area and
    eccentricity (drawn per type from the reference nuclei), at uniform positions and angles.
    Later ellipses cover earlier ones. Returns (types, instances), uint8 and int32 [N, size, size]."""
    from skimage.draw import ellipse

    rng = np.random.default_rng(seed)
    multi_hot = np.asarray(multi_hot, dtype=bool)
    count_columns = [f"n_{name}" for name in NUCLEUS_CLASSES]
    counts = reference_tiles[count_columns].to_numpy()
    ref_hot = counts > 0
    by_type = {k + 1: reference_nuclei[reference_nuclei["type"] == k + 1][["area", "eccentricity"]].to_numpy()
               for k in range(len(NUCLEUS_CLASSES))}
    types = np.zeros((len(multi_hot), size, size), dtype=np.uint8)
    instances = np.zeros((len(multi_hot), size, size), dtype=np.int32)
    for i, wanted in enumerate(multi_hot):
        same = np.flatnonzero((ref_hot == wanted).all(axis=1))
        tile_counts = counts[rng.choice(same)] if len(same) else np.where(wanted, counts.max(axis=0).clip(min=1), 0)
        label = 0
        for k, n in enumerate(tile_counts):
            pool = by_type[k + 1]
            if not wanted[k] or not len(pool):
                continue
            for area, eccentricity in pool[rng.integers(len(pool), size=int(n))]:
                minor_over_major = np.sqrt(max(1e-3, 1.0 - eccentricity ** 2))
                major = np.sqrt(area / (np.pi * minor_over_major))
                rows, cols = ellipse(rng.uniform(0, size), rng.uniform(0, size), max(major, 0.5),
                                     max(major * minor_over_major, 0.5), shape=(size, size),
                                     rotation=rng.uniform(0, np.pi))
                label += 1
                instances[i, rows, cols] = label
                types[i, rows, cols] = k + 1
    return types, instances

