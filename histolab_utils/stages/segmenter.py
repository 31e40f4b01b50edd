"""Notebook 09's nuclei segmenter, one per (arm, seed) of the augmentation experiments: its config from the
``[segmentation]`` section, ``train segmenter --arm``, its run folders (``runs/<profile>/segmentation/<arm>/seed-<n>``,
and the synthetic banks in ``runs/<profile>/segmentation/synthetic``), and the generators of notebooks 06-08 that
make the synthetic tiles, found through the registry. Segmenters are scored, not released."""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from ..paths import runs_dir
from .base import Stage, StageRecord, register, registered


@dataclass(frozen=True, kw_only=True)
class SegmenterRecord(StageRecord):
    """Notebook 09's metrics (``segmentation.experiments.experiment_record``), and those of ``score segmenters``:
    every arm's Dice, IoU, AJI+ and mPQ+ over seeds and test tiles, its contrasts after Holm, the null arm. Records
    that name ``scores_tested`` (in ``extra``, with the notebook's ``pq_per_type``: the published ones predate both)
    tested those; older ones tested IoU too."""

    n_test_tiles: int
    seeds: list
    split: str
    units: str
    distinct_nuclei: dict
    tiles: dict
    architecture: str
    pretrained: bool
    tile_size: int
    downsample: int
    train_steps_per_arm: int
    batch_size: int
    bootstrap: str
    contrasts_tested: int
    arms_run: list
    arms: dict
    device: str
    real_100_mpq_plus: float
    real_100_dice: float
    arms_with_mpq_gain_after_holm: int
    arms_with_any_gain_after_holm: int
    null_arm: dict
    null_arm_shows_a_gain: bool
    # the notebook's own (runs scored by `score segmenters` have none of these)
    arms_in_full_profile: int | None = None
    rarest_type: str | None = None
    synthesis_seconds: float | None = None
    training_seconds: float | None = None
    figures: list | None = None


class SegmenterStage(Stage):
    name = "segmenter"
    notebook = "09_augmentation_experiments"
    section = "segmentation"
    summary = "one arm of the augmentation experiments (notebook 09)"
    record_type = SegmenterRecord
    released = False

    def run_folder(self, profile: str, variant: str = "") -> Path:
        """``runs/<profile>/segmentation``, or one run in it (``variant``: ``<arm>/seed-<n>``, :meth:`variant`)."""
        return runs_dir(profile) / "segmentation" / variant

    @staticmethod
    def variant(arm: str, seed: int) -> str:
        return f"{arm}/seed-{seed}"

    def bank_folder(self, profile: str) -> Path:
        """Where the synthetic tiles of the generators are cached, keyed by the models and settings that made them."""
        return self.run_folder(profile) / "synthetic"

    def train_config(self, config, seed: int = 0, variant: str = "", **overrides: Any):
        """The segmenter's config for one arm (``variant``: its name, e.g. ``real_25``; default ``real_100``)."""
        import dataclasses

        from ..segmentation.experiments import arm_catalogue, segmenter_config

        section = config.segmentation
        arm = arm_catalogue(section.addition, section.replacement)[variant.partition("/")[0] or "real_100"]
        return dataclasses.replace(segmenter_config(section, arm, seed),
                                   **{k: v for k, v in overrides.items() if v is not None})

    def training_commands(self, spec: str, config) -> list[list[str]]:
        return []  # notebook 09 trains its arms itself (or reads back runs of `train segmenter`)

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--arm", required=True,
                            help="e.g. real_25, classic_100, add_joint_50, classic_plus_joint_75, "
                                 "replace_spade_real_100")

    def train(self, args: argparse.Namespace, config) -> int:
        from ..config import pick_device
        from ..data.nuclei import NUCLEUS_CLASSES
        from ..evaluation.segmentation import segmentation_scores
        from ..segmentation.experiments import (arm_catalogue, arm_training_set, generators_for, heldout_tiles,
                                                needed_pool_pairs, real_pool, run_arm, synthetic_bank)
        from .base import guarded

        section = config.segmentation
        catalogue = arm_catalogue(section.addition, section.replacement)
        if args.arm not in catalogue:
            print(f"error: unknown --arm {args.arm!r}; arms are: {', '.join(catalogue)}", file=sys.stderr)
            return 2
        arm = catalogue[args.arm]
        pool = real_pool(section.tile_size, section.downsample, config.seed, section.n_real)
        banks = {}
        if arm.source is not None:
            needed = needed_pool_pairs([arm], pool)
            generators = load_generators(config, pick_device(), only=generators_for(needed))
            banks = {source: synthetic_bank(source, pool, generators, index, self.bank_folder(config.name),
                                            seed=config.seed) for source, index in needed.items()}
        training = arm_training_set(arm, pool, banks)
        segmenter = self.train_config(config, args.seed, arm.name, steps=args.steps, batch_size=args.batch_size,
                                      compile=False if args.no_compile else None)
        test = heldout_tiles(section.tile_size, section.downsample, config.seed, section.n_test)

        def summary(counts) -> str:
            scores = segmentation_scores(counts, NUCLEUS_CLASSES)
            return (f"arm {arm.name}, seed {args.seed}: {len(training)} training tiles, {segmenter.steps} steps; on "
                    f"{len(test)} held-out tiles Dice {scores['dice']:.4f}, AJI+ {scores['aji_plus']:.4f}, "
                    f"mPQ+ {scores['mpq_plus']:.4f}; saved to {args.out}")

        return guarded(lambda: run_arm(segmenter, training, test, args.out, progress=True, resume=args.resume),
                       summary)


SEGMENTER = register(SegmenterStage())


def generator_stages() -> dict[str, Stage]:
    """The stages whose models make notebook 09's synthetic tiles, by their key in ``load_generators``."""
    return {s.generator_key: s for s in registered().values() if s.generator_key}


def generator_folders(profile: str) -> dict[str, Path]:
    """The generators notebook 09 uses (keys ``masks``, ``spade``, ``joint``): in a released profile (cpu) the
    released ones once they exist, so that notebook 09 runs on the models notebooks 06-08 published; otherwise the
    runs of notebooks 06-08 in ``runs/<profile>/``."""
    return {key: s.model_or_release(profile, s.generator_variant) for key, s in generator_stages().items()}


def chosen_generator_settings(profile: str) -> dict[str, Any]:
    """What notebooks 06-08 chose on their validation strips in ``profile``, as keyword arguments of
    ``segmentation.experiments.load_generators`` (None where a notebook has not chosen yet: the profile's value)."""
    return {argument: s.chosen(profile, key, None)
            for s in generator_stages().values() for argument, key in s.chosen_settings.items()}


def load_generators(config, device="cpu", only: Iterable[str] | None = None):
    """Notebooks 06-08's generators of profile ``config`` with the settings each chose on its validation strip
    (``segmentation.experiments.load_generators``); ``only``: just these keys."""
    from ..segmentation.experiments import load_generators as load

    wanted = None if only is None else set(only)  # once: ``only`` may be a one-pass iterator
    folders = generator_folders(config.name)
    for key, s in generator_stages().items():
        if (wanted is None or key in wanted) and not Path(folders[key]).is_dir():
            command = " ".join(["python -m histolab_utils.train", s.name, *s.variant_arguments(s.generator_variant, config)])
            raise FileNotFoundError(f"{folders[key]} does not exist: run notebook {s.notebook} in the {config.name} "
                                    f"profile (or `{command}`) first")
    return load(folders, config.masks, config.spade, config.joint, device,
                **chosen_generator_settings(config.name), only=wanted)
