"""Headless training, the same code as the notebooks: one subcommand per stage (``histolab_utils/stages/``).

    python -m histolab_utils.train ddpm --schedule cosine --profile full --out runs/full/ddpm-cosine
    python -m histolab_utils.train ddpm --schedule linear --prediction-type epsilon --profile full --out runs/full/eps
    python -m histolab_utils.train vqgan --latent-channels 8 --profile full --out runs/full/vqgan-8ch --eval 1000
    python -m histolab_utils.train ldm --profile cpu --out runs/cpu/ldm
    python -m histolab_utils.train masks --profile full --out runs/full/masks
    python -m histolab_utils.train spade --space latent --profile full --out runs/full/spade-latent
    python -m histolab_utils.train joint --profile full --out runs/full/joint
    python -m histolab_utils.train segmenter --arm add_joint_50 --seed 1 --profile full --out runs/full/segmentation/add_joint_50/seed-1

Each trains on the train region only, checkpoints every ``checkpoint_every`` steps (``--resume`` continues from the
latest), and saves its model where its notebook reads it back (``OUT/pipeline``; a VQ-GAN's ``OUT/vqmodel``; a
segmenter's ``OUT/model`` with its held-out ``test_counts.csv``). Works unchanged under ``accelerate launch``.
Score runs made elsewhere with ``python -m histolab_utils.score``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .config import load_config
from .profiles import PROFILES
from .stages import registered


def build_parser() -> argparse.ArgumentParser:
    """The CLI: every registered stage's subcommand, with its own arguments and the common ones."""
    parser = argparse.ArgumentParser(prog="python -m histolab_utils.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    stages = registered()
    commands = parser.add_subparsers(dest="model", required=True, metavar="{" + ",".join(stages) + "}",
                                     help="what to train")
    for name, stage in stages.items():
        sub = commands.add_parser(name, help=stage.summary)
        stage.add_arguments(sub)
        sub.add_argument("--profile", default=None, metavar="NAME_OR_TOML",
                         help=f"sizes and steps: one of {', '.join(PROFILES)} or a profile file (default: HISTO_PROFILE)")
        sub.add_argument("--out", type=Path, required=True, help="run folder (checkpoints, loss.csv, saved model)")
        sub.add_argument("--steps", type=int, default=None, help="override the profile's training steps")
        sub.add_argument("--batch-size", type=int, default=None)
        sub.add_argument("--seed", type=int, default=0)
        sub.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out")
        sub.add_argument("--no-compile", action="store_true", help="skip torch.compile even if the profile asks")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = load_config(args.profile)
    except (ValueError, FileNotFoundError) as error:
        parser.error(f"--profile: {error}")
    stage = registered()[args.model]
    problem = stage.check_arguments(args, config)
    if problem:
        parser.error(problem)
    return stage.train(args, config)


if __name__ == "__main__":
    sys.exit(main())
