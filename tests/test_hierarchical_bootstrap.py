"""The hierarchical bootstrap of notebook 09's contrasts is calibrated (simulated zero effects), finds a real effect,
and Holm's adjustment matches a hand calculation."""

from __future__ import annotations

import numpy as np
import pytest

from histolab_utils.evaluation.hierarchical_bootstrap import (hierarchical_contrast, holm, holm_interval_levels,
                                                              mean_interval)


def dice(sums: np.ndarray) -> np.ndarray:
    return 2 * sums[..., 0] / (sums[..., 1] + sums[..., 2])


def simulated_arms(rng, effect=0.0, seed_sd=0.03, tile_gain_sd=0.0, seeds=5, tiles=60):
    """Per-tile Dice counts [seeds, tiles, (intersection, true, predicted)] of an arm and its reference: nuclear
    pixels per tile, a tile difficulty both share, a seed effect per run, a tile-by-arm gain (the arm helps some tiles
    more: its mean over tiles is 0, so a redraw of the tiles changes the contrast) and seed-by-tile noise."""
    size = rng.integers(20, 300, tiles).astype(float)
    hard = rng.normal(0, 0.1, tiles)
    gain = effect + rng.normal(0, tile_gain_sd, tiles)

    def arm(shift):
        recall = np.clip(0.7 + shift + rng.normal(0, seed_sd, (seeds, 1)) + hard + rng.normal(0, 0.05, (seeds, tiles)), 0, 1)
        inter = size * recall
        predicted = inter + size * np.clip(0.2 + rng.normal(0, 0.05, (seeds, tiles)) - 0.5 * hard, 0, None)
        return np.stack([inter, np.broadcast_to(size, (seeds, tiles)), predicted], -1)

    return arm(gain), arm(0.0)


@pytest.mark.parametrize("seed_sd, tile_gain_sd", [(0.03, 0.0), (0.0, 0.05), (0.0, 0.0)],
                         ids=["seeds dominate", "tiles differ in gain", "noise only"])
def test_a_zero_effect_is_covered_about_95_percent_of_the_time(seed_sd, tile_gain_sd):
    rng = np.random.default_rng(7)
    covered = []
    for experiment in range(200):
        arm, reference = simulated_arms(rng, seed_sd=seed_sd, tile_gain_sd=tile_gain_sd)
        out = hierarchical_contrast(arm, reference, dice, n_resamples=200, seed=experiment)
        covered.append(out["ci_low"] <= 0 <= out["ci_high"])
    assert 0.90 <= np.mean(covered) <= 0.99, np.mean(covered)


def test_a_real_gain_is_found_and_its_interval_holds_it():
    rng = np.random.default_rng(3)
    arm, reference = simulated_arms(rng, effect=0.08, seed_sd=0.02)
    out = hierarchical_contrast(arm, reference, dice, n_resamples=500)
    truth = np.mean(dice(arm.sum(1)) - dice(reference.sum(1)))
    assert out["difference"] == pytest.approx(truth) and out["difference"] > 0
    assert 0 < out["ci_low"] < out["difference"] < out["ci_high"] and out["p_value"] < 0.01
    assert out["seeds"] == 5 and out["tiles"] == 60 and out["df"] >= 4 - 1e-9


def test_one_seed_gives_no_interval_and_mismatched_arms_are_refused():
    rng = np.random.default_rng(0)
    arm, reference = simulated_arms(rng, seeds=1)
    out = hierarchical_contrast(arm, reference, dice, n_resamples=50)
    assert np.isfinite(out["difference"]) and np.isnan(out["ci_low"]) and np.isnan(out["p_value"])
    with pytest.raises(ValueError, match="one shape"):
        hierarchical_contrast(arm, reference[:, :10], dice)


def test_holm_matches_a_hand_calculation_and_leaves_untested_out():
    p = [0.01, 0.04, 0.03, 0.005, np.nan]
    # sorted: 0.005 x 4 = 0.02, 0.01 x 3 = 0.03, 0.03 x 2 = 0.06, 0.04 x 1 = 0.04 -> 0.06 (never below an earlier step)
    np.testing.assert_allclose(holm(p), [0.03, 0.06, 0.06, 0.02, np.nan])
    np.testing.assert_allclose(holm_interval_levels(p), [1 - 0.05 / 3, 1 - 0.05 / 1, 1 - 0.05 / 2, 1 - 0.05 / 4, np.nan])
    assert holm([]).size == 0 and holm([0.2])[0] == 0.2 and holm([0.6, 0.7])[1] == 1.0


def test_the_mean_interval_covers_the_true_mean_about_95_percent_of_the_time():
    rng = np.random.default_rng(0)
    covered = [low <= 1.0 <= high for k in range(200)
               for _, low, high in [mean_interval(rng.normal(1.0, 2.0, 40), 500, seed=k)]]
    assert 0.88 <= np.mean(covered) <= 0.99


def test_the_mean_interval_of_degenerate_samples_and_bad_arguments():
    assert mean_interval([0.5, 0.5, 0.5]) == (0.5, 0.5, 0.5)  # no spread to resample
    assert mean_interval([0.2]) == (0.2, 0.2, 0.2)
    assert mean_interval([1.0, np.nan, 3.0], seed=1)[0] == 2.0  # NaN left out
    assert all(np.isnan(mean_interval([])))
    with pytest.raises(ValueError, match="confidence"):
        mean_interval([1.0, 2.0], confidence=95)
