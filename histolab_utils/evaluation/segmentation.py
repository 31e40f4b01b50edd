"""Scores of a nuclei segmenter against real labels, and honest comparisons of training arms.

Every score here is a ratio of sums of per-tile counts, so a set of tiles is scored by adding
its tiles' counts first (CoNIC's way for mPQ+: a class absent from one tile neither helps nor
hurts it, where averaging per tile would divide by zero or reward an empty tile):

* pixel **Dice** and **IoU**, over all nuclei (foreground vs background) and per nucleus type;
* **AJI+** (Graham et al. 2019, HoVer-Net): true and predicted instances are paired one to one
  to maximise their IoU (the Hungarian method); AJI+ = sum of paired intersections / (sum of
  paired unions + the areas of every unpaired instance);
* **PQ** (Kirillov et al. 2019) per type from MONAI's ``PanopticQualityMetric``: instances match
  when IoU > 0.5, DQ = TP / (TP + FP/2 + FN/2), SQ = mean IoU of the matches, PQ = DQ x SQ;
  **mPQ+** is the mean over the types of PQ from counts summed over the whole set.

Comparing arms: :func:`arm_contrast` takes each arm's mean over seeds of its pooled score, and
resamples seeds and test tiles for the interval and the p-value (``evaluation.hierarchical_bootstrap``;
notebook 09 adjusts the p-values of all its contrasts by Holm's method). The scores it tests are
:data:`TESTED_SCORES`; :data:`REPORTED_SCORES` adds IoU, which is reported but not tested: on
counts pooled over a set, IoU = I / (T + P - I) and Dice D = 2I / (T + P), so IoU = D / (2 - D),
an increasing function of Dice, and a test of it would repeat Dice's while enlarging Holm's family.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import torch

# one score per question, each tested for every arm: pixels (Dice), instances (AJI+), typed instances (mPQ+)
TESTED_SCORES = ("dice", "aji_plus", "mpq_plus")
# every score shown per arm: the tested ones and IoU, which pooled is Dice / (2 - Dice) and so is not tested again
REPORTED_SCORES = ("dice", "iou", "aji_plus", "mpq_plus")


def _consecutive(instances: np.ndarray) -> tuple[np.ndarray, int]:
    """Labels 1..n (0 stays background) and n + 1, the number of labels with background."""
    ids, inverse = np.unique(np.asarray(instances), return_inverse=True)
    if ids[0] != 0:
        inverse = inverse + 1
        ids = np.r_[0, ids]
    return inverse.reshape(np.shape(instances)), len(ids)


def _overlaps(true_inst: np.ndarray, pred_inst: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pixel intersections [n_true, n_pred] and each instance's area, from one contingency table."""
    if np.shape(true_inst) != np.shape(pred_inst):
        raise ValueError(f"instance maps differ in shape: true {np.shape(true_inst)}, predicted {np.shape(pred_inst)}")
    t, nt = _consecutive(true_inst)
    p, n_pred = _consecutive(pred_inst)
    table = np.bincount(t.ravel().astype(np.int64) * n_pred + p.ravel(), minlength=nt * n_pred).reshape(nt, n_pred)
    return table[1:, 1:], table[1:].sum(1), table[:, 1:].sum(0)


def aji_plus_counts(true_inst: np.ndarray, pred_inst: np.ndarray) -> tuple[int, int]:
    """AJI+'s numerator and denominator for one pair of instance maps (they add over tiles)."""
    from scipy.optimize import linear_sum_assignment

    inter, true_area, pred_area = _overlaps(true_inst, pred_inst)
    union = true_area[:, None] + pred_area[None, :] - inter
    rows = cols = np.zeros(0, dtype=int)
    if inter.size:
        iou = inter / np.maximum(union, 1)
        rows, cols = linear_sum_assignment(-iou)
        paired = iou[rows, cols] > 0
        rows, cols = rows[paired], cols[paired]
    unpaired_true = np.setdiff1d(np.arange(len(true_area)), rows)
    unpaired_pred = np.setdiff1d(np.arange(len(pred_area)), cols)
    numerator = int(inter[rows, cols].sum())
    denominator = int(union[rows, cols].sum() + true_area[unpaired_true].sum() + pred_area[unpaired_pred].sum())
    return numerator, denominator


def aji_plus(true_inst: np.ndarray, pred_inst: np.ndarray) -> float:
    """AJI+ of one pair of instance maps (0 = background); NaN when neither has an instance."""
    numerator, denominator = aji_plus_counts(true_inst, pred_inst)
    return numerator / denominator if denominator else float("nan")


def match_instances(true_inst: np.ndarray, pred_inst: np.ndarray,
                    threshold: float = 0.5) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """PQ's matching drawn out: the predicted ids matched at IoU > ``threshold`` (true positives),
    the unmatched predicted ids (false positives) and the unmatched true ids (false negatives).
    Above 0.5 a match is unique, so no assignment is needed."""
    inter, true_area, pred_area = _overlaps(true_inst, pred_inst)
    true_ids = np.unique(true_inst)[np.unique(true_inst) > 0]
    pred_ids = np.unique(pred_inst)[np.unique(pred_inst) > 0]
    iou = inter / np.maximum(true_area[:, None] + pred_area[None, :] - inter, 1)
    matched = iou > threshold
    return pred_ids[matched.any(0)], pred_ids[~matched.any(0)], true_ids[~matched.any(1)]


def _pq_from_counts(tp, fp, fn, iou_sum) -> dict[str, np.ndarray]:
    tp, fp, fn, iou_sum = (np.asarray(v, dtype=np.float64) for v in (tp, fp, fn, iou_sum))
    with np.errstate(invalid="ignore", divide="ignore"):
        dq = tp / (tp + 0.5 * fp + 0.5 * fn)
        sq = np.where(tp > 0, iou_sum / np.maximum(tp, 1), 0.0)
    sq = np.where(tp + fp + fn > 0, sq, np.nan)
    return {"dq": dq, "sq": sq, "pq": dq * sq}


def panoptic_quality(true_inst: np.ndarray, pred_inst: np.ndarray) -> dict[str, float]:
    """``{"dq", "sq", "pq"}`` of one pair of instance maps, matching at IoU > 0.5 (MONAI's
    ``compute_panoptic_quality``); NaN when neither map has an instance."""
    from monai.metrics import compute_panoptic_quality

    if np.shape(true_inst) != np.shape(pred_inst):
        raise ValueError(f"instance maps differ in shape: true {np.shape(true_inst)}, predicted {np.shape(pred_inst)}")
    counts = compute_panoptic_quality(torch.as_tensor(np.asarray(pred_inst, dtype=np.int64)),
                                      torch.as_tensor(np.asarray(true_inst, dtype=np.int64)),
                                      output_confusion_matrix=True).tolist()
    return {k: float(v) for k, v in _pq_from_counts(*counts).items()}


def count_columns(classes: Sequence[str]) -> list[str]:
    """The per-tile count columns of :func:`tile_counts` for these nucleus types."""
    pixel = [f"px_{kind}_{c}" for c in ("all", *classes) for kind in ("inter", "true", "pred")]
    return pixel + ["aji_inter", "aji_union"] + [f"pq_{kind}_{c}" for c in classes for kind in ("tp", "fp", "fn", "iou")]


def tile_counts(true_types: np.ndarray, true_inst: np.ndarray, pred_types: np.ndarray, pred_inst: np.ndarray,
                classes: Sequence[str]) -> pd.DataFrame:
    """One row of counts per tile (columns :func:`count_columns`) from type maps [N, H, W]
    (0 background, i + 1 = ``classes[i]``) and instance maps [N, H, W]."""
    from monai.metrics import PanopticQualityMetric

    arrays = [np.asarray(a) for a in (true_types, true_inst, pred_types, pred_inst)]
    if len({a.shape for a in arrays}) != 1 or arrays[0].ndim != 3:
        raise ValueError("true and predicted type and instance maps must all be [N, H, W] of one shape; got "
                         + ", ".join(str(a.shape) for a in arrays))
    true_types, true_inst, pred_types, pred_inst = arrays
    for name, types in (("true", true_types), ("predicted", pred_types)):
        if types.size and (types.min() < 0 or types.max() > len(classes)):
            raise ValueError(f"{name} type ids must lie in 0..{len(classes)}; got {types.min()}..{types.max()}")
    columns: dict[str, np.ndarray] = {}
    for k, name in enumerate(("all", *classes)):
        truth = true_types > 0 if k == 0 else true_types == k
        pred = pred_types > 0 if k == 0 else pred_types == k
        columns[f"px_inter_{name}"] = (truth & pred).sum(axis=(1, 2))
        columns[f"px_true_{name}"] = truth.sum(axis=(1, 2))
        columns[f"px_pred_{name}"] = pred.sum(axis=(1, 2))
    aji = np.array([aji_plus_counts(t, p) for t, p in zip(true_inst, pred_inst)]).reshape(-1, 2)
    columns["aji_inter"], columns["aji_union"] = aji[:, 0], aji[:, 1]
    metric = PanopticQualityMetric(num_classes=len(classes), reduction="none", return_confusion_matrix=True)
    to_tensor = lambda inst, types: torch.from_numpy(np.stack([inst, types], 1).astype(np.int64))  # noqa: E731
    confusion = (metric(to_tensor(pred_inst, pred_types), to_tensor(true_inst, true_types)).numpy()
                 if len(true_inst) else np.zeros((0, len(classes), 4)))
    for k, name in enumerate(classes):
        for j, kind in enumerate(("tp", "fp", "fn", "iou")):
            columns[f"pq_{kind}_{name}"] = confusion[:, k, j]
    return pd.DataFrame(columns)[count_columns(classes)]


def nuclei_per_type(types: np.ndarray, instances: np.ndarray, classes: Sequence[str]) -> pd.Series:
    """How many true nuclei of each type the tiles (type and instance maps [N, H, W]) hold, counted by instance: each
    (tile, instance id) whose pixels carry the type once, as PQ counts them (its TP + FN for that type), so a nucleus
    cut by a tile border counts once in each tile that shows it."""
    types, instances = np.asarray(types, dtype=np.int64), np.asarray(instances, dtype=np.int64)
    if types.shape != instances.shape or types.ndim != 3:
        raise ValueError(f"type and instance maps must be [N, H, W] of one shape; got {types.shape} and "
                         f"{instances.shape}")
    tile = np.broadcast_to(np.arange(len(types))[:, None, None], types.shape)
    inside = (instances > 0) & (types > 0)
    found = np.unique(np.stack([tile[inside], instances[inside], types[inside]]), axis=1)
    per_type = np.bincount(found[2], minlength=len(classes) + 1)[1:len(classes) + 1]
    return pd.Series(per_type, index=list(classes), name="test_nuclei")


def scores_from_sums(sums: Mapping[str, np.ndarray | float], classes: Sequence[str]) -> dict[str, np.ndarray]:
    """Every score from counts summed over a set of tiles (arrays broadcast, so one call can score
    many bootstrap resamples at once)."""
    def ratio(numerator, denominator):
        numerator, denominator = np.asarray(numerator, float), np.asarray(denominator, float)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(denominator > 0, numerator / np.where(denominator > 0, denominator, 1), np.nan)

    scores: dict[str, np.ndarray] = {}
    for name in ("all", *classes):
        inter, true, pred = (sums[f"px_{kind}_{name}"] for kind in ("inter", "true", "pred"))
        suffix = "" if name == "all" else f"_{name}"
        scores[f"dice{suffix}"] = ratio(2 * np.asarray(inter), np.asarray(true) + np.asarray(pred))
        scores[f"iou{suffix}"] = ratio(inter, np.asarray(true) + np.asarray(pred) - np.asarray(inter))
    scores["aji_plus"] = ratio(sums["aji_inter"], sums["aji_union"])
    pqs = []
    for name in classes:
        pq = _pq_from_counts(*(sums[f"pq_{kind}_{name}"] for kind in ("tp", "fp", "fn", "iou")))
        scores.update({f"{k}_{name}": v for k, v in pq.items()})
        pqs.append(pq["pq"])
    with np.errstate(invalid="ignore"):
        stacked = np.stack(np.broadcast_arrays(*pqs))
        present = ~np.isnan(stacked)
        scores["mpq_plus"] = np.where(present.any(0), np.nansum(stacked, 0) / np.maximum(present.sum(0), 1), np.nan)
    return scores


def segmentation_scores(counts: pd.DataFrame, classes: Sequence[str]) -> dict[str, float]:
    """The scores of a whole set of tiles from its :func:`tile_counts` (counts summed first)."""
    return {k: float(v) for k, v in scores_from_sums(counts.sum(), classes).items()}


def seed_summary(counts_per_seed: Sequence[pd.DataFrame], classes: Sequence[str],
                 scores: Sequence[str] = REPORTED_SCORES) -> dict[str, float]:
    """Mean and standard deviation (ddof 1) over seeds of each seed's pooled score, and the seeds."""
    values = pd.DataFrame([segmentation_scores(c, classes) for c in counts_per_seed])[list(scores)]
    out = {"n_seeds": len(values)}
    for name in scores:
        out[f"{name}_mean"] = float(values[name].mean())
        out[f"{name}_std"] = float(values[name].std(ddof=1)) if len(values) > 1 else float("nan")
    return out


def arm_contrast(arm: Sequence[pd.DataFrame], reference: Sequence[pd.DataFrame], classes: Sequence[str],
                 score: str, n_resamples: int = 2000, confidence: float = 0.95, seed: int = 0) -> dict[str, float]:
    """The arm's ``score`` minus the reference's (mean over seeds of each seed's pooled score), with the interval and
    p-value of :func:`~histolab_utils.evaluation.hierarchical_bootstrap.hierarchical_contrast`, which resamples seeds
    and test tiles. ``arm`` and ``reference`` hold one :func:`tile_counts` frame per seed, the same test tiles in the
    same order (seed i of one is paired with seed i of the other)."""
    from .hierarchical_bootstrap import hierarchical_contrast

    if len(arm) != len(reference) or any(len(a) != len(r) for a, r in zip(arm, reference)):
        raise ValueError("paired arms need the same seeds and the same test tiles: got "
                         f"{[len(a) for a in arm]} tiles per seed against {[len(r) for r in reference]}")
    columns = count_columns(classes)

    def stacked(frames: Sequence[pd.DataFrame]) -> np.ndarray:
        return np.stack([frame[columns].to_numpy(float) for frame in frames])

    def scored(sums: np.ndarray) -> np.ndarray:
        return scores_from_sums({c: sums[..., j] for j, c in enumerate(columns)}, classes)[score]

    return hierarchical_contrast(stacked(arm), stacked(reference), scored, n_resamples, confidence, seed)
