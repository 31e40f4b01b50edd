"""The segmentation metrics on hand-made maps and against independent computations, and the
paired statistics that compare training arms."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest

from histolab_utils.evaluation.segmentation import (REPORTED_SCORES, TESTED_SCORES, aji_plus, arm_contrast,
                                                    match_instances, nuclei_per_type, panoptic_quality, seed_summary,
                                                    segmentation_scores, tile_counts)

CLASSES = ("a", "b", "c")


def hand_made():
    true = np.zeros((8, 8), int)
    true[1:4, 1:4] = 1  # 9 px
    true[5:7, 5:8] = 2  # 6 px
    pred = np.zeros((8, 8), int)
    pred[1:4, 2:4] = 7  # 6 px inside true 1
    pred[5:7, 5:7] = 3  # 4 px inside true 2
    pred[0, 7] = 9  # 1 px, matches nothing
    return true, pred


def test_metrics_on_hand_made_maps():
    true, pred = hand_made()
    # AJI+: pairs (1, 7) and (2, 3): (6 + 4) / (9 + 6 + the unpaired 1 px) = 10 / 16
    assert aji_plus(true, pred) == pytest.approx(10 / 16)
    # PQ: both pairs have IoU 2/3 > 0.5; TP 2, FP 1, FN 0
    pq = panoptic_quality(true, pred)
    assert pq["dq"] == pytest.approx(2 / 2.5) and pq["sq"] == pytest.approx(2 / 3, abs=1e-6)
    assert pq["pq"] == pytest.approx(0.8 * 2 / 3, abs=1e-6)
    assert aji_plus(true, true) == 1.0 and panoptic_quality(true, true)["pq"] == pytest.approx(1.0)
    assert aji_plus(true, np.where(true > 0, true + 40, 0)) == 1.0  # ids do not matter
    assert aji_plus(true, np.zeros_like(true)) == 0.0 and panoptic_quality(true, np.zeros_like(true))["pq"] == 0
    assert np.isnan(aji_plus(np.zeros_like(true), np.zeros_like(true)))
    tp, fp, fn = match_instances(true, pred)
    assert list(tp) == [3, 7] and list(fp) == [9] and list(fn) == []
    with pytest.raises(ValueError, match="differ in shape"):
        aji_plus(true, pred[:4])


def brute_aji_plus(true, pred):
    t_ids, p_ids = [i for i in np.unique(true) if i], [i for i in np.unique(pred) if i]
    best, best_pairs = -1.0, []
    for k in range(min(len(t_ids), len(p_ids)) + 1):
        for ts in itertools.combinations(t_ids, k):
            for ps in itertools.permutations(p_ids, k):
                ious = [((true == t) & (pred == p)).sum() / ((true == t) | (pred == p)).sum() for t, p in zip(ts, ps)]
                if all(i > 0 for i in ious) and sum(ious) > best:
                    best, best_pairs = sum(ious), list(zip(ts, ps))
    inter = sum(((true == t) & (pred == p)).sum() for t, p in best_pairs)
    union = sum(((true == t) | (pred == p)).sum() for t, p in best_pairs)
    union += sum((true == t).sum() for t in t_ids if t not in [a for a, _ in best_pairs])
    union += sum((pred == p).sum() for p in p_ids if p not in [b for _, b in best_pairs])
    return inter / union


def brute_pq(true, pred):
    t_ids, p_ids = [i for i in np.unique(true) if i], [i for i in np.unique(pred) if i]
    matches = [(t, p, ((true == t) & (pred == p)).sum() / ((true == t) | (pred == p)).sum())
               for t in t_ids for p in p_ids]
    matches = [m for m in matches if m[2] > 0.5]
    tp = len(matches)
    fp, fn = len(p_ids) - tp, len(t_ids) - tp
    dq = tp / (tp + fp / 2 + fn / 2) if tp + fp + fn else np.nan
    sq = sum(m[2] for m in matches) / tp if tp else 0.0
    return dq, sq


def random_instances(rng, size=12, count=4):
    """Overlapping random rectangles, later ones on top: touching and nested instances."""
    out = np.zeros((size, size), int)
    for k in range(1, count + 1):
        y, x = rng.integers(0, size - 2, 2)
        h, w = rng.integers(2, 6, 2)
        out[y:y + h, x:x + w] = k
    return out


@pytest.mark.parametrize("seed", range(12))
def test_aji_plus_and_pq_agree_with_brute_force(seed):
    rng = np.random.default_rng(seed)
    true, pred = random_instances(rng), random_instances(rng)
    pred[rng.random(pred.shape) < 0.1] = 0  # a few holes
    assert aji_plus(true, pred) == pytest.approx(brute_aji_plus(true, pred))
    dq, sq = brute_pq(true, pred)
    pq = panoptic_quality(true, pred)
    assert pq["dq"] == pytest.approx(dq) and pq["sq"] == pytest.approx(sq, abs=1e-5)


def test_scores_pool_counts_over_the_set_so_an_absent_class_does_not_count_per_tile():
    rng = np.random.default_rng(3)
    true_inst = np.stack([random_instances(rng) for _ in range(5)])
    pred_inst = np.stack([random_instances(rng) for _ in range(5)])
    true_types = np.where(true_inst > 0, 1 + true_inst % 2, 0)  # types a and b only: c is absent everywhere
    pred_types = np.where(pred_inst > 0, 1 + pred_inst % 3, 0)
    true_types[0][true_inst[0] > 0] = 2  # tile 0 has no type a
    counts = tile_counts(true_types, true_inst, pred_types, pred_inst, CLASSES)
    scores = segmentation_scores(counts, CLASSES)
    # per class from the whole set: instances restricted to the class's pixels, matched at IoU > 0.5
    for k, name in enumerate(CLASSES):
        tp = fp = fn = 0
        iou = 0.0
        for t_i, t_t, p_i, p_t in zip(true_inst, true_types, pred_inst, pred_types):
            t = np.where(t_t == k + 1, t_i, 0)
            p = np.where(p_t == k + 1, p_i, 0)
            t_ids, p_ids = [i for i in np.unique(t) if i], [i for i in np.unique(p) if i]
            m = [((t == a) & (p == b)).sum() / ((t == a) | (p == b)).sum() for a in t_ids for b in p_ids]
            m = [v for v in m if v > 0.5]
            tp, fp, fn, iou = tp + len(m), fp + len(p_ids) - len(m), fn + len(t_ids) - len(m), iou + sum(m)
        expected = (tp / (tp + fp / 2 + fn / 2)) * (iou / tp if tp else 0.0) if tp + fp + fn else np.nan
        assert scores[f"pq_{name}"] == pytest.approx(expected, abs=1e-5, nan_ok=True)
    fg_true, fg_pred = true_types > 0, pred_types > 0
    assert scores["dice"] == pytest.approx(2 * (fg_true & fg_pred).sum() / (fg_true.sum() + fg_pred.sum()))
    assert scores["iou"] == pytest.approx((fg_true & fg_pred).sum() / (fg_true | fg_pred).sum())
    present = [scores[f"pq_{n}"] for n in CLASSES if not np.isnan(scores[f"pq_{n}"])]
    assert scores["mpq_plus"] == pytest.approx(np.mean(present))
    aji = [aji_plus(t, p) for t, p in zip(true_inst, pred_inst)]
    assert scores["aji_plus"] != pytest.approx(np.mean(aji))  # pooled, not averaged per tile
    with pytest.raises(ValueError, match="type ids must lie in 0..3"):
        tile_counts(true_types + 3, true_inst, pred_types, pred_inst, CLASSES)


def _counts(rng, n, quality):
    """Per-tile counts of a segmenter that finds a ``quality`` share of the true instances."""
    true_inst = np.stack([random_instances(rng) for _ in range(n)])
    pred_inst = np.where(rng.random(n)[:, None, None] < quality, true_inst, np.roll(true_inst, 3, axis=2))
    types = np.where(true_inst > 0, 1, 0)
    return tile_counts(types, true_inst, np.where(pred_inst > 0, 1, 0), pred_inst, CLASSES)


def test_arm_contrast_finds_a_real_gain_and_no_gain_between_equals():
    good = [_counts(np.random.default_rng(10 + i), 30, 0.9) for i in range(3)]
    bad = [_counts(np.random.default_rng(i), 30, 0.1) for i in range(3)]
    gain = arm_contrast(good, bad, CLASSES, "aji_plus", n_resamples=300)
    assert gain["difference"] > 0.3 and gain["ci_low"] > 0 and gain["p_value"] < 0.05  # 3 seeds: t with few df
    assert gain["seeds"] == 3 and gain["tiles"] == 30
    tie = arm_contrast(good, good, CLASSES, "aji_plus", n_resamples=300)
    assert tie["difference"] == 0 and tie["ci_low"] <= 0 <= tie["ci_high"] and tie["p_value"] == 1
    summary = seed_summary(good, CLASSES)
    assert summary["n_seeds"] == 3 and 0 <= summary["mpq_plus_mean"] <= 1 and summary["dice_std"] >= 0
    with pytest.raises(ValueError, match="same seeds and the same test tiles"):
        arm_contrast(good, [bad[0]], CLASSES, "dice")
    assert isinstance(good[0], pd.DataFrame)


def test_iou_is_dice_over_two_minus_dice_on_pooled_counts_so_holm_tests_dice_alone():
    rng = np.random.default_rng(5)
    true_inst = np.stack([random_instances(rng) for _ in range(6)])
    pred_inst = np.stack([random_instances(rng) for _ in range(6)])
    true_types, pred_types = (np.where(i > 0, 1 + i % 3, 0) for i in (true_inst, pred_inst))
    counts = tile_counts(true_types, true_inst, pred_types, pred_inst, CLASSES)
    dices = []
    for subset in (slice(None), slice(0, 2), [1, 4, 5]):  # any set of tiles, its counts summed
        scores = segmentation_scores(counts.iloc[subset], CLASSES)
        for suffix in ("", *(f"_{c}" for c in CLASSES)):
            dice = scores[f"dice{suffix}"]
            assert scores[f"iou{suffix}"] == pytest.approx(dice / (2 - dice))
            dices.append(dice)
    assert sum(0 < d < 1 for d in dices) >= 8  # partial overlaps, not only the trivial 0 and 1
    # so IoU is reported beside Dice but is not a second test of the same contrast in Holm's family
    assert "iou" in REPORTED_SCORES and "iou" not in TESTED_SCORES and set(TESTED_SCORES) < set(REPORTED_SCORES)
    assert TESTED_SCORES == ("dice", "aji_plus", "mpq_plus")


def test_nuclei_per_type_counts_instances_per_tile_as_pq_does():
    types, instances = np.zeros((2, 8, 8), int), np.zeros((2, 8, 8), int)
    for tile, ident, kind, (y, x) in [(0, 1, 1, (0, 0)), (0, 2, 2, (0, 4)), (0, 3, 1, (4, 0)),
                                      (1, 1, 3, (0, 0)), (1, 5, 1, (4, 4))]:
        instances[tile, y:y + 3, x:x + 3], types[tile, y:y + 3, x:x + 3] = ident, kind
    instances[0, 7, 7] = 9  # an instance without a type (background in the type map) is no nucleus
    # instance id 1 in both tiles: two nuclei (a nucleus cut by a tile border counts in each tile)
    assert nuclei_per_type(types, instances, CLASSES).to_dict() == {"a": 3, "b": 1, "c": 1}
    rng = np.random.default_rng(9)
    true_inst = np.stack([random_instances(rng, count=6) for _ in range(8)])
    true_types = np.where(true_inst > 0, 1 + rng.integers(0, 3, true_inst.shape), 0)  # mixed types within nuclei too
    pred_inst = np.stack([random_instances(rng) for _ in range(8)])
    counts = tile_counts(true_types, true_inst, np.where(pred_inst > 0, 1, 0), pred_inst, CLASSES)
    found = nuclei_per_type(true_types, true_inst, CLASSES)
    assert found.name == "test_nuclei" and found.sum() > 8
    assert found.to_dict() == {c: int(counts[f"pq_tp_{c}"].sum() + counts[f"pq_fn_{c}"].sum()) for c in CLASSES}
    with pytest.raises(ValueError, match="one shape"):
        nuclei_per_type(types, instances[:1], CLASSES)


def test_detection_overlay_outlines_tp_fp_fn_in_the_colours_its_legend_names():
    from histolab_utils.plotting import detection_legend_handles, detection_overlay

    true_inst, pred_inst = np.zeros((16, 16), int), np.zeros((16, 16), int)
    true_inst[1:6, 1:6] = 1; pred_inst[1:6, 1:6] = 1      # matched: TP
    pred_inst[9:14, 1:6] = 2                              # no true nucleus there: FP
    true_inst[9:14, 9:14] = 2                             # nobody found it: FN
    painted = detection_overlay(np.zeros((16, 16, 3), np.uint8), true_inst, pred_inst)
    colours = {h.get_label().split(":")[0]: np.round(np.asarray(h.get_edgecolor()[:3]) * 255)
               for h in detection_legend_handles()}
    assert set(colours) == {"TP", "FP", "FN"}
    for kind, (y, x) in {"TP": (1, 3), "FP": (9, 3), "FN": (9, 11)}.items():
        assert (painted[y, x] == colours[kind]).all(), kind  # the outline's top edge
    assert (painted[3, 3] == 0).all() and (painted[7, 7] == 0).all()  # inside and between nuclei: untouched
