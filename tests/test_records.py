"""The metrics records of notebooks 06, 07 and 08, built by their stages from what each notebook computed.

Each builder gets small tables of the right shape (the notebook's own score tables, checks and goals), writes the
record through a real notebook context into a scratch reports folder, and must hand back a typed record that
round-trips through ``to_json`` / ``from_json`` untouched."""

from __future__ import annotations

import json
import math
import time
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from histolab_utils.config import NotebookContext, load_config
from histolab_utils.data.layouts import Layouts
from histolab_utils.evaluation.mask_fidelity import FLOOR_MISMATCHED, FLOOR_REAL, REFERENCE_PAIRS
from histolab_utils.evaluation.nucleus_appearance import FLOOR_ROW
from histolab_utils.evaluation.nucleus_appearance import FLOOR_ROW as APPEARANCE_FLOOR
from histolab_utils.report import row_values, table_records
from histolab_utils.stages import stage

# through the registry, which loads every built-in stage in pipeline order (importing a stage's module first would
# register it ahead of the others); the modules' own functions are imported where a test needs them
MASKS, SPADE, JOINT = stage("masks"), stage("spade"), stage("joint")
MasksRecord, SpadeRecord, JointRecord = MASKS.record_type, SPADE.record_type, JOINT.record_type


def context(notebook: str, profile: str) -> NotebookContext:
    return NotebookContext(notebook=notebook, config=load_config(profile), device="cpu", started=time.perf_counter())


def checks_and_goals():
    checks = pd.DataFrame({"check": ["a beats b", "c under d"], "measured": [0.9, 1.5], "bar": [0.5, 2.0],
                           "passes": [True, True]})
    goals = pd.DataFrame({"goal": ["recall near the ceiling"], "target": [">= 0.9"], "measured": [0.95], "met": [True]})
    return checks, goals


def trainer(step=400, seconds=12.5):
    return SimpleNamespace(step=step, train_seconds=seconds)


def assert_round_trips(record, record_type, path):
    """The record is the file, typed, and goes back to it untouched."""
    written = json.loads(path.read_text())
    assert record.to_json() == written
    assert record_type.from_json(record.to_json()) == record
    # the notebook writes every field but the publisher's train_seconds_source, and released_model outside cpu
    unwritten = {"train_seconds_source"} | (set() if record.profile == "cpu" else {"released_model"})
    assert record.extra == {} and record.absent == unwritten & set(record_type.metric_names())


# -- notebook 06 ---------------------------------------------------------------------------------------------------
# what a held-out grid smaller than the profile's n_eval rests on (data.pairs.pairs_summary's keys)
HELDOUT = {"n": 7, "overlapping_pairs": 0, "distinct_nuclei": 31, "statement": "7 heldout pairs of 32 px, non-overlapping"}
CHOSEN, UNGUIDED, CEILING, FLOOR, BASELINE = ("generated, s = 2", "generated, s = 0", "ceiling: round trip",
                                              "floor: matched real", "baseline: ellipses")


def masks_inputs(**changes):
    columns = ["n", "recall", "precision", "f1", "morphology_fd", "single_type", "coverage", "edge_dice"]
    names = [CHOSEN, UNGUIDED, CEILING, FLOOR, BASELINE]
    scores = pd.DataFrame([[8, 0.9, 0.8, 0.85, 3.0, 0.99, 0.2, 0.7], [8, 0.6, 0.5, 0.55, 4.0, 0.98, 0.2, 0.7],
                           [8, 1.0, 1.0, 1.0, 0.5, 1.0, 0.2, 0.9], [8, 0.95, 0.9, 0.92, 1.0, 1.0, 0.2, math.nan],
                           [8, 0.7, 0.7, 0.7, 9.0, 1.0, 0.2, math.nan]], index=names, columns=columns, dtype=object)
    sweep = pd.DataFrame([[8, 0.6, 0.5, 0.55, 4.0, 0.98, 0.2], [8, 0.9, 0.8, 0.85, 3.0, 0.99, 0.2]],
                         index=pd.Index([0.0, 2.0], name="guidance_scale"), columns=columns[:-1])
    per_type = pd.DataFrame({"requested": [4, 3], "present": [4, 2], "recall": [1.0, 2 / 3], "precision": [0.8, 1.0]},
                            index=pd.MultiIndex.from_tuples([(CHOSEN, "neoplastic"), (CHOSEN, "connective")],
                                                            names=["set", "type"]))
    areas = pd.DataFrame({"n": [6, 6, pd.NA], "w_area": [0.9, 0.3, math.nan], "over_floor": [3.0, 1.0, math.nan],
                          "area_median": [20.0, 50.0, 48.0], "whole": [30, 40, 35], "fragments": [9, 20, 18]},
                         index=[CHOSEN, FLOOR_ROW, "real held-out"]).astype({"n": "Int64"})
    specks = pd.DataFrame([[8, 30, 3.0], [8, 22, 2.1]], index=pd.Index([0, 12], name="min_nucleus_px"),
                          columns=["n", "instances", "morphology_fd"])
    checks, goals = checks_and_goals()
    inputs = dict(heldout=HELDOUT, split_x=1234.4, validation_y=567.6, n_validation=8, guidance_scale=2.0, sweep=sweep, scores=scores,
                  min_nucleus_px=12, speck_sweep=specks,
                  per_type_accuracy=per_type, matching=pd.Series({"exact": 7, "nearest": 1}, name="rows"),
                  checks=checks, goals=goals, round_trip_recall=0.99, trainer=trainer(), run_folder=MASKS.run_folder("x"),
                  chosen=CHOSEN, unguided=UNGUIDED, ceiling=CEILING, floor=FLOOR, baseline=BASELINE, areas=areas)
    return {**inputs, **changes}


@pytest.mark.parametrize("profile", ["smoke", "cpu"])
def test_the_masks_record_is_built_written_and_typed(isolated_dirs, capsys, profile):
    record = MASKS.save_metrics(context("06_nuclei_masks", profile), **masks_inputs())
    path = isolated_dirs / "reports" / profile / "metrics" / "06_nuclei_masks.json"
    assert f"wrote {path}" in capsys.readouterr().out
    assert isinstance(record, MasksRecord) and record.profile == profile
    assert_round_trips(record, MasksRecord, path)
    assert record.stamp.headline == [*MasksRecord.HEADLINE, "n", "guidance_scale"]
    assert record.headline_values() == {"overall_recall": 0.9, "overall_precision": 0.8, "ceiling_recall": 1.0,
                                        "unguided_recall": 0.6, "morphology_fd": 3.0, "floor_morphology_fd": 1.0,
                                        "baseline_morphology_fd": 9.0, "area_over_floor": 3.0}
    assert (record.area_median, record.heldout_area_median) == (20.0, 48.0)
    assert record.nucleus_area["real held-out"]["n"] is None and record.nucleus_area[FLOOR_ROW]["whole"] == 40
    assert record.split.startswith("HGSC slide, right 25 % held out (level-0 x >= 1234)") and "(y >= 568)" in record.split
    assert record.heldout_scores[FLOOR]["edge_dice"] is None and record.heldout_scores[CHOSEN]["edge_dice"] == 0.7
    assert list(record.validation_sweep) == ["0.0", "2.0"] and record.n_validation == 8
    assert record.conditioning_per_type == {f"{CHOSEN} | neoplastic": {"recall": 1.0, "precision": 0.8},
                                            f"{CHOSEN} | connective": {"recall": 2 / 3, "precision": 1.0}}
    assert record.checks[0]["bar"] == "0.5" and record.floor_matching == {"exact": 7, "nearest": 1}
    assert (record.train_steps, record.train_seconds, record.device) == (400, 12.5, "cpu")
    assert record.pipeline.endswith("masks/pipeline")
    section = load_config(profile).masks
    assert (record.tile_size, record.profile_guidance_scale) == (section.tile_size, section.guidance_scale)
    # n is the held-out set's size (a grid may hold fewer tiles than n_eval), beside what it rests on
    assert record.n == 7 != section.n_eval and record.heldout == HELDOUT
    # only a released profile's record names the release make results makes of it
    assert record.released_model == (MASKS.release_name("cpu") if profile == "cpu" else None)
    assert ("released_model" in record.to_json()["metrics"]) == (profile == "cpu")


def test_the_masks_card_shows_the_whole_nucleus_area_beside_its_floor_when_the_record_has_it(isolated_dirs):
    record = MASKS.save_metrics(context("06_nuclei_masks", "cpu"), **masks_inputs())
    card = MASKS.card(record, "", "masks-cpu")
    assert "## Whole-nucleus area" in card
    assert f"| {CHOSEN} | 6 | 0.900 | 3.00 | 20 | 30 | 9 |" in card and f"| {FLOOR_ROW} | 6 | 0.300 | 1.00 |" in card
    older = MasksRecord.from_json({**record.to_json(), "metrics": {
        k: v for k, v in record.to_json()["metrics"].items() if k not in MasksRecord.ADDED_SINCE_PUBLISHED}})
    assert "Whole-nucleus area" not in MASKS.card(older, "", "masks-cpu")
    assert f"The held-out set: {HELDOUT['statement']}." in card and "The held-out set" not in MASKS.card(older, "", "masks-cpu")


def test_the_masks_record_names_a_missing_input(isolated_dirs):
    ctx = context("06_nuclei_masks", "smoke")
    inputs = masks_inputs()
    del inputs["sweep"]
    with pytest.raises(TypeError, match="sweep"):
        MASKS.save_metrics(ctx, **inputs)
    with pytest.raises(KeyError, match="baseline: ellipses"):
        MASKS.save_metrics(ctx, **masks_inputs(scores=masks_inputs()["scores"].drop(index=BASELINE)))
    with pytest.raises(KeyError, match="whole-nucleus area table lacks the rows"):
        MASKS.save_metrics(ctx, **masks_inputs(areas=masks_inputs()["areas"].drop(index="real held-out")))
    assert not (isolated_dirs / "reports" / "smoke" / "metrics" / "06_nuclei_masks.json").exists()


# -- notebook 07 ---------------------------------------------------------------------------------------------------
def spade_inputs(tmp_path, guidance_scale=1.5, latent_guidance_scale=2.0, **changes):
    g, lg = f"{guidance_scale:g}", f"{latent_guidance_scale:g}"  # each space is sampled at its own chosen scale
    names = [FLOOR_REAL, REFERENCE_PAIRS, FLOOR_MISMATCHED, f"pixel, real masks, s = {g}", "pixel, real masks, s = 0",
             f"pixel, generated masks, s = {g}", f"latent, real masks, s = {lg}", f"latent, generated masks, s = {lg}"]
    scores = pd.DataFrame({"fid": [10.0, math.nan, math.nan, 40.0, 60.0, 45.0, 50.0, 55.0],
                           "kid": [0.01, math.nan, math.nan, 0.04, 0.06, 0.05, 0.05, 0.05],
                           "dice": [math.nan, 0.7, 0.3, 0.5, 0.35, 0.45, 0.4, 0.4], "n": [8] * 8}, index=names)
    sweep = pd.DataFrame({"fid": [60.0, 40.0], "kid": [0.06, 0.04], "dice": [0.35, 0.5], "n": [4, 4],
                          "dice_std": [0.1, 0.1], "appearance": [3.0, 1.2]},
                         index=pd.Index([0.0, guidance_scale], name="guidance_scale"))
    samplers = pd.DataFrame({"fid": [40.0, 42.0], "kid": [0.04, 0.05], "dice": [0.5, 0.5], "n": [4, 4],
                             "dice_std": [0.1, 0.1]}, index=["DDIM", "DDPM (learned variance)"])
    latent_sweep = sweep.set_axis([0.0, latent_guidance_scale]).rename_axis("guidance_scale") + 1.0
    latent_samplers = samplers.iloc[::-1] * 2
    choices = {"pixel": SimpleNamespace(guidance_scale=guidance_scale, sampler="DDIM", sweep=sweep,
                                        sampler_scores=samplers),
               "latent": SimpleNamespace(guidance_scale=latent_guidance_scale, sampler="DDPM (learned variance)",
                                         sweep=latent_sweep, sampler_scores=latent_samplers)}
    inpainting = pd.DataFrame({"n": [16, 16], "margin": [0.2, 0.1], "margin_lo": [0.1, -0.05], "margin_hi": [0.3, 0.2],
                               "seam ratio": [1.1, 1.3], "seconds per image": [9.0, 3.0]},
                              index=pd.MultiIndex.from_tuples([("pixel", "RePaint", "add inflammatory"),
                                                               ("pixel", "DDIM variant", "add inflammatory")]))
    appearance = pd.DataFrame({"n": [30] * 3, "draws": [20] * 3, "distance": [0.8, 1.2, 0.4],
                               "distance_lo": [0.7, 1.0, 0.3], "distance_hi": [0.9, 1.4, 0.5],
                               "over_floor": [2.0, 3.0, 1.0], "w_h_mean": [0.5, 0.9, 0.3]},
                              index=pd.Index([f"pixel, real masks, s = {g}", f"latent, real masks, s = {lg}",
                                              APPEARANCE_FLOOR], name="set"))
    shifts = pd.DataFrame({"whole": [40, 40, 35, 50], "h_mean": [0.3, 0.2, 0.15, 0.16],
                           "shift_h_mean": [2.5, 0.7, -0.2, 0.0],
                           "reading": ["darker (+2.5)", "darker (+0.7)", "as real", "as real"]},
                          index=[*appearance.index, "real held-out"])
    checks, goals = checks_and_goals()
    inputs = dict(heldout=HELDOUT, n_validation=4, choices=choices, mask_guidance_scale=2.0, scores=scores, appearance=appearance, appearance_shifts=shifts,
                  detector=SimpleNamespace(threshold=0.25), checks=checks,
                  goals=goals, inpainting=inpainting, speed_ratio={"pixel": 3.0, "latent": 2.5},
                  trainers={"pixel": trainer(300, 20.0), "latent": trainer(200, 10.0)},
                  gallery=tmp_path / "07_mask_to_image-gallery.png")
    return {**inputs, **changes}


@pytest.mark.parametrize("profile", ["smoke", "cpu"])
def test_the_spade_record_is_built_written_and_typed(isolated_dirs, profile):
    record = SPADE.save_metrics(context("07_mask_to_image", profile), **spade_inputs(isolated_dirs))
    assert isinstance(record, SpadeRecord)
    assert_round_trips(record, SpadeRecord, isolated_dirs / "reports" / profile / "metrics" / "07_mask_to_image.json")
    assert record.stamp.headline == [*SpadeRecord.HEADLINE, "n", "guidance_scale", "sampler", "latent_guidance_scale",
                                     "latent_sampler"]
    assert record.headline_values() == {"fid": 40.0, "floor_fid": 10.0, "appearance_over_floor": 2.0,
                                        "appearance_over_floor_latent": 3.0, "fidelity_dice": 0.5,
                                        "fidelity_dice_reference": 0.7, "fidelity_dice_floor": 0.3,
                                        "inpainting_speed_ratio_pixel": 3.0}
    assert record.appearance[APPEARANCE_FLOOR]["distance"] == 0.4 and record.appearance[APPEARANCE_FLOOR]["n"] == 30.0
    assert record.gallery == "07_mask_to_image-gallery.png", "the published name, not this machine's path"
    assert record.appearance_shifts["pixel, real masks, s = 1.5"] == {"whole": 40.0, "h_mean": 0.3,
                                                                      "shift_h_mean": 2.5, "reading": "darker (+2.5)"}
    # a set's NaN scores are left out of its row; the validation tables keep their four columns, NaN as None
    assert record.fidelity_reference_real_pairs == {"dice": 0.7, "n": 8.0}
    assert record.floor_real_vs_real == {"fid": 10.0, "kid": 0.01, "n": 8.0}
    assert record.validation_guidance_sweep == {
        "0.0": {"fid": 60.0, "kid": 0.06, "dice": 0.35, "appearance": 3.0, "n": 4.0},
        "1.5": {"fid": 40.0, "kid": 0.04, "dice": 0.5, "appearance": 1.2, "n": 4.0}}
    assert list(record.validation_samplers) == ["DDIM", "DDPM (learned variance)"]
    # each space's own choice, made by one rule on the validation pairs; its held-out sets sampled with it
    assert (record.guidance_scale, record.sampler) == record.sampling("pixel") == (1.5, "DDIM")
    assert record.sampling("latent") == (2.0, "DDPM (learned variance)") and record.has_own_choice("latent")
    assert record.latent_validation_guidance_sweep["2.0"] == {"fid": 41.0, "kid": 1.04, "dice": 1.5,
                                                              "appearance": 2.2, "n": 5.0}
    assert list(record.latent_validation_samplers) == ["DDPM (learned variance)", "DDIM"]
    assert record.latent_real_masks == {"fid": 50.0, "kid": 0.05, "dice": 0.4, "n": 8.0}
    assert record.inpainting["pixel | RePaint | add inflammatory"]["seconds per image"] == 9.0
    assert record.inpainting["pixel | RePaint | add inflammatory"]["margin_lo"] == 0.1
    assert record.n == 7 and record.heldout["distinct_nuclei"] == 31
    assert record.repaint == dict(zip(("t_T", "jump_length", "jump_n_sample"), load_config(profile).spade.repaint))
    assert record.train_steps == {"pixel": 300, "latent": 200} and record.detector_threshold == 0.25
    assert record.released_model == ({s: SPADE.release_name("cpu", s) for s in ("pixel", "latent")}
                                     if profile == "cpu" else None)
    assert ("released_model" in record.to_json()["metrics"]) == (profile == "cpu")


def test_the_spade_record_names_a_missing_input(isolated_dirs):
    ctx = context("07_mask_to_image", "smoke")
    inputs = spade_inputs(isolated_dirs)
    del inputs["inpainting"]
    with pytest.raises(TypeError, match="inpainting"):
        SPADE.save_metrics(ctx, **inputs)
    scores = spade_inputs(isolated_dirs)["scores"].drop(index="latent, generated masks, s = 2")
    with pytest.raises(KeyError, match="latent, generated masks, s = 2"):
        SPADE.save_metrics(ctx, **spade_inputs(isolated_dirs, scores=scores))
    appearance = spade_inputs(isolated_dirs)["appearance"].drop(index="latent, real masks, s = 2")
    with pytest.raises(KeyError, match="latent, real masks, s = 2"):
        SPADE.save_metrics(ctx, **spade_inputs(isolated_dirs, appearance=appearance))
    with pytest.raises(KeyError, match=r"choices lack the space\(s\) \['latent'\]"):
        SPADE.save_metrics(ctx, **spade_inputs(isolated_dirs, choices={"pixel": spade_inputs(isolated_dirs)["choices"]["pixel"]}))
    assert not (isolated_dirs / "reports" / "smoke" / "metrics" / "07_mask_to_image.json").exists()


def test_each_spade_card_states_its_models_own_choice_beside_the_other_models(isolated_dirs):
    """Both models' guidance and sampler were chosen on the validation pairs by one rule: each card says its own,
    the other's and the rule, and its usage samples with its own; a record made before that says the latent model
    took DDIM at the pixel model's guidance."""
    record = SPADE.save_metrics(context("07_mask_to_image", "cpu"), **spade_inputs(isolated_dirs))
    pixel, latent = (SPADE.card(record, space, SPADE.release_name("cpu", space)) for space in ("pixel", "latent"))
    steps = load_config("cpu").spade.sampler_steps
    assert (f"The guidance (1.5) and the sampler (DDIM, {steps} network calls) were chosen for this model on 4 "
            "validation pairs, by the rule both SPADE models share (the latent model's choice: guidance 2, sampler "
            "DDPM (learned variance)): with DDIM, the guidance scale of the most real nuclei") in pixel
    assert (f"The guidance (2) and the sampler (DDPM (learned variance), {steps} network calls) were chosen for this "
            "model on 4 validation pairs, by the rule both SPADE models share (the pixel model's choice: guidance 1.5, "
            "sampler DDIM)") in latent
    assert 'named_sampler("DDPM (learned variance)"' in latent and "guidance_scale=2," in latent
    assert "| model, real held-out masks | 1.200 |" in latent  # its appearance row: the set at its own scale
    same_scale = SPADE.save_metrics(context("07_mask_to_image", "cpu"),  # older records sampled both at one scale
                                    **spade_inputs(isolated_dirs, latent_guidance_scale=1.5)).to_json()
    older = SpadeRecord.from_json({**same_scale, "metrics": {
        k: v for k, v in same_scale["metrics"].items() if k not in SpadeRecord.ADDED_SINCE_PUBLISHED
        or not k.startswith("latent_")}})
    assert older.sampling("latent") == (1.5, "DDIM") and not older.has_own_choice("latent")
    assert older.explained_absences() >= {"latent_guidance_scale", "latent_sampler"}
    old_latent = SPADE.card(older, "latent", "spade-latent-cpu")
    assert "It samples with the pixel model's guidance (1.5)" in old_latent and 'named_sampler("DDIM"' in old_latent
    assert "were chosen for this model on 4 validation pairs." in SPADE.card(older, "pixel", "spade-pixel-cpu")
    with pytest.raises(ValueError, match="the SPADE models are"):
        record.sampling("both")


# -- notebook 08 ---------------------------------------------------------------------------------------------------
HEADLINE_SET = "joint, held-out layouts, s = 2"


def joint_module():
    from histolab_utils.stages import joint

    return joint


def saved_model(folder, steps):
    folder.mkdir(parents=True)
    (folder / "histolab_train_config.json").write_text(json.dumps({"steps": steps, "batch_size": 4}))
    return folder


def joint_inputs(tmp_path, **changes):
    two_stage = [joint_module().ORACLE, "two-stage, disks at the layout", "two-stage, notebook 06 mask (layout-blind)"]
    joint = [HEADLINE_SET, "joint, held-out layouts, s = 0", "joint, slide polygons layouts, s = 2"]
    names = [FLOOR_REAL, REFERENCE_PAIRS, FLOOR_MISMATCHED, *joint, *two_stage]
    rng = np.random.default_rng(0)
    table = pd.DataFrame(rng.uniform(0.1, 0.9, (len(names), 6)), index=names,
                         columns=["fid", "kid", "dice", "located_fraction", "typed_fraction", "spurious_per_tile"])
    table.loc[[REFERENCE_PAIRS, FLOOR_MISMATCHED], ["fid", "kid", "located_fraction"]] = math.nan
    table.loc[[REFERENCE_PAIRS, FLOOR_MISMATCHED], "dice"] = [0.6, 0.3]
    table["n"] = 8
    appearance, ranking = joint_appearance([*joint, *two_stage], table)
    sweep = pd.DataFrame({"fid": [50.0, 40.0], "kid": [0.05, 0.04], "dice": [0.3, math.nan], "n": [4, 4]},
                         index=[0.0, 2.0])
    layouts = Layouts((np.array([[1, 2, 1], [3, 3, 2]]), np.zeros((0, 3), np.int64)), 8)
    checks, goals = checks_and_goals()
    inputs = dict(heldout=HELDOUT, n_validation=4, guidance_scale=2.0, sweep=sweep, spade_guidance_scale=1.5, mask_guidance_scale=2.0,
                  slide_area_scale=1.05, slide_downsample=2.0, checks=checks, goals=goals, table=table,
                  runs={name: None for name in [*joint, *two_stage]}, headline_set=HEADLINE_SET,
                  head_to_head_sets=[HEADLINE_SET, *two_stage], empty_adherence={"spurious_per_tile": np.float64(0.25)},
                  detector=SimpleNamespace(threshold=0.25), disk_radius=2.5, trainer=trainer(500, 30.0),
                  sampling_seconds=4.0, mask_pipeline=saved_model(tmp_path / "masks" / "pipeline", 400),
                  spade_pipeline=saved_model(tmp_path / "spade-pixel" / "pipeline", 300),
                  sources={"(a) held-out real": (layouts, np.array([0, 1]))}, gallery=tmp_path / "gallery.png",
                  appearance=appearance, ranking=ranking)
    return {**inputs, **changes}


def joint_appearance(names, table):
    """A pairs_appearance_scores-like table for the routes ``names`` (the last one unscored: too few nuclei) and the
    routes ranked by realism, with the label Dice of ``table`` as the check."""
    from histolab_utils.evaluation.nucleus_appearance import FLOOR_ROW, realism_ranking

    distance = np.linspace(0.4, 1.6, len(names) + 1)
    appearance = pd.DataFrame({"n": 30, "draws": 20, "distance": distance, "distance_lo": distance - 0.1,
                               "distance_hi": distance + 0.1, "over_floor": distance / distance[-1],
                               "w_area": distance / 2, "whole": 40}, index=[*names, FLOOR_ROW])
    appearance.loc[names[-1], ["n", "distance", "distance_lo", "distance_hi", "over_floor", "w_area"]] = math.nan
    ranking = realism_ranking(appearance, table.loc[names, "dice"].to_dict(), 0.6, 0.3)
    return appearance, ranking


@pytest.mark.parametrize("profile", ["smoke", "cpu"])
def test_the_joint_record_is_built_written_and_typed(isolated_dirs, profile):
    inputs = joint_inputs(isolated_dirs)
    record = JOINT.save_metrics(context("08_joint_synthesis", profile), **inputs)
    assert isinstance(record, JointRecord)
    assert_round_trips(record, JointRecord, isolated_dirs / "reports" / profile / "metrics" / "08_joint_synthesis.json")
    assert record.stamp.headline == [*JointRecord.HEADLINE, "n"]
    assert record.gallery == "gallery.png", "the published name, not this machine's path"
    table = inputs["table"]
    oracle = joint_module().ORACLE
    assert record.fid == table.loc[HEADLINE_SET, "fid"] and record.two_stage_oracle_fid == table.loc[oracle, "fid"]
    assert record.label_dice_floor == table.loc[FLOOR_MISMATCHED, "dice"]
    assert list(record.joint) == [HEADLINE_SET, "joint, held-out layouts, s = 0", "joint, slide polygons layouts, s = 2"]
    assert list(record.head_to_head) == inputs["head_to_head_sets"]
    assert "fid" not in record.label_consistency_reference_real_pairs  # NaN scores are left out
    assert record.validation_sweep == {"0": {"fid": 50.0, "kid": 0.05, "dice": 0.3, "n": 4.0},
                                       "2": {"fid": 40.0, "kid": 0.04, "n": 4.0}}
    assert record.two_stage_models == {"masks (06)": 400, "spade pixel (07)": 300}
    assert record.layout_sources == {"(a) held-out real": {"tiles": 2, "nuclei": 2}}
    assert record.empty_layout_spurious_per_tile == 0.25 and record.tile_size == load_config(profile).spade.tile_size
    assert record.n == 7 and record.heldout == HELDOUT
    assert record.released_model == (JOINT.release_name("cpu") if profile == "cpu" else None)
    assert ("released_model" in record.to_json()["metrics"]) == (profile == "cpu")
    appearance = inputs["appearance"]
    assert record.appearance_distance == appearance.loc[HEADLINE_SET, "distance"]
    assert record.appearance_floor == appearance.iloc[-1]["distance"]
    assert record.appearance["two-stage, notebook 06 mask (layout-blind)"]["distance"] is None  # unscored: None
    assert list(record.realism_ranking) == list(inputs["ranking"].index)  # in rank order, the floor last
    first = record.realism_ranking[inputs["ranking"].index[0]]
    assert first["rank"] == 1.0 and isinstance(first["follows_label"], bool) and isinstance(first["fidelity"], str)
    assert "Realism: nucleus appearance" in JOINT.card(record, "", "joint-test")
    assert f"The held-out set: {HELDOUT['statement']}." in JOINT.card(record, "", "joint-test")


def test_a_joint_record_made_before_the_appearance_score_still_loads(isolated_dirs):
    """Records published before the nucleus appearance score hold none of its keys: they load, with None."""
    record = JOINT.save_metrics(context("08_joint_synthesis", "cpu"), **joint_inputs(isolated_dirs))
    old = record.to_json()
    for key in ("appearance", "realism_ranking", "appearance_distance", "appearance_floor"):
        del old["metrics"][key]
    loaded = JointRecord.from_json(old)
    assert loaded.appearance is None and loaded.appearance_distance is None and loaded.to_json() == old
    assert "Realism" not in JOINT.card(loaded, "", "joint-test")


def test_the_joint_record_names_a_missing_input(isolated_dirs):
    ctx = context("08_joint_synthesis", "smoke")
    inputs = joint_inputs(isolated_dirs)
    del inputs["headline_set"]
    with pytest.raises(TypeError, match="headline_set"):
        JOINT.save_metrics(ctx, **inputs)
    inputs = joint_inputs(isolated_dirs / "other")
    with pytest.raises(KeyError, match="oracle"):
        JOINT.save_metrics(ctx, **{**inputs, "table": inputs["table"].drop(index=joint_module().ORACLE)})
    with pytest.raises(FileNotFoundError, match="histolab_train_config.json"):
        joint_module().joint_metrics(ctx.config, "cpu", **{**inputs, "spade_pipeline": isolated_dirs / "nothing"})
    assert not (isolated_dirs / "reports" / "smoke" / "metrics" / "08_joint_synthesis.json").exists()


def test_trained_steps_reads_the_saved_config(tmp_path):
    assert joint_module().trained_steps(saved_model(tmp_path / "model", 123)) == 123


# -- the score-table helpers the records use ----------------------------------------------------------------------
def test_table_records_keep_nan_as_none_and_row_values_drop_it():
    frame = pd.DataFrame({"fid": [1.0, math.nan], "n": [3, 4]}, index=pd.Index([0.5, 1.0]))
    assert table_records(frame) == {"0.5": {"fid": 1.0, "n": 3.0}, "1.0": {"fid": None, "n": 4.0}}
    assert row_values(frame, 1.0) == {"n": 4.0}
    with pytest.raises(KeyError, match="no row 'missing'.*0.5"):
        row_values(frame, "missing")
