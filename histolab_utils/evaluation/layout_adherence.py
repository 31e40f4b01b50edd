"""Layout adherence: does a generated label put the requested nuclei where the layout asked?

For each tile, with its layout (centroids and types) and a label (type and instance maps, from
any generator):

* **located**: the fraction of layout centroids that fall inside a generated nucleus;
* **typed**: the fraction that fall inside a generated nucleus of the requested type (the
  nucleus's type is the most frequent type among its pixels);
* **spurious**: generated nuclei that contain no layout centroid (the label shows a nucleus nobody
  asked for).

Centroids of an empty layout count nothing; every nucleus of its label is spurious.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from ..data.layouts import Layouts
from ..data.nuclei import instance_table


def adherence_table(types: np.ndarray, instances: np.ndarray, layouts: Layouts) -> pd.DataFrame:
    """One row per tile: centroids, located, typed, generated nuclei and spurious ones."""
    types, instances = np.asarray(types), np.asarray(instances)
    if types.shape != instances.shape or len(types) != len(layouts) or types.shape[-1] != layouts.size:
        raise ValueError(f"need one {layouts.size} px label per layout: types {types.shape}, instances "
                         f"{instances.shape}, {len(layouts)} layouts")
    rows = []
    for typ, inst, points in zip(types, instances, layouts.points):
        table = instance_table(typ, inst)
        kind_of = dict(zip(table["instance"], table["type"]))
        hit = inst[points[:, 0], points[:, 1]]
        located = hit > 0
        typed = np.array([kind_of.get(h, 0) == k for h, k in zip(hit, points[:, 2])], dtype=bool)
        claimed = set(hit[located].tolist())
        rows.append({"centroids": len(points), "located": int(located.sum()), "typed": int((located & typed).sum()),
                     "nuclei": len(table), "spurious": int(sum(i not in claimed for i in table["instance"]))})
    return pd.DataFrame(rows, columns=["centroids", "located", "typed", "nuclei", "spurious"])


def adherence_summary(table: pd.DataFrame) -> dict:
    """Pooled fractions over tiles: located and typed per centroid; spurious per tile and per generated nucleus."""
    centroids, nuclei = int(table["centroids"].sum()), int(table["nuclei"].sum())
    return {"located_fraction": table["located"].sum() / centroids if centroids else float("nan"),
            "typed_fraction": table["typed"].sum() / centroids if centroids else float("nan"),
            "spurious_per_tile": float(table["spurious"].mean()) if len(table) else float("nan"),
            "spurious_fraction": table["spurious"].sum() / nuclei if nuclei else 0.0,
            "centroids": centroids, "tiles": len(table)}


def layout_adherence(types: np.ndarray, instances: np.ndarray, layouts: Layouts) -> dict:
    """:func:`adherence_summary` of :func:`adherence_table`."""
    return adherence_summary(adherence_table(types, instances, layouts))


def adherence_f1(row) -> float:
    """Harmonic mean of the located fraction (centroids that land in a generated nucleus) and the share of
    generated nuclei that hold a centroid (1 - ``spurious_fraction``)."""
    located, precise = float(row["located_fraction"]), 1.0 - float(row["spurious_fraction"])
    return 2 * located * precise / (located + precise) if located + precise > 0 else 0.0


def joint_synthesis_checks(table: pd.DataFrame, chosen: str, layout_blind: str, floor_mismatched: str,
                           images: np.ndarray, real_images: np.ndarray, label_types: np.ndarray, real_types: np.ndarray,
                           colour_tolerance: float = 20.0) -> pd.DataFrame:
    """What notebook 08 asserts of a trained joint model, as a table of check, measured, bar, passes; each a claim a
    broken model fails (an untrained one fails them: ``tests/test_joint_synthesis.py``). ``table`` holds, per set,
    ``dice`` (label consistency) and ``located_fraction`` (every route's label decoded without its layout);
    ``images`` and ``label_types`` are the ``chosen`` set's, ``real_images`` and ``real_types`` the held-out pairs'.

    * colour: each channel's mean within ``colour_tolerance`` grey levels of the real images';
    * the labels' nuclear share of the tile within a factor of 2 of the real masks' (a label that is nuclei
      everywhere matches a detector that fires everywhere: the untrained model's Dice is high for that reason);
    * label consistency above the mismatched-pair floor (the image shows nuclei where its own label does);
    * adherence above the layout-blind route's (notebook 06's mask for the layout's types, painted by SPADE): the
      model puts nuclei where the layout asks, which a route that never saw the positions cannot. Adherence is the
      F1 of the located fraction (centroids inside a nucleus) and the share of generated nuclei that hold a centroid,
      so a label that is nuclei everywhere (an untrained model's) locates every centroid and still fails.
    """
    from .metrics import colour_gap

    gap = colour_gap(images, real_images)
    share = float((np.asarray(label_types) > 0).mean()) / max(float((np.asarray(real_types) > 0).mean()), 1e-12)
    rows = [("mean colour within tolerance of the real images' (grey levels, worst channel)", gap, colour_tolerance,
             gap <= colour_tolerance),
            ("nuclear share of the labels within 2x the real masks'", share, 2.0, 0.5 <= share <= 2.0),
            ("label consistency Dice above the mismatched-pair floor", float(table.loc[chosen, "dice"]),
             float(table.loc[floor_mismatched, "dice"]), float(table.loc[chosen, "dice"]) > float(table.loc[floor_mismatched, "dice"])),
            ("layout adherence F1 above the layout-blind route's", adherence_f1(table.loc[chosen]),
             adherence_f1(table.loc[layout_blind]), adherence_f1(table.loc[chosen]) > adherence_f1(table.loc[layout_blind]))]
    return pd.DataFrame(rows, columns=["check", "measured", "bar", "passes"]).astype({"passes": bool})


def joint_synthesis_goals(appearance: pd.DataFrame, chosen: str, two_stage: Sequence[str], k: float = 3.0,
                          compare_on: Sequence[str] | None = None, *, scores: pd.DataFrame | None = None,
                          fid_ratio: float = 1.5) -> pd.DataFrame:
    """The goals set for notebook 08's results, about realism (reported whether met or not). With ``scores`` (a
    :func:`~histolab_utils.evaluation.mask_fidelity.synthesis_scores` table holding ``chosen``), first the two goals
    issue 37 set: FID at most ``fid_ratio`` x the real-vs-real floor, and label agreement (the label's Dice with its
    own image) above the mismatched floor and within the real pairs' range
    (:func:`~histolab_utils.evaluation.mask_fidelity.fidelity_goal`: higher than real is a miss). Then the ``chosen`` joint
    set's nuclei within ``k`` x the real train-vs-held-out floor of their appearance distance to real held-out
    nuclei, the mean and each feature (:func:`~histolab_utils.evaluation.nucleus_appearance.appearance_goals`), and
    no farther from real than each ``two_stage`` route's (ratio <= 1) on the features of ``compare_on`` (default
    :data:`~histolab_utils.evaluation.nucleus_appearance.IMAGE_FEATURES`, what a painter decides): a route whose
    label is the reference's own masks (the oracle) scores its area and eccentricity near 0 by construction, a head
    start no generator can match, so the routes are compared on the mean of those features' distances (the
    ``w_<feature>`` columns). ``appearance`` is a
    :func:`~histolab_utils.evaluation.nucleus_appearance.pairs_appearance_scores` table holding every set named; a
    set it could not score (NaN) misses its goals. ``k`` is the bar issue 37 set for notebook 07's nucleus appearance,
    applied alike here."""
    from .nucleus_appearance import IMAGE_FEATURES, appearance_goals

    missing = [name for name in (chosen, *two_stage) if name not in appearance.index]
    if missing:
        raise KeyError(f"the appearance table has no row {missing}; rows: {list(appearance.index)}")
    columns = [f"w_{feature}" for feature in (IMAGE_FEATURES if compare_on is None else compare_on)]
    absent = [column for column in columns if column not in appearance.columns]
    if absent:
        raise KeyError(f"compare_on names features the appearance table lacks: {absent}; columns: "
                       f"{list(appearance.columns)}")
    rows = appearance_goals(appearance, chosen, k)
    if scores is not None:
        from .mask_fidelity import fid_goal, fidelity_goal

        first = pd.DataFrame([fid_goal(scores, chosen, fid_ratio),
                              fidelity_goal(scores, chosen, what="label agreement")], columns=rows.columns)
        rows = pd.concat([first, rows], ignore_index=True)
    distance = appearance[columns].astype(float).mean(axis=1, skipna=False)
    what = ", ".join(column[2:] for column in columns)
    for route in two_stage:
        ratio = float(distance[chosen] / distance[route])
        rows.loc[len(rows)] = (f"appearance distance on {what} over {route}'s", "<= 1", ratio, bool(ratio <= 1.0))
    return rows.astype({"met": bool})
