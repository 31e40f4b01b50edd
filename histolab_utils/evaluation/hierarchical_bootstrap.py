"""A hierarchical bootstrap for comparing two training arms scored on shared test tiles, and Holm's correction.

An arm of notebook 09 is trained once per seed, and every run is scored on the same test tiles. Two sources of
variation make one arm's score differ from another's by chance, and an interval must resample both:

* **seeds**: a retrained segmenter scores differently. Seeds are the independent units of the arms; with a handful of
  them, this is usually the larger share of the noise;
* **test tiles**: another draw of held-out tiles would score differently. Tiles are shared by every run (the design is
  crossed, not nested), so a tile that is hard for one arm is hard for the other: the paired difference cancels most of
  it. The tiles must not overlap (``data.pairs.grid_pairs``), or the tile term is counted several times over.

The variance of the contrast has three parts: the seeds' (sigma_s^2 / S), the tiles' (sigma_t^2 / T, a tile on
which the arm helps more or less than on average) and the seed-by-tile noise (sigma_e^2 / (S T)). Two bootstraps
measure them, each pairing the arm with its reference (the same drawn seeds, the same drawn tiles):

* **seeds**: draw S seeds with replacement, keep every tile: sigma_s^2 / S + sigma_e^2 / (S T);
* **tiles**: draw T tiles with replacement, one draw shared by every seed (the design is crossed), keep every seed:
  sigma_t^2 / T + sigma_e^2 / (S T).

Each is rescaled by n / (n - 1) (a bootstrap of n units has (n - 1) / n of the unbiased variance of their mean).
Their sum counts the seed-by-tile noise twice, so it is subtracted once, estimated from the residual mean square of a
two-way ANOVA of the (seed, tile) cells, linearised (each cell's first-order share of its seed's pooled score). The
interval is the estimate +- t x the standard error, with Satterthwaite's degrees of freedom, and the p-value is that
t-test's. The naive alternatives misjudge it (simulated, variance over the true one): drawing tiles within each
drawn seed (nested) misses the shared tile effect (0.7 where the arm helps some tiles more than others) and
overstates pure seed-by-tile noise (1.7); drawing seeds and one shared tile draw at once overstates both (1.4 and 2.5).
``tests/test_hierarchical_bootstrap.py`` simulates experiments with a known zero effect in several regimes and
checks that the 95 % interval covers 0 in 90-99 % of them (see Davison & Hinkley 1997, Sec. 3.8, on resampling
hierarchical data, and Owen 2007 on crossed designs).

Many (arm, score) contrasts are tested at once; :func:`holm` adjusts their p-values (Holm 1979), controlling the
family-wise error rate without assuming independence. statsmodels has it too; it is five lines, and not worth a
dependency.

Where the units are one level deep (independent images, non-overlapping tiles), :func:`mean_interval` is the plain
percentile bootstrap of their mean (Efron & Tibshirani 1993, Ch. 13), by ``scipy.stats.bootstrap``.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np


def mean_interval(values, n_resamples: int = 2000, confidence: float = 0.95,
                  seed: int = 0) -> tuple[float, float, float]:
    """(mean, low, high): the mean of independent ``values`` and its percentile bootstrap interval at ``confidence``.
    NaN values are left out; a constant sample, or one of fewer than two values, gets the mean as both ends (no
    spread to resample), and an empty one NaN."""
    from scipy.stats import bootstrap

    sample = np.asarray(values, dtype=float).ravel()
    sample = sample[~np.isnan(sample)]
    if not 0 < confidence < 1 or n_resamples < 1:
        raise ValueError(f"need 0 < confidence < 1 and n_resamples >= 1; got {confidence}, {n_resamples}")
    if len(sample) < 2 or sample.min() == sample.max():
        mean = float(sample.mean()) if len(sample) else float("nan")
        return mean, mean, mean
    result = bootstrap((sample,), np.mean, n_resamples=n_resamples, confidence_level=confidence,
                       method="percentile", random_state=np.random.default_rng(seed))
    return float(sample.mean()), float(result.confidence_interval.low), float(result.confidence_interval.high)


def _linearised(counts: np.ndarray, score: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """Each (seed, tile)'s share of its seed's pooled score, to first order: [S, T], averaging over tiles to the seed's
    score. The gradient of ``score`` at each seed's summed counts is taken by central differences."""
    sums = counts.sum(1)  # [S, C]
    n_tiles, n_columns = counts.shape[1], counts.shape[2]
    steps = 1e-4 * np.maximum(np.abs(sums), 1.0)  # [S, C]
    eye = np.eye(n_columns)
    up = score(sums[:, None, :] + eye * steps[:, None, :])  # [S, C]
    down = score(sums[:, None, :] - eye * steps[:, None, :])
    gradient = np.nan_to_num((up - down) / (2 * steps))  # a score a column does not enter has gradient 0
    centred = counts - sums[:, None, :] / n_tiles
    return score(sums)[:, None] + n_tiles * np.einsum("stc,sc->st", centred, gradient)


def hierarchical_contrast(arm: np.ndarray, reference: np.ndarray, score: Callable[[np.ndarray], np.ndarray],
                          n_resamples: int = 2000, confidence: float = 0.95, seed: int = 0,
                          batch: int = 100) -> dict[str, float]:
    """The arm's score minus the reference's, averaged over seeds, with an interval and p-value that resample seeds
    and test tiles.

    ``arm`` and ``reference``: per-tile counts [S seeds, T test tiles, C count columns], the same tiles in the same
    order, seed i of one paired with seed i of the other. ``score`` maps counts summed over tiles [..., C] to a score
    [...] (vectorised). Returns the difference, the interval at ``confidence``, its standard error, degrees of
    freedom, two-sided p-value, the three variance components and the numbers of seeds and tiles.
    """
    from scipy import stats

    arm, reference = np.asarray(arm, float), np.asarray(reference, float)
    if arm.shape != reference.shape or arm.ndim != 3:
        raise ValueError(f"paired arms need counts of one shape [seeds, tiles, columns]; got {arm.shape} and "
                         f"{reference.shape}")
    n_seeds, n_tiles = arm.shape[:2]
    estimate = float(np.mean(score(arm.sum(1)) - score(reference.sum(1))))
    out = {"difference": estimate, "ci_low": np.nan, "ci_high": np.nan, "se": np.nan, "df": np.nan, "p_value": np.nan,
           "confidence": confidence, "var_seeds": np.nan, "var_tiles": np.nan, "var_cells": np.nan,
           "seeds": n_seeds, "tiles": n_tiles}
    if n_seeds < 2 or n_tiles < 2 or not np.isfinite(estimate):
        return out  # one seed cannot say how much a retrained model varies
    rng = np.random.default_rng(seed)

    def contrast(seeds: np.ndarray, tiles: np.ndarray) -> np.ndarray:  # [b, S] seeds and [b, T] tiles drawn
        drawn_seeds, drawn_tiles = seeds[:, :, None], tiles[:, None, :]
        return np.nanmean(score(arm[drawn_seeds, drawn_tiles].sum(2)) - score(reference[drawn_seeds, drawn_tiles].sum(2)),
                          axis=1)

    every_seed, every_tile = np.arange(n_seeds), np.arange(n_tiles)
    by_seeds, by_tiles = [], []
    for start in range(0, n_resamples, batch):
        b = min(batch, n_resamples - start)
        by_seeds.append(contrast(rng.integers(0, n_seeds, (b, n_seeds)), np.broadcast_to(every_tile, (b, n_tiles))))
        by_tiles.append(contrast(np.broadcast_to(every_seed, (b, n_seeds)), rng.integers(0, n_tiles, (b, n_tiles))))
    # a bootstrap of n units has (n - 1) / n of the unbiased variance of their mean
    var_seeds = float(np.nanvar(np.concatenate(by_seeds), ddof=1)) * n_seeds / (n_seeds - 1)
    var_tiles = float(np.nanvar(np.concatenate(by_tiles), ddof=1)) * n_tiles / (n_tiles - 1)
    # both resamplings see the seed-by-tile noise: subtract it once (two-way ANOVA of the linearised differences)
    cells = _linearised(arm, score) - _linearised(reference, score)
    residual = cells - cells.mean(1, keepdims=True) - cells.mean(0, keepdims=True) + cells.mean()
    var_cells = float((residual ** 2).sum() / ((n_seeds - 1) * (n_tiles - 1))) / (n_seeds * n_tiles)
    variance = max(var_seeds + var_tiles - var_cells, var_seeds, var_tiles)
    # Satterthwaite's degrees of freedom for a sum of two variance estimates with S - 1 and T - 1 of their own
    # (not below the fewer units' own: the subtracted noise term can pull the formula under it)
    fewest = min(n_seeds, n_tiles) - 1
    df = max(variance ** 2 / (var_seeds ** 2 / (n_seeds - 1) + var_tiles ** 2 / (n_tiles - 1)), fewest) if variance > 0 else fewest
    se = float(np.sqrt(variance))
    quantile = stats.t.ppf(0.5 + confidence / 2, df)
    out.update(se=se, df=float(df), ci_low=estimate - quantile * se, ci_high=estimate + quantile * se,
               var_seeds=var_seeds, var_tiles=var_tiles, var_cells=var_cells)
    out["p_value"] = float(2 * stats.t.sf(abs(estimate) / se, df)) if se > 0 else float(estimate == 0)
    return out


def holm(p_values: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values (NaN stays NaN and is not counted among the tests)."""
    p = np.asarray(p_values, float)
    adjusted = np.full_like(p, np.nan)
    tested = np.flatnonzero(~np.isnan(p))
    order = tested[np.argsort(p[tested], kind="stable")]
    m = len(order)
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[index]))  # monotone: never below an earlier step
        adjusted[index] = running
    return adjusted


def holm_interval_levels(p_values: Sequence[float], confidence: float = 0.95) -> np.ndarray:
    """Each test's confidence level at its Holm step: 1 - alpha / (m - rank), rank by raw p-value (NaN: NaN). An
    interval at this level excludes 0 exactly when the test's raw p-value passes its own Holm step."""
    p = np.asarray(p_values, float)
    levels = np.full_like(p, np.nan)
    tested = np.flatnonzero(~np.isnan(p))
    order = tested[np.argsort(p[tested], kind="stable")]
    alpha = 1 - confidence
    for rank, index in enumerate(order):
        levels[index] = 1 - alpha / (len(order) - rank)
    return levels
