"""Controllability: does a class-conditional generator make images of the class it was asked for?

Per-class FID says whether samples look real; it does not say whether a sample drawn for cluster *c* looks
like cluster *c*. Here every sample is assigned to a cluster by the rule that made the clusters (the same
features, standardised with the same statistics, then the nearest centroid, which is k-means' own
assignment step) and compared with the cluster that was requested. The accuracy sits between two
references at the same rule:

* **chance**, 1/k: what a generator that ignores its label reaches on balanced requests;
* **ceiling**: the same assignment applied to real held-out tiles of each cluster. A generator cannot be
  expected to beat the real tiles of its own classes under a rule that misfiles some of them.

The interval is a percentile bootstrap over samples (each sample is an independent draw), by
``scipy.stats.bootstrap``.

When the clusters were made in the generator's own feature space (notebook 05: the VQ-GAN latents its LDM
generates in), this score is near-circular: the generator is filed by the features it was trained to reproduce.
:mod:`.cluster_judge` asks the same question with an independent judge; this module stays as the secondary,
own-space number.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class ClusterAssigner:
    """The clusters' assignment rule, frozen so that new images can be filed: standardise a feature vector
    with the mean and std of the clustered tiles, then take the nearest class centroid (scikit-learn's
    ``NearestCentroid``). Fit it on the tiles and labels that trained the generator."""

    mean: np.ndarray
    std: np.ndarray
    rule: object  # a fitted sklearn.neighbors.NearestCentroid

    @classmethod
    def fit(cls, features: np.ndarray, labels: np.ndarray) -> "ClusterAssigner":
        from sklearn.neighbors import NearestCentroid

        features, labels = np.asarray(features, np.float64), np.asarray(labels)
        if features.ndim != 2 or len(features) != len(labels):
            raise ValueError(f"features must be [n, d] with one label each; got {features.shape} and {labels.shape}")
        if len(np.unique(labels)) < 2:
            raise ValueError("a cluster assigner needs at least two classes")
        mean, std = features.mean(axis=0), features.std(axis=0)
        std = np.where(std > 0, std, 1.0)
        rule = NearestCentroid().fit((features - mean) / std, labels)
        return cls(mean, std, rule)

    def assign(self, features: np.ndarray) -> np.ndarray:
        """The class of the nearest centroid for each row of ``features`` (raw, not standardised)."""
        features = np.asarray(features, np.float64)
        if features.ndim != 2 or features.shape[1] != len(self.mean):
            raise ValueError(f"features must be [n, {len(self.mean)}], got {features.shape}")
        return self.rule.predict((features - self.mean) / self.std)

    @property
    def classes(self) -> np.ndarray:
        return self.rule.classes_


def _accuracy_interval(hits: np.ndarray, n_resamples: int, seed: int) -> tuple[float, float]:
    from .hierarchical_bootstrap import mean_interval

    return mean_interval(hits, n_resamples, seed=seed)[1:]


def controllability(requested: np.ndarray, assigned: np.ndarray, n_classes: int, *, n_resamples: int = 1000,
                    seed: int = 0) -> dict:
    """Accuracy of ``assigned`` against ``requested`` (one entry per sample), its 95 % bootstrap interval,
    chance (1/k), and the accuracy for each requested class."""
    requested, assigned = np.asarray(requested), np.asarray(assigned)
    if requested.shape != assigned.shape or requested.ndim != 1:
        raise ValueError(f"requested and assigned must be equal-length vectors; got {requested.shape}, {assigned.shape}")
    if n_classes < 2:
        raise ValueError(f"n_classes must be at least 2, got {n_classes}")
    hits = requested == assigned
    low, high = _accuracy_interval(hits, n_resamples, seed)
    per_class = {int(c): float(hits[requested == c].mean()) for c in np.unique(requested)}
    return {"accuracy": float(hits.mean()) if len(hits) else float("nan"), "ci_low": low, "ci_high": high,
            "chance": 1.0 / n_classes, "n": int(len(hits)), "per_class": per_class}


def controllability_table(assigner: ClusterAssigner, sets: dict, ceiling: tuple[np.ndarray, np.ndarray], *,
                          n_resamples: int = 1000, seed: int = 0) -> pd.DataFrame:
    """One row per set of samples, plus the ceiling row and chance.

    ``sets`` maps a name (a guidance scale, say) to ``(features, requested)``; ``ceiling`` is
    ``(features, labels)`` of real held-out tiles. Columns: set, n, accuracy, ci_low, ci_high, chance,
    ceiling, and accuracy / ceiling."""
    n_classes = len(assigner.classes)
    real_features, real_labels = ceiling
    top = controllability(real_labels, assigner.assign(real_features), n_classes, n_resamples=n_resamples, seed=seed)
    rows = [{"set": "real held-out tiles (ceiling)", **top}]
    for name, (features, requested) in sets.items():
        rows.append({"set": name, **controllability(requested, assigner.assign(features), n_classes,
                                                    n_resamples=n_resamples, seed=seed)})
    table = pd.DataFrame(rows).drop(columns="per_class")
    table["ceiling"] = top["accuracy"]
    table["of_ceiling"] = table["accuracy"] / top["accuracy"] if top["accuracy"] > 0 else np.nan
    return table[["set", "n", "accuracy", "ci_low", "ci_high", "chance", "ceiling", "of_ceiling"]]
