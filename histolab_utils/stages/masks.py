"""Notebook 06's nuclei-mask generator (NASDM stage 1): its config from the ``[masks]`` section, ``train masks``, its
run folder (``runs/<profile>/masks``), record, card and release (``masks-<profile>``)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from .base import RELEASED_PROFILES, Stage, StageRecord, config_from_section, register
from .cards import card_footer, checks_and_goals, hardware_in_words, heldout_in_words, not_for_diagnosis, training_time


@dataclass(frozen=True, kw_only=True)
class MasksRecord(StageRecord):
    """notebook 06's metrics: held-out mask scores beside floor, ceiling and baseline; checks; goals."""

    n: int
    split: str
    tile_size: int
    downsample: float
    guidance_scale: float
    profile_guidance_scale: float
    validation_sweep: dict
    n_validation: int
    heldout_scores: dict
    conditioning_per_type: dict
    floor_matching: dict
    checks: list
    goals: list
    round_trip_instance_recall: float
    train_steps: int
    train_seconds: float
    device: str
    sampler: str
    sampler_steps: int
    pipeline: str
    released_model: str | None = None
    overall_recall: float
    overall_precision: float
    ceiling_recall: float
    unguided_recall: float
    morphology_fd: float
    floor_morphology_fd: float
    baseline_morphology_fd: float
    train_seconds_source: str | None = None
    # the whole-nucleus area (border fragments left out) of every set against real held-out masks at equal n, beside
    # the real train-vs-held-out floor (evaluation.nucleus_appearance.area_distribution), and the chosen set's
    nucleus_area: dict | None = None
    area_over_floor: float | None = None
    area_median: float | None = None
    heldout_area_median: float | None = None
    heldout: dict | None = None  # what the held-out set rests on (n, overlapping pairs, distinct nuclei, a sentence)
    # the speck filter chosen on validation (models.mask_generator.choose_min_nucleus_px) and its table
    min_nucleus_px: int | None = None
    speck_sweep: dict | None = None

    HEADLINE: ClassVar[tuple[str, ...]] = ("overall_recall", "overall_precision", "ceiling_recall", "unguided_recall",
                                           "morphology_fd", "floor_morphology_fd", "baseline_morphology_fd",
                                           "area_over_floor")
    ADDED_SINCE_PUBLISHED: ClassVar[frozenset[str]] = StageRecord.ADDED_SINCE_PUBLISHED | frozenset(
        {"nucleus_area", "area_over_floor", "area_median", "heldout_area_median", "heldout", "min_nucleus_px",
         "speck_sweep", "train_seconds_source"})  # the last is written only where training seconds were corrected later



def masks_metrics(config, device, *, heldout: dict, split_x: float, validation_y: float, n_validation: int,
                  guidance_scale: float, sweep, scores, per_type_accuracy, matching, checks, goals,
                  round_trip_recall: float, trainer, run_folder, chosen: str, unguided: str, ceiling: str, floor: str,
                  baseline: str, areas, min_nucleus_px: int = 0, speck_sweep=None) -> dict[str, Any]:
    """Notebook 06's metrics, as its record keeps them, from what the notebook computed.

    ``heldout`` says what the held-out set rests on (``data.nuclei.tiles_summary`` or ``data.pairs.pairs_summary``:
    its ``n``, overlapping pairs, distinct nuclei and a sentence); the record's ``n`` is its size, which every scored
    set shares (a non-overlapping grid may hold fewer tiles than the profile's ``n_eval``).

    ``config`` is the profile (``ctx.config``); ``sweep`` the validation guidance sweep and ``scores`` the held-out
    score table (``evaluation.mask_generation.score_mask_sets``), whose rows ``chosen``, ``unguided``, ``ceiling``,
    ``floor`` and ``baseline`` name the model at the chosen guidance, at s = 0, the round trip, the condition-matched
    real floor and the ellipse baseline; ``per_type_accuracy`` the per-type conditioning table (index: set, type);
    ``matching`` how the floor's rows were matched; ``checks`` and ``goals`` the two tables the notebook showed;
    ``trainer`` the mask generator's trainer (its ``step`` and ``train_seconds``); ``areas`` the whole-nucleus area
    table (``evaluation.nucleus_appearance.area_distribution``: a ``chosen`` row, the floor row and the ``real
    held-out`` row); ``min_nucleus_px`` the speck filter chosen on validation and ``speck_sweep`` the table it was
    chosen from (``models.mask_generator.choose_min_nucleus_px``). A set either table lacks is a KeyError naming it. In a released profile (cpu) the record names
    the release ``make results`` makes."""
    from ..evaluation.nucleus_appearance import FLOOR_ROW
    from ..report import table_records

    section = config.masks
    named = {"chosen": chosen, "unguided": unguided, "ceiling": ceiling, "floor": floor, "baseline": baseline}
    missing = {role: name for role, name in named.items() if name not in scores.index}
    if missing:
        raise KeyError(f"the held-out score table lacks the sets {missing}; its rows are {list(scores.index)}")
    missing = [name for name in (chosen, FLOOR_ROW, "real held-out") if name not in areas.index]
    if missing:
        raise KeyError(f"the whole-nucleus area table lacks the rows {missing}; its rows are {list(areas.index)}")
    metrics = {
        "n": heldout["n"], "heldout": heldout,
        "split": (f"HGSC slide, right 25 % held out (level-0 x >= {split_x:.0f}), bottom 25 % of the rest validation "
                  f"(y >= {validation_y:.0f})"),
        "tile_size": section.tile_size, "downsample": section.downsample, "guidance_scale": guidance_scale,
        "profile_guidance_scale": section.guidance_scale, "validation_sweep": table_records(sweep.astype(float)),
        "n_validation": n_validation, "heldout_scores": table_records(scores.astype(float)),
        "conditioning_per_type": {f"{s} | {t}": {"recall": float(r["recall"]), "precision": float(r["precision"])}
                                  for (s, t), r in per_type_accuracy.iterrows()},
        "floor_matching": matching.to_dict(),
        "checks": checks.astype({"measured": float}).assign(bar=checks["bar"].astype(str)).to_dict("records"),
        "goals": goals.astype({"measured": float}).to_dict("records"),
        "round_trip_instance_recall": round_trip_recall,
        "train_steps": trainer.step, "train_seconds": trainer.train_seconds, "device": str(device),
        "sampler": section.sampler, "sampler_steps": section.sampler_steps,
        "pipeline": str(Path(run_folder) / "pipeline"), "min_nucleus_px": int(min_nucleus_px),
    }
    if speck_sweep is not None:
        metrics["speck_sweep"] = table_records(speck_sweep.astype(float))
    if config.name in RELEASED_PROFILES:  # make results releases the model under this name
        metrics["released_model"] = MASKS.release_name(config.name)

    def score(name: str, column: str) -> float:
        return float(scores.loc[name, column])

    metrics.update({
        "overall_recall": score(chosen, "recall"), "overall_precision": score(chosen, "precision"),
        "ceiling_recall": score(ceiling, "recall"), "unguided_recall": score(unguided, "recall"),
        "morphology_fd": score(chosen, "morphology_fd"), "floor_morphology_fd": score(floor, "morphology_fd"),
        "baseline_morphology_fd": score(baseline, "morphology_fd"),
        "nucleus_area": table_records(areas.astype(float)),
        "area_over_floor": float(areas.loc[chosen, "over_floor"]), "area_median": float(areas.loc[chosen, "area_median"]),
        "heldout_area_median": float(areas.loc["real held-out", "area_median"])})
    return metrics


def area_section(record: MasksRecord) -> str:
    """The card's whole-nucleus area table (empty for a record made before notebook 06 measured it)."""
    if not record.nucleus_area:
        return ""

    def cell(row: dict, column: str, form: str) -> str:
        return "" if row.get(column) is None else format(row[column], form)

    rows = "\n".join(f"| {name} | {cell(row, 'n', '.0f')} | {cell(row, 'w_area', '.3f')} | {cell(row, 'over_floor', '.2f')} "
                     f"| {cell(row, 'area_median', '.0f')} | {cell(row, 'whole', '.0f')} | {cell(row, 'fragments', '.0f')} |"
                     for name, row in record.nucleus_area.items())
    return f"""
## Whole-nucleus area (held-out strip, equal n)

Nuclei touching a tile's border are fragments and are left out. The distance is the 1-D Wasserstein distance of
the areas from the real held-out nuclei's, over their robust scale, at one n; the real train region's nuclei give
the floor. Too small and too large both score far.

| set | n | area distance | over floor | median area (px) | whole nuclei | fragments |
|---|---|---|---|---|---|---|
{rows}
"""


def masks_card(record: MasksRecord, name: str) -> str:
    """A model card for notebook 06's nuclei-mask generator, from its published metrics record."""
    columns = ("recall", "precision", "morphology_fd", "single_type", "coverage")
    rows = "\n".join(f"| {set_name} | " + " | ".join("" if row.get(c) is None else f"{row[c]:.3f}" for c in columns) + " |"
                     for set_name, row in record.heldout_scores.items())
    return f"""---
license: mit
library_name: diffusers
tags: [histopathology, nuclei, segmentation-masks, classifier-free-guidance, teaching]
---
# {name}: nuclei masks for requested nucleus types and a tissue context (NASDM stage 1)

Notebook 06 (`notebooks/06_nuclei_masks.ipynb`) of histolab_utils in the `{record.profile}` profile: a diffusers
`UNet2DModel` whose class embedding is a linear map of the condition [types present (neoplastic, inflammatory,
connective) | tissue context | null flag], added to the time embedding as in NASDM; it draws {record.tile_size} px
masks (one-hot background and types plus an instance-boundary channel) at {record.downsample:g} slide px per mask px.
{training_time(record.train_steps, record.train_seconds, hardware_in_words(record))}.

{not_for_diagnosis("the nucleus polygons of the train region of one whole HGSC slide (one tissue, one patient)")}

## Use

```python
from histolab_utils.data import pretrained
from histolab_utils.models.mask_generator import NucleiMaskPipeline

pipeline = NucleiMaskPipeline.from_pretrained(pretrained("{name}"))
out = pipeline([["neoplastic", "connective"]] * 8, ["tumor"] * 8, guidance_scale={record.guidance_scale:g},
               min_nucleus_px={record.min_nucleus_px or 0})  # the speck filter chosen on validation
out.types, out.instances  # decoded type and instance maps
# without histolab_utils: diffusers.UNet2DModel.from_pretrained(folder, subfolder="unet") loads the network
```

## Data

The nucleus polygons of one whole HGSC slide (`hgsc` wheel), split by region (the slide keeps its strips in every
split since 2: the right 25 % held out, the bottom 25 % of the rest validation); only train-region tiles ({record.tile_size} px, with at least one
nucleus, flipped and rotated) were trained on. The guidance ({record.guidance_scale:g}) was chosen on
{record.n_validation} validation tiles; the scores below are on n = {record.n} held-out tiles.{heldout_in_words(record)}

## Scores (held-out strip, equal n)

| set | recall | precision | morphology FD | single-type instances | coverage |
|---|---|---|---|---|---|
{rows}
{area_section(record)}
{checks_and_goals(record, "tests/test_nuclei_masks.py")}

{card_footer(record, "06_nuclei_masks", 'Shrivastava & Fletcher (2023), "NASDM: Nuclei-Aware Semantic Histopathology Image Generation Using '
                                  'Diffusion Models"; Ho & Salimans (2022), "Classifier-Free Diffusion Guidance".',
             limits=[f"{record.tile_size} px masks at {record.downsample:g} slide px per mask px, from one slide of one "
                     f"tissue: other tissues' nuclei are unseen.",
                     "Its morphology distance counts and covers nuclei; the whole-nucleus areas are compared apart "
                     "(above). It draws more nucleus per tile than real tiles hold (coverage in the table), and "
                     "decoded without the speck filter it chose (`min_nucleus_px`) it draws many specks of a few "
                     "pixels."
                     if record.min_nucleus_px else
                     "Its morphology distance counts and covers nuclei but does not compare whole-nucleus areas; "
                     "notebook 08 measured generated whole nuclei at about half the real area on split 2."],
             unchanged_since=2)}"""


class MasksStage(Stage):
    name = "masks"
    notebook = "06_nuclei_masks"
    section = "masks"
    summary = "the nuclei-mask generator, NASDM stage 1 (notebook 06)"
    record_type = MasksRecord
    build_metrics = staticmethod(masks_metrics)
    headline_extras = ("n", "guidance_scale")
    generator_key = "masks"
    chosen_settings = {"mask_guidance_scale": "guidance_scale", "mask_min_nucleus_px": "min_nucleus_px"}
    split_unchanged_since = 2  # it trains on the slide's tiles only, whose strips split 3 kept

    def pipeline_class(self):
        from ..models.mask_generator import NucleiMaskPipeline

        return NucleiMaskPipeline

    def train_config(self, config, seed: int = 0, variant: str = "", **overrides: Any):
        """The ``[masks]`` section plus what the masks fix (their channels, the condition vector, flips of float
        data); ``None`` overrides are ignored."""
        from ..diffusion.training import TrainConfig
        from ..models.mask_generator import CONDITION_DROPOUT, CONDITION_FEATURES, MASK_CHANNELS

        section = config.masks
        return config_from_section(TrainConfig, section, seed, own={
            "image_size": section.tile_size, "in_channels": MASK_CHANNELS, "condition_features": CONDITION_FEATURES,
            "label_dropout": CONDITION_DROPOUT, "augment_float": True}, **overrides)

    def train(self, args: argparse.Namespace, config) -> int:
        from ..data.nuclei import mask_tiles
        from ..models.mask_generator import train_mask_generator
        from .base import guarded, trainer_summary

        section = config.masks
        train_config = self.train_config(config, args.seed, steps=args.steps, batch_size=args.batch_size,
                                         compile=False if args.no_compile else None)
        tiles = mask_tiles("wsi", section.tile_size, "train", section.n_train_tiles, seed=args.seed,
                           downsample=section.downsample)
        return guarded(lambda: train_mask_generator(train_config, tiles, args.out, resume=args.resume),
                       trainer_summary(f" on {len(tiles)} tiles", args.out / self.model_subfolder))

    def card(self, record: MasksRecord, variant: str, name: str) -> str:
        return masks_card(record, name)

    def masks_for(self, pairs, folder, config, device: Any = "cpu", seed: int = 7) -> tuple[Any, float]:
        """The masks this stage's generator draws for the conditions of ``pairs`` (the nucleus types each holds, as
        ``data.nuclei.present_types`` reads them, and its tissue context), at the pairs' size: how notebooks 07 and
        08 get notebook 06's masks. The model saved in ``folder`` samples with the ``[masks]`` sampler of the profile
        ``config`` at the guidance notebook 06 chose on its validation strip (``report.chosen_setting``: this
        machine's record, else the published one, else the profile's), decoded with the speck filter it chose there
        (``min_nucleus_px``; none where no record chose one). Returns the masks (``generate_masks``' output:
        ``types``, ``instances``, ``masks``) and that guidance scale."""
        from ..data.nuclei import present_types
        from ..diffusion.schedules import make_scheduler
        from ..models.mask_generator import condition_vectors, generate_masks

        section = config.masks
        pipeline = self.load(folder, device, make_scheduler(section.sampler, section.schedule, clip_sample=True,
                                                            prediction_type=section.prediction_type))
        guidance_scale = self.chosen(config.name, "guidance_scale", section.guidance_scale)
        conditions = condition_vectors(present_types(pairs.types, pairs.instances), pairs.contexts)
        # the UNet is convolutional: it draws masks of the pairs' size even where notebook 06 trained on larger tiles
        made = generate_masks(pipeline, conditions, guidance_scale, section.sampler_steps, seed=seed,
                              size=pairs.types.shape[-1], min_nucleus_px=self.chosen(config.name, "min_nucleus_px", 0))
        return made, guidance_scale



MASKS = register(MasksStage())
