from __future__ import annotations

import numpy as np
import pytest

import pandas as pd

from histolab_utils.evaluation.floors import (ddpm_goals, floors, heldout_fid, ldm_goals, real_reference, score_samples,
                                             vqgan_goals)


def test_scores_and_floors_on_real_crops(real_data):
    reference = real_reference(image_size=32, n=8, seed=5)
    assert reference.train.shape == reference.heldout.shape == reference.validation.shape == (8, 32, 32, 3)
    floor = floors(reference)
    assert floor["n"] == 8 and floor["fid_train_vs_heldout"] > 0 and floor["fid_train_vs_train"] > 0
    assert floor["fid_train_vs_validation"] > 0
    noise = np.random.default_rng(0).integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
    scores = score_samples(noise, reference)
    assert scores["fid_vs_heldout"] > floor["fid_train_vs_heldout"]
    assert scores["fid_vs_validation"] > floor["fid_train_vs_validation"]
    # the validation score is against the validation draw: real validation crops score 0 there, not vs held-out
    itself = score_samples(reference.validation.copy(), reference)
    assert itself["fid_vs_validation"] == pytest.approx(0, abs=1e-3)
    assert itself["fid_vs_heldout"] > 1
    copies = score_samples(reference.train.copy(), reference)
    assert copies["near_copy_fraction"] == 1.0 and scores["near_copy_fraction"] == 0.0
    # Memorisation searches the crops the model trained on when they are given.
    trained_on = np.concatenate([noise[:3], reference.heldout])
    assert score_samples(noise, reference, training_crops=trained_on)["near_copy_fraction"] == 3 / 8
    with pytest.raises(ValueError, match="same n"):
        score_samples(noise[:4], reference)
    # the headline alone, for a second scoring of one model: the same number as score_samples'
    assert heldout_fid(noise, reference) == pytest.approx(scores["fid_vs_heldout"])
    with pytest.raises(ValueError, match="same n"):
        heldout_fid(noise[:4], reference)


def _ddpm_rows(fid_ddim: float, fid_dpm: float, colour: tuple[float, float, float], copies: float) -> pd.DataFrame:
    rows = []
    for schedule, prediction in (("cosine", "v_prediction"), ("linear", "epsilon")):
        for sampler, steps, fid in (("ddim", 50, fid_ddim), ("dpm", 20, fid_dpm)):
            worse = 3.0 if prediction == "epsilon" else 1.0  # the other model is much worse: never the one judged
            rows.append({"schedule": schedule, "prediction": prediction, "sampler": sampler, "steps": steps,
                         "fid_vs_heldout": fid * worse, "colour_r": colour[0], "colour_g": colour[1],
                         "colour_b": colour[2], "near_copy_fraction": copies})
    return pd.DataFrame(rows)


# The train region is darker than the held-out strip (split 3 measured about 9 levels): a property of the split.
TRAIN = {"mean_r": 170.0, "mean_g": 120.0, "mean_b": 182.0}
HELDOUT = {"mean_r": 179.0, "mean_g": 129.0, "mean_b": 187.0}
BEST = ("cosine", "v_prediction")


def test_ddpm_goals_judge_the_best_model_against_each_target():
    floor = {"fid_train_vs_heldout": 60.0}
    # colours within 2 levels of the training crops, 7 to 11 off the held-out ones: met (the old goal against
    # held-out at 8 levels failed this model, which learned its training data)
    met = ddpm_goals(_ddpm_rows(70.0, 75.0, (172, 118, 184), 0.0), floor, BEST, TRAIN, HELDOUT, plain_fid=74.0)
    goals = met[met["met"].notna()]
    assert goals["met"].astype(bool).all() and len(goals) == 7
    assert goals["measured"].tolist() == pytest.approx([70 / 60, 2.0, -2.0, 2.0, 75 / 70 - 1, 74 / 70 - 1, 0.0])
    assert all(goals["goal"].str.contains("training crops'")[1:4])
    missed = ddpm_goals(_ddpm_rows(90.0, 110.0, (160, 128, 190), 0.02), floor, BEST, TRAIN, HELDOUT, plain_fid=70.0)
    assert not missed[missed["met"].notna()]["met"].astype(bool).any()


def test_ddpm_goals_fail_a_model_that_matches_the_heldout_colour_and_report_the_splits_offset_beside_it():
    rows = _ddpm_rows(70.0, 75.0, (179, 129, 187), 0.0)  # the held-out strip's colour, not the training data's
    goals = ddpm_goals(rows, {"fid_train_vs_heldout": 60.0}, BEST, TRAIN, HELDOUT, plain_fid=70.0)
    colour = goals[goals["goal"].str.startswith("mean ") & goals["met"].notna()]
    assert colour["measured"].tolist() == pytest.approx([9.0, 9.0, 5.0])
    assert colour["met"].tolist() == [False, False, True]
    split = goals[goals["met"].isna()]  # reported, never judged: the regions' own difference
    assert split["measured"].tolist() == pytest.approx([9.0, 9.0, 5.0]) and (split["target"] == "reported").all()
    assert split["goal"].str.contains("the split's own offset, not a goal").all()


def test_ddpm_goals_plain_diffusers_agreement_is_two_sided_and_a_missing_model_is_named():
    rows = _ddpm_rows(70.0, 75.0, (170, 120, 182), 0.0)
    plain = "plain-diffusers ddim-50 FID of the saved best model over the package's, minus 1"
    for plain_fid, agrees in ((76.0, True), (63.5, True), (78.0, False), (60.0, False)):
        goals = ddpm_goals(rows, {"fid_train_vs_heldout": 60.0}, BEST, TRAIN, HELDOUT, plain_fid).set_index("goal")
        assert goals.loc[plain, "met"] is agrees and goals.loc[plain, "measured"] == pytest.approx(plain_fid / 70 - 1)
    with pytest.raises(ValueError, match="best_model"):
        ddpm_goals(rows, {"fid_train_vs_heldout": 60.0}, ("sigmoid", "v_prediction"), TRAIN, HELDOUT, 70.0)


def test_ldm_goals_judge_controllability_against_its_ceiling_and_each_clusters_fid_against_its_floor_both_ways():
    floor = pd.DataFrame({"class": [0, 1, 2, -1], "name": ["a", "b", "c", "all"], "fid": [40.0, 50.0, 60.0, 30.0]})
    scores = pd.DataFrame({"class": [0, 1, 2, 3, -1], "name": ["a", "b", "c", "d", "all"],
                           "fid": [46.0, 90.0, 30.0, np.nan, 60.0]})
    goals = ldm_goals(scores, floor, accuracy=0.75, ceiling=0.9).set_index("goal")
    assert len(goals) == 4  # controllability + the three scored clusters; the unscored and pooled rows are left out
    control = "controllability by the independent judge over its real ceiling"
    assert goals.loc[control, "measured"] == pytest.approx(0.75 / 0.9) and goals.loc[control, "met"]
    assert goals.loc["FID of cluster 'a' over its real floor", "met"]  # 46 / 40 = 1.15, within 1.2 either way
    assert not goals.loc["FID of cluster 'b' over its real floor", "met"]  # 90 / 50 = 1.8
    assert not ldm_goals(scores.assign(fid=[55.0, 55.0, 60.0, np.nan, 60.0]), floor, accuracy=0.75,
                         ceiling=0.9).set_index("goal").loc["FID of cluster 'a' over its real floor", "met"]  # 1.375
    assert not goals.loc["FID of cluster 'c' over its real floor", "met"]  # 30 / 60 = 0.5: below the floor, no win
    assert not ldm_goals(scores, floor, accuracy=0.5, ceiling=0.9)["met"].iloc[0]
    # a label-blind generator that always draws the commonest cluster (58 %) reaches 0.83 of a weak judge's 0.7
    blind = ldm_goals(scores, floor, accuracy=0.58, ceiling=0.7, chance=0.58).set_index("goal")
    assert blind.loc[control, "met"]
    margin = "controllability's margin over chance, as a share of the ceiling's"
    assert blind.loc[margin, "measured"] == pytest.approx(0.0) and not blind.loc[margin, "met"]
    assert ldm_goals(scores, floor, accuracy=0.68, ceiling=0.7, chance=0.58).set_index("goal").loc[margin, "met"]


def test_ldm_goals_fail_controllability_the_judge_files_more_surely_than_real_tiles():
    floor = pd.DataFrame({"class": [0, -1], "name": ["a", "all"], "fid": [40.0, 30.0]})
    scores = pd.DataFrame({"class": [0, -1], "name": ["a", "all"], "fid": [44.0, 33.0]})
    control = "controllability by the independent judge over its real ceiling"
    margin = "controllability's margin over chance, as a share of the ceiling's"
    # notebook 05's split-3 run: 0.997 of samples against a 0.895 ceiling, 1.11x (interval 1.07-1.16)
    exaggerated = ldm_goals(scores, floor, accuracy=0.997, ceiling=0.895, chance=0.395,
                            of_ceiling_low=1.07).set_index("goal")
    assert exaggerated.loc[control, "measured"] == pytest.approx(0.997 / 0.895)
    assert not exaggerated.loc[control, "met"] and not exaggerated.loc[margin, "met"]
    assert "not wholly above 1" in exaggerated.loc[control, "target"]
    # above 1 by sampling noise only (the interval reaches below 1) is real-like, and met
    assert ldm_goals(scores, floor, accuracy=0.92, ceiling=0.895, chance=0.395,
                     of_ceiling_low=0.97).set_index("goal").loc[[control, margin], "met"].all()
    # without the interval the goal is the one-sided one the issue wrote
    assert ldm_goals(scores, floor, accuracy=0.997, ceiling=0.895).set_index("goal").loc[control, "met"]


def test_vqgan_goals_compare_psnr_rfid_with_the_region_shift_codebook_use_and_the_baselines():
    scores = pd.DataFrame({"psnr": [25.0, 15.0, 22.0, 29.0], "rfid": [40.0, 120.0, 80.0, 20.0],
                           "codebook_usage": [0.95, np.nan, np.nan, np.nan]},
                          index=["VQ-GAN, 4 channels", "mean colour per tile", "bicubic down/up x4",
                                 "JPEG quality 75, 4:2:0 (reference)"])
    goals = vqgan_goals(scores, {"fid_train_vs_heldout": 60.0}, "VQ-GAN, 4 channels")
    assert goals["met"].all() and goals["measured"].tolist() == pytest.approx([25.0, 40 / 60, 0.95, 40.0])
    assert goals["target"].iloc[3] == "< 80.0"  # the JPEG reference is not a baseline the VQ-GAN must beat
    scores.loc["VQ-GAN, 4 channels"] = [23.0, 50.0, 0.5]  # 50 / 60 is over 0.75
    assert not vqgan_goals(scores, {"fid_train_vs_heldout": 60.0}, "VQ-GAN, 4 channels")["met"].iloc[:3].any()


def test_condition_matched_floor_rows_have_the_wanted_conditions():
    from histolab_utils.evaluation.floors import condition_matched

    pool = np.array([[1, 0], [1, 0], [0, 1], [1, 1]])
    wanted = np.array([[1, 0], [1, 0], [1, 0], [0, 1], [0, 0]])
    index, how = condition_matched(pool, wanted, seed=0)
    assert (pool[index[:4]] == wanted[:4]).all()
    assert set(index[:3]) == {0, 1}, "unused matches are taken before one is reused"
    assert index[4] in (0, 1, 2), "a missing condition takes the nearest one"
    assert how.to_dict() == {"exact": 3, "exact, reused": 1, "nearest": 1}
    with pytest.raises(ValueError, match="pool and wanted"):
        condition_matched(pool, wanted[:, :1])


def test_choose_best_model_follows_the_validation_draw_never_held_out():
    from histolab_utils.evaluation.choices import BEST_MODEL_RULE, choose_best_model

    rows = pd.DataFrame([
        # held-out would pick sigmoid, train would pick linear (memorised): validation picks cosine
        {"schedule": "linear", "prediction": "v_prediction", "sampler": "ddim", "fid_vs_validation": 70.0,
         "fid_vs_heldout": 72.0, "fid_vs_train": 40.0},
        {"schedule": "cosine", "prediction": "v_prediction", "sampler": "ddim", "fid_vs_validation": 61.0,
         "fid_vs_heldout": 66.0, "fid_vs_train": 60.0},
        {"schedule": "sigmoid", "prediction": "v_prediction", "sampler": "ddim", "fid_vs_validation": 64.0,
         "fid_vs_heldout": 60.0, "fid_vs_train": 62.0},
        {"schedule": "linear", "prediction": "epsilon", "sampler": "dpm", "fid_vs_validation": 30.0,
         "fid_vs_heldout": 30.0, "fid_vs_train": 30.0},  # another sampler's row never competes
        {"schedule": "linear", "prediction": "epsilon", "sampler": "ddim", "fid_vs_validation": float("nan"),
         "fid_vs_heldout": 50.0, "fid_vs_train": 50.0},  # no finite score: left out
    ])
    assert choose_best_model(rows) == ("cosine", "v_prediction")
    assert choose_best_model(rows, sampler="dpm") == ("linear", "epsilon")
    assert "validation" in BEST_MODEL_RULE and "DDIM" in BEST_MODEL_RULE
    with pytest.raises(ValueError, match="never on held-out"):
        choose_best_model(rows, column="fid_vs_heldout")
    with pytest.raises(ValueError, match="fid_vs_validation"):
        choose_best_model(rows.drop(columns="fid_vs_validation"))
    with pytest.raises(ValueError, match="'ddpm'"):
        choose_best_model(rows, sampler="ddpm")
