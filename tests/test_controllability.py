"""Controllability on cases with a known answer: real tiles of each cluster reach the ceiling, a generator
that ignores its label reaches chance, and a perfect one reaches 1."""

import numpy as np
import pytest

from histolab_utils.evaluation.controllability import ClusterAssigner, controllability, controllability_table

K = 4


def _clusters(n_per_class: int, spread: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """K Gaussian clusters in 6-D (raw units, not standardised), centres 3 apart, ``spread`` the std."""
    rng = np.random.default_rng(seed)
    centres = np.zeros((K, 6))
    centres[np.arange(K), np.arange(K)] = 3.0
    labels = np.repeat(np.arange(K), n_per_class)
    features = centres[labels] + spread * rng.standard_normal((len(labels), 6))
    return features * 10 + 50, labels  # an offset and scale that standardisation must undo


@pytest.fixture(scope="module")
def assigner() -> ClusterAssigner:
    return ClusterAssigner.fit(*_clusters(200, spread=1.2, seed=0))


def test_real_heldout_tiles_of_each_cluster_give_the_ceiling(assigner):
    heldout = _clusters(300, spread=1.2, seed=1)
    fresh_draw = _clusters(300, spread=1.2, seed=2)  # a "generator" that returns new real tiles of the cluster
    table = controllability_table(assigner, {"copies": heldout, "fresh real": fresh_draw}, heldout)
    ceiling = table.iloc[0]
    assert 0.6 < ceiling["accuracy"] < 0.95, "overlapping clusters: the rule misfiles some real tiles"
    copies = table.set_index("set").loc["copies"]
    assert copies["accuracy"] == ceiling["accuracy"] and copies["of_ceiling"] == 1.0
    fresh = table.set_index("set").loc["fresh real"]
    assert fresh["ci_low"] <= ceiling["accuracy"] <= fresh["ci_high"]


def test_shuffled_labels_give_chance(assigner):
    features, labels = _clusters(1000, spread=1.2, seed=3)
    shuffled = np.random.default_rng(4).permutation(labels)
    score = controllability(shuffled, assigner.assign(features), K)
    assert score["chance"] == 1 / K
    assert score["ci_low"] <= 1 / K <= score["ci_high"]
    assert abs(score["accuracy"] - 1 / K) < 0.03


def test_well_separated_clusters_are_fully_controllable():
    assigner = ClusterAssigner.fit(*_clusters(100, spread=0.1, seed=5))
    features, labels = _clusters(50, spread=0.1, seed=6)
    score = controllability(labels, assigner.assign(features), K)
    assert score["accuracy"] == 1.0 and score["per_class"] == {c: 1.0 for c in range(K)}


def test_a_generator_stuck_on_one_cluster_scores_one_over_k(assigner):
    features, labels = _clusters(100, spread=0.1, seed=7)
    stuck = features[labels == 2][np.arange(len(labels)) % 100]  # always draws cluster 2
    score = controllability(labels, assigner.assign(stuck), K)
    assert score["per_class"][2] == 1.0 and score["per_class"][0] == 0.0
    assert score["accuracy"] == pytest.approx(1 / K)


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="one label each"):
        ClusterAssigner.fit(np.zeros((5, 3)), np.zeros(4))
    with pytest.raises(ValueError, match="two classes"):
        ClusterAssigner.fit(np.zeros((5, 3)), np.zeros(5))
    assigner = ClusterAssigner.fit(*_clusters(10, 0.1, 0))
    with pytest.raises(ValueError, match=r"\[n, 6\]"):
        assigner.assign(np.zeros((3, 5)))
    with pytest.raises(ValueError, match="equal-length"):
        controllability(np.zeros(3), np.zeros(4), K)
