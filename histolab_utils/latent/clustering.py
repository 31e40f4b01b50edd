"""Clustering of latent features, cluster-validation indices, and expert relabelling.

Rumman et al. (2025) choose the number of clusters with several validation indices. Here each
index is computed from one partition ``labels`` of the rows of ``X`` (Euclidean distances):

* ``silhouette``, ``calinski_harabasz``, ``davies_bouldin``: scikit-learn's implementations.
* ``dunn`` (Dunn, 1974): smallest distance between points of different clusters over the largest
  cluster diameter. Higher is better.
* ``c_index`` (Hubert & Levin, 1976): (S_w - S_min) / (S_max - S_min), where S_w sums the N_w
  within-cluster pair distances and S_min / S_max sum the N_w smallest / largest of all pair
  distances. Lower is better.
* ``mcclain_rao`` (McClain & Rao, 1975): mean within-cluster pair distance over mean
  between-cluster pair distance. Lower is better.
* ``hartigan``: log(B / W), the between- over within-cluster sum of squares (the single-partition
  form of Hartigan's 1975 ratio). :func:`cluster_sweep` adds Hartigan's classic between-k
  statistic ``(W_k / W_{k+1} - 1)(n - k - 1)``, which needs the partition for k + 1 too.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from ..paths import atomic_path

INDEX_DIRECTION = {  # +1: higher is better, -1: lower is better
    "silhouette": 1, "calinski_harabasz": 1, "davies_bouldin": -1, "dunn": 1, "c_index": -1,
    "hartigan": 1, "mcclain_rao": -1,
}
METHODS = ("kmeans", "gmm", "agglomerative")
HARTIGAN_THRESHOLD = 10.0


def _check(X: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    X = np.asarray(X, dtype=np.float64)
    labels = np.asarray(labels)
    if X.ndim != 2 or len(X) != len(labels):
        raise ValueError(f"X must be [n, d] with one label per row; got X {X.shape} and {labels.shape} labels")
    k = len(np.unique(labels))
    if not 2 <= k < len(X):
        raise ValueError(f"validation indices need 2 <= clusters < samples; got {k} clusters for {len(X)} samples")
    return X, labels


def within_between_ss(X: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """(W, B): within- and between-cluster sums of squares (W + B = total)."""
    centre = X.mean(axis=0)
    within = between = 0.0
    for label in np.unique(labels):
        members = X[labels == label]
        mean = members.mean(axis=0)
        within += float(((members - mean) ** 2).sum())
        between += len(members) * float(((mean - centre) ** 2).sum())
    return within, between


def validation_indices(X: np.ndarray, labels: Sequence) -> dict[str, float]:
    """All seven indices for one partition; see the module docstring for definitions."""
    from scipy.spatial.distance import pdist
    from sklearn.metrics import calinski_harabasz_score, davies_bouldin_score, silhouette_score

    X, labels = _check(X, labels)
    distances = pdist(X)
    i, j = np.triu_indices(len(X), k=1)  # the pair order pdist uses
    same = labels[i] == labels[j]
    within, between = distances[same], distances[~same]
    n_within = len(within)
    ordered = np.sort(distances)
    s_min, s_max = ordered[:n_within].sum(), ordered[-n_within:].sum() if n_within else 0.0
    w_ss, b_ss = within_between_ss(X, labels)
    return {
        "silhouette": float(silhouette_score(X, labels)),
        "calinski_harabasz": float(calinski_harabasz_score(X, labels)),
        "davies_bouldin": float(davies_bouldin_score(X, labels)),
        "dunn": float(between.min() / within.max()) if n_within and within.max() > 0 else float("inf"),
        "c_index": float((within.sum() - s_min) / (s_max - s_min)) if s_max > s_min else 0.0,
        "hartigan": float(np.log(b_ss / w_ss)) if w_ss > 0 else float("inf"),
        "mcclain_rao": float(within.mean() / between.mean()) if n_within else 0.0,
    }


def cluster(X: np.ndarray, method: str, k: int, seed: int = 0) -> np.ndarray:
    """Labels from k-means, a Gaussian mixture or Ward agglomerative clustering."""
    from sklearn.cluster import AgglomerativeClustering, KMeans
    from sklearn.mixture import GaussianMixture

    if k > len(X):
        raise ValueError(f"k={k} is larger than the number of tiles ({len(X)})")
    if k < 2:
        raise ValueError(f"k must be at least 2, got {k}")
    if method == "kmeans":
        return KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(X)
    if method == "gmm":
        return GaussianMixture(n_components=k, covariance_type="diag", random_state=seed).fit_predict(X)
    if method == "agglomerative":
        return AgglomerativeClustering(n_clusters=k, linkage="ward").fit_predict(X)
    raise ValueError(f"unknown clustering method {method!r}; use one of {METHODS}")


def cluster_sweep(X: np.ndarray, ks: Iterable[int], methods: Iterable[str] = METHODS, seed: int = 0):
    """Cluster for every (method, k) and collect the indices in a tidy DataFrame.

    Returns (table, labels) where ``labels[(method, k)]`` is the partition. The table has one row
    per (method, k, index) with its value, plus Hartigan's between-k statistic where k + 1 was run.
    """
    ks = sorted(set(ks))
    if ks and ks[-1] > len(X):
        raise ValueError(f"k={ks[-1]} is larger than the number of tiles ({len(X)})")
    rows, partitions, within = [], {}, {}
    for method in methods:
        for k in ks:
            labels = cluster(X, method, k, seed)
            partitions[method, k] = labels
            within[method, k] = within_between_ss(np.asarray(X, float), labels)[0]
            for index, value in validation_indices(X, labels).items():
                rows.append({"method": method, "k": k, "index": index, "value": value})
        for k in ks:
            if (method, k + 1) in within and within[method, k + 1] > 0:
                value = (within[method, k] / within[method, k + 1] - 1) * (len(X) - k - 1)
                rows.append({"method": method, "k": k, "index": "hartigan_between_k", "value": value})
    return pd.DataFrame(rows), partitions


def best_k(table: pd.DataFrame) -> pd.DataFrame:
    """For each method and index, the k it prefers: the max or min of the index, and for
    Hartigan's between-k statistic his rule (the smallest k with H(k) <= 10)."""
    rows = []
    for (method, index), group in table.groupby(["method", "index"]):
        if index == "hartigan_between_k":
            # Hartigan's rule: the smallest k whose H(k) <= 10 (adding a cluster no longer pays).
            small = group[group["value"] <= HARTIGAN_THRESHOLD]
            best = small.loc[small["k"].idxmin()] if len(small) else group.loc[group["k"].idxmax()]
        else:
            direction = INDEX_DIRECTION[index]
            best = group.loc[group["value"].idxmax() if direction > 0 else group["value"].idxmin()]
        rows.append({"method": method, "index": index, "best_k": int(best["k"]), "value": best["value"]})
    return pd.DataFrame(rows)


NON_VOTING = ("hartigan",)  # log(B/W) grows with k by construction: its "best" is always the largest k


def k_votes(best: pd.DataFrame, method: str) -> pd.DataFrame:
    """How ``method``'s indices voted in :func:`best_k`'s table: one row per k that got a vote (ascending k), with
    the number of votes and the indices that cast them. Indices that move monotonically with k (``NON_VOTING``) do
    not vote."""
    voting = best[(best["method"] == method) & ~best["index"].isin(NON_VOTING)]
    if voting.empty:
        raise ValueError(f"no indices for method {method!r}; methods are {sorted(best['method'].unique())}")
    return (voting.groupby("best_k")["index"].agg(votes="size", indices=lambda names: ", ".join(sorted(names)))
            .rename_axis("k").reset_index())


def choose_k(best: pd.DataFrame, method: str) -> int:
    """A vote: the k that most of ``method``'s indices prefer in :func:`best_k`'s table (ties go to
    the smaller k, the simpler model). One index alone is easy to fool; several rarely agree by chance.
    Indices that move monotonically with k (``NON_VOTING``) do not vote."""
    votes = k_votes(best, method)
    return int(votes.loc[votes["votes"] == votes["votes"].max(), "k"].min())


def describe_vote(best: pd.DataFrame, method: str) -> str:
    """The vote of :func:`k_votes` in words, with how a tie was broken: e.g. "kmeans: 6 indices voted (hartigan does
    not vote: it grows with k): k = 2 by dunn, silhouette (2 votes); k = 3 by ... The most votes (2) went to k = 2 and
    k = 3; the tie goes to the smaller k: k = 2."."""
    votes = k_votes(best, method)
    top = votes[votes["votes"] == votes["votes"].max()]
    each = "; ".join(f"k = {row.k} by {row.indices} ({row.votes} vote{'s' if row.votes > 1 else ''})"
                     for row in votes.itertuples())
    chosen = choose_k(best, method)
    if len(top) == 1:
        outcome = f"k = {chosen} has the most votes ({top['votes'].iloc[0]})"
    else:
        tied = " and ".join(f"k = {k}" for k in top["k"])
        outcome = f"The most votes ({top['votes'].iloc[0]}) went to {tied}; the tie goes to the smaller k: k = {chosen}"
    return (f"{method}: {int(votes['votes'].sum())} indices voted ({', '.join(NON_VOTING)} does not vote: it grows with k): {each}. "
            f"{outcome}.")


def draw_per_cluster(labels: Sequence, clusters: Sequence, per_cluster: int, seed: int = 0) -> dict:
    """For each cluster of ``clusters`` (in that order), up to ``per_cluster`` indices of the tiles whose ``labels``
    entry is that cluster, drawn at random without replacement from one seeded generator: a fair look at a cluster,
    where its first tiles in grid order would show one corner of one image."""
    if per_cluster < 1:
        raise ValueError(f"per_cluster must be at least 1, got {per_cluster}")
    labels, rng = np.asarray(labels), np.random.default_rng(seed)
    drawn = {}
    for cluster in clusters:
        members = np.flatnonzero(labels == cluster)
        drawn[cluster] = rng.choice(members, size=min(per_cluster, len(members)), replace=False)
    return drawn


def expert_labels_path(profile: str) -> Path:
    """``data/expert_labels.csv`` for the full profile; smoke runs (CI) write their own
    ``data/expert_labels.smoke.csv`` so that they never overwrite an expert's work."""
    from ..paths import data_dir

    return data_dir() / ("expert_labels.csv" if profile == "full" else f"expert_labels.{profile}.csv")


class ExpertLabelError(ValueError):
    """An expert-labels file or edit that does not fit the tiles and clusters."""


@dataclass
class ExpertLabels:
    """Cluster assignment of each tile plus a name per cluster, editable by an expert.

    Edits: :meth:`rename`, :meth:`merge` and :meth:`move`. :meth:`save` writes a CSV (tile,
    cluster, name) atomically; :meth:`load` reads it back and checks it against the known tiles.
    """

    assignment: dict[str, int]
    names: dict[int, str] = field(default_factory=dict)

    @classmethod
    def from_clusters(cls, tiles: Sequence[str], labels: Sequence[int]) -> "ExpertLabels":
        if len(tiles) != len(labels):
            raise ExpertLabelError(f"{len(tiles)} tiles but {len(labels)} labels")
        if len(set(tiles)) != len(tiles):
            raise ExpertLabelError("tile ids must be unique")
        assignment = {str(t): int(c) for t, c in zip(tiles, labels)}
        return cls(assignment, {c: f"cluster {c}" for c in sorted(set(assignment.values()))})

    @property
    def clusters(self) -> list[int]:
        return sorted(set(self.assignment.values()))

    def _require_cluster(self, cluster: int) -> None:
        if cluster not in self.names:
            raise ExpertLabelError(f"unknown cluster {cluster}; clusters are {self.clusters}")

    def rename(self, cluster: int, name: str) -> None:
        self._require_cluster(cluster)
        if not name.strip():
            raise ExpertLabelError("a cluster name cannot be empty")
        self.names[cluster] = name.strip()

    def merge(self, keep: int, absorb: int) -> None:
        """Move every tile of ``absorb`` into ``keep``; ``keep``'s name stays."""
        self._require_cluster(keep)
        self._require_cluster(absorb)
        if keep == absorb:
            raise ExpertLabelError(f"cannot merge cluster {keep} with itself")
        for tile, cluster in self.assignment.items():
            if cluster == absorb:
                self.assignment[tile] = keep
        del self.names[absorb]

    def move(self, tiles: Iterable[str], cluster: int) -> None:
        self._require_cluster(cluster)
        tiles = list(tiles)
        unknown = [t for t in tiles if t not in self.assignment]
        if unknown:
            raise ExpertLabelError(f"unknown tiles {unknown[:5]}{' ...' if len(unknown) > 5 else ''}")
        for tile in tiles:
            self.assignment[tile] = cluster
        for empty in set(self.names) - set(self.assignment.values()):
            del self.names[empty]

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        with atomic_path(path, suffix=".csv") as tmp:
            with open(tmp, "w", newline="") as handle:
                writer = csv.writer(handle)
                writer.writerow(["tile", "cluster", "name"])
                for tile in sorted(self.assignment):
                    cluster = self.assignment[tile]
                    writer.writerow([tile, cluster, self.names[cluster]])
        return path

    @classmethod
    def load(cls, path: str | Path, tiles: Iterable[str] | None = None,
             clusters: Iterable[int] | None = None) -> "ExpertLabels":
        """Read a saved file; with ``tiles`` (and ``clusters``), reject ids that are not known."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"expert labels file does not exist: {path}")
        table = pd.read_csv(path, dtype={"tile": str})
        missing = {"tile", "cluster", "name"} - set(table.columns)
        if missing:
            raise ExpertLabelError(f"{path}: missing columns {sorted(missing)}")
        if table["tile"].duplicated().any():
            raise ExpertLabelError(f"{path}: tile {table['tile'][table['tile'].duplicated()].iloc[0]!r} appears twice")
        if tiles is not None:
            unknown = sorted(set(table["tile"]) - set(map(str, tiles)))
            if unknown:
                from ..data.datasets import SPLIT_VERSION

                raise ExpertLabelError(
                    f"{path} names {len(unknown)} unknown tiles, e.g. {unknown[:3]}: this tiling (its tile size, "
                    f"downsample and split {SPLIT_VERSION}, whose region boundaries drop the tiles that cross them) "
                    f"has no such tiles. A file made with another tile size or on an earlier split is stale: move it "
                    f"aside, and notebook 04 starts a new one from its clustering")
        if clusters is not None:
            unknown = sorted(set(table["cluster"]) - set(clusters))
            if unknown:
                raise ExpertLabelError(f"{path} names unknown clusters {unknown}")
        names = table.groupby("cluster")["name"].nunique()
        if (names > 1).any():
            raise ExpertLabelError(f"{path}: cluster {int(names[names > 1].index[0])} has several names")
        assignment = dict(zip(table["tile"], table["cluster"].astype(int)))
        return cls(assignment, dict(zip(table["cluster"].astype(int), table["name"].astype(str))))

    def training_labels(self, tiles: Sequence[str]) -> tuple[np.ndarray, list[str]]:
        """Class ids 0..K-1 for ``tiles`` (in that order) and the K class names, for training."""
        unknown = [t for t in tiles if t not in self.assignment]
        if unknown:
            raise ExpertLabelError(f"no expert label for tiles {unknown[:5]}")
        order = self.clusters
        index = {c: i for i, c in enumerate(order)}
        return np.array([index[self.assignment[t]] for t in tiles]), [self.names[c] for c in order]
