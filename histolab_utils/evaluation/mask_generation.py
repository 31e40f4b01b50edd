"""Scoring a nuclei-mask generator (notebook 06): every set of masks in one table, the guidance chosen
on the validation strip, the checks a broken generator fails, and the goals the cpu profile reports.

Each scored set (generated masks at some guidance, the round-trip ceiling, the condition-matched real
floor, the random-ellipse baseline) is compared with the same real reference tiles at equal n:

* conditioning: pooled recall and precision of the nucleus types each reference tile holds, and their
  harmonic mean (``f1``); "present" is :func:`~histolab_utils.data.nuclei.present_types` for every set;
* morphology: :func:`~histolab_utils.evaluation.morphology.morphology_distances` (per-feature
  Wasserstein distances, the morphology FD, the share of tiles under two nuclei);
* validity: :func:`~histolab_utils.evaluation.morphology.mask_validity` (single-type instances,
  unclaimed foreground and, where a set has the model's boundary channel, its agreement with the
  decoded instances);
* ``coverage``: the mean share of tile pixels inside a nucleus.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
import pandas as pd

from ..data.nuclei import present_types
from .mask_conditioning import conditioning_accuracy
from .morphology import mask_validity, morphology_distances, morphology_features

MaskSet = tuple  # (types [N, H, W], instances [N, H, W]) or (types, instances, boundary [N, H, W] bool)


def score_mask_sets(requested: np.ndarray, reference: tuple[np.ndarray, np.ndarray],
                    sets: Mapping[str, MaskSet]) -> pd.DataFrame:
    """One row per set of masks: conditioning against ``requested`` [N, K] (the types asked for, one
    row per reference tile), morphology distances from the ``reference`` (types, instances), validity
    and coverage. Every set must hold as many tiles as the reference (equal n)."""
    requested = np.asarray(requested, dtype=bool)
    ref_features = morphology_features(*reference)
    n = len(reference[0])
    if len(requested) != n:
        raise ValueError(f"requested has {len(requested)} rows for {n} reference tiles")
    rows = {}
    for name, mask_set in sets.items():
        types, instances = mask_set[0], mask_set[1]
        boundary = mask_set[2] if len(mask_set) > 2 else None
        if len(types) != n:
            raise ValueError(f"compare at equal n: {name!r} has {len(types)} tiles, the reference {n}")
        overall = conditioning_accuracy(requested, present_types(types, instances)).loc["overall"]
        recall, precision = float(overall["recall"]), float(overall["precision"])
        f1 = 2 * recall * precision / (recall + precision) if recall + precision > 0 else 0.0
        rows[name] = {"n": n, "recall": recall, "precision": precision, "f1": f1,
                      **morphology_distances(ref_features, morphology_features(types, instances)),
                      **mask_validity(types, instances, boundary),
                      "coverage": float((np.asarray(instances) > 0).mean())}
    return pd.DataFrame(rows).T


def mask_generator_checks(scores: pd.DataFrame, chosen: str, unguided: str, ceiling: str, floor: str,
                          reference_coverage: float, fd_over_floor: float = 20.0) -> pd.DataFrame:
    """What notebook 06 asserts of a trained generator, as a table of check, measured, bar, passes. Each
    is a claim a broken generator fails (an untrained one fails them: ``tests/test_nuclei_masks.py``):

    * guidance works: recall at the ``chosen`` guidance above recall at s = 0 (``unguided``);
    * the boundary channel agrees with the decoded instances at least 0.8 x as well as the round trip
      of real masks (``ceiling``; masks decoded from uniform noise reach about 0.7 x);
    * at least 80 % of instances carry one type (real masks: 100 %; an untrained UNet's: about 16 %);
    * the masks' mean nucleus coverage is within a factor of 2 of the real tiles';
    * the morphology FD is within ``fd_over_floor`` x the condition-matched real ``floor``'s: masks of the right
      kind at all (an untrained UNet's is about 10^5 x). How close they come is a goal, not a check
      (:func:`mask_generator_goals`).
    """
    fd_ratio = float(scores.loc[chosen, "morphology_fd"]) / max(float(scores.loc[floor, "morphology_fd"]), 1e-12)
    rows = [
        ("recall at the chosen guidance above recall at s = 0", scores.loc[chosen, "recall"],
         scores.loc[unguided, "recall"], scores.loc[chosen, "recall"] > scores.loc[unguided, "recall"]),
        ("boundary agreement at least 0.8 x the round trip's", scores.loc[chosen, "edge_dice"],
         0.8 * scores.loc[ceiling, "edge_dice"], scores.loc[chosen, "edge_dice"] >= 0.8 * scores.loc[ceiling, "edge_dice"]),
        ("single-type instances at least 80 %", scores.loc[chosen, "single_type"], 0.8,
         scores.loc[chosen, "single_type"] >= 0.8),
        ("nucleus coverage within 2x the real tiles'", scores.loc[chosen, "coverage"] / reference_coverage, "0.5 to 2",
         0.5 <= scores.loc[chosen, "coverage"] / reference_coverage <= 2.0),
        (f"morphology FD within {fd_over_floor:g}x the condition-matched floor's", fd_ratio, fd_over_floor,
         fd_ratio <= fd_over_floor),
    ]
    return pd.DataFrame(rows, columns=["check", "measured", "bar", "passes"]).astype({"passes": bool})


def mask_generator_goals(scores: pd.DataFrame, chosen: str, ceiling: str, floor: str, baseline: str,
                         recall_ratio: float = 0.9, fd_ratio: float = 3.0) -> pd.DataFrame:
    """The goals set for notebook 06's cpu results, measured (reported whether met or not): conditioning recall at
    the chosen guidance at least ``recall_ratio`` x the round-trip ceiling's, and a morphology FD at most ``fd_ratio``
    x the condition-matched real floor's (the floor is real data: near 1 is the best there is). The FD over the
    random-ellipse ``baseline``'s (ellipses with the counts of real tiles of the same types and real nuclei's sizes: a
    strong baseline on these count and coverage features) is reported beside them, not a goal."""
    recall = scores.loc[chosen, "recall"] / scores.loc[ceiling, "recall"]
    fd = float(scores.loc[chosen, "morphology_fd"])
    over_floor = fd / max(float(scores.loc[floor, "morphology_fd"]), 1e-12)
    rows = [("conditioning recall over the round-trip ceiling", f">= {recall_ratio:g}", recall, recall >= recall_ratio),
            ("morphology FD over the condition-matched real floor", f"<= {fd_ratio:g}", over_floor,
             over_floor <= fd_ratio),
            ("morphology FD over the random-ellipse baseline's", "reported",
             fd / float(scores.loc[baseline, "morphology_fd"]), None)]
    return pd.DataFrame(rows, columns=["goal", "target", "measured", "met"])
