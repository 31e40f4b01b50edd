"""Notebook 07's mask-to-image SPADE models (NASDM stage 2), in pixel and in VQ latent space: their config from the
``[spade]`` section, ``train spade --space``, run folders (``runs/<profile>/spade-<space>``), record, cards and
releases (``spade-<space>-<profile>``)."""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from .base import RELEASED_PROFILES, Stage, StageRecord, config_from_section, register
from ..data.datasets import split_description
from ..data.pairs import PAIR_SOURCES
from .cards import (card_footer, checks_and_goals, default_set_seen, default_set_sources, hardware_in_words,
                    heldout_in_words, not_for_diagnosis, score_rows, split_in_words, training_time)

SPACES = ("pixel", "latent")


@dataclass(frozen=True, kw_only=True)
class SpadeRecord(StageRecord):
    """notebook 07's metrics: FID, KID and fidelity Dice per set beside floors; nucleus appearance beside its real
    floor; inpainting; checks; goals. The appearance fields are None in records written before notebook 07 scored
    it (the appearance goal replaced "fidelity Dice at least the real pairs'").

    ``guidance_scale``, ``sampler`` and the two validation tables are the pixel model's choice; the ``latent_`` ones
    the latent model's, made by the same rule on the same validation pairs. They are None in records written before
    each model had its own choice: those sampled the latent model with DDIM at the pixel model's guidance
    (:meth:`sampling` says so)."""

    n: int
    n_validation: int
    split: str
    tile_size: int
    downsample: int
    guidance_scale: float
    profile_guidance_scale: float
    sampler: str
    sampler_steps: int
    mask_guidance_scale: float
    validation_guidance_sweep: dict
    validation_samplers: dict
    floor_real_vs_real: dict
    nasdm_pixel_real_masks: dict
    pixel_unguided: dict
    nasdm_pp_pixel_generated_masks: dict
    latent_real_masks: dict
    latent_generated_masks: dict
    fidelity_reference_real_pairs: dict
    fidelity_floor_mismatched_pairs: dict
    detector_threshold: float
    checks: list
    goals: list
    inpainting: dict
    inpainting_speed_ratio: dict
    inpaint_size: int
    repaint: dict
    repaint_fast: dict
    train_steps: dict
    train_seconds: dict
    device: str
    learned_variance: bool
    gallery: str
    released_model: dict | None = None
    fid: float
    floor_fid: float
    fidelity_dice: float
    fidelity_dice_reference: float
    fidelity_dice_floor: float
    inpainting_speed_ratio_pixel: float
    train_seconds_source: str | None = None
    appearance: dict | None = None  # the appearance_scores table by set (the floor row included)
    appearance_shifts: dict | None = None  # each set's signed feature shifts from real held-out nuclei, in words too
    appearance_over_floor: float | None = None  # the pixel model's mean appearance distance over the real floor
    appearance_over_floor_latent: float | None = None
    heldout: dict | None = None  # what the held-out set rests on (n, overlapping pairs, distinct nuclei, a sentence)
    latent_guidance_scale: float | None = None  # the latent model's own choice, on the validation pairs
    latent_sampler: str | None = None
    latent_validation_guidance_sweep: dict | None = None
    latent_validation_samplers: dict | None = None

    HEADLINE: ClassVar[tuple[str, ...]] = ("fid", "floor_fid", "appearance_over_floor", "appearance_over_floor_latent",
                                           "fidelity_dice", "fidelity_dice_reference", "fidelity_dice_floor",
                                           "inpainting_speed_ratio_pixel")
    ADDED_SINCE_PUBLISHED: ClassVar[frozenset[str]] = StageRecord.ADDED_SINCE_PUBLISHED | frozenset(
        {"appearance", "appearance_shifts", "appearance_over_floor", "appearance_over_floor_latent", "heldout",
         "latent_guidance_scale", "latent_sampler", "latent_validation_guidance_sweep", "latent_validation_samplers",
         "train_seconds_source"})  # the last is written only where a record's training seconds were corrected later

    def sampling(self, space: str) -> tuple[float, str]:
        """The guidance scale and the sampler the model of ``space`` was sampled with, both chosen on validation
        pairs. A record made before each model had its own choice sampled the latent model with DDIM at the pixel
        model's guidance, and gives that."""
        if space not in SPACES:
            raise ValueError(f"space={space!r}: the SPADE models are {SPACES}")
        if space == "pixel":
            return self.guidance_scale, self.sampler
        if self.latent_guidance_scale is None:
            return self.guidance_scale, "DDIM"
        return self.latent_guidance_scale, self.latent_sampler

    def has_own_choice(self, space: str) -> bool:
        """Whether the model of ``space`` had its guidance and sampler chosen for it (always the pixel model; the
        latent one in records made since each model has its own choice)."""
        return space == "pixel" or self.latent_guidance_scale is not None



def spade_metrics(config, device, *, heldout: dict, n_validation: int, choices: dict, mask_guidance_scale: float,
                  scores, appearance, appearance_shifts, detector, checks, goals, inpainting, speed_ratio: dict,
                  trainers: dict, gallery) -> dict[str, Any]:
    """Notebook 07's metrics, as its record keeps them, from what the notebook computed.

    ``heldout`` says what the held-out set rests on (``data.nuclei.tiles_summary`` or ``data.pairs.pairs_summary``:
    its ``n``, overlapping pairs, distinct nuclei and a sentence); the record's ``n`` is its size, which every scored
    set shares (a non-overlapping grid may hold fewer tiles than the profile's ``n_eval``).

    ``config`` is the profile (``ctx.config``); ``choices`` each space's choice on the validation pairs
    (``models.mask_to_image.choose_sampling``: its ``guidance_scale``, ``sampler``, and the validation tables of the
    guidance, ``sweep``, with its ``appearance`` over the floor, the choice's criterion, and of the samplers,
    ``sampler_scores``), for ``"pixel"`` and ``"latent"``; ``scores`` the held-out table
    (``evaluation.mask_fidelity.synthesis_scores``), whose sets are named
    ``"<space>, <real|generated> masks, s = <that space's guidance scale>"`` beside the floors and the fidelity
    reference; ``appearance`` the nucleus appearance table (``evaluation.nucleus_appearance.appearance_scores``) with
    the rows ``"<space>, real masks, s = <its guidance scale>"`` of both spaces and ``appearance_shifts`` its
    ``appearance_shifts`` table;
    ``detector`` the haematoxylin detector (its threshold); ``checks`` and ``goals`` the tables the notebook showed;
    ``inpainting`` each inpainting edit's summary over its images (``evaluation.mask_fidelity.edit_summary``, index:
    space, method, edit: n, the edit margin's mean and bootstrap interval, seams, time) and ``speed_ratio`` RePaint's time over the
    DDIM variant's per space; ``trainers`` the SPADE trainers by space; ``gallery`` the gallery's PNG (its file name
    is recorded: ``make results`` publishes it under that name beside the record). A set the
    held-out table lacks is a KeyError naming it. In a released profile (cpu) the record names both releases."""
    from ..evaluation.mask_fidelity import FLOOR_MISMATCHED, FLOOR_REAL, REFERENCE_PAIRS
    from ..report import row_values, table_records

    missing = [space for space in SPACES if space not in choices]
    if missing:
        raise KeyError(f"choices lack the space(s) {missing}: notebook 07 chooses a guidance and a sampler for each")
    section = config.spade
    columns = ["fid", "kid", "dice", "n"]
    repaint_keys = ("t_T", "jump_length", "jump_n_sample")
    guidance_scale, latent_scale = choices["pixel"].guidance_scale, choices["latent"].guidance_scale

    def validation_tables(choice) -> dict:
        sweep = choice.sweep
        return {"validation_guidance_sweep": table_records(
                    sweep[[*columns[:3], *(["appearance"] if "appearance" in sweep else []), "n"]].astype(float)),
                "validation_samplers": table_records(choice.sampler_scores[columns].astype(float))}

    metrics = {
        "n": heldout["n"], "heldout": heldout, "n_validation": n_validation,
        "split": split_description(PAIR_SOURCES),
        "tile_size": section.tile_size, "downsample": section.downsample, "guidance_scale": guidance_scale,
        "profile_guidance_scale": section.guidance_scale, "sampler": choices["pixel"].sampler,
        "sampler_steps": section.sampler_steps, "mask_guidance_scale": mask_guidance_scale,
        **validation_tables(choices["pixel"]),
        "latent_guidance_scale": latent_scale, "latent_sampler": choices["latent"].sampler,
        **{f"latent_{key}": table for key, table in validation_tables(choices["latent"]).items()},
        "floor_real_vs_real": row_values(scores, FLOOR_REAL),
        "nasdm_pixel_real_masks": row_values(scores, f"pixel, real masks, s = {guidance_scale:g}"),
        "pixel_unguided": row_values(scores, "pixel, real masks, s = 0"),
        "nasdm_pp_pixel_generated_masks": row_values(scores, f"pixel, generated masks, s = {guidance_scale:g}"),
        "latent_real_masks": row_values(scores, f"latent, real masks, s = {latent_scale:g}"),
        "latent_generated_masks": row_values(scores, f"latent, generated masks, s = {latent_scale:g}"),
        "fidelity_reference_real_pairs": row_values(scores, REFERENCE_PAIRS),
        "fidelity_floor_mismatched_pairs": row_values(scores, FLOOR_MISMATCHED),
        "detector_threshold": detector.threshold,
        "checks": checks.astype({"measured": float, "bar": float}).to_dict("records"),
        "goals": goals.astype({"measured": float}).to_dict("records"),
        "inpainting": {" | ".join(key): {k: float(v) for k, v in values.items()}
                       for key, values in inpainting.to_dict("index").items()},
        "inpainting_speed_ratio": speed_ratio, "inpaint_size": section.inpaint_size,
        "repaint": dict(zip(repaint_keys, section.repaint)),
        "repaint_fast": dict(zip(repaint_keys, section.repaint_fast)),
        "train_steps": {space: t.step for space, t in trainers.items()},
        "train_seconds": {space: t.train_seconds for space, t in trainers.items()}, "device": str(device),
        "learned_variance": section.learned_variance, "gallery": Path(gallery).name,
        "appearance": table_records(appearance.astype(float)),
        "appearance_shifts": {str(name): {str(k): (v if isinstance(v, str) else float(v)) for k, v in row.items()}
                              for name, row in appearance_shifts.iterrows()},
        **{key: row_values(appearance, f"{space}, real masks, s = {choices[space].guidance_scale:g}")["over_floor"]
           for key, space in (("appearance_over_floor", "pixel"), ("appearance_over_floor_latent", "latent"))},
    }
    if config.name in RELEASED_PROFILES:  # make results releases both models under these names
        metrics["released_model"] = {space: SPADE.release_name(config.name, space) for space in trainers}
    metrics.update({"fid": metrics["nasdm_pixel_real_masks"]["fid"], "floor_fid": metrics["floor_real_vs_real"]["fid"],
                    "fidelity_dice": metrics["nasdm_pixel_real_masks"]["dice"],
                    "fidelity_dice_reference": metrics["fidelity_reference_real_pairs"]["dice"],
                    "fidelity_dice_floor": metrics["fidelity_floor_mismatched_pairs"]["dice"],
                    "inpainting_speed_ratio_pixel": speed_ratio["pixel"]})
    return metrics


def spade_limits(record: SpadeRecord, space: str) -> list[str]:
    """What a card says one SPADE model cannot do: its resolution, its distance from real, and what its mask
    fidelity means."""
    scores = record.nasdm_pixel_real_masks if space == "pixel" else record.latent_real_masks
    floor, reference = record.floor_real_vs_real, record.fidelity_reference_real_pairs
    limits = [f"{record.tile_size} px tiles at {record.downsample:g} image px per px, from one tissue.",
              f"FID {scores['fid']:.1f} on real held-out masks, {scores['fid'] / floor['fid']:.2f}x the real-vs-real "
              f"floor ({floor['fid']:.1f}) at n = {int(scores.get('n', record.n))}."]
    if scores.get("dice") is not None and scores["dice"] > reference["dice"]:
        limits.append(f"Its mask fidelity (Dice {scores['dice']:.2f}) is above the real pairs' ({reference['dice']:.2f}): "
                      f"past real, a higher Dice is no better; its nuclei are easier for a haematoxylin detector to find "
                      f"than real ones, and why (darker? more uniform?) is what notebook 07's nucleus appearance "
                      f"measures{'' if record.appearance else ', which this record predates'}.")
    return limits


def appearance_section(record: SpadeRecord, space: str) -> str:
    """The card's nucleus appearance table (the model's row beside the real floor), or nothing for a record written
    before notebook 07 scored it."""
    from ..evaluation.nucleus_appearance import FLOOR_ROW

    if not record.appearance:
        return ""
    own = f"{space}, real masks, s = {record.sampling(space)[0]:g}"
    features = [key[2:] for key in record.appearance[FLOOR_ROW] if key.startswith("w_")]
    rows = {"model, real held-out masks": record.appearance[own], FLOOR_ROW: record.appearance[FLOOR_ROW]}
    reading = (record.appearance_shifts or {}).get(own, {}).get("reading", "")
    return f"""

Nucleus appearance (haematoxylin inside each whole nucleus and its contrast with the ring around it): the
Wasserstein distance of each feature's distribution from real held-out nuclei in real spreads, at equal n, beside
real train nuclei against the same held-out ones (the floor); the goal is the floor's, two-sided. The model's nuclei
read: {reading or "n/a"}.

| set | distance | 5-95 % | over floor | {" | ".join(features)} | n |
|---|---|---|---|{"---|" * len(features)}---|
""" + "\n".join(f"| {name} | {row['distance']:.3f} | {row['distance_lo']:.3f}-{row['distance_hi']:.3f} | "
                f"{row['over_floor']:.2f} | " + " | ".join(f"{row['w_' + f]:.3f}" for f in features)
                + f" | {row['n']:.0f} |" for name, row in rows.items())


def chosen_in_words(record: SpadeRecord, space: str) -> str:
    """What a card says of the guidance and the sampler its model samples with: chosen for it on validation pairs by
    the rule both models share, beside the other model's choice; or, in a record made before each model had its own
    choice, the pixel model's guidance and DDIM, for the latent model."""
    from ..evaluation.choices import SAMPLING_RULE

    guidance_scale, sampler = record.sampling(space)
    if not record.has_own_choice(space):
        return (f"It samples with the pixel model's guidance ({guidance_scale:g}), chosen on validation pairs for the "
                f"pixel model, and DDIM with {record.sampler_steps} steps; neither was tuned for this model.")
    chosen = (f"The guidance ({guidance_scale:g}) and the sampler ({sampler}, {record.sampler_steps} network calls) "
              f"were chosen for this model on {record.n_validation} validation pairs")
    other = "latent" if space == "pixel" else "pixel"
    if not record.has_own_choice(other):  # an older record: the pixel model alone had a choice
        return chosen + "."
    other_scale, other_sampler = record.sampling(other)
    return (f"{chosen}, by the rule both SPADE models share (the {other} model's choice: guidance {other_scale:g}, "
            f"sampler {other_sampler}): {SAMPLING_RULE}.")


def spade_card(record: SpadeRecord, space: str, name: str) -> str:
    """A model card for one of notebook 07's mask-to-image models, from its published metrics record."""
    guidance_scale, sampler = record.sampling(space)
    keys = ({"model, real held-out masks": "nasdm_pixel_real_masks", "model, s = 0": "pixel_unguided",
             "model, notebook 06's generated masks": "nasdm_pp_pixel_generated_masks"} if space == "pixel" else
            {"model, real held-out masks": "latent_real_masks",
             "model, notebook 06's generated masks": "latent_generated_masks"})
    sets = {"real-vs-real floor (train crops)": record.floor_real_vs_real,
            **{label: getattr(record, key) for label, key in keys.items()},
            "real pairs (fidelity reference)": record.fidelity_reference_real_pairs,
            "mismatched real pairs (fidelity floor)": record.fidelity_floor_mismatched_pairs}
    seen = ("the train-region pairs of two H&E images of one tissue (`hgsc_nest`, `hgsc_stroma`), and through its VQ-GAN "
            f"{default_set_seen()}" if space == "latent" else
            "the train-region pairs of two H&E images of one tissue (`hgsc_nest`, `hgsc_stroma`)")
    chosen = chosen_in_words(record, space)
    vq = (" on the 8 x 8 latents of the released 4-channel VQ-GAN (`vqgan-4ch-cpu`, packed inside as `vqvae`)"
          if space == "latent" else " on pixels")
    return f"""---
license: mit
library_name: diffusers
tags: [histopathology, semantic-image-synthesis, spade, nuclei, classifier-free-guidance, teaching]
---
# {name}: H&E for a nuclei mask (NASDM stage 2, SPADE diffusion{', latent' if space == 'latent' else ''})

Notebook 07 (`notebooks/07_mask_to_image.ipynb`) of histolab_utils in the `{record.profile}` profile: MONAI's
SPADE diffusion UNet (as a diffusers model) that paints {record.tile_size} px H&E{vq}, conditioned on the mask's
one-hot background and nucleus types plus its instance edges, trained with NASDM's hybrid loss (learned variance) and
classifier-free guidance. {training_time(record.train_steps[space], record.train_seconds[space], hardware_in_words(record))}.

{not_for_diagnosis(seen)}

## Use

```python
from histolab_utils.data import pretrained
from histolab_utils.config import load_config
from histolab_utils.models.mask_to_image import MaskToImagePipeline, named_sampler

pipeline = MaskToImagePipeline.from_pretrained(pretrained("{name}"))
pipeline.scheduler = named_sampler("{sampler}", load_config("{record.profile}").spade, clip_sample={space == "pixel"})  # chosen on validation
images = pipeline(types, instances, guidance_scale={guidance_scale:g}, num_inference_steps={record.sampler_steps}).images
# types, instances: int [N, {record.tile_size}, {record.tile_size}] nucleus-type and instance maps; images: uint8 NHWC
```

## Data

The nest and stroma images with nucleus labels (`hgsc_png` and `hgsc` wheels), {record.tile_size} px pairs at
{record.downsample:g} image px per px, split by region ({split_in_words(record.stamp.split_version)}); only
train-region pairs were trained on. {chosen} The scores below are on n = {record.n} held-out pairs.{heldout_in_words(record)}

## Scores (held-out region, equal n)

FID / KID against the held-out images (Inception features); Dice of a haematoxylin detector (colour deconvolution,
Otsu threshold fitted on train-region images) against the mask each image was drawn for.

| set | FID | KID | Dice | n |
|---|---|---|---|---|
{score_rows(sets, ("fid", "kid", "dice", "n"))}

The Dice checks that the image follows its mask (above the mismatched pairs); it is no realism score: a painter of
uniform dark ovals beats the real pairs on it.{appearance_section(record, space)}

{checks_and_goals(record, "tests/test_mask_to_image.py") if space == "pixel" else "The checks and goals of notebook 07 are the pixel model's: see `spade-pixel-" + record.profile + "`."}

{card_footer(record, "07_mask_to_image", 'Shrivastava & Fletcher (2023), "NASDM: Nuclei-Aware Semantic Histopathology Image Generation Using '
                                  'Diffusion Models"; Wang et al. (2022), "Semantic Image Synthesis via Diffusion Models"; Park et al. '
                                  '(2019), "Semantic Image Synthesis with Spatially-Adaptive Normalization".',
             sources=(*default_set_sources(), "hgsc") if space == "latent" else ("hgsc_png", "hgsc"), limits=spade_limits(record, space),
             failed_goals=space == "pixel")}"""


class SpadeStage(Stage):
    name = "spade"
    notebook = "07_mask_to_image"
    section = "spade"
    summary = "the mask-to-image SPADE model, NASDM stage 2 (notebook 07)"
    record_type = SpadeRecord
    build_metrics = staticmethod(spade_metrics)
    headline_extras = ("n", "guidance_scale", "sampler", "latent_guidance_scale", "latent_sampler")
    generator_key = "spade"
    generator_variant = "pixel"
    chosen_settings = {"spade_guidance_scale": "guidance_scale", "spade_sampler": "sampler"}

    def variants(self, config) -> tuple[str, ...]:
        return SPACES

    def variant_arguments(self, variant: str, config) -> list[str]:
        arguments = ["--space", variant]
        if variant == "latent":
            from .vqgan import VQGAN

            arguments += ["--vqgan", str(VQGAN.model_or_release_of(config.name, config.spade.vqgan_latent_channels))]
        return arguments

    def pipeline_class(self):
        from ..models.mask_to_image import MaskToImagePipeline

        return MaskToImagePipeline

    def train_config(self, config, seed: int = 0, variant: str = "pixel", *, vqmodel=None, **overrides: Any):
        """The ``[spade]`` section in pixel space, or in the latent space of ``vqmodel`` (``variant="latent"``: its
        latent channels, the tile size over its latent factor, the latent model's steps and widths); ``None``
        overrides are ignored."""
        from ..diffusion.training import TrainConfig
        from ..models.mask_to_image import CONDITION_DROPOUT, SEG_CHANNELS, latent_factor

        section = config.spade
        own = {"image_size": section.tile_size, "in_channels": 3, "spatial_condition_channels": SEG_CHANNELS,
               "label_dropout": CONDITION_DROPOUT}
        if (variant or "pixel") == "latent":
            if vqmodel is None:
                raise ValueError("the latent SPADE model's config needs the VQ-GAN it works in: pass vqmodel=")
            own.update(image_size=section.tile_size // latent_factor(vqmodel), steps=section.latent_train_steps,
                       in_channels=vqmodel.config.latent_channels, block_out_channels=section.latent_block_out_channels)
        return config_from_section(TrainConfig, section, seed, own=own, **overrides)

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--space", choices=SPACES, required=True,
                            help="pixels, or the latent space of notebook 02's VQ-GAN")
        parser.add_argument("--vqgan", type=Path, default=None,
                            help="a saved VQModel folder (default: the released one of a released profile, else "
                                 "notebook 02's run)")

    def train(self, args: argparse.Namespace, config) -> int:
        from ..config import pick_device
        from ..data.pairs import image_mask_pairs
        from ..models.mask_to_image import train_mask_to_image
        from ..models.vqgan import load_vqmodel
        from .base import guarded, trainer_summary
        from .vqgan import VQGAN

        section = config.spade
        vqmodel = None
        if args.space == "latent":
            folder = args.vqgan or VQGAN.model_or_release_of(config.name, section.vqgan_latent_channels)
            try:
                vqmodel = load_vqmodel(folder, pick_device())
            except FileNotFoundError as error:
                print(f"error: {error} (or pass --vqgan FOLDER)", file=sys.stderr)
                return 2
        train_config = self.train_config(config, args.seed, args.space, vqmodel=vqmodel, steps=args.steps,
                                         batch_size=args.batch_size, compile=False if args.no_compile else None)
        pairs = image_mask_pairs(section.tile_size, "train", section.n_train_pairs, seed=args.seed,
                                 downsample=section.downsample)
        return guarded(lambda: train_mask_to_image(train_config, pairs, args.out, vqmodel=vqmodel,
                                                   latent_copies=section.latent_copies, resume=args.resume),
                       trainer_summary(f" in {args.space} space on {len(pairs)} pairs", args.out / self.model_subfolder))

    def released_variants(self, record: SpadeRecord) -> tuple[str, ...]:
        return SPACES

    def card(self, record: SpadeRecord, variant: str, name: str) -> str:
        return spade_card(record, variant, name)



SPADE = register(SpadeStage())
