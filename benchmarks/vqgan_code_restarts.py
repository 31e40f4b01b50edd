"""VQ-GAN with and without dead-code restarts, side by side: codebook use and reconstruction.

    python benchmarks/vqgan_code_restarts.py [--profile smoke] [--steps N] [--seeds 0 1 2] [--every N] [--n-eval 256]

For each seed, trains the profile's VQ-GAN twice from the same initialisation and batches, once
with ``code_restart_every = 0`` and once with ``--every`` (default: the profile's), then scores
both on the same held-out crops: codes used, perplexity, PSNR and SSIM. Prints one row per run,
the mean of each column per setting and the ratio restarts / none. On the smoke profile (2-core
CPU) each run takes under a minute; smoke models are small and short-trained, so this shows
what restarts do to the codebook, not the quality a full run reaches.
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import tempfile

import pandas as pd
import torch

from histolab_utils.config import PROFILES, load_config
from histolab_utils.data import heldout_eval_crops, training_crops
from histolab_utils.models.vqgan import VQGANTrainer, codebook_stats, reconstruct, reconstruction_metrics
from histolab_utils.stages.vqgan import VQGAN


def run(profile, restart_every: int, seed: int, steps: int | None, crops, heldout, out_dir: str) -> dict:
    """Train one VQ-GAN and score it on ``heldout``."""
    overrides = {"code_restart_every": restart_every, "checkpoint_every": 10**9}
    if steps:
        overrides["steps"] = steps
    config = VQGAN.train_config(profile, seed, **overrides)
    trainer = VQGANTrainer(config, crops, out_dir, progress=False)
    log = trainer.train()
    images, codes = reconstruct(trainer.vqmodel(), heldout)
    return {"restart_every": restart_every, "seed": seed, "steps": trainer.step, "seconds": trainer.seconds,
            "codes_restarted": int(log["codes_restarted"].sum()),
            **codebook_stats(codes, config.num_vq_embeddings), **reconstruction_metrics(heldout, images)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="smoke", help=f"one of {', '.join(PROFILES)} or a profile file")
    parser.add_argument("--steps", type=int, default=None, help="default: the profile's training steps")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--every", type=int, default=None, help="restart period (default: the profile's)")
    parser.add_argument("--n-eval", type=int, default=256, help="held-out crops to score")
    args = parser.parse_args()

    profile = load_config(args.profile)
    section = profile.vqgan
    every = args.every or section.code_restart_every
    if every <= 0:
        parser.error("--every must be positive (the profile turns restarts off; give a period)")
    crops = training_crops(section.image_size, section.n_train_crops, seed=0)
    heldout = heldout_eval_crops(section.image_size, args.n_eval, seed=0)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({platform.processor() or 'cpu'})"
    print(f"profile {args.profile}: {section.image_size} px crops, {section.num_vq_embeddings} codes, "
          f"{section.latent_channels[0]} latent channels; {len(crops)} train-region crops; scored on {len(heldout)} "
          f"held-out crops; {device}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            for restart_every in (0, every):
                rows.append(run(profile, restart_every, seed, args.steps, crops, heldout,
                                f"{tmp}/{restart_every}-{seed}"))
                print({k: round(v, 3) if isinstance(v, float) else v for k, v in rows[-1].items()}, flush=True)
    table = pd.DataFrame(rows)
    columns = ["codes_used", "perplexity", "psnr", "ssim", "seconds"]
    means = table.groupby("restart_every")[columns].mean()
    print(f"\nmean over seeds {args.seeds}:\n{means.round(3).to_string()}")
    print(f"\nratio restarts every {every} / none:\n{(means.loc[every] / means.loc[0]).round(3).to_string()}")


if __name__ == "__main__":
    main()
