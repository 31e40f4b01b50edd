from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import make_blobs
from sklearn.metrics import calinski_harabasz_score, davies_bouldin_score, silhouette_score

from histolab_utils.latent.clustering import (
    ExpertLabelError,
    ExpertLabels,
    best_k,
    cluster,
    cluster_sweep,
    validation_indices,
)


def test_sklearn_indices_match_sklearn():
    X, labels = make_blobs(n_samples=60, centers=3, random_state=0)
    ours = validation_indices(X, labels)
    assert ours["silhouette"] == pytest.approx(silhouette_score(X, labels))
    assert ours["calinski_harabasz"] == pytest.approx(calinski_harabasz_score(X, labels))
    assert ours["davies_bouldin"] == pytest.approx(davies_bouldin_score(X, labels))


def test_hand_worked_example_one():
    """X = 0, 1 | 4, 5. Pairs: within 1, 1; between 4, 5, 3, 4.
    Dunn = 3 / 1; C-index: S_w = 2 = S_min -> 0; McClain-Rao = 1 / 4; W = 1, B = 16."""
    X = np.array([[0.0], [1.0], [4.0], [5.0]])
    ours = validation_indices(X, [0, 0, 1, 1])
    assert ours["dunn"] == pytest.approx(3.0)
    assert ours["c_index"] == pytest.approx(0.0)
    assert ours["mcclain_rao"] == pytest.approx(0.25)
    assert ours["hartigan"] == pytest.approx(math.log(16.0))


def test_hand_worked_example_two():
    """X = 0, 2 | 3, 7. Within pairs 2, 4 (S_w = 6); all pairs sorted 1 2 3 4 5 7, so S_min = 1 + 2 = 3
    and S_max = 5 + 7 = 12: C = 3/9. Dunn = min between (|2-3| = 1) / max diameter (4). McClain-Rao =
    mean within 3 / mean between (3 + 7 + 1 + 5)/4 = 4. Means 1 and 5, grand mean 3: W = 2 + 8 = 10,
    B = 2*4 + 2*4 = 16."""
    X = np.array([[0.0], [2.0], [3.0], [7.0]])
    ours = validation_indices(X, [0, 0, 1, 1])
    assert ours["c_index"] == pytest.approx(1 / 3)
    assert ours["dunn"] == pytest.approx(0.25)
    assert ours["mcclain_rao"] == pytest.approx(0.75)
    assert ours["hartigan"] == pytest.approx(math.log(16 / 10))


def test_two_dimensional_hand_example():
    """Unit square corners split left/right: within pairs are vertical edges (1, 1), between pairs are
    two horizontal edges (1) and two diagonals (sqrt 2). Dunn = 1/1, McClain-Rao = 1 / ((2 + 2 sqrt2)/4)."""
    X = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=float)
    ours = validation_indices(X, [0, 0, 1, 1])
    assert ours["dunn"] == pytest.approx(1.0)
    assert ours["mcclain_rao"] == pytest.approx(1 / ((2 + 2 * math.sqrt(2)) / 4))
    assert ours["c_index"] == pytest.approx(0.0)  # the within sum equals the two smallest distances


def test_sweep_finds_the_true_number_of_blobs():
    # Four equally separated blobs: every peaking index should pick 4. (Dunn is driven by the single
    # closest pair of clusters, and McClain-Rao and the C-index drift with k, so unevenly spaced
    # blobs or those two indices need not.)
    centres = [(0, 0), (10, 0), (0, 10), (10, 10)]
    X, _ = make_blobs(n_samples=120, centers=centres, cluster_std=0.5, random_state=1)
    table, partitions = cluster_sweep(X, ks=range(2, 7))
    assert set(table["method"]) == {"kmeans", "gmm", "agglomerative"} and set(table["k"]) == set(range(2, 7))
    assert len(partitions) == 15
    chosen = best_k(table)
    kmeans = chosen[chosen.method == "kmeans"].set_index("index")["best_k"]
    for index in ("silhouette", "calinski_harabasz", "davies_bouldin", "dunn"):
        assert kmeans[index] == 4, index
    # Hartigan's between-k statistic, checked against its formula on the sweep's own partitions.
    from histolab_utils.latent.clustering import within_between_ss

    w = {k: within_between_ss(X, partitions["kmeans", k])[0] for k in (3, 4)}
    h3 = table.query("method == 'kmeans' and k == 3 and index == 'hartigan_between_k'")["value"].item()
    assert h3 == pytest.approx((w[3] / w[4] - 1) * (len(X) - 3 - 1))


def test_bad_k_and_inputs():
    X = np.random.default_rng(0).normal(size=(5, 3))
    with pytest.raises(ValueError, match="k=6 is larger than the number of tiles"):
        cluster(X, "kmeans", 6)
    with pytest.raises(ValueError, match="k=9 is larger"):
        cluster_sweep(X, ks=[2, 9])
    with pytest.raises(ValueError, match="unknown clustering method"):
        cluster(X, "dbscan", 2)
    with pytest.raises(ValueError, match="2 <= clusters"):
        validation_indices(X, [0] * 5)


def test_expert_label_round_trip(tmp_path):
    tiles = [f"tile_{i:02d}" for i in range(8)]
    labels = ExpertLabels.from_clusters(tiles, [0, 0, 1, 1, 2, 2, 3, 3])
    labels.rename(0, "tumour")
    labels.rename(2, "stroma")
    labels.merge(2, 3)                    # cluster 3 joins stroma
    labels.move(["tile_02"], 0)           # one tile re-assigned by the expert
    path = labels.save(tmp_path / "expert_labels.csv")
    assert not list(tmp_path.glob(".*")), "no temporary file left"
    reloaded = ExpertLabels.load(path, tiles=tiles)
    assert reloaded == labels
    ids, names = reloaded.training_labels(tiles)
    assert names == ["tumour", "cluster 1", "stroma"]
    assert ids.tolist() == [0, 0, 0, 1, 2, 2, 2, 2]


def test_expert_label_errors(tmp_path):
    tiles = ["a", "b", "c"]
    labels = ExpertLabels.from_clusters(tiles, [0, 1, 1])
    with pytest.raises(ExpertLabelError, match="unknown cluster 7"):
        labels.rename(7, "x")
    with pytest.raises(ExpertLabelError, match="unknown tiles"):
        labels.move(["zzz"], 0)
    path = labels.save(tmp_path / "labels.csv")
    with pytest.raises(ExpertLabelError, match="unknown tiles"):
        ExpertLabels.load(path, tiles=["a", "b"])
    with pytest.raises(ExpertLabelError, match=r"unknown clusters \[1\]"):
        ExpertLabels.load(path, tiles=tiles, clusters=[0])
    (tmp_path / "bad.csv").write_text("tile,cluster,name\na,0,x\nb,0,y\n")
    with pytest.raises(ExpertLabelError, match="several names"):
        ExpertLabels.load(tmp_path / "bad.csv")


def test_choose_k_takes_the_majority_of_the_indices_and_the_smaller_k_on_ties():
    from histolab_utils.latent.clustering import choose_k

    best = pd.DataFrame({"method": ["kmeans"] * 6 + ["gmm"] * 2,
                         "index": ["a", "b", "c", "d", "hartigan", "e", "a", "b"],
                         "best_k": [3, 4, 4, 5, 6, 6, 2, 6]})  # hartigan's 6 does not vote
    assert choose_k(best, "kmeans") == 4
    assert choose_k(best, "gmm") == 2
    with pytest.raises(ValueError, match="no indices for method 'ward'"):
        choose_k(best, "ward")


def test_the_vote_is_told_as_it_went_with_its_tie_break():
    from histolab_utils.latent.clustering import describe_vote, k_votes

    best = pd.DataFrame({"method": ["kmeans"] * 7 + ["gmm"] * 2,
                         "index": ["silhouette", "dunn", "c_index", "mcclain_rao", "hartigan", "davies_bouldin",
                                   "calinski_harabasz", "a", "b"],
                         "best_k": [2, 2, 3, 3, 9, 5, 10, 4, 4]})
    votes = k_votes(best, "kmeans")
    assert votes.to_dict("records") == [{"k": 2, "votes": 2, "indices": "dunn, silhouette"},
                                        {"k": 3, "votes": 2, "indices": "c_index, mcclain_rao"},
                                        {"k": 5, "votes": 1, "indices": "davies_bouldin"},
                                        {"k": 10, "votes": 1, "indices": "calinski_harabasz"}]
    told = describe_vote(best, "kmeans")
    assert told.startswith("kmeans: 6 indices voted (hartigan does not vote: it grows with k): k = 2 by dunn, silhouette (2 votes); ")
    assert told.endswith("The most votes (2) went to k = 2 and k = 3; the tie goes to the smaller k: k = 2.")
    assert "k = 5 by davies_bouldin (1 vote);" in told
    assert describe_vote(best, "gmm").endswith("k = 4 has the most votes (2).")


def test_draw_per_cluster_is_a_seeded_random_draw_of_members_without_replacement():
    from histolab_utils.latent.clustering import draw_per_cluster

    labels = np.array(["a"] * 50 + ["b"] * 3)
    drawn = draw_per_cluster(labels, ["b", "a"], per_cluster=16, seed=3)
    assert list(drawn) == ["b", "a"] and sorted(drawn["b"]) == [50, 51, 52]
    assert len(set(drawn["a"])) == 16 and (labels[drawn["a"]] == "a").all()
    assert sorted(drawn["a"]) != list(range(16))  # not the first tiles in grid order
    assert all((x == y).all() for x, y in zip(drawn.values(), draw_per_cluster(labels, ["b", "a"], 16, 3).values()))
    assert any((x != y).any() for x, y in zip(drawn.values(), draw_per_cluster(labels, ["b", "a"], 16, 4).values()))
    with pytest.raises(ValueError, match="per_cluster must be at least 1, got 0"):
        draw_per_cluster(labels, ["a"], 0)


def test_smoke_runs_never_write_the_full_profile_expert_file(isolated_dirs, monkeypatch):
    from histolab_utils.latent.clustering import expert_labels_path

    monkeypatch.setenv("HISTO_DATA_DIR", str(isolated_dirs / "data"))
    assert expert_labels_path("full").name == "expert_labels.csv"
    assert expert_labels_path("smoke").name == "expert_labels.smoke.csv"


def test_the_cluster_gallery_shows_a_seeded_row_of_each_cluster():
    """Notebook 04's section 0: one row per cluster, its name and size in the title, tiles of that cluster only."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from histolab_utils.plotting import cluster_gallery

    ids = np.array([0, 1, 0, 2, 1, 0, 0])
    tiles = np.stack([np.full((4, 4, 3), 10 * (i + 1), np.uint8) for i in range(len(ids))])  # colour: which tile
    fig = cluster_gallery(tiles, ids, ["tumour", "stroma", "fat"], per_cluster=3, seed=0)
    axes = fig.axes
    assert [ax.get_title(loc="left") for ax in axes] == ["tumour: 4 tiles", "stroma: 2 tiles", "fat: 1 tiles"]
    for c, ax in enumerate(axes):
        shown = ax.images[0].get_array()
        members = {10 * (i + 1) for i in np.flatnonzero(ids == c)}
        assert shown.shape == (4, 12, 3) and set(np.unique(shown)) - {255} <= members  # white pads a short row
        assert len(set(np.unique(shown)) - {255}) == min(3, len(members))  # drawn without replacement
    again = cluster_gallery(tiles, ids, ["tumour", "stroma", "fat"], per_cluster=3, seed=0)
    assert all((a.images[0].get_array() == b.images[0].get_array()).all() for a, b in zip(axes, again.axes))
    plt.close("all")
