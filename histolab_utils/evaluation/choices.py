"""Choices made on the validation region: a setting (a guidance scale, say) is picked from a sweep scored on
validation tiles only, and a model from scores against a validation draw, so the held-out region gives final scores
and never decides anything.

>>> sweep = pd.DataFrame({"dice": [0.40, 0.55, 0.58], "fid": [60.0, 50.0, 70.0]}, index=[0.0, 1.5, 3.0])
>>> choose_guidance_scale(sweep, "dice")                       # 3.0: the best Dice
>>> choose_guidance_scale(sweep, "dice", within=("fid", 1.1))  # 1.5: the best Dice among FIDs within 10 % of the best
>>> choose_best_model(rows)  # (schedule, prediction) of the lowest DDIM FID against the validation draw
>>> choose_sampler(sampler_scores)  # the sampler of lowest validation FID, at the chosen guidance
"""

from __future__ import annotations

import pandas as pd


def choose_guidance_scale(sweep: pd.DataFrame, column: str = "f1", higher_is_better: bool = True,
                          within: tuple[str, float] | None = None, above: tuple[str, float] | None = None) -> float:
    """The guidance scale (the index of ``sweep``) with the best ``column``, the smallest such scale on a tie.
    With ``above=(check, bar)``, only scales whose ``check`` exceeds ``bar`` compete (a check each must pass: the
    fidelity Dice above the mismatched-pair floor, say, so that an image that ignores its mask is never chosen);
    none passing is an error. With ``within=(other, ratio)``, only scales whose ``other`` (lower is better, an FID
    say) is at most ``ratio`` x the best ``other`` among those compete: the trade-off made explicit. Call it on
    validation scores only."""
    if above is not None:
        check, bar = above
        passing = sweep[sweep[check].astype(float) > bar]
        if passing.empty:
            raise ValueError(f"no guidance scale has {check} above {bar:g} (the sweep's: "
                             f"{sweep[check].astype(float).round(4).to_dict()}): none passes the check")
        sweep = passing
    values = sweep[column].astype(float)
    if within is not None:
        other, ratio = within
        cost = sweep[other].astype(float)
        values = values[cost <= ratio * cost.min()]
    values = values.dropna()
    if values.empty:
        raise ValueError(f"no finite {column!r} in the sweep to choose a guidance scale from")
    best = values.max() if higher_is_better else values.min()
    return float(min(scale for scale, value in values.items() if value == best))


# what notebook 07 does on its validation pairs for its pixel and its latent SPADE model alike
# (models.mask_to_image.choose_sampling), in words, for their cards
SAMPLING_RULE = ("with DDIM, the guidance scale of the most real nuclei (the lowest nucleus appearance distance over "
                 "its real floor) among the guided scales (s > 0) whose fidelity Dice clears the mismatched-pair floor and "
                 "whose FID is within 10 % of the best of those; then, at that scale and equal network calls, the sampler of lowest "
                 "FID")


def choose_sampler(scores: pd.DataFrame, column: str = "fid") -> str:
    """The sampler (the index of ``scores``) with the lowest ``column``, an FID on validation pairs by default; the
    first such sampler on a tie, samplers with no finite score left out. A held-out column is refused: held-out
    pairs give final scores only."""
    if "heldout" in column:
        raise ValueError(f"column={column!r}: a sampler is chosen on validation scores, never on held-out ones")
    if column not in scores.columns:
        raise ValueError(f"the sampler scores lack the column {column!r} (have {list(scores.columns)})")
    values = scores[column].astype(float).dropna()
    if values.empty:
        raise ValueError(f"no sampler with a finite {column!r} to choose from (samplers: {list(scores.index)})")
    return str(values.idxmin())


# what choose_best_model does with its defaults, in words, for a metrics record
BEST_MODEL_RULE = ("lowest DDIM FID against a validation-region draw at the samples' n (no held-out pixel informs the "
                   "choice)")


def choose_best_model(rows: pd.DataFrame, sampler: str = "ddim", column: str = "fid_vs_validation",
                      keys: tuple[str, ...] = ("schedule", "prediction")) -> tuple:
    """The ``keys`` (schedule, prediction type) of the row of ``sampler`` with the lowest ``column``, an FID against
    the validation draw by default (:func:`~histolab_utils.evaluation.floors.score_samples`); the first such row on a
    tie, rows with no finite score left out. A held-out column is refused: held-out crops give final scores only."""
    if "heldout" in column:
        raise ValueError(f"column={column!r}: a choice is made on validation scores, never on held-out ones")
    missing = [name for name in ("sampler", column, *keys) if name not in rows.columns]
    if missing:
        raise ValueError(f"rows lack the column(s) {missing} needed to choose a model (have {list(rows.columns)})")
    scored = rows[rows["sampler"] == sampler].dropna(subset=[column])
    if scored.empty:
        raise ValueError(f"no {sampler!r} row with a finite {column!r} to choose a model from")
    return tuple(scored.loc[scored[column].astype(float).idxmin(), list(keys)])
