"""The segmenter (targets, augmentation, training, saving, post-processing), the arms of the
augmentation experiments and their equal budgets, and the CLI."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from histolab_utils.config import load_config
from histolab_utils.data.nuclei import NUCLEUS_CLASSES
from histolab_utils.engine.trainer import BatchSource, logged_train_seconds
from histolab_utils.segmentation.experiments import (Arm, Pool, Synthetic, arm_catalogue, arm_size, arm_training_set,
                                                     needed_pool_pairs, pick_arms, run_arm, segmenter_config,
                                                     synthetic_bank)
from histolab_utils.segmentation.hovernet import (SegmenterConfig, SegmenterTrainer, load_segmenter, segment,
                                                  segmentation_targets)
from histolab_utils.stain.jitter import stain_jitter


def blobs(n=6, size=32, seed=0):
    """Images with dark disks (nuclei) on pink, with their type and instance maps."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    images = np.tile(np.array([230, 180, 210], np.uint8), (n, size, size, 1))
    types, instances = np.zeros((n, size, size), np.uint8), np.zeros((n, size, size), np.int32)
    for i in range(n):
        for k in range(1, 4):
            cy, cx = rng.integers(3, size - 3, 2)
            disk = (yy - cy) ** 2 + (xx - cx) ** 2 <= 5
            instances[i][disk], types[i][disk] = k, 1 + (k % 3)
            images[i][disk] = (80, 40, 120)
    return images, types, instances


def test_hv_vectors_turn_with_every_flip_and_rotation():
    from monai.transforms import ComputeHoVerMaps

    _, types, instances = blobs(8, 16)
    instances[:, 2:6, 9:15] = 7  # an elongated nucleus: its h and v differ
    maps = segmentation_targets(types, instances)
    maps = np.concatenate([maps, instances[:, None].astype(np.float32)], 1)
    source = BatchSource(np.zeros((8, 16, 16, 3), np.uint8), torch.device("cpu"), 0, labels=maps, vector_field=(2, 3))
    for _ in range(6):
        _, drawn = source.draw(8)
        moved = drawn[:, 4].round().int().numpy()
        expected = np.stack([ComputeHoVerMaps()(m[None]) for m in moved])
        np.testing.assert_allclose(drawn[:, 2:4].numpy(), expected, atol=1e-6)
    with pytest.raises(ValueError, match="vector_field"):
        BatchSource(np.zeros((8, 16, 16, 3), np.uint8), torch.device("cpu"), 0, labels=maps, vector_field=(2, 9))


def test_stain_jitter_is_seeded_and_the_identity_at_zero():
    x = torch.rand(3, 3, 8, 8) * 1.8 - 0.9
    assert torch.allclose(stain_jitter(x, torch.Generator().manual_seed(0), 0, 0, 0), x, atol=1e-4)
    a = stain_jitter(x, torch.Generator().manual_seed(1))
    b = stain_jitter(x, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and not torch.allclose(a, x, atol=1e-3) and a.abs().max() <= 1
    with pytest.raises(ValueError, match="RGB batches"):
        stain_jitter(x[:, :2], torch.Generator())


def test_segmenter_trains_resumes_saves_and_segments(tmp_path):
    images, types, instances = blobs(8, 32)
    config = SegmenterConfig(tile_size=32, features=(4, 4, 8, 8, 8, 4), steps=4, batch_size=4, checkpoint_every=2,
                             keep_checkpoints=2, augment=True, min_object_size=2, marker_radius=1)
    straight = SegmenterTrainer(config, images, types, instances, tmp_path / "a", progress=False)
    straight.train()
    half = SegmenterTrainer(config, images, types, instances, tmp_path / "b", progress=False)
    half.train(steps=2)
    first_session = logged_train_seconds(tmp_path / "b")
    resumed = SegmenterTrainer(config, images, types, instances, tmp_path / "b", progress=False)
    resumed.train(resume=True)
    assert resumed.step == 4 and [r["loss"] for r in resumed.log] == pytest.approx([r["loss"] for r in straight.log])
    # the run's logged training time counts both sessions, as the notebook's record reads it back
    assert 0 < first_session < logged_train_seconds(tmp_path / "b") <= resumed.train_seconds
    assert logged_train_seconds(tmp_path / "c") is None
    folder = straight.save_model()
    model, loaded = load_segmenter(folder)
    assert loaded == config
    out_types, out_instances = segment(model, images, 3, loaded.min_object_size, loaded.marker_radius)
    assert out_types.shape == out_instances.shape == (8, 32, 32) and out_types.max() <= 3
    again = segment(model, images, 3, loaded.min_object_size, loaded.marker_radius)
    np.testing.assert_array_equal(again[1], out_instances)
    with pytest.raises(ValueError, match="uint8 \\[N, 32, 32, 3\\] .config.tile_size"):
        SegmenterTrainer(config, images[:, :16, :16], types, instances, tmp_path / "c")
    with pytest.raises(ValueError, match="BasicUNet halves a tile four times"):
        SegmenterConfig(tile_size=24)
    with pytest.raises(ValueError, match="HoVerNet in FAST mode reads 256 px tiles only"):
        SegmenterConfig(architecture="hovernet_fast", tile_size=64)
    with pytest.raises(FileNotFoundError, match="no saved segmenter"):
        load_segmenter(tmp_path)


def toy_pool(n=16, size=32):
    from histolab_utils.data.pairs import ImageMaskPairs

    images, types, instances = blobs(n, size)
    pairs = ImageMaskPairs(images, types, instances.astype(np.uint16), np.zeros(n, int), np.full(n, "toy", object),
                           np.tile([0.0, 0.0, size, size], (n, 1)), "train")
    return Pool(pairs, np.random.default_rng(0).permutation(n))


def toy_bank(pool, index):
    """A stand-in bank: each 'synthetic' tile is its source pair's image inverted, so it can be traced."""
    index = np.asarray(index)
    return Synthetic(255 - pool.pairs.images[index], pool.pairs.types[index],
                     pool.pairs.instances[index].astype(np.int32), index)


def test_arms_build_the_sets_they_promise():
    pool = toy_pool()
    catalogue = arm_catalogue()
    arms = list(catalogue.values())
    needed = needed_pool_pairs(arms, pool)
    banks = {s: toy_bank(pool, i) for s, i in needed.items() if s != "rare"}
    banks["rare"] = toy_bank(pool, np.arange(int(needed["rare"][0])))
    quarter = set(pool.quarter.tolist())
    sets = {arm.name: arm_training_set(arm, pool, banks) for arm in arms}
    assert set(sets["real_25"].pool_index) == quarter and len(sets["real_25"]) == 4
    assert sorted(sets["duplicated_25"].pool_index) == sorted(np.resize(pool.quarter, 16))
    assert not np.array_equal(sets["duplicated_25"].pool_index, np.resize(pool.quarter, 16))  # shuffled
    assert len(sets["real_100"]) == 16 and (sets["real_100"].origin == "real").all()
    added = sets["add_joint_75"]
    assert len(added) == 4 + 12 and set(added.pool_index[added.origin == "synthetic"]).isdisjoint(quarter)
    replaced = sets["replace_spade_real_50"]
    assert len(replaced) == 16 and (replaced.origin == "synthetic").sum() == 8
    assert sorted(replaced.pool_index) == list(range(16))  # every pool pair once: its real or synthetic version
    synthetic = replaced.origin == "synthetic"
    np.testing.assert_array_equal(replaced.images[synthetic], 255 - pool.pairs.images[replaced.pool_index[synthetic]])
    assert len(sets["replace_joint_100"]) == 16 and (sets["replace_joint_100"].origin == "synthetic").all()
    assert len(sets["rare_spade_generated"]) == 16 + 8
    assert {name: arm_size(catalogue[name], pool) for name in sets} == {name: len(t) for name, t in sets.items()}
    with pytest.raises(ValueError, match="needs the 'joint' synthetic bank"):
        arm_training_set(catalogue["add_joint_50"], pool, {})
    with pytest.raises(ValueError, match="no synthetic tile was made from pool pairs"):
        arm_training_set(catalogue["add_joint_75"], pool, {"joint": toy_bank(pool, [0])})
    assert [a.name for a in pick_arms(["add_joint_25"], catalogue)] == ["real_25", "add_joint_25"]
    # a classic_plus arm reads classic_25, which reads real_25: both come with it
    assert [a.name for a in pick_arms(["classic_plus_joint_75"], catalogue)] == ["real_25", "classic_25",
                                                                                 "classic_plus_joint_75"]
    with pytest.raises(ValueError, match="unknown arm"):
        pick_arms(["add_magic_25"], catalogue)


def _dihedral_source(tile, candidates):
    """Which candidate image ``tile`` is, and whether it is turned or flipped (not the identity)."""
    for k in range(4):
        for flip in (False, True):
            moved = np.rot90(candidates, k, axes=(1, 2))
            moved = moved[:, :, ::-1] if flip else moved
            found = np.flatnonzero((moved == tile).all(axis=(1, 2, 3)))
            if found.size:
                return int(found[0]), k > 0 or flip
    raise AssertionError("a drawn tile is no dihedral transform of any training tile")


def test_classic_plus_arms_augment_real_and_synthetic_tiles_and_read_classic_25(tmp_path):
    from histolab_utils.segmentation.experiments import SOURCES

    pool = toy_pool()
    catalogue = arm_catalogue()
    banks = {source: toy_bank(pool, pool.rest) for source in SOURCES}
    section = load_config("smoke").segmentation
    for source in SOURCES:
        plus, added = catalogue[f"classic_plus_{source}_75"], catalogue[f"add_{source}_75"]
        assert (plus.experiment, plus.reference, plus.source, plus.fraction, plus.real_share) == (
            "classic_plus", "classic_25", source, 0.75, 0.25)
        mine, theirs = arm_training_set(plus, pool, banks), arm_training_set(added, pool, banks)
        # the add_ arm's tiles, R25's real ones and the synthetic ones from R75's masks ...
        for name in ("images", "types", "instances", "origin", "pool_index"):
            np.testing.assert_array_equal(getattr(mine, name), getattr(theirs, name))
        assert (mine.origin == "real").sum() == 4 and (mine.origin == "synthetic").sum() == 12
        assert arm_size(plus, pool) == len(mine)
        # ... with classic_25's augmentation, where the add_ arm has none
        assert segmenter_config(section, plus, 0).augment and not segmenter_config(section, added, 0).augment
    assert sorted(n for n in catalogue if n.startswith("classic_plus_")) == sorted(
        f"classic_plus_{s}_75" for s in SOURCES)
    # the trainer augments every drawn tile whatever its origin: both real and synthetic tiles come out turned
    plus = catalogue["classic_plus_joint_75"]
    training = arm_training_set(plus, pool, banks)
    config = SegmenterConfig(**{**segmenter_config(section, plus, 0).__dict__, "tile_size": 32,
                                "features": (4, 4, 8, 8, 8, 4), "steps": 1, "batch_size": 2})
    trainer = SegmenterTrainer(config, training.images, training.types, training.instances, tmp_path, progress=False)
    drawn, _ = trainer.batches.draw(64)
    drawn = np.rint((drawn.permute(0, 2, 3, 1).numpy() + 1) * 127.5).astype(np.uint8)
    turned = {"real": 0, "synthetic": 0}
    for tile in drawn:
        index, moved = _dihedral_source(tile, training.images)
        turned[training.origin[index]] += moved
    assert turned["real"] > 0 and turned["synthetic"] > 0, turned


def test_a_classic_plus_arm_is_contrasted_with_classic_25_in_its_own_table():
    from histolab_utils.evaluation.segmentation import arm_contrast, tile_counts
    from histolab_utils.segmentation.experiments import EXPERIMENTS, arm_results, experiment_tables

    _, types, instances = blobs(12, 32)

    def run(quality, seed):
        keep = np.where(np.random.default_rng(seed).random((12, 1, 1)) < quality, instances, 0)
        return tile_counts(types, instances, np.where(keep > 0, types, 0), keep, NUCLEUS_CLASSES)

    arms = pick_arms(["classic_plus_spade_real_75"], arm_catalogue())
    quality = {"real_25": 0.4, "classic_25": 0.6, "classic_plus_spade_real_75": 0.7}
    counts = {(a.name, s): run(quality[a.name], 10 * s + k) for k, a in enumerate(arms) for s in range(3)}
    results = arm_results(counts, arms, range(3), n_resamples=50)
    assert results.loc["classic_plus_spade_real_75", "reference"] == "classic_25"
    expected = arm_contrast([counts[("classic_plus_spade_real_75", s)] for s in range(3)],
                            [counts[("classic_25", s)] for s in range(3)], NUCLEUS_CLASSES, "dice", 50)
    assert results.loc["classic_plus_spade_real_75", "dice_diff"] == pytest.approx(expected["difference"])
    tables = experiment_tables(results, arms)
    assert list(tables[EXPERIMENTS["classic_plus"]].index) == ["classic_25", "classic_plus_spade_real_75"]


def test_every_profiles_arms_are_known_and_classic_plus_arms_come_with_their_add_arms():
    from histolab_utils.profiles import PROFILES
    from histolab_utils.segmentation.experiments import SOURCES
    from histolab_utils.stages.segmenter import SEGMENTER

    assert len(arm_catalogue()) == 30  # 5 baselines, per source 3 add + 1 classic_plus + 4 replace, rare
    for profile in PROFILES:
        config = load_config(profile)
        section = config.segmentation
        catalogue = arm_catalogue(section.addition, section.replacement)
        listed = list(catalogue) if tuple(section.arms) == ("all",) else list(section.arms)
        assert {a.name for a in pick_arms(listed, catalogue)} >= set(listed)  # every name parses as an arm
        for source in SOURCES:
            if f"classic_plus_{source}_75" in listed:
                assert f"add_{source}_75" in listed, (profile, source)
        for name in (n for n in listed if n.startswith("classic_plus_")):
            saved = SEGMENTER.train_config(config, 0, f"{name}/seed-0")  # as `train segmenter --arm NAME` reads it
            assert saved.augment and saved.extra == {"arm": name}
    cpu = load_config("cpu").segmentation.arms
    assert {f"classic_plus_{s}_75" for s in SOURCES} <= set(cpu)  # cpu lists every add_<source>_75
    assert sum(n.startswith("classic_plus_") for n in load_config("smoke").segmentation.arms) == 1  # smoke stays fast


def test_every_arm_gets_the_same_optimiser_steps(tmp_path):
    for profile in ("smoke", "full"):
        section = load_config(profile).segmentation
        configs = [segmenter_config(section, arm, seed) for arm in arm_catalogue().values() for seed in section.seeds]
        budgets = {(c.steps, c.batch_size, c.learning_rate, c.warmup_steps, c.architecture) for c in configs}
        assert len(budgets) == 1, budgets
        assert {c.augment for c in configs} == {False, True}
    pool = toy_pool()
    banks = {"joint": toy_bank(pool, pool.rest)}
    test = pool.pairs.subset(np.arange(4))
    section = load_config("smoke").segmentation
    logs = {}
    for name in ("real_25", "add_joint_75"):  # 4 and 16 tiles: the same steps
        arm = arm_catalogue()[name]
        config = segmenter_config(section, arm, 0)
        config = SegmenterConfig(**{**config.__dict__, "tile_size": 32, "features": (4, 4, 8, 8, 8, 4), "steps": 3,
                                    "batch_size": 2, "checkpoint_every": 3})
        counts = run_arm(config, arm_training_set(arm, pool, banks), test, tmp_path / name)
        assert len(counts) == 4 and {"aji_inter", "pq_tp_neoplastic"} <= set(counts.columns)
        logs[name] = pd.read_csv(tmp_path / name / "loss.csv")
    assert len(logs["real_25"]) == len(logs["add_joint_75"]) == 3
    before = (tmp_path / "real_25" / "test_counts.csv").stat().st_mtime_ns
    run_arm(config.__class__(**{**config.__dict__, "extra": {"arm": "real_25"}}),
            arm_training_set(arm_catalogue()["real_25"], pool, banks), test, tmp_path / "real_25")
    assert (tmp_path / "real_25" / "test_counts.csv").stat().st_mtime_ns == before  # finished: read back


def test_an_unfinished_run_continues_from_its_checkpoint_only_on_its_own_data(tmp_path, monkeypatch):
    pool = toy_pool()
    arm = arm_catalogue()["real_25"]
    training, test = arm_training_set(arm, pool, {}), pool.pairs.subset(np.arange(4))
    config = SegmenterConfig(**{**segmenter_config(load_config("smoke").segmentation, arm, 0).__dict__,
                                "tile_size": 32, "features": (4, 4, 8, 8, 8, 4), "steps": 2, "batch_size": 2,
                                "checkpoint_every": 2})
    run_arm(config, training, test, tmp_path / "run")  # stands for a run stopped at its step-2 checkpoint
    loaded = []
    original = SegmenterTrainer.resume
    monkeypatch.setattr(SegmenterTrainer, "resume", lambda self: loaded.append(original(self)) or loaded[-1])
    longer = SegmenterConfig(**{**config.__dict__, "steps": 4})
    assert len(run_arm(longer, training, test, tmp_path / "run", resume=True)) == 4
    assert loaded == [True] and len(pd.read_csv(tmp_path / "run" / "loss.csv")) == 4
    other_test = pool.pairs.subset(np.arange(4, 8))
    run_arm(SegmenterConfig(**{**config.__dict__, "steps": 6}), training, other_test, tmp_path / "run", resume=True)
    assert loaded == [True]  # other data: trained afresh, not from the step-4 checkpoint


def test_arm_results_adjust_every_contrast_by_holm_and_the_record_and_table_carry_it(tmp_path):
    from histolab_utils.evaluation.segmentation import tile_counts
    from histolab_utils.segmentation.experiments import arm_record, arm_results, formatted_results, saved_predictions

    rng = np.random.default_rng(0)
    _, types, instances = blobs(24, 32)

    def run(quality, seed):  # a segmenter that finds a `quality` share of the nuclei
        r = np.random.default_rng(seed)
        keep = np.where(r.random((24, 1, 1)) < quality, instances, 0)
        return tile_counts(types, instances, np.where(keep > 0, types, 0), keep, NUCLEUS_CLASSES)

    catalogue = arm_catalogue()
    arms = pick_arms(["duplicated_25", "add_joint_75"], catalogue)
    quality = {"real_25": 0.5, "duplicated_25": 0.5, "add_joint_75": 0.95}
    counts = {(a.name, s): run(quality[a.name], 100 * s + k) for k, a in enumerate(arms) for s in range(4)}
    results = arm_results(counts, arms, range(4), n_resamples=200)
    scores = ("dice", "aji_plus", "mpq_plus")  # IoU is reported, not tested: pooled, it is Dice / (2 - Dice)
    raw = [results.loc[a, f"{s}_p"] for a in ("duplicated_25", "add_joint_75") for s in scores]
    from histolab_utils.evaluation.hierarchical_bootstrap import holm
    np.testing.assert_allclose([results.loc[a, f"{s}_p_holm"] for a in ("duplicated_25", "add_joint_75") for s in scores],
                               holm(raw))  # one family: every (arm, tested score)
    assert results["iou_mean"].notna().all() and not results.filter(like="iou_").columns.difference(
        ["iou_mean", "iou_std"]).size  # IoU: mean and std only, no contrast in Holm's family
    assert results.loc["add_joint_75", "dice_verdict"] == "gain" and results.loc["duplicated_25", "dice_verdict"] == "no gain"
    row = results.loc["add_joint_75"]
    assert row["dice_ci_holm_low"] <= row["dice_ci_low"] <= row["dice_diff"] <= row["dice_ci_high"] <= row["dice_ci_holm_high"]
    assert pd.isna(results.loc["real_25", "dice_diff"])
    record = arm_record(results, "add_joint_75", 16)
    assert record["training_tiles"] == 16 and record["dice"]["difference_from_reference"]["verdict"] == "gain"
    assert record["dice"]["difference_from_reference"]["p_holm"] >= record["dice"]["difference_from_reference"]["p_value"]
    assert "difference_from_reference" not in arm_record(results, "real_25", 4)["dice"]
    table = formatted_results(results)
    column = "dice diff [Holm-level CI] p(Holm)"
    assert table.loc["real_25", column] == "reference" and table.loc["add_joint_75", column].endswith("gain")
    assert f"{row['dice_ci_holm_low']:+.3f}" in table.loc["add_joint_75", column]
    from histolab_utils.segmentation.experiments import EXPERIMENTS, contrasts_tested, experiment_tables, steps_taken

    assert contrasts_tested(results) == 6  # two arms x three tested scores
    tables = experiment_tables(results, arms)
    assert list(tables) == [EXPERIMENTS["baseline"], EXPERIMENTS["addition"]]  # no replacement or rare arm ran
    assert list(tables[EXPERIMENTS["baseline"]].index) == ["real_25", "duplicated_25"]
    assert list(tables[EXPERIMENTS["addition"]].index) == ["real_25", "add_joint_75"]  # with the reference it reads
    assert tables[EXPERIMENTS["addition"]].loc["add_joint_75", column] == table.loc["add_joint_75", column]
    (tmp_path / "add_joint_75" / "seed-2").mkdir(parents=True)
    pd.DataFrame({"loss": [1.0, 0.5, 0.4]}).to_csv(tmp_path / "add_joint_75" / "seed-2" / "loss.csv", index=False)
    assert steps_taken(tmp_path, [("add_joint_75", 2)]) == {("add_joint_75", 2): 3}
    np.savez(tmp_path / "saved.npz", types=types, instances=instances)
    (tmp_path / "real_25" / "seed-0").mkdir(parents=True)
    (tmp_path / "saved.npz").rename(tmp_path / "real_25" / "seed-0" / "test_predictions.npz")
    assert saved_predictions(tmp_path, "real_25", 0)[0].shape == types.shape
    with pytest.raises(FileNotFoundError, match="run arm 'real_25' with seed 1"):
        saved_predictions(tmp_path, "real_25", 1)
    from histolab_utils.segmentation.experiments import HEADLINE, experiment_record

    data_table = pd.DataFrame({"tiles": [4, 12, 24], "distinct nuclei": [9, 30, 50]}, index=["R25", "R75", "test"])
    section = load_config("smoke").segmentation
    record = experiment_record(results, arms, {"real_25": 4, "duplicated_25": 16, "add_joint_75": 16}, data_table,
                               section, device="cpu")
    assert set(HEADLINE) <= set(record) and record["real_100_dice"] is None  # real_100 was not run
    assert record["arms_with_any_gain_after_holm"] == 1 and record["contrasts_tested"] == 6
    assert record["scores_tested"] == ["dice", "aji_plus", "mpq_plus"] and "iou" not in record["null_arm"]
    assert "difference_from_reference" not in record["arms"]["add_joint_75"]["iou"]
    with pytest.raises(ValueError, match="not among the reported"):
        arm_results(counts, arms, range(4), n_resamples=10, scores=("dice",), tested=("dice", "aji_plus"))
    assert record["null_arm_shows_a_gain"] is False and record["null_arm"]["dice"]["verdict"] == "no gain"
    assert record["distinct_nuclei"] == {"R25": 9, "R75": 30, "test": 50} and record["device"] == "cpu"
    assert record["split"].startswith("split 3; hgsc_nest: 4 x 4 blocks") and "hgsc_stroma: right 25 % held out" in record["split"]
    from histolab_utils.segmentation.experiments import record_table

    published = record_table(json.loads(json.dumps(record)))  # as read back from a results file
    assert published.loc["real_25", column] == "reference" and published.loc["add_joint_75", "training tiles"] == 16
    assert published.loc["add_joint_75", column] == table.loc["add_joint_75", column]


def test_per_type_pq_stands_beside_the_test_nuclei_of_each_type():
    from histolab_utils.evaluation.segmentation import tile_counts
    from histolab_utils.segmentation.experiments import per_type_pq, per_type_pq_view

    # two 8 px tiles: 3 neoplastic, 1 inflammatory, 1 connective nucleus (id 1 in both tiles: two nuclei)
    types, instances = np.zeros((2, 8, 8), np.uint8), np.zeros((2, 8, 8), np.int32)
    for tile, ident, kind, (y, x) in [(0, 1, 1, (0, 0)), (0, 2, 2, (0, 4)), (0, 3, 1, (4, 0)),
                                      (1, 1, 3, (0, 0)), (1, 5, 1, (4, 4))]:
        instances[tile, y:y + 3, x:x + 3], types[tile, y:y + 3, x:x + 3] = ident, kind
    missed = instances.copy()
    missed[0][missed[0] == 3] = 0  # misses one neoplastic nucleus: TP 2, FN 1, DQ 2 / 2.5, SQ 1: PQ 0.8

    def counted(pred_inst):
        return tile_counts(types, instances, np.where(pred_inst > 0, types, 0), pred_inst, NUCLEUS_CLASSES)

    empty = np.zeros_like(instances)
    counts = {("real_25", 0): counted(instances), ("real_25", 1): counted(missed),
              ("classic_25", 0): counted(empty), ("classic_25", 1): counted(empty)}
    arms = pick_arms(["classic_25"], arm_catalogue())
    table = per_type_pq(counts, arms, [0, 1], types, instances)
    assert list(table.index) == [(a, c) for a in ("real_25", "classic_25") for c in NUCLEUS_CLASSES]
    assert table.xs("real_25")["test_nuclei"].to_dict() == {"neoplastic": 3, "inflammatory": 1, "connective": 1}
    np.testing.assert_allclose(table.xs("real_25")["pq_mean"], [0.9, 1.0, 1.0])
    np.testing.assert_allclose(table.xs("real_25")["pq_std"], [np.std([1, 0.8], ddof=1), 0, 0], atol=1e-12)
    np.testing.assert_allclose(table.xs("real_25")["dq_mean"], [0.9, 1.0, 1.0])
    np.testing.assert_allclose(table.xs("classic_25")["pq_mean"], [0, 0, 0])  # found nothing
    view = per_type_pq_view(table)
    assert list(view.index) == ["real_25", "classic_25"]
    assert view.loc["real_25", "PQ neoplastic (3 test nuclei)"] == "0.900 ± 0.141"
    other = instances.copy()
    other[1, 7, 0:2], types[1, 7, 0:2] = 8, 2  # maps of other tiles: a second inflammatory nucleus
    with pytest.raises(ValueError, match=r"real_25, seed 0: PQ counted \[3, 1, 1\].*hold \[3, 2, 1\]"):
        per_type_pq(counts, arms, [0, 1], types, other)


def _fake_run(folder, section, arm, seed, counts):
    run = folder / arm.name / f"seed-{seed}"
    (run / "model").mkdir(parents=True)
    config = segmenter_config(section, arm, seed)
    (run / "model" / "segmenter_config.json").write_text(json.dumps(config.__dict__, default=list))
    counts.to_csv(run / "test_counts.csv", index=False)
    return run


def test_runs_made_elsewhere_are_scored_only_when_they_are_the_profiles_runs_on_its_test_tiles(
        tmp_path, real_data, isolated_dirs, capsys):
    from histolab_utils.evaluation.segmentation import tile_counts
    from histolab_utils.score import main
    from histolab_utils.segmentation.experiments import finished_counts, heldout_tiles

    config = load_config("smoke")
    section = config.segmentation
    test = heldout_tiles(section.tile_size, section.downsample, config.seed, section.n_test)
    arms = pick_arms(["duplicated_25"], arm_catalogue(section.addition, section.replacement))
    perfect = tile_counts(test.types, test.instances, test.types, test.instances, NUCLEUS_CLASSES)
    for arm in arms:
        for seed in section.seeds:
            _fake_run(tmp_path / "runs", section, arm, seed, perfect)
    counts = finished_counts(tmp_path / "runs", section, arms, test)
    assert sorted(counts) == sorted((a.name, s) for a in arms for s in section.seeds)
    out = tmp_path / "09_arms.json"
    assert main(["segmenters", str(tmp_path / "runs"), "--profile", "smoke", "--arms", "duplicated_25", "--out", str(out),
                 "--trained-on", "a test"]) == 0
    stamped = json.loads(out.read_text())
    record = stamped["metrics"]
    assert stamped["notebook"] == "09_arms" and stamped["profile"] == "smoke"
    assert record["arms"]["real_25"]["dice"]["mean"] == 1.0 and record["device"] == "a test"
    assert record["n_test_tiles"] == len(test) and record["arms"]["duplicated_25"]["training_tiles"] == section.n_real
    with pytest.raises(SystemExit):
        main(["segmenters", str(tmp_path / "runs"), "--profile", "smoke", "--arms", "add_joint_99", "--out", str(out),
              "--trained-on", "a test"])
    assert "unknown arm(s) ['add_joint_99']" in capsys.readouterr().err
    # a synthetic arm is scored like the others (its size follows from the pool); here its runs are missing
    assert main(["segmenters", str(tmp_path / "runs"), "--profile", "smoke", "--arms", "add_joint_75", "--out", str(out),
                 "--trained-on", "a test"]) == 2
    assert "add_joint_75/seed-0: no finished run" in capsys.readouterr().err
    assert main(["segmenters", str(tmp_path / "nowhere"), "--profile", "smoke", "--arms", "duplicated_25", "--out",
                 str(out), "--trained-on", "a test"]) == 2
    assert "nowhere/real_25/seed-0: no finished run" in capsys.readouterr().err

    other_tiles = perfect.copy()
    other_tiles.loc[0, "px_true_all"] += 1
    other_tiles.to_csv(tmp_path / "runs" / "real_25" / f"seed-{section.seeds[0]}" / "test_counts.csv", index=False)
    with pytest.raises(ValueError, match="counted on other test tiles"):
        finished_counts(tmp_path / "runs", section, arms, test)
    fewer_steps = dict(json.loads((tmp_path / "runs" / "real_25" / "seed-1" / "model" / "segmenter_config.json").read_text()), steps=3)
    (tmp_path / "runs" / "real_25" / "seed-1" / "model" / "segmenter_config.json").write_text(json.dumps(fewer_steps))
    perfect.to_csv(tmp_path / "runs" / "real_25" / f"seed-{section.seeds[0]}" / "test_counts.csv", index=False)
    with pytest.raises(ValueError, match=r"seed-1.*differs from the profile's in \['steps'\]"):
        finished_counts(tmp_path / "runs", section, arms, test)
    with pytest.raises(FileNotFoundError, match="--arm duplicated_25 --seed 0"):
        finished_counts(tmp_path / "elsewhere", section, pick_arms(["duplicated_25"], arm_catalogue())[1:], test)


def test_generators_refuse_a_scale_they_did_not_train_at(tmp_path):
    from histolab_utils.segmentation.experiments import Generators, generators_for, load_generators

    config = load_config("smoke")
    with pytest.raises(FileNotFoundError, match="nope does not exist: the masks generator's saved pipeline"):
        load_generators({key: tmp_path / "nope" for key in ("masks", "spade", "joint")}, config.masks, config.spade,
                        config.joint)

    # an arm loads only the generators its sources draw on: the others need no folder
    assert generators_for(["spade_real"]) == {"spade"} and generators_for(["joint"]) == {"joint"}
    assert generators_for(["rare", "spade_real"]) == {"masks", "spade"}
    with pytest.raises(ValueError, match="unknown synthetic source 'spade'"):
        generators_for(["spade"])
    with pytest.raises(FileNotFoundError, match="nope does not exist: the spade generator's"):
        load_generators({key: tmp_path / "nope" for key in ("masks", "spade", "joint")}, config.masks, config.spade,
                        config.joint, only=(key for key in ["spade"]))  # a one-pass iterator is read once
    assert load_generators({}, config.masks, config.spade, config.joint, only=set()).spade is None

    generators = Generators(trained_at={"spade": (32, 2), "joint": (32, 2)})
    generators.check_scale(32, 2)
    with pytest.raises(ValueError, match="spade generator trained on 32 px tiles at downsample 2.*64 px"):
        generators.check_scale(64, 2)
    with pytest.raises(ValueError, match="downsample 1"):
        generators.check_scale(32, 1)
    pool = toy_pool()
    with pytest.raises(ValueError, match="set segmentation.tile_size"):
        synthetic_bank("joint", pool, Generators(trained_at={"joint": (64, 1)}), pool.rest)


def test_the_pool_description_counts_distinct_nuclei_once(real_data):
    from histolab_utils.segmentation.experiments import describe_pool, heldout_tiles, real_pool

    pool, test = real_pool(32, 2, 0, 96), heldout_tiles(32, 2, 0, 48)
    table = describe_pool(pool, test)
    assert list(table.index) == ["R25", "R75", "test"] and table.loc["R25", "tiles"] == 24 and table.loc["test", "tiles"] == 48
    summed = table[[f"{c} nuclei" for c in NUCLEUS_CLASSES]].sum(axis=1)
    assert (table["distinct nuclei"] <= summed).all() and (table["distinct nuclei"] > 0).all()


def test_cli_trains_one_arm(tmp_path, real_data, isolated_dirs):
    from histolab_utils.train import main

    out = tmp_path / "arm"
    assert main(["segmenter", "--arm", "real_25", "--seed", "1", "--profile", "smoke", "--out", str(out),
                 "--steps", "2"]) == 0
    saved = json.loads((out / "model" / "segmenter_config.json").read_text())
    assert saved["steps"] == 2 and saved["seed"] == 1 and saved["extra"] == {"arm": "real_25"}
    assert len(pd.read_csv(out / "test_counts.csv")) == load_config("smoke").segmentation.n_test
    assert main(["segmenter", "--arm", "add_magic_25", "--profile", "smoke", "--out", str(out)]) == 2


def test_seconds_trained_sums_what_each_run_logged_in_its_latest_checkpoint(tmp_path):
    from histolab_utils.segmentation.experiments import seconds_trained

    for seed, seconds in ((0, 10.0), (1, 12.5)):
        for step, logged in ((2, seconds / 2), (10, seconds)):  # step 10 sorts after step 2 by number, not by name
            checkpoint = tmp_path / "real_25" / f"seed-{seed}" / "checkpoints" / f"step-{step}"
            checkpoint.mkdir(parents=True)
            (checkpoint / "trainer.json").write_text(json.dumps({"step": step, "train_seconds": logged}))
    assert seconds_trained(tmp_path, [("real_25", 0), ("real_25", 1)]) == pytest.approx(22.5)
    with pytest.raises(FileNotFoundError, match="add_joint_75/seed-0 has no checkpoint"):
        seconds_trained(tmp_path, [("real_25", 0), ("add_joint_75", 0)])
