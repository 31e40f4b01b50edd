"""Tiles and latent features for clustering, reference labels, and the cluster explorer's edits."""

import numpy as np
import pandas as pd
import pytest

from histolab_utils.data import HEImage
from histolab_utils.latent.clustering import ExpertLabels
from histolab_utils.latent.explorer import EXPERT, ClusterExplorer
from histolab_utils.latent.latents import external_agreement, grid_tiles, pool_features, standardise, tile_id


def _image(width=100, height=40, name="synthetic"):
    rng = np.random.default_rng(0)
    image = np.full((height, width, 3), 240, np.uint8)  # glass
    image[:, :60] = rng.integers(0, 255, size=(height, 60, 3))  # coloured tissue on the left
    return HEImage(name=name, image=image)


def test_grid_tiles_stay_inside_one_region_and_keep_only_tissue():
    tiles = grid_tiles([_image()], size=20, min_tissue=0.5)
    table = tiles.table
    # split at x = 75: train x in [0, 75) -> tiles at 0, 20, 40 (60 is glass); held-out [75, 100) -> 75 (glass).
    # The validation strip starts at y = 30: the row at y = 0 is train, the row at y = 20 reaches into it
    assert sorted(set(table["x"])) == [0, 20, 40] and set(table["region"]) == {"train", "validation"}
    assert set(table.loc[table["region"] == "train", "y"]) == {0} and set(table.loc[table["region"] == "validation", "y"]) == {20}
    assert all((x + 20 <= 75) for x in table["x"])
    assert table["tile_id"].iloc[0] == tile_id("synthetic", 0, 0, 20) == "synthetic/x00000_y00000_s20"
    first = table.iloc[0]
    assert np.array_equal(tiles.tiles[0], _image().image[first.y:first.y + 20, first.x:first.x + 20])
    assert len(grid_tiles([_image()], size=20, min_tissue=0.5, max_tiles=3)) == 3
    with pytest.raises(ValueError, match="no 20 px tile"):
        grid_tiles([_image()], size=20, min_tissue=1.01)


def test_downsampled_grid_tiles_cover_larger_windows_box_averaged():
    from histolab_utils.data.crops import box_downsample

    tiles = grid_tiles([_image()], size=10, min_tissue=0.5, downsample=2)
    table = tiles.table
    assert tiles.tiles.shape[1:] == (10, 10, 3) and set(table["window"]) == {20}
    assert sorted(set(table["x"])) == [0, 20, 40] and all(x + 20 <= 75 for x in table["x"])
    assert table["tile_id"].iloc[0] == "synthetic/x00000_y00000_s10_d2" != tile_id("synthetic", 0, 0, 10)
    first = table.iloc[0]
    assert np.array_equal(tiles.tiles[0], box_downsample(_image().image[first.y:first.y + 20, first.x:first.x + 20], 2))
    with pytest.raises(ValueError, match="downsample"):
        grid_tiles([_image()], size=10, downsample=0)


def test_pool_features_are_channel_means_and_stds():
    latents = np.arange(2 * 3 * 2 * 2, dtype=float).reshape(2, 3, 2, 2)
    features = pool_features(latents)
    assert features.shape == (2, 6)
    assert np.allclose(features[0, :3], [1.5, 5.5, 9.5]) and np.allclose(features[0, 3:], np.std([0, 1, 2, 3]))
    z = standardise(np.c_[features, np.ones(2)])
    assert np.allclose(z[:, :3].std(axis=0), 1) and np.all(z[:, 3:] == 0)  # constant columns stay 0
    with pytest.raises(ValueError, match=r"\[N, C, h, w\]"):
        pool_features(latents[0])


def test_external_agreement_is_one_for_a_perfect_match_and_skips_single_class_references():
    table = pd.DataFrame({"tile_id": list("abcd")})
    references = pd.DataFrame({"tile_id": list("abcd"), "tissue": ["x", "x", "y", "y"],
                               "nucleus_type": [None, "n", None, None]})
    agreement = external_agreement(table, np.array([5, 5, 7, 7]), references)
    assert list(agreement["reference"]) == ["tissue"]
    assert agreement["ari"].iloc[0] == pytest.approx(1) and agreement["nmi"].iloc[0] == pytest.approx(1)


@pytest.fixture
def explorer(tmp_path):
    rng = np.random.default_rng(0)
    ids = [f"t{i}" for i in range(12)]
    partitions = {("kmeans", 2): np.repeat([0, 1], 6), ("kmeans", 3): np.repeat([0, 1, 2], 4)}
    expert = ExpertLabels.from_clusters(ids, partitions["kmeans", 3])
    return ClusterExplorer(rng.normal(size=(12, 2)), rng.integers(0, 255, (12, 8, 8, 3), dtype=np.uint8), ids,
                           partitions, expert, tmp_path / "expert_labels.csv", gallery_size=3)


def test_explorer_edits_are_saved_and_reload(explorer):
    assert list(explorer.labels("kmeans", 2)) == [0] * 6 + [1] * 6
    assert len(explorer.members(0)) == 3  # the gallery holds at most gallery_size tiles
    explorer.rename(0, "stroma")
    explorer.merge(0, 2)
    path = explorer.move(["t5"], 0)
    reloaded = ExpertLabels.load(path, tiles=explorer.tile_ids)
    assert reloaded.names == {0: "stroma", 1: "cluster 1"}
    assert reloaded.assignment["t5"] == 0 and reloaded.assignment["t11"] == 0
    explorer.adopt("kmeans", 2)
    assert ExpertLabels.load(path).clusters == [0, 1]
    with pytest.raises(KeyError, match="no partition for method 'gmm'"):
        explorer.labels("gmm", 2)


def test_explorer_panel_buttons_edit_the_labels(explorer):
    panel = explorer.build()
    controls = explorer.controls
    assert controls["cluster"].value == 0 and len(controls["ticks"]) == 3
    controls["name"].value = "tumour"
    controls["rename"].click()
    assert ExpertLabels.load(explorer.expert_path).names[0] == "tumour"
    controls["ticks"][0][0].value = True
    moved = controls["ticks"][0][1]
    controls["into"].value = 1
    controls["move ticked to"].click()
    assert ExpertLabels.load(explorer.expert_path).assignment[moved] == 1
    controls["colouring"].value = "kmeans"
    assert controls["rename"].disabled and not controls["adopt partition"].disabled
    assert panel is explorer.build()


def test_headless_show_draws_without_widgets(explorer, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    monkeypatch.setenv("HISTO_HEADLESS", "1")
    axes = explorer.show()
    assert len(axes) == 2 and explorer._panel is None
    assert explorer.draw(EXPERT)[0].get_title().startswith("UMAP")
