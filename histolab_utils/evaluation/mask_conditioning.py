"""Does a generated mask hold the nucleus types it was asked for, and only those?

For N masks with requested types R [N, K] and present types P [N, K] (a type is present when at
least one decoded instance has it):

* recall of type k: P(k present | k requested) = |R_k ∧ P_k| / |R_k|;
* precision of type k: P(k requested | k present) = |R_k ∧ P_k| / |P_k|;
* overall, pooled over (mask, type) pairs, and per mask: the fraction with every requested type
  present (``all_requested``) and the fraction with no unrequested type (``none_unrequested``).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from ..data.nuclei import NUCLEUS_CLASSES


def _ratio(a: int, b: int) -> float:
    return a / b if b else float("nan")


def conditioning_accuracy(requested: np.ndarray, present: np.ndarray,
                          names: Sequence[str] = NUCLEUS_CLASSES) -> pd.DataFrame:
    """One row per type and an ``overall`` row: precision, recall, and how many masks asked for /
    showed the type (per mask rates in the overall row)."""
    requested, present = np.asarray(requested, dtype=bool), np.asarray(present, dtype=bool)
    if requested.shape != present.shape or requested.ndim != 2 or requested.shape[1] != len(names):
        raise ValueError(f"requested and present must both be [N, {len(names)}]; got {requested.shape}, {present.shape}")
    rows = []
    for k, name in enumerate(names):
        hit = int((requested[:, k] & present[:, k]).sum())
        rows.append({"type": name, "requested": int(requested[:, k].sum()), "present": int(present[:, k].sum()),
                     "recall": _ratio(hit, int(requested[:, k].sum())),
                     "precision": _ratio(hit, int(present[:, k].sum()))})
    hit = int((requested & present).sum())
    rows.append({"type": "overall", "requested": int(requested.sum()), "present": int(present.sum()),
                 "recall": _ratio(hit, int(requested.sum())), "precision": _ratio(hit, int(present.sum())),
                 "all_requested": float((present | ~requested).all(axis=1).mean()) if len(requested) else np.nan,
                 "none_unrequested": float((requested | ~present).all(axis=1).mean()) if len(requested) else np.nan})
    return pd.DataFrame(rows).set_index("type")
