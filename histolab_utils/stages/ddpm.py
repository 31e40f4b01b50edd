"""Notebook 03's DDPMs, one per (schedule, prediction type): their config from the ``[ddpm]`` profile section,
``train ddpm``, their run folders (``runs/<profile>/03_ddpm_schedulers/<schedule>-<prediction>``), the record, cards
and releases (``ddpm-<schedule>-<eps|v>-<profile>``)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from ..paths import runs_dir
from .base import Stage, StageRecord, config_from_section, register
from .cards import (default_set_seen, hardware_in_words, licence_section, limits_section, not_for_diagnosis,
                    split_section, training_recipe, training_time)


@dataclass(frozen=True, kw_only=True)
class DDPMRecord(StageRecord):
    """notebook 03's metrics: every (schedule, prediction, sampler) row beside the floor."""

    rows: list
    scores: dict
    floor: dict
    x0_diagnostic: list
    colours: list
    models: list
    schedule_comparison_prediction_type: str
    n_eval: int
    image_size: int
    downsample: int
    train_steps: int
    batch_size: int
    n_train_crops: int
    train_seconds: dict
    device: str
    hardware: str
    goals: list
    best_model_rule: str
    released_model: str
    ancestral_steps: int
    split: str
    best_fid_vs_heldout: float
    best_model: str
    best_schedule: str
    best_prediction: str
    floor_fid_train_vs_heldout: float
    fast_solvers: list | None = None  # the best model with each fast solver at each step count, cost measured
    # the saved best model sampled by plain diffusers (DDPMPipeline + DDIMScheduler), scored against the same held-out
    # crops: fid_vs_heldout, package_fid_vs_heldout, sampler, steps, n, seed
    plain_diffusers: dict | None = None

    ADDED_SINCE_PUBLISHED: ClassVar[frozenset[str]] = (StageRecord.ADDED_SINCE_PUBLISHED
                                                       | frozenset({"fast_solvers", "plain_diffusers"}))


def model_label(schedule: str, prediction: str) -> str:
    """How notebook 03 names a model in its tables, e.g. ``cosine · v``."""
    return f"{schedule} · {'ε' if prediction == 'epsilon' else 'v' if prediction == 'v_prediction' else prediction}"


def ddpm_limits(record: DDPMRecord, rows: list[dict]) -> list[str]:
    """What a card says one DDPM cannot do: its resolution, and its best sampler's distance from real (the sampler
    chosen on the validation draw; in a record made before it had one, the one of lowest held-out FID, said so)."""
    size, downsample, floor = record.image_size, record.downsample, record.floor["fid_train_vs_heldout"]
    limits = [f"{size} px samples of {size * downsample} px fields: a nucleus is a few pixels across, so there is no "
              f"nuclear or chromatin detail to judge."]
    if rows:
        on_validation = all("fid_vs_validation" in r for r in rows)  # older records lack it: best by held-out, said so
        best = min(rows, key=lambda r: r["fid_vs_validation" if on_validation else "fid_vs_heldout"])
        which = "best sampler on the validation draw" if on_validation else "sampler of lowest held-out FID"
        limits.append(f"Its {which} ({best['sampler']}) scores FID {best['fid_vs_heldout']:.1f} against held-out, "
                      f"{best['fid_vs_heldout'] / floor:.2f}x the real train-vs-held-out floor, with recall "
                      f"{best['recall']:.2f} (the share of real crops its samples cover).")
    return limits


def ddpm_card(record: DDPMRecord, schedule: str, prediction: str, name: str) -> str:
    """A diffusers-style model card for one DDPM of notebook 03, from its published metrics record."""
    rows = [r for r in record.rows if r["schedule"] == schedule and r["prediction"] == prediction]
    symbol = {"epsilon": "ε (noise)", "v_prediction": "v (velocity)"}.get(prediction, prediction)
    size, downsample = record.image_size, record.downsample
    table = "\n".join(
        f"| {r['sampler']} | {r['steps']} | {r['fid_vs_heldout']:.1f} | {r['kid_vs_heldout']:.4f} | "
        f"{r['fid_vs_train']:.1f} | {r['precision']:.2f} | {r['recall']:.2f} | {100 * r['near_copy_fraction']:.1f} % |"
        for r in rows)
    floor = record.floor
    best = (f" It is the best of the {len(record.models)} models the run trained, by the rule below."
            if record.released_model == name else "")
    seconds = record.train_seconds.get(model_label(schedule, prediction))
    limits = ddpm_limits(record, rows)
    return f"""---
license: mit
library_name: diffusers
pipeline_tag: unconditional-image-generation
tags: [histopathology, H&E, ddpm, teaching]
---
# {name}: an unconditional DDPM of H&E tissue crops ({schedule} schedule, {symbol} prediction)

A small DDPM trained by the `{record.profile}` profile of notebook 03 (`notebooks/03_ddpm_schedulers.ipynb`) of
histolab_utils: {size} px crops of {size * downsample} px fields of real H&E (box-averaged by {downsample}),
{training_time(record.train_steps, seconds, hardware_in_words(record))}.{best}

{not_for_diagnosis(default_set_seen())}

## Use

```python
from diffusers import DDIMScheduler, DDPMPipeline
from histolab_utils.data import pretrained

pipeline = DDPMPipeline.from_pretrained(pretrained("{name}"))  # or the folder's path, without histolab_utils
pipeline.scheduler = DDIMScheduler.from_config(pipeline.scheduler.config)
images = pipeline(batch_size=16, num_inference_steps=50).images
```

The scheduler carries the model's own betas (`trained_betas`) and prediction type, so any diffusers sampler built
`from_config` samples it correctly. Weights are fp16 safetensors (load them in fp32 on a CPU: the default).

## Training

{split_section(record.n_train_crops, downsample, size, record.stamp.split_version)}
- Model: diffusers `UNet2DModel`, 1,000 training timesteps, {schedule} schedule, {prediction}.
- {training_recipe(record)}
- Steps: {record.train_steps} optimiser steps of {record.batch_size} crops (AdamW, the recipe's learning-rate
  schedule after warm-up, EMA of the weights, which are what is released).
- Configuration: `histolab_train_config.json` beside the weights, and the `{record.profile}` profile
  (`histolab_utils/profiles/{record.profile}.toml`). Commit: `{record.stamp.git_commit}`.

## Scores

n = {record.n_eval} samples per set against n = {record.n_eval} real crops; FID/KID on Inception pool3
features (images resized to 299 px). Floors at the same n: real train vs real held-out FID
**{floor['fid_train_vs_heldout']:.1f}**, real train vs another train draw **{floor['fid_train_vs_train']:.1f}**.

| sampler | steps | FID vs held-out | KID vs held-out | FID vs train | precision | recall | near copies |
|---|---|---|---|---|---|---|---|
{table}

Best model rule: {record.best_model_rule}. Full table, goals and the executed notebook:
`results/{record.profile}/03_ddpm_schedulers.json` and `.ipynb`.

{limits_section(record, limits)}

{licence_section('Ho, Jain & Abbeel (2020), "Denoising Diffusion Probabilistic Models"; Nichol & Dhariwal (2021), '
                  '"Improved Denoising Diffusion Probabilistic Models" (cosine schedule); Salimans & Ho (2022), '
                  '"Progressive Distillation for Fast Sampling of Diffusion Models" (v-prediction); Chen (2023), '
                  '"On the Importance of Noise Scheduling for Diffusion Models" (sigmoid schedule).')}"""


class DDPMStage(Stage):
    name = "ddpm"
    notebook = "03_ddpm_schedulers"
    section = "ddpm"
    summary = "an unconditional DDPM with one noise schedule (notebook 03)"
    record_type = DDPMRecord

    @staticmethod
    def variant(schedule: str, prediction: str) -> str:
        return f"{schedule}-{prediction}"

    @staticmethod
    def parse_variant(variant: str) -> tuple[str, str]:
        schedule, _, prediction = variant.partition("-")
        return schedule, prediction

    def variants(self, config) -> tuple[str, ...]:
        return tuple(self.variant(schedule, prediction) for schedule, prediction in config.ddpm.models)

    def run_folder(self, profile: str, variant: str = "") -> Path:
        """``runs/<profile>/03_ddpm_schedulers/<schedule>-<prediction>`` (the notebook resumes from it)."""
        return runs_dir(profile) / self.notebook / variant

    def release_name(self, profile: str, variant: str = "") -> str:
        """e.g. ``ddpm-cosine-v-cpu``."""
        schedule, prediction = self.parse_variant(variant)
        return f"ddpm-{schedule}-{'eps' if prediction == 'epsilon' else 'v'}-{profile}"

    def variant_arguments(self, variant: str, config) -> list[str]:
        schedule, prediction = self.parse_variant(variant)
        return ["--schedule", schedule, "--prediction-type", prediction]

    def pipeline_class(self):
        from diffusers import DDPMPipeline

        return DDPMPipeline

    def train_config(self, config, seed: int = 0, variant: str = "", **overrides: Any):
        """The trainer's config for one schedule (``variant``: ``schedule`` or ``schedule-prediction``; default: the
        cosine schedule) from the ``[ddpm]`` section; ``overrides`` (e.g. ``prediction_type="epsilon"``) replace its
        fields, ``None`` values are ignored. The data's scale and size go into the saved config too, so a resumed run
        checks them."""
        from ..diffusion.training import TrainConfig

        section = config.ddpm
        schedule, prediction = self.parse_variant(variant or "cosine")
        own = {"schedule": schedule, "extra": {"downsample": section.downsample, "n_train_crops": section.n_train_crops}}
        if prediction:
            own["prediction_type"] = prediction
        return config_from_section(TrainConfig, section, seed, own=own, **overrides)

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        from ..diffusion.prediction import PREDICTION_TYPES
        from ..diffusion.schedules import SCHEDULES

        parser.add_argument("--schedule", choices=SCHEDULES, required=True)
        parser.add_argument("--prediction-type", choices=PREDICTION_TYPES, default=None,
                            help="what the network predicts (default: the profile's, v_prediction)")
        parser.add_argument("--zero-terminal-snr", action="store_true",
                            help="rescale the schedule to end at pure noise (Lin et al. 2024); needs v_prediction or "
                                 "sample")

    def check_arguments(self, args: argparse.Namespace, config) -> str | None:
        if args.zero_terminal_snr and (args.prediction_type or config.ddpm.prediction_type) == "epsilon":
            return ("--zero-terminal-snr needs --prediction-type v_prediction or sample: with epsilon the x0 estimate "
                    "at t = T divides by sqrt(alpha_bar_T) = 0")
        return None

    def train(self, args: argparse.Namespace, config) -> int:
        from ..data import training_crops
        from ..diffusion.training import DiffusionTrainer
        from .base import guarded, trainer_summary

        section = config.ddpm
        train_config = self.train_config(config, args.seed, args.schedule, steps=args.steps,
                                         batch_size=args.batch_size, prediction_type=args.prediction_type,
                                         zero_terminal_snr=args.zero_terminal_snr or None,
                                         compile=False if args.no_compile else None)
        crops = training_crops(train_config.image_size, section.n_train_crops, seed=args.seed,
                               downsample=section.downsample)

        def train():
            trainer = DiffusionTrainer(train_config, crops, args.out)
            trainer.train(resume=args.resume)
            trainer.save_pipeline()
            return trainer

        return guarded(train, trainer_summary(f" on {len(crops)} crops", args.out / self.model_subfolder))

    def released_variants(self, record: DDPMRecord) -> tuple[str, ...]:
        return tuple(self.variant(schedule, prediction) for schedule, prediction in record.models)

    def card(self, record: DDPMRecord, variant: str, name: str) -> str:
        return ddpm_card(record, *self.parse_variant(variant), name)


DDPM = register(DDPMStage())
