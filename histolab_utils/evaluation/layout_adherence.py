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
