"""Controllability by an independent judge: a classifier that never sees the generator's own features.

Notebook 05's LDM generates in the VQ-GAN's latent space, and its clusters were made from the VQ-GAN's pooled
latents. Filing its samples by that same rule (:mod:`.controllability`) is nearly circular: the generator is
scored in the space it was trained to fill, so it can reach the rule's ceiling, or pass it, without drawing
tiles a different observer would file under the cluster asked for. The judge here looks at the images through
other eyes:

* **features** that do not come from the VQ-GAN: the FID Inception-v3 pool features (texture and layout, from
  a network trained on natural images) and/or stain features (haematoxylin and eosin amounts by colour
  deconvolution, and RGB statistics: what a pathologist's eye reads first). The caller computes them; each
  feature set is passed by name, so the judge works with any of them;
* **a simple classifier**: standardised features, then multinomial logistic regression (scikit-learn), trained
  on real *train*-region tiles with their cluster labels. The feature set and the regularisation are chosen by
  accuracy on the *validation* region, never on the held-out region;
* **references from the same judge**: chance (1/k for a label-blind generator on balanced requests; the
  majority share of the requested labels, what a generator that always draws the commonest cluster reaches),
  and the **ceiling**, the judge's accuracy on real held-out tiles of the requested clusters, at the same n and
  the same mix of clusters as the samples.

Controllability is the share of samples the judge files under the cluster that was requested, with a 95 %
percentile bootstrap interval over samples; its ratio to the ceiling has an interval that resamples samples and
held-out tiles independently. The ratio alone flatters a weak judge: a label-blind generator reaches
``chance_majority / ceiling`` of it (with a ceiling of, say, 0.70 and two clusters of 58 % and 42 %:
0.58 / 0.70 = 0.83), so the table also has ``over_chance``, the accuracy's margin over ``chance_majority`` as a share of the ceiling's margin (0 for the
best label-blind generator, 1 at the ceiling).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np
import pandas as pd

from .controllability import controllability

REGULARISATIONS = (0.01, 0.1, 1.0)  # logistic regression's C (inverse L2 strength), chosen on validation


def _checked(features: Mapping[str, np.ndarray], labels: np.ndarray | None, what: str) -> dict[str, np.ndarray]:
    """``features`` as float arrays [n, d] of one n (and that of ``labels``), or a ValueError naming ``what``."""
    if not isinstance(features, Mapping) or not features:
        raise ValueError(f"{what}: features must be a non-empty dict of name -> [n, d] arrays")
    arrays = {name: np.asarray(array, np.float64) for name, array in features.items()}
    lengths = {name: len(array) for name, array in arrays.items()}
    for name, array in arrays.items():
        if array.ndim != 2 or not len(array):
            raise ValueError(f"{what}: features {name!r} must be a non-empty [n, d] array, got shape {array.shape}")
        if not np.isfinite(array).all():
            raise ValueError(f"{what}: features {name!r} hold NaN or inf")
    if len(set(lengths.values())) != 1:
        raise ValueError(f"{what}: every feature set needs one row per tile; got {lengths}")
    if labels is not None and (np.ndim(labels) != 1 or len(labels) != next(iter(lengths.values()))):
        raise ValueError(f"{what}: {np.shape(labels)} labels for {next(iter(lengths.values()))} rows of features")
    return arrays


@dataclass(frozen=True)
class ClusterJudge:
    """A classifier of tiles into clusters on features that are not the generator's, fitted by :meth:`fit`."""

    features: str  # the name of the chosen feature set
    regularisation: float  # the chosen C of logistic regression
    model: object  # a fitted sklearn Pipeline (StandardScaler, LogisticRegression)
    choices: pd.DataFrame  # validation accuracy of every (features, regularisation) tried

    @classmethod
    def fit(cls, train: Mapping[str, np.ndarray], train_labels: np.ndarray, validation: Mapping[str, np.ndarray],
            validation_labels: np.ndarray, *, regularisations: tuple[float, ...] = REGULARISATIONS) -> "ClusterJudge":
        """Fit one judge per (feature set, C) on ``train`` (real train-region tiles' features, by name) and keep
        the one with the best accuracy on ``validation`` (the first on a tie: the stronger regularisation)."""
        train_labels, validation_labels = np.asarray(train_labels), np.asarray(validation_labels)
        train = _checked(train, train_labels, "train")
        validation = _checked(validation, validation_labels, "validation")
        if set(validation) != set(train):
            raise ValueError(f"train and validation name different feature sets: {sorted(train)} vs {sorted(validation)}")
        if len(np.unique(train_labels)) < 2:
            raise ValueError(f"the judge needs train tiles of at least two clusters; got only {np.unique(train_labels)}")
        if not regularisations:
            raise ValueError("regularisations must name at least one C")
        rows, fitted = [], {}
        for name in train:
            for c in regularisations:
                fitted[name, c] = _classifier(c).fit(train[name], train_labels)
                rows.append({"features": name, "regularisation": c, "dims": train[name].shape[1],
                             "validation_accuracy": float((fitted[name, c].predict(validation[name])
                                                           == validation_labels).mean())})
        choices = pd.DataFrame(rows)
        best = choices.iloc[int(choices["validation_accuracy"].to_numpy().argmax())]
        return cls(best["features"], float(best["regularisation"]), fitted[best["features"], best["regularisation"]],
                   choices)

    @property
    def classes(self) -> np.ndarray:
        return self.model.classes_

    @property
    def validation_accuracy(self) -> float:
        chosen = (self.choices["features"] == self.features) & (self.choices["regularisation"] == self.regularisation)
        return float(self.choices.loc[chosen, "validation_accuracy"].iloc[0])

    def judge(self, features: Mapping[str, np.ndarray]) -> np.ndarray:
        """The cluster the judge files each tile under; ``features`` holds at least the chosen feature set."""
        if self.features not in features:
            raise ValueError(f"the judge reads features {self.features!r}; got only {sorted(features)}")
        array = _checked({self.features: features[self.features]}, None, "judge")[self.features]
        expected = self.model.n_features_in_
        if array.shape[1] != expected:
            raise ValueError(f"features {self.features!r} must be [n, {expected}], got {array.shape}")
        return self.model.predict(array)


def _classifier(regularisation: float):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(C=regularisation, max_iter=2000))


def _ratio_interval(hits: np.ndarray, ceiling_hits: np.ndarray, n_resamples: int, seed: int) -> tuple[float, float]:
    """95 % percentile interval of mean(hits) / mean(ceiling_hits), resampling both sets independently."""
    rng = np.random.default_rng(seed)
    ours = rng.choice(hits.astype(float), (n_resamples, len(hits))).mean(axis=1)
    theirs = rng.choice(ceiling_hits.astype(float), (n_resamples, len(ceiling_hits))).mean(axis=1)
    ratios = np.divide(ours, theirs, out=np.full(n_resamples, np.nan), where=theirs > 0)
    if np.isnan(ratios).all():
        return float("nan"), float("nan")
    low, high = np.nanpercentile(ratios, [2.5, 97.5])
    return float(low), float(high)


@dataclass(frozen=True)
class JudgedControllability:
    """The judge's scores: one row per set (the ceiling first) and one row per (set, requested cluster)."""

    table: pd.DataFrame  # set, n, accuracy, ci_low, ci_high, chance, chance_majority, ceiling, of_ceiling (+ its
    # interval), over_chance
    per_cluster: pd.DataFrame  # set, cluster, n, accuracy

    def at(self, name) -> pd.Series:
        """The row of set ``name`` (a guidance scale, say)."""
        rows = self.table[self.table["set"].astype(str) == str(name)]
        if rows.empty:
            raise KeyError(f"no set {name!r} in the judged table; sets: {self.table['set'].tolist()}")
        return rows.iloc[0]


CEILING = "real held-out tiles (ceiling)"


def judged_controllability(judge: ClusterJudge, ceiling: tuple[Mapping[str, np.ndarray], np.ndarray],
                           sets: Mapping, *, n_resamples: int = 1000, seed: int = 0) -> JudgedControllability:
    """Score each set of samples with ``judge``, beside chance and the ceiling of real held-out tiles.

    ``ceiling`` is ``(features, labels)`` of real held-out tiles; ``sets`` maps a name (a guidance scale, say) to
    ``(features, requested)``, one requested cluster per sample. Give the ceiling the same clusters in the same
    numbers as the samples, so that both are read at equal n and mix. k is the number of requested clusters."""
    real_features, real_labels = ceiling
    real_labels = np.asarray(real_labels)
    _checked(real_features, real_labels, "ceiling")
    k = len(np.unique(real_labels))
    if k < 2:
        raise ValueError(f"the ceiling needs held-out tiles of at least two clusters; got {np.unique(real_labels)}")
    scored = {CEILING: (real_features, real_labels)}
    for name, (features, requested) in sets.items():
        _checked(features, np.asarray(requested), f"set {name!r}")
        scored[name] = (features, np.asarray(requested))
    hits, rows, per_cluster = {}, [], []
    for name, (features, requested) in scored.items():
        assigned = judge.judge(features)
        hits[name] = assigned == requested
        score = controllability(requested, assigned, k, n_resamples=n_resamples, seed=seed)
        majority = float(np.unique(requested, return_counts=True)[1].max() / len(requested))
        rows.append({"set": name, "n": score["n"], "accuracy": score["accuracy"], "ci_low": score["ci_low"],
                     "ci_high": score["ci_high"], "chance": score["chance"], "chance_majority": majority})
        per_cluster += [{"set": name, "cluster": c, "n": int((requested == c).sum()), "accuracy": a}
                        for c, a in score["per_class"].items()]
    table = pd.DataFrame(rows)
    top = table["accuracy"].iloc[0]
    table["ceiling"] = top
    table["of_ceiling"] = table["accuracy"] / top if top > 0 else np.nan
    margin = top - table["chance_majority"]
    table["over_chance"] = ((table["accuracy"] - table["chance_majority"]) / margin).where(margin > 0)
    intervals = [_ratio_interval(hits[name], hits[CEILING], n_resamples, seed) for name in scored]
    table["of_ceiling_low"], table["of_ceiling_high"] = zip(*intervals)
    return JudgedControllability(table, pd.DataFrame(per_cluster))
