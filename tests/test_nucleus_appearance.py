"""Nucleus appearance (histolab_utils.evaluation.nucleus_appearance): known answers on drawn nuclei, and on the real
nuclei of hgsc_nest a second real draw scores near the floor while shrunk, painted and noise nuclei score far."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from skimage.draw import disk, ellipse

from histolab_utils.evaluation.nucleus_appearance import (
    FLOOR_ROW,
    HELDOUT_ROW,
    IMAGE_FEATURES,
    appearance_distance,
    appearance_goals,
    appearance_scores,
    appearance_shifts,
    area_distribution,
    mask_features,
    nucleus_features,
)

PALE, DARK = (235, 215, 230), (60, 30, 120)


def drawn(size: int = 96):
    """A pale tile with a dark disc of radius 8 (id 1), a dark ellipse 14 x 4 (id 2) and a disc cut by the top
    edge (id 3); types 1, 2, 3."""
    image = np.empty((size, size, 3), np.uint8)
    image[:] = PALE
    instances = np.zeros((size, size), np.int32)
    types = np.zeros((size, size), np.uint8)
    for label, (rows, cols) in enumerate([disk((30, 30), 8), ellipse(65, 60, 14, 4, rotation=0.5),
                                          disk((2, 80), 6, shape=(size, size))], start=1):
        instances[rows, cols], types[rows, cols], image[rows, cols] = label, label, DARK
    return image, instances, types


def test_a_disc_has_its_area_no_eccentricity_and_a_dark_nucleus_stands_out():
    table = nucleus_features(*drawn()).set_index("label")
    assert table.loc[1, "area"] == pytest.approx(np.pi * 8 ** 2, rel=0.05)
    assert table.loc[1, "eccentricity"] < 0.1
    assert table.loc[2, "eccentricity"] > 0.9  # 1 - (4 / 14)^2 under the root: 0.96
    assert (table.loc[[1, 2], "ring_contrast"] > 0.05).all()  # dark nucleus on pale background
    assert (table.loc[[1, 2], "h_std"] < 1e-6).all()  # painted flat: no texture
    assert table["type"].tolist() == [1, 2, 3]
    assert table["touches_border"].tolist() == [False, False, True]


def test_the_ring_leaves_other_nuclei_out_and_the_mask_path_agrees():
    image, instances, _ = drawn()
    # a pale nucleus touching the disc: the disc's ring must not count it as background
    rows, cols = disk((30, 41), 4)
    free = instances[rows, cols] == 0
    instances[rows[free], cols[free]], image[rows[free], cols[free]] = 4, (250, 250, 250)
    alone = nucleus_features(*drawn()).set_index("label")
    beside = nucleus_features(image, instances).set_index("label")
    assert beside.loc[1, "ring_contrast"] == pytest.approx(alone.loc[1, "ring_contrast"], rel=0.02)
    masks = mask_features(instances).set_index("label")
    pd.testing.assert_series_equal(masks["area"], beside["area"])
    assert "type" not in masks and "type" not in beside  # no type map, no type column


def test_fragments_are_flagged_and_left_out_of_the_distance():
    image, instances, types = drawn()
    table = nucleus_features(image, instances, types)
    whole = table[~table["touches_border"]]
    assert appearance_distance(table, whole)["mean"] == 0.0
    assert appearance_distance(table, whole, whole_only=False)["area"] > 0  # the fragment counted: not equal
    same = appearance_distance(table, table)
    assert list(same.index) == ["area", "eccentricity", "h_mean", "h_std", "ring_contrast", "mean"]
    assert (same == 0).all()


def test_bad_input_is_named():
    image, instances, types = drawn()
    with pytest.raises(ValueError, match="image"):
        nucleus_features(image[:-1], instances)
    with pytest.raises(ValueError, match="types"):
        nucleus_features(image, instances, types[:-1])
    with pytest.raises(ValueError, match="image must be RGB uint8"):
        nucleus_features(image.astype(np.float32), instances)
    with pytest.raises(ValueError, match="instances must be"):
        mask_features(instances > 0)
    with pytest.raises(ValueError, match="ring_width"):
        nucleus_features(image, instances, ring_width=0)
    table = nucleus_features(image, instances, types)
    empty = table.iloc[:0]
    with pytest.raises(ValueError, match="generated holds no whole nuclei"):
        appearance_distance(empty, table)
    with pytest.raises(ValueError, match="real holds no whole nuclei"):
        appearance_distance(table, table[table["touches_border"]])
    with pytest.raises(ValueError, match=r"sets\['empty'\]"):
        appearance_scores({"empty": empty}, table, table)
    with pytest.raises(ValueError, match="real_heldout"):
        appearance_scores({"a": table}, table, empty)
    with pytest.raises(ValueError, match="hold fewer"):
        appearance_scores({"a": table}, table, table, n=3)
    with pytest.raises(ValueError, match="no column"):
        appearance_distance(mask_features(instances), table, features=("h_mean",))
    with pytest.raises(ValueError, match="names the floor row"):
        appearance_scores({FLOOR_ROW: table}, table, table)


def test_the_shifts_say_which_way_a_set_differs_in_words():
    """Nuclei painted darker than the reference and flat read "darker" and "more uniform"; the reference itself
    reads "as real" with zero shifts; the area of nuclei drawn under the same masks does not move."""
    image, instances, types = drawn()
    rng = np.random.default_rng(0)
    textured = np.clip(image.astype(int) + rng.integers(-40, 41, image.shape), 0, 255).astype(np.uint8)
    real = nucleus_features(textured, instances, types)
    darker = textured.copy()
    darker[instances > 0] = (30, 10, 80)
    shifts = appearance_shifts({"dark and flat": nucleus_features(darker, instances, types)}, real)
    assert list(shifts.index) == ["dark and flat", HELDOUT_ROW]
    assert shifts.loc["dark and flat", "shift_h_mean"] > 0 and shifts.loc["dark and flat", "shift_h_std"] < 0
    assert shifts.loc["dark and flat", "shift_area"] == 0.0
    assert "darker" in shifts.loc["dark and flat", "reading"] and "more uniform" in shifts.loc["dark and flat", "reading"]
    assert (shifts.loc[HELDOUT_ROW, [f"shift_{f}" for f in IMAGE_FEATURES]] == 0).all()
    assert shifts.loc[HELDOUT_ROW, "reading"] == "as real"
    only_image = appearance_shifts({"a": real}, real, IMAGE_FEATURES)
    assert [c for c in only_image if c.startswith("shift_")] == [f"shift_{f}" for f in IMAGE_FEATURES]
    with pytest.raises(ValueError, match="reference row"):
        appearance_shifts({HELDOUT_ROW: real}, real)


# -- real nuclei: hgsc_nest's annotated regions ---------------------------------------------------------------------
def _eroded(instances: np.ndarray, radius: int) -> np.ndarray:
    """Every nucleus eroded by a disc of ``radius`` px (at 3 px the whole nuclei keep about 40 % of their area)."""
    from skimage.morphology import disk as footprint
    from skimage.morphology import erosion

    out = np.zeros_like(instances)
    for tile, labels in zip(out, instances):
        for label in np.unique(labels)[1:]:
            tile[erosion(labels == label, footprint(radius))] = label
    return out


@pytest.fixture(scope="module")
def nest(real_data):
    """hgsc_nest's non-overlapping tiles: train tiles split like a chequerboard into A (the floor's train nuclei) and
    B (a second, disjoint real draw), and the held-out tiles (the reference). Regions by name; the tile is half the
    narrowest held-out box's side (at most 256 px) so that each box is used whole."""
    from histolab_utils.data import load_image
    from histolab_utils.data.pairs import grid_pairs

    boxes = load_image("hgsc_nest").region_boxes("heldout")
    size = min(256, min(min(x1 - x0, y1 - y0) for x0, y0, x1, y1 in boxes) // 2)
    train = grid_pairs(size, "train", sources=("hgsc_nest",))
    heldout = grid_pairs(size, "heldout", sources=("hgsc_nest",))
    column, row = (np.unique(train.boxes[:, k], return_inverse=True)[1] for k in (0, 1))
    square = (column + row) % 2
    a, b = train.subset(np.flatnonzero(square == 0)), train.subset(np.flatnonzero(square == 1))

    def features(pairs, images=None, instances=None):
        return nucleus_features(pairs.images if images is None else images,
                                pairs.instances if instances is None else instances, pairs.types)

    shrunk = _eroded(b.instances.astype(np.int32), 3)
    dark = b.images.copy()
    dark[b.instances > 0] = (40, 20, 80)
    noise = np.random.default_rng(0).integers(0, 256, b.images.shape, dtype=np.uint8)
    sets = {"real B": features(b), "shrunk": features(b, instances=shrunk), "dark": features(b, images=dark),
            "noise": features(b, images=noise), "flat": features(b, images=np.full_like(b.images, (200, 150, 190)))}
    scores = appearance_scores(sets, features(a), features(heldout), seed=0)
    areas = area_distribution({"real B": (b.types, b.instances), "shrunk": (b.types, shrunk)},
                              (a.types, a.instances), (heldout.types, heldout.instances), seed=0)
    print(f"\ntile {size} px\n{scores.round(3).to_string()}\n{areas.round(3).to_string()}")
    return scores, areas


def test_a_second_real_draw_scores_near_the_floor(nest):
    scores, areas = nest
    assert scores["n"].nunique() == 1 and scores["n"].iloc[0] >= 50  # every row at one n
    assert 0 < scores.loc[FLOOR_ROW, "distance_lo"] <= scores.loc[FLOOR_ROW, "distance"] <= scores.loc[
        FLOOR_ROW, "distance_hi"]
    assert scores.loc["real B", "over_floor"] <= 1.5
    assert appearance_goals(scores, "real B", k=1.5)["met"].all()  # the mean and every feature
    assert areas.loc["real B", "over_floor"] <= 1.5


def test_shrunk_painted_and_noise_nuclei_score_far(nest):
    scores, areas = nest
    assert areas.loc["shrunk", "area_median"] < 0.5 * areas.loc["real B", "area_median"]
    assert areas.loc["shrunk", "over_floor"] > 2.0  # the area alone (notebook 06's masks) sees it
    goals = appearance_goals(scores, "shrunk").set_index("goal")["met"]
    assert not goals[goals.index.str.startswith("area distance")].iloc[0]
    assert scores.loc["dark", "over_floor"] > 2.0
    assert scores.loc["flat", "over_floor"] > 2.0


def test_an_untrained_generator_fails_the_goal(nest):
    """Noise under the real masks, the image an untrained generator makes, fails both the mean and the texture."""
    scores, _ = nest
    goals = appearance_goals(scores, ["noise", "flat"], k=1.5)
    mean_rows = goals[goals["goal"].str.startswith("mean appearance")]
    assert len(mean_rows) == 2 and not mean_rows["met"].any()
    assert scores.loc["noise", "over_floor"] > 4.0


# -- routes ranked by realism ---------------------------------------------------------------------------------------
def _scores(distances: dict[str, float]) -> pd.DataFrame:
    """An appearance_scores-like table: each set's distance, a narrow interval, over the floor's 0.5."""
    table = pd.DataFrame({name: {"distance": d, "distance_lo": d - 0.05, "distance_hi": d + 0.05}
                          for name, d in {**distances, FLOOR_ROW: 0.5}.items()}).T
    return table.assign(over_floor=table["distance"] / 0.5)


def test_the_ranking_does_not_reward_a_fidelity_above_real_pairs():
    """Notebook 08's head to head: painted routes far above the real pairs' Dice (0.82-0.85 against 0.60) rank by how
    real their nuclei are, not by their Dice; raising a Dice past real changes no rank and is flagged; a route whose
    image ignores its label (Dice at the mismatched floor) ranks last however real its nuclei."""
    from histolab_utils.evaluation.nucleus_appearance import realism_ranking

    scores = _scores({"joint": 0.7, "oracle": 1.1, "disks": 2.4, "blind": 1.0, "ignores label": 0.55})
    fidelity = {"joint": 0.605, "oracle": 0.821, "disks": 0.852, "blind": 0.84, "ignores label": 0.30}
    ranking = realism_ranking(scores, fidelity, reference=0.60, floor=0.31)
    assert ranking.index.tolist() == ["joint", "blind", "oracle", "disks", "ignores label", FLOOR_ROW]
    assert ranking["rank"].iloc[:-1].tolist() == [1, 2, 3, 4, 5] and pd.isna(ranking.loc[FLOOR_ROW, "rank"])
    flagged = ranking["fidelity"].str.startswith("flagged")
    assert flagged[["oracle", "disks", "blind"]].all() and not flagged[["joint", "ignores label"]].any()
    assert not ranking.loc["ignores label", "follows_label"]
    assert ranking.loc["disks", "dice_over_real_pairs"] == pytest.approx(0.852 / 0.60)
    higher = realism_ranking(scores, {**fidelity, "disks": 0.99, "joint": 0.62}, reference=0.60, floor=0.31)
    assert higher.index.tolist() == ranking.index.tolist()  # more Dice past real: no rank gained
    with pytest.raises(ValueError, match="must exceed the mismatched floor"):
        realism_ranking(scores, fidelity, reference=0.3, floor=0.31)
    with pytest.raises(ValueError, match="lack"):
        realism_ranking(scores, {"nowhere": 0.5}, reference=0.6, floor=0.3)


def test_pairs_scores_leave_a_set_with_too_few_nuclei_unscored():
    from histolab_utils.evaluation.nucleus_appearance import pairs_appearance_scores

    image, instances, types = drawn()
    images, inst, typ = (np.stack([a] * 8) for a in (image, instances, types))
    empty = (images, typ * 0, inst * 0)
    scores = pairs_appearance_scores({"same": (images, typ, inst), "empty": empty}, (images, typ, inst),
                                     (images, typ, inst), min_nuclei=4, draws=2)
    assert scores.loc["same", "distance"] == 0 and scores.loc["same", "whole"] == 16
    assert np.isnan(scores.loc["empty", "distance"]) and scores.loc["empty", "whole"] == 0
    assert not appearance_goals(scores, "empty")["met"].any()
    with pytest.raises(ValueError, match=r"sets\['bad'\] must be an \(images, types, instances\) triple"):
        pairs_appearance_scores({"bad": images}, empty, empty)
