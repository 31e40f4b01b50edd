"""The independent judge of controllability on cases with a known answer: real held-out tiles reach its ceiling,
a label-blind or untrained generator (shuffled labels, noise, a constant image) scores chance, and bad input is
named."""

import numpy as np
import pytest

from histolab_utils.evaluation.cluster_judge import CEILING, ClusterJudge, judged_controllability
from histolab_utils.latent.stain_features import stain_features

K = 4


def _clusters(n_per_class: int, seed: int, spread: float = 1.2) -> tuple[dict, np.ndarray]:
    """K overlapping Gaussian clusters in 6-D (offset and scaled: the judge must standardise), plus a feature set
    that is pure noise in 64-D (a judge that reads it is at chance)."""
    rng = np.random.default_rng(seed)
    centres = np.zeros((K, 6))
    centres[np.arange(K), np.arange(K)] = 3.0
    labels = np.repeat(np.arange(K), n_per_class)
    informative = (centres[labels] + spread * rng.standard_normal((len(labels), 6))) * 10 + 50
    return {"informative": informative, "noise": rng.standard_normal((len(labels), 64))}, labels


@pytest.fixture(scope="module")
def judge() -> ClusterJudge:
    return ClusterJudge.fit(*_clusters(150, seed=0), *_clusters(50, seed=1))


def test_the_feature_set_and_regularisation_are_chosen_on_validation(judge):
    assert judge.features == "informative"
    assert len(judge.choices) == 2 * 3 and set(judge.choices["features"]) == {"informative", "noise"}
    noise = judge.choices[judge.choices["features"] == "noise"]["validation_accuracy"]
    assert noise.max() < 0.4 < judge.validation_accuracy  # the noise set is near 1/4 on tiles it did not see


def test_real_heldout_tiles_reach_the_ceiling_and_a_fresh_real_draw_matches_it(judge):
    heldout, fresh = _clusters(200, seed=2), _clusters(200, seed=3)  # fresh: a generator that returns real tiles
    scores = judged_controllability(judge, heldout, {"copies": heldout, "fresh real": fresh})
    ceiling = scores.at(CEILING)
    assert 0.6 < ceiling["accuracy"] < 0.95, "overlapping clusters: the judge misfiles some real tiles"
    assert scores.at("copies")["of_ceiling"] == 1.0 and scores.at("copies")["over_chance"] == 1.0
    real = scores.at("fresh real")
    assert real["ci_low"] <= ceiling["accuracy"] <= real["ci_high"]
    assert real["of_ceiling_low"] <= 1.0 <= real["of_ceiling_high"]
    assert ceiling["chance"] == 1 / K and ceiling["chance_majority"] == 1 / K
    per_cluster = scores.per_cluster[scores.per_cluster["set"] == CEILING]
    assert per_cluster["cluster"].tolist() == list(range(K)) and (per_cluster["n"] == 200).all()


def test_shuffled_labels_score_chance_and_fail_the_goal(judge):
    heldout = _clusters(200, seed=4)
    features, labels = _clusters(300, seed=5)
    shuffled = np.random.default_rng(6).permutation(labels)
    row = judged_controllability(judge, heldout, {"label-blind": (features, shuffled)}).at("label-blind")
    assert row["ci_low"] <= 1 / K <= row["ci_high"] and abs(row["accuracy"] - 1 / K) < 0.05
    assert row["of_ceiling_high"] < 0.8, "a label-blind generator must not reach 0.8 of the ceiling"
    assert abs(row["over_chance"]) < 0.1  # no margin over chance


def _tiles(cluster: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """16 px uint8 tiles of three stain mixes: haematoxylin-dense, eosin-pink, pale with sparse nuclei."""
    base = np.array([[110, 70, 160], [235, 150, 200], [240, 228, 238]], float)[cluster]
    tiles = base + rng.normal(0, 12, (n, 16, 16, 3))
    if cluster == 2:
        dots = rng.random((n, 16, 16)) < 0.05
        tiles[dots] = [90, 50, 140]
    return tiles.clip(0, 255).astype(np.uint8)


def test_an_untrained_generator_noise_or_one_colour_scores_no_better_than_chance():
    rng = np.random.default_rng(7)

    def real(n):
        labels = np.repeat(np.arange(3), n)
        return {"stain": stain_features(np.concatenate([_tiles(c, n, rng) for c in range(3)]))}, labels

    judge = ClusterJudge.fit(*real(40), *real(20))
    heldout = real(30)
    requested = heldout[1]
    noise = rng.integers(0, 256, (len(requested), 16, 16, 3), dtype=np.uint8)  # an untrained decoder's output
    grey = np.full((len(requested), 16, 16, 3), 200, np.uint8)  # a collapsed generator: one colour for every label
    scores = judged_controllability(judge, heldout, {"noise": ({"stain": stain_features(noise)}, requested),
                                                     "grey": ({"stain": stain_features(grey)}, requested)})
    assert scores.at(CEILING)["accuracy"] > 0.95
    for name in ("noise", "grey"):
        row = scores.at(name)
        assert row["accuracy"] <= row["chance_majority"] + 1e-9, name  # at most one cluster's share
        assert row["of_ceiling_high"] < 0.8 and row["over_chance"] <= 1e-9, name


def test_bad_input_is_named(judge):
    features, labels = _clusters(10, seed=8)
    with pytest.raises(ValueError, match="labels for 40 rows"):
        ClusterJudge.fit(features, labels[:-1], features, labels)
    with pytest.raises(ValueError, match="at least two clusters"):
        ClusterJudge.fit(features, np.zeros(40, int), features, labels)
    with pytest.raises(ValueError, match=r"'informative' must be a non-empty \[n, d\]"):
        ClusterJudge.fit({**features, "informative": features["informative"][:, 0]}, labels, features, labels)
    with pytest.raises(ValueError, match="one row per tile"):
        ClusterJudge.fit({**features, "noise": features["noise"][:5]}, labels, features, labels)
    with pytest.raises(ValueError, match="different feature sets"):
        ClusterJudge.fit(features, labels, {"informative": features["informative"]}, labels)
    with pytest.raises(ValueError, match="reads features 'informative'"):
        judge.judge({"noise": features["noise"]})
    with pytest.raises(ValueError, match=r"must be \[n, 6\]"):
        judge.judge({"informative": features["informative"][:, :5]})
    with pytest.raises(ValueError, match="ceiling needs held-out tiles of at least two clusters"):
        judged_controllability(judge, (features, np.zeros(40, int)), {})
    with pytest.raises(ValueError, match="set 2.0: .* labels for 40 rows"):
        judged_controllability(judge, (features, labels), {2.0: (features, labels[:3])})
    with pytest.raises(KeyError, match="no set 'missing'"):
        judged_controllability(judge, (features, labels), {}).at("missing")
