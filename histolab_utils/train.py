"""Headless training: ``python -m histolab_utils.train ddpm --schedule cosine --profile full --out runs/cosine``.

Trains on random crops from the train region of the embedded default set, checkpoints every
``checkpoint_every`` steps (``--resume`` continues from the latest), and saves the EMA model as
a diffusers DDPMPipeline in ``OUT/pipeline``. Works unchanged under ``accelerate launch``.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from .config import PROFILES, DDPMConfig, load_config
from .schedules import SCHEDULES


def train_config(ddpm: DDPMConfig, schedule: str, seed: int = 0, **overrides):
    """The trainer's config for one schedule, from a profile's DDPM section."""
    from .training import TrainConfig

    config = TrainConfig(
        schedule=schedule, prediction_type=ddpm.prediction_type, image_size=ddpm.image_size,
        steps=ddpm.train_steps, batch_size=ddpm.batch_size, learning_rate=ddpm.learning_rate,
        warmup_steps=ddpm.warmup_steps, ema_decay=ddpm.ema_decay, block_out_channels=ddpm.block_out_channels,
        layers_per_block=ddpm.layers_per_block, attention=ddpm.attention, checkpoint_every=ddpm.checkpoint_every,
        compile=ddpm.compile, seed=seed,
    )
    return dataclasses.replace(config, **{k: v for k, v in overrides.items() if v is not None})


def training_crops(image_size: int, n: int, seed: int = 0):
    """``n`` random crops from the train region of the default set (never the held-out strip)."""
    from .data import CropSampler, load_images

    return CropSampler(load_images(), image_size, "train", seed=seed).sample(n)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m histolab_utils.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", choices=["ddpm"], help="what to train")
    parser.add_argument("--schedule", choices=SCHEDULES, required=True)
    parser.add_argument("--profile", choices=PROFILES, default=None, help="sizes and steps (default: HISTO_PROFILE)")
    parser.add_argument("--out", type=Path, required=True, help="run folder (checkpoints, loss.csv, pipeline)")
    parser.add_argument("--steps", type=int, default=None, help="override the profile's training steps")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--prediction-type", choices=["epsilon", "v_prediction"], default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out")
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile even if the profile asks")
    args = parser.parse_args(argv)

    from .training import DiffusionTrainer, TrainingDiverged

    ddpm = load_config(args.profile).ddpm
    config = train_config(ddpm, args.schedule, args.seed, steps=args.steps, batch_size=args.batch_size,
                          prediction_type=args.prediction_type, compile=False if args.no_compile else None)
    crops = training_crops(config.image_size, ddpm.n_train_crops, seed=args.seed)
    trainer = DiffusionTrainer(config, crops, args.out)
    try:
        trainer.train(resume=args.resume)
    except TrainingDiverged as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    folder = trainer.save_pipeline()
    if trainer.accelerator.is_main_process:
        print(f"{trainer.step} steps in {trainer.seconds:.1f} s; final loss {trainer.log[-1]['loss']:.4f}; "
              f"pipeline saved to {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
