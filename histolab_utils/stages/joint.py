"""Notebook 08's joint image-label model (CoSyn-style): its config from the ``[joint]`` section, ``train joint``,
its run folder (``runs/<profile>/joint``), record, card and release (``joint-<profile>``). It trains on notebook 07's
image-mask pairs (the ``[spade]`` section's tile size, downsample and number of pairs), so that the head-to-head with
the two-stage route compares like with like."""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from .base import RELEASED_PROFILES, Stage, StageRecord, config_from_section, register
from ..data.datasets import split_description
from ..data.pairs import PAIR_SOURCES
from .cards import (card_footer, checks_and_goals, hardware_in_words, heldout_in_words, not_for_diagnosis, score_rows,
                    split_in_words, training_time)


@dataclass(frozen=True, kw_only=True)
class JointRecord(StageRecord):
    """notebook 08's metrics: the joint model beside the two-stage route and floors; checks; goals."""

    n: int
    n_validation: int
    device: str
    split: str
    tile_size: int
    downsample: int
    guidance_scale: float
    profile_guidance_scale: float
    validation_sweep: dict
    spade_guidance_scale: float
    mask_guidance_scale: float
    slide_area_scale: float  # a linear size ratio despite its name: sqrt of the median whole-nucleus area ratio
    slide_downsample: float
    checks: list
    goals: list
    sampler: str
    sampler_steps: int
    layout_sigma: float
    floor_real_vs_real: dict
    label_consistency_reference_real_pairs: dict
    label_consistency_floor_mismatched_pairs: dict
    joint: dict
    head_to_head: dict
    empty_layout_spurious_per_tile: float
    detector_threshold: float
    disk_radius_px: float
    train_steps: int
    train_seconds: float
    sampling_seconds: float
    two_stage_models: dict
    layout_sources: dict
    gallery: str
    released_model: str | None = None
    fid: float
    floor_fid: float
    label_dice: float
    label_dice_reference: float
    label_dice_floor: float
    located_fraction: float
    typed_fraction: float
    spurious_per_tile: float
    two_stage_oracle_fid: float
    # nucleus appearance (realism of the nuclei against real held-out nuclei, beside the real train-vs-held-out
    # floor at equal n); records made before it hold none
    appearance: dict | None = None
    realism_ranking: dict | None = None
    appearance_distance: float | None = None
    appearance_floor: float | None = None
    heldout: dict | None = None  # what the held-out set rests on (n, overlapping pairs, distinct nuclei, a sentence)

    # made after the published cpu record (split 2): it lacks them until the cpu profile runs again
    ADDED_SINCE_PUBLISHED: ClassVar[frozenset[str]] = StageRecord.ADDED_SINCE_PUBLISHED | frozenset(
        {"appearance", "realism_ranking", "appearance_distance", "appearance_floor", "heldout"})
    HEADLINE: ClassVar[tuple[str, ...]] = ("appearance_distance", "appearance_floor", "fid", "floor_fid", "label_dice",
                                           "label_dice_reference", "label_dice_floor", "located_fraction",
                                           "typed_fraction", "spurious_per_tile", "two_stage_oracle_fid")



ORACLE = "two-stage, real mask (oracle)"  # notebook 08's two-stage route from the real held-out mask


def trained_steps(folder: str | Path) -> int:
    """How many steps the saved model in ``folder`` was trained for (its ``histolab_train_config.json``)."""
    path = Path(folder) / "histolab_train_config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: {folder} holds no model saved by this package's trainer")
    return json.loads(path.read_text())["steps"]


def _json_value(value: Any) -> Any:
    """A table cell as a record keeps it: None for a missing value, bool and str as they are, numbers as float."""
    import numpy as np
    import pandas as pd

    if isinstance(value, str):
        return value
    if value is None or pd.isna(value):
        return None
    return bool(value) if isinstance(value, (bool, np.bool_)) else float(value)


def joint_metrics(config, device, *, heldout: dict, n_validation: int, guidance_scale: float, sweep,
                  spade_guidance_scale: float, mask_guidance_scale: float, slide_area_scale: float,
                  slide_downsample: float, checks, goals, table, runs,
                  headline_set: str, head_to_head_sets, empty_adherence, detector, disk_radius: float, trainer,
                  sampling_seconds: float, mask_pipeline, spade_pipeline, sources: dict, gallery, appearance,
                  ranking) -> dict[str, Any]:
    """Notebook 08's metrics, as its record keeps them, from what the notebook computed.

    ``heldout`` says what the held-out set rests on (``data.nuclei.tiles_summary`` or ``data.pairs.pairs_summary``:
    its ``n``, overlapping pairs, distinct nuclei and a sentence); the record's ``n`` is its size, which every scored
    set shares (a non-overlapping grid may hold fewer tiles than the profile's ``n_eval``).

    ``config`` is the profile (``ctx.config``; the pairs are its ``[spade]`` section's); ``sweep`` the validation
    guidance sweep (index: guidance scale); ``table`` the held-out table (scores and layout adherence, one row per set),
    of which ``runs``' names that start with "joint" are the joint model's sets, ``headline_set`` the one at the
    chosen guidance on held-out layouts, and ``head_to_head_sets`` the head to head's (the joint set and the
    two-stage routes); ``empty_adherence`` the layout adherence of empty layouts; ``detector`` the haematoxylin
    detector; ``trainer`` the joint trainer; ``mask_pipeline`` and ``spade_pipeline`` the folders of notebooks 06 and
    07's models the two-stage route used; ``sources`` the layout sources (name -> (layouts, contexts)); ``gallery``
    the gallery's PNG (its file name is recorded: ``make results`` publishes it under that name beside the record);
    ``appearance`` the held-out sets' nucleus appearance (a
    :func:`~histolab_utils.evaluation.nucleus_appearance.pairs_appearance_scores` table, its floor row too) and
    ``ranking`` the route comparison ranked by realism
    (:func:`~histolab_utils.evaluation.nucleus_appearance.realism_ranking`), kept as ``appearance`` and
    ``realism_ranking`` (``{set: {column: value}}``, in rank order). A set the tables lack is a KeyError naming it. In a released profile (cpu) the record names
    the release ``make results`` makes."""
    import pandas as pd

    from ..evaluation.mask_fidelity import FLOOR_MISMATCHED, FLOOR_REAL, REFERENCE_PAIRS
    from ..evaluation.nucleus_appearance import FLOOR_ROW
    from ..report import row_values, table_records

    section, pairs = config.joint, config.spade

    def row(name: str) -> dict[str, float]:
        return row_values(table, name)

    metrics = {
        "n": heldout["n"], "heldout": heldout, "n_validation": n_validation, "device": str(device),
        "split": split_description(PAIR_SOURCES),
        "tile_size": pairs.tile_size, "downsample": pairs.downsample, "guidance_scale": guidance_scale,
        "profile_guidance_scale": section.guidance_scale,
        "validation_sweep": {f"{s:g}": {k: float(v) for k, v in r.items() if pd.notna(v)} for s, r in sweep.iterrows()},
        "spade_guidance_scale": spade_guidance_scale, "mask_guidance_scale": mask_guidance_scale,
        "slide_area_scale": slide_area_scale,
        "slide_downsample": slide_downsample,
        "checks": checks.astype({"measured": float, "bar": float}).to_dict("records"),
        "goals": goals.astype({"measured": float}).to_dict("records"),
        "sampler": section.sampler, "sampler_steps": section.sampler_steps, "layout_sigma": section.layout_sigma,
        "floor_real_vs_real": row(FLOOR_REAL),
        "label_consistency_reference_real_pairs": row(REFERENCE_PAIRS),
        "label_consistency_floor_mismatched_pairs": row(FLOOR_MISMATCHED),
        "joint": {name: row(name) for name in runs if name.startswith("joint")},
        "head_to_head": {name: row(name) for name in head_to_head_sets},
        "empty_layout_spurious_per_tile": float(empty_adherence["spurious_per_tile"]),
        "detector_threshold": detector.threshold, "disk_radius_px": disk_radius,
        "train_steps": trainer.step, "train_seconds": trainer.train_seconds, "sampling_seconds": sampling_seconds,
        "two_stage_models": {"masks (06)": trained_steps(mask_pipeline),
                             "spade pixel (07)": trained_steps(spade_pipeline)},
        "layout_sources": {name: {"tiles": len(lay), "nuclei": int(lay.counts.sum())}
                           for name, (lay, _) in sources.items()},
        "gallery": Path(gallery).name,
        "appearance": table_records(appearance),
        "realism_ranking": {str(name): {str(k): _json_value(v) for k, v in r.items()} for name, r in ranking.iterrows()},
    }
    if config.name in RELEASED_PROFILES:  # make results releases the model under this name
        metrics["released_model"] = JOINT.release_name(config.name)
    chosen = row(headline_set)
    metrics.update({"fid": chosen["fid"], "floor_fid": metrics["floor_real_vs_real"]["fid"],
                    "label_dice": chosen["dice"],
                    "label_dice_reference": metrics["label_consistency_reference_real_pairs"]["dice"],
                    "label_dice_floor": metrics["label_consistency_floor_mismatched_pairs"]["dice"],
                    "located_fraction": chosen["located_fraction"], "typed_fraction": chosen["typed_fraction"],
                    "spurious_per_tile": chosen["spurious_per_tile"], "two_stage_oracle_fid": row(ORACLE)["fid"],
                    "appearance_distance": row_values(appearance, headline_set).get("distance", float("nan")),
                    "appearance_floor": row_values(appearance, FLOOR_ROW)["distance"]})
    return metrics


def joint_limits(record: JointRecord) -> list[str]:
    """What a card says the joint model cannot do: its resolution and its best distance from real."""
    fids = {key: row["fid"] for key, row in record.joint.items() if isinstance(row, dict) and row.get("fid") is not None}
    limits = [f"{record.tile_size} px tiles at {record.downsample:g} image px per px, from one tissue."]
    if fids:
        best = min(fids, key=fids.get)
        floor = record.floor_real_vs_real["fid"]
        limits.append(f"Its best FID ({best}) is {fids[best]:.1f}, {fids[best] / floor:.2f}x the real-vs-real floor "
                      f"({floor:.1f}).")
    return limits


def realism_section(record: JointRecord) -> str:
    """The card's realism table: every route ranked by its nuclei's appearance distance to real held-out nuclei,
    beside the real train-vs-held-out floor, with mask fidelity as a check; empty for records made before it."""
    if not record.realism_ranking:
        return ""
    rows = "\n".join(f"| {'' if r.get('rank') is None else int(r['rank'])} | {name} | {r['distance']:.3f} "
                      f"[{r['distance_lo']:.3f}, {r['distance_hi']:.3f}] | {r['over_floor']:.2f} | "
                      f"{'' if r.get('dice') is None else format(r['dice'], '.3f')} | {r.get('fidelity') or ''} |"
                      for name, r in record.realism_ranking.items() if r.get("distance") is not None)
    return f"""## Realism: nucleus appearance (held-out strip, equal n)

The distance of each route's whole nuclei (area, eccentricity, haematoxylin density and texture, ring contrast; the
mean of robust-scaled 1-D Wasserstein distances, 5-95 % interval over draws) to real held-out nuclei, beside real
train-region nuclei (the floor): lower is more real, from either side. Label Dice is a check that the image follows
its label, not a score: above the real pairs' it is flagged.

| rank | set | distance [interval] | over floor | label Dice | fidelity check |
|---|---|---|---|---|---|
{rows}

"""


def joint_card(record: JointRecord, name: str) -> str:
    """A model card for notebook 08's joint image-label model, from its published metrics record."""
    columns = ("fid", "kid", "dice", "located_fraction", "typed_fraction", "spurious_per_tile")
    sets = {"real-vs-real floor (train crops)": record.floor_real_vs_real,
            **{f"{key}": row for key, row in record.joint.items()},
            **{f"{key}": row for key, row in record.head_to_head.items()},
            "real pairs (label reference)": record.label_consistency_reference_real_pairs,
            "mismatched real pairs (label floor)": record.label_consistency_floor_mismatched_pairs}
    return f"""---
license: mit
library_name: diffusers
tags: [histopathology, joint-image-label-synthesis, nuclei, layout, classifier-free-guidance, teaching]
---
# {name}: an H&E tile and its nuclei labels together, from a nucleus layout (CoSyn-style)

Notebook 08 (`notebooks/08_joint_synthesis.ipynb`) of histolab_utils in the `{record.profile}` profile: one diffusers
`UNet2DModel` that generates RGB, one-hot nucleus types and a per-instance distance map ({record.tile_size} px at
{record.downsample:g} image px per px) together, with per-type point maps of the layout concatenated to its input
and the tissue context (tumour, stroma) as its class, under classifier-free guidance.
{training_time(record.train_steps, record.train_seconds, hardware_in_words(record))}.

{not_for_diagnosis("the train-region pairs of two H&E images of one tissue (`hgsc_nest`, `hgsc_stroma`)")}

## Use

```python
from histolab_utils.data import pretrained
from histolab_utils.data.layouts import random_layouts
from histolab_utils.models.joint_synthesis import JointSynthesisPipeline

pipeline = JointSynthesisPipeline.from_pretrained(pretrained("{name}"))
out = pipeline(random_layouts(4, {record.tile_size}, 8), ["tumor"] * 4, guidance_scale={record.guidance_scale:g},
               num_inference_steps={record.sampler_steps})
out.images, out.types, out.instances  # uint8 NHWC images and their decoded labels
```

## Data

The nest and stroma images with nucleus labels (`hgsc_png` and `hgsc` wheels), split by region
({split_in_words(record.stamp.split_version)}); only train-region pairs were trained on. The guidance
({record.guidance_scale:g}) was chosen on {record.n_validation} validation pairs; the scores below are on
n = {record.n} held-out pairs.{heldout_in_words(record)}

## Scores (held-out region, equal n)

FID / KID of the images against the held-out images; Dice of a haematoxylin detector against the image's own label
(label consistency); layout adherence (centroids inside a generated nucleus, of the right type; generated nuclei
holding none), every label decoded without its layout. The two-stage rows paint notebook 06's or other masks with
notebook 07's pixel SPADE model.

| set | FID | KID | label Dice | located | typed | spurious per tile |
|---|---|---|---|---|---|---|
{score_rows(sets, columns)}

{realism_section(record)}{checks_and_goals(record, "tests/test_joint_synthesis.py")}

{card_footer(record, "08_joint_synthesis", 'Min, Oh & Jeong (2024), "Co-synthesis of Histopathology Nuclei Image-Label Pairs using a '
                                  'Context-Conditioned Joint Diffusion Model" (CoSyn); Ho & Salimans (2022), "Classifier-Free '
                                  'Diffusion Guidance".', sources=("hgsc_png", "hgsc"), limits=joint_limits(record))}"""


class JointStage(Stage):
    name = "joint"
    notebook = "08_joint_synthesis"
    section = "joint"
    summary = "joint image-label synthesis from a nucleus layout (notebook 08)"
    record_type = JointRecord
    build_metrics = staticmethod(joint_metrics)
    headline_extras = ("n",)
    generator_key = "joint"
    chosen_settings = {"joint_guidance_scale": "guidance_scale"}

    def pipeline_class(self):
        from ..models.joint_synthesis import JointSynthesisPipeline

        return JointSynthesisPipeline

    def train_config(self, config, seed: int = 0, variant: str = "", **overrides: Any):
        """The ``[joint]`` section plus what the joint sample fixes (its channels, the layout maps concatenated to the
        input, the tissue contexts as classes, the context dropout); ``None`` overrides are ignored."""
        from ..diffusion.training import TrainConfig
        from ..models.joint_synthesis import JOINT_CHANNELS, K, TISSUE_CONTEXTS

        section = config.joint
        return config_from_section(TrainConfig, section, seed, own={
            "image_size": config.spade.tile_size, "in_channels": JOINT_CHANNELS, "concat_condition_channels": K,
            "num_classes": len(TISSUE_CONTEXTS), "label_dropout": section.context_dropout, "augment_float": True},
            **overrides)

    def train(self, args: argparse.Namespace, config) -> int:
        from ..data.pairs import image_mask_pairs
        from ..models.joint_synthesis import train_joint_model
        from .base import guarded, trainer_summary

        section, pairs_section = config.joint, config.spade
        train_config = self.train_config(config, args.seed, steps=args.steps, batch_size=args.batch_size,
                                         compile=False if args.no_compile else None)
        pairs = image_mask_pairs(pairs_section.tile_size, "train", pairs_section.n_train_pairs, seed=args.seed,
                                 downsample=pairs_section.downsample)
        return guarded(lambda: train_joint_model(train_config, pairs, args.out, layout_sigma=section.layout_sigma,
                                                 resume=args.resume),
                       trainer_summary(f" on {len(pairs)} pairs", args.out / self.model_subfolder))

    def card(self, record: JointRecord, variant: str, name: str) -> str:
        return joint_card(record, name)



JOINT = register(JointStage())
