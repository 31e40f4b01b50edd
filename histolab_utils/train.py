"""Headless training, the same code as the notebooks:

    python -m histolab_utils.train ddpm --schedule cosine --profile full --out runs/full/ddpm-cosine
    python -m histolab_utils.train ddpm --schedule linear --prediction-type epsilon --profile full --out runs/full/eps
    python -m histolab_utils.train vqgan --latent-channels 8 --profile full --out runs/full/vqgan-8ch --eval 1000
    python -m histolab_utils.train masks --profile full --out runs/full/masks
    python -m histolab_utils.train spade --space latent --profile full --out runs/full/spade-latent
    python -m histolab_utils.train joint --profile full --out runs/full/joint
    python -m histolab_utils.train segmenter --arm add_joint_50 --seed 1 --profile full --out runs/full/segmentation/add_joint_50/seed-1

Trains on random crops from the train region of the embedded default set, checkpoints every
``checkpoint_every`` steps (``--resume`` continues from the latest), and saves a DDPM's EMA model
as a diffusers DDPMPipeline in ``OUT/pipeline``, a VQ-GAN as a diffusers VQModel in ``OUT/vqmodel``, the
nuclei-mask generator (train-region tiles of the HGSC slide) as a ``NucleiMaskPipeline`` in ``OUT/pipeline``,
the mask-to-image SPADE model (train-region image-mask pairs; in latent space, with notebook 02's VQ-GAN) as a
``MaskToImagePipeline`` in ``OUT/pipeline``, the joint image-label model (train-region image-mask pairs with
their layouts and tissue contexts) as a ``JointSynthesisPipeline`` in ``OUT/pipeline``, and one arm of notebook 09's
augmentation experiments (a nuclei segmenter; the synthetic tiles it needs come from the saved models of notebooks
06-08 in runs/PROFILE, cached in runs/PROFILE/segmentation/synthetic) in ``OUT/model`` with its held-out
``test_counts.csv``, which notebook 09 reads back instead of retraining.
Works unchanged under ``accelerate launch``. Score a VQ-GAN's ``--eval`` file with
``python -m histolab_utils.models.vqgan score OUT/heldout_reconstructions.npz``.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any, Callable

from .config import PROFILES, DDPMConfig, load_config, pick_device
from .data import heldout_eval_crops, training_crops
from .diffusion.prediction import PREDICTION_TYPES
from .diffusion.schedules import SCHEDULES


def train_config(ddpm: DDPMConfig, schedule: str, seed: int = 0, **overrides):
    """The trainer's config for one schedule, from a profile's DDPM section; ``overrides`` (e.g.
    ``prediction_type="epsilon"``) replace its fields, ``None`` values are ignored."""
    from .diffusion.training import section_train_config

    # the data's scale and size go into the saved config too, so a resumed run checks them
    return section_train_config(ddpm, seed, own={"schedule": schedule, "extra": {
        "downsample": ddpm.downsample, "n_train_crops": ddpm.n_train_crops}}, **overrides)


def _heldout_eval(vqmodel, image_size: int, n: int, seed: int, path: Path, downsample: int = 1) -> Path:
    """Reconstruct ``n`` held-out crops and save them with their reconstructions and codes to ``path``, so a
    machine without the Inception weights can train and another can score (the scorer redraws the crops and checks
    that they come from the same places)."""
    import hashlib

    import numpy as np

    from .paths import atomic_path
    from .models.vqgan import reconstruct

    originals = heldout_eval_crops(image_size, n, seed, downsample=downsample)
    reconstructions, codes = reconstruct(vqmodel, originals)
    with atomic_path(path, suffix=".npz") as tmp:
        np.savez_compressed(tmp, reconstructions=reconstructions, codes=codes.astype(np.int32), originals=originals,
                            originals_sha256=hashlib.sha256(originals.tobytes()).hexdigest(),
                            image_size=image_size, n=n, seed=seed, downsample=downsample)
    return path


def _guarded(train: Callable[[], Any], summary: Callable[[Any], str]) -> int:
    """Run ``train``; if the loss diverged, print why (the error names the kept checkpoint) and return 1; if
    ``--out`` holds a run of another config, say which fields differ and return 2; else print ``summary`` of
    what ``train`` returned (on the main process) and return 0."""
    from .diffusion.training import ResumeMismatch, TrainingDiverged

    try:
        result = train()
    except TrainingDiverged as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except ResumeMismatch as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    accelerator = getattr(result, "accelerator", None)
    if accelerator is None or accelerator.is_main_process:
        print(summary(result))
    return 0


def _trainer_summary(what: str, folder: Path) -> Callable[[Any], str]:
    return lambda trainer: (f"{trainer.step} steps in {trainer.train_seconds:.1f} s{what}; final loss "
                            f"{trainer.log[-1]['loss']:.4f}; saved to {folder}")


def _train_ddpm(args) -> int:
    from .diffusion.training import DiffusionTrainer

    ddpm = load_config(args.profile).ddpm
    config = train_config(ddpm, args.schedule, args.seed, steps=args.steps, batch_size=args.batch_size,
                          prediction_type=args.prediction_type, zero_terminal_snr=args.zero_terminal_snr or None,
                          compile=False if args.no_compile else None)
    crops = training_crops(config.image_size, ddpm.n_train_crops, seed=args.seed, downsample=ddpm.downsample)

    def train():
        trainer = DiffusionTrainer(config, crops, args.out)
        trainer.train(resume=args.resume)
        trainer.save_pipeline()
        return trainer

    return _guarded(train, _trainer_summary(f" on {len(crops)} crops", args.out / "pipeline"))


def _train_vqgan(args) -> int:
    from .models.vqgan import VQGANTrainer, vqgan_config

    section = load_config(args.profile).vqgan
    overrides = {k: v for k, v in (("steps", args.steps), ("batch_size", args.batch_size)) if v}
    if args.code_restart_every is not None:
        overrides["code_restart_every"] = args.code_restart_every
    config = vqgan_config(section, args.latent_channels, args.seed, **overrides)
    if args.steps and config.disc_start >= args.steps:  # keep the critic's share of a shortened run
        config = dataclasses.replace(config, disc_start=args.steps * section.disc_start // section.train_steps)
    crops = training_crops(config.image_size, section.n_train_crops, seed=args.seed, downsample=section.downsample)

    def train():
        trainer = VQGANTrainer(config, crops, args.out)
        trainer.train(resume=args.resume)
        trainer.save_model(scaling_crops=crops[:512])
        if args.eval and trainer.accelerator.is_main_process:
            saved = _heldout_eval(trainer.vqmodel(), config.image_size, args.eval, args.seed,
                                  args.out / "heldout_reconstructions.npz", downsample=section.downsample)
            print(f"{args.eval} held-out reconstructions saved to {saved}")
        return trainer

    return _guarded(train, lambda t: f"{t.step} steps in {t.seconds:.1f} s; final L1 {t.log[-1]['l1']:.4f}; "
                                     f"model saved to {args.out / 'vqmodel'}")


def _train_masks(args) -> int:
    from .data.nuclei import mask_tiles
    from .models.mask_generator import mask_train_config, train_mask_generator

    section = load_config(args.profile).masks
    config = mask_train_config(section, args.seed, steps=args.steps, batch_size=args.batch_size,
                               compile=False if args.no_compile else None)
    tiles = mask_tiles("wsi", section.tile_size, "train", section.n_train_tiles, seed=args.seed,
                       downsample=section.downsample)
    return _guarded(lambda: train_mask_generator(config, tiles, args.out, resume=args.resume),
                    _trainer_summary(f" on {len(tiles)} tiles", args.out / "pipeline"))


def _train_spade(args) -> int:
    from .data.pairs import image_mask_pairs
    from .models.mask_to_image import spade_train_config, train_mask_to_image
    from .models.vqgan import load_vqmodel
    from .results import vqgan_folder

    config = load_config(args.profile)
    section = config.spade
    vqmodel = None
    if args.space == "latent":
        vq_folder = args.vqgan or vqgan_folder(config.name, section.vqgan_latent_channels)
        try:
            vqmodel = load_vqmodel(vq_folder, pick_device())
        except FileNotFoundError as error:
            print(f"error: {error} (or pass --vqgan FOLDER)", file=sys.stderr)
            return 2
    train_config = spade_train_config(section, args.seed, vqmodel, steps=args.steps, batch_size=args.batch_size,
                                      compile=False if args.no_compile else None)
    pairs = image_mask_pairs(section.tile_size, "train", section.n_train_pairs, seed=args.seed,
                             downsample=section.downsample)
    return _guarded(lambda: train_mask_to_image(train_config, pairs, args.out, vqmodel=vqmodel,
                                                latent_copies=section.latent_copies, resume=args.resume),
                    _trainer_summary(f" in {args.space} space on {len(pairs)} pairs", args.out / "pipeline"))


def _train_joint(args) -> int:
    from .data.pairs import image_mask_pairs
    from .models.joint_synthesis import joint_train_config, train_joint_model

    config = load_config(args.profile)
    section, pairs_section = config.joint, config.spade  # the pairs of notebook 07, for a like-for-like comparison
    train_config = joint_train_config(section, pairs_section.tile_size, args.seed, steps=args.steps,
                                      batch_size=args.batch_size, compile=False if args.no_compile else None)
    pairs = image_mask_pairs(pairs_section.tile_size, "train", pairs_section.n_train_pairs, seed=args.seed,
                             downsample=pairs_section.downsample)
    return _guarded(lambda: train_joint_model(train_config, pairs, args.out, layout_sigma=section.layout_sigma,
                                              resume=args.resume),
                    _trainer_summary(f" on {len(pairs)} pairs", args.out / "pipeline"))


def _train_segmenter(args) -> int:
    import dataclasses as dc

    from .data.nuclei import NUCLEUS_CLASSES
    from .evaluation.segmentation import segmentation_scores
    from .paths import runs_dir
    from .segmentation.experiments import (arm_catalogue, arm_training_set, generators_for, heldout_tiles,
                                           load_generators, needed_pool_pairs, real_pool, run_arm, segmenter_config,
                                           synthetic_bank)

    config = load_config(args.profile)
    section = config.segmentation
    catalogue = arm_catalogue(section.addition, section.replacement)
    if args.arm not in catalogue:
        print(f"error: unknown --arm {args.arm!r}; arms are: {', '.join(catalogue)}", file=sys.stderr)
        return 2
    arm = catalogue[args.arm]
    pool = real_pool(section.tile_size, section.downsample, config.seed, section.n_real)
    banks = {}
    if arm.source is not None:
        folder = runs_dir(config.name)
        from .report import chosen_generator_settings
        from .results import generator_folders

        needed = needed_pool_pairs([arm], pool)
        generators = load_generators(generator_folders(config.name), config.masks, config.spade, config.joint,
                                     pick_device(), **chosen_generator_settings(config.name),
                                     only=generators_for(needed))
        banks = {source: synthetic_bank(source, pool, generators, index, folder / "segmentation" / "synthetic",
                                        seed=config.seed)
                 for source, index in needed.items()}
    training = arm_training_set(arm, pool, banks)
    segmenter = segmenter_config(section, arm, args.seed)
    overrides = {"steps": args.steps, "batch_size": args.batch_size, "compile": False if args.no_compile else None}
    segmenter = dc.replace(segmenter, **{k: v for k, v in overrides.items() if v is not None})
    test = heldout_tiles(section.tile_size, section.downsample, config.seed, section.n_test)

    def summary(counts) -> str:
        scores = segmentation_scores(counts, NUCLEUS_CLASSES)
        return (f"arm {arm.name}, seed {args.seed}: {len(training)} training tiles, {segmenter.steps} steps; on "
                f"{len(test)} held-out tiles Dice {scores['dice']:.4f}, AJI+ {scores['aji_plus']:.4f}, "
                f"mPQ+ {scores['mpq_plus']:.4f}; saved to {args.out}")

    return _guarded(lambda: run_arm(segmenter, training, test, args.out, progress=True, resume=args.resume), summary)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m histolab_utils.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    models = parser.add_subparsers(dest="model", required=True, metavar="{ddpm,vqgan,masks,spade,joint,segmenter}", help="what to train")
    ddpm = models.add_parser("ddpm", help="an unconditional DDPM with one noise schedule (notebook 03)")
    ddpm.add_argument("--schedule", choices=SCHEDULES, required=True)
    ddpm.add_argument("--prediction-type", choices=PREDICTION_TYPES, default=None,
                      help="what the network predicts (default: the profile's, v_prediction)")
    ddpm.add_argument("--zero-terminal-snr", action="store_true",
                      help="rescale the schedule to end at pure noise (Lin et al. 2024); needs v_prediction or sample")
    ddpm.add_argument("--no-compile", action="store_true", help="skip torch.compile even if the profile asks")
    vqgan = models.add_parser("vqgan", help="a VQ-GAN (notebook 02)")
    vqgan.add_argument("--latent-channels", type=int, default=None, help="default: the profile's first")
    vqgan.add_argument("--code-restart-every", type=int, default=None, metavar="N",
                       help="move codes unused for N steps onto encoder outputs; 0 turns it off (default: the profile's)")
    vqgan.add_argument("--eval", type=int, default=0, metavar="N",
                       help="also save N held-out crops, their reconstructions and codes (heldout_reconstructions.npz)")
    masks = models.add_parser("masks", help="the nuclei-mask generator, NASDM stage 1 (notebook 06)")
    masks.add_argument("--no-compile", action="store_true", help="skip torch.compile even if the profile asks")
    spade = models.add_parser("spade", help="the mask-to-image SPADE model, NASDM stage 2 (notebook 07)")
    spade.add_argument("--space", choices=("pixel", "latent"), required=True,
                       help="pixels, or the latent space of notebook 02's VQ-GAN")
    spade.add_argument("--vqgan", type=Path, default=None,
                       help="a saved VQModel folder (default: the released one of a released profile, else "
                            "runs/PROFILE/vqgan-<c>ch/vqmodel)")
    spade.add_argument("--no-compile", action="store_true", help="skip torch.compile even if the profile asks")
    joint = models.add_parser("joint", help="joint image-label synthesis from a nucleus layout (notebook 08)")
    joint.add_argument("--no-compile", action="store_true", help="skip torch.compile even if the profile asks")
    segmenter = models.add_parser("segmenter", help="one arm of the augmentation experiments (notebook 09)")
    segmenter.add_argument("--arm", required=True, help="e.g. real_25, classic_100, add_joint_50, replace_spade_real_100")
    segmenter.add_argument("--no-compile", action="store_true", help="skip torch.compile even if the profile asks")
    for sub in (ddpm, vqgan, masks, spade, joint, segmenter):
        sub.add_argument("--profile", default=None, metavar="NAME_OR_TOML",
                         help=f"sizes and steps: one of {', '.join(PROFILES)} or a profile file (default: HISTO_PROFILE)")
        sub.add_argument("--out", type=Path, required=True, help="run folder (checkpoints, loss.csv, saved model)")
        sub.add_argument("--steps", type=int, default=None, help="override the profile's training steps")
        sub.add_argument("--batch-size", type=int, default=None)
        sub.add_argument("--seed", type=int, default=0)
        sub.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out")
    args = parser.parse_args(argv)
    try:
        load_config(args.profile)
    except (ValueError, FileNotFoundError) as error:
        parser.error(f"--profile: {error}")
    if args.model == "ddpm" and args.zero_terminal_snr:
        prediction_type = args.prediction_type or load_config(args.profile).ddpm.prediction_type
        if prediction_type == "epsilon":
            parser.error("--zero-terminal-snr needs --prediction-type v_prediction or sample: with epsilon the x0 "
                         "estimate at t = T divides by sqrt(alpha_bar_T) = 0")
    return {"ddpm": _train_ddpm, "vqgan": _train_vqgan, "masks": _train_masks, "spade": _train_spade,
            "joint": _train_joint, "segmenter": _train_segmenter}[args.model](args)


if __name__ == "__main__":
    sys.exit(main())
