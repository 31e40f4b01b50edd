"""RePaint against its DDIM variant, side by side in one run: the same 256 x 256 region of a real
held-out image, repainted to follow an edited mask (inflammatory nuclei added to stroma) by the same
SPADE model, with both schedules.

    python benchmarks/inpainting.py [--pipeline runs/smoke/spade-pixel/pipeline] [--size 320] [--region 256]
        [--repaint 250 10 10] [--fast 50 5 2] [--guidance-scale 1.5]

For each: seconds per image (the ratio is RePaint's time over the variant's), network calls, and
the seam score (mean gradient on the region's border over the mean just inside it; 1 = no seam;
the untouched real image gives the baseline). RePaint's default (250 steps, 10 x 10 resampling) is
2,410 network calls; the RePaint authors report 9 minutes for one 256² image on an A5000
(RePaint issue 45). The region is a ``--region`` px square in the centre of a ``--size`` px held-out crop
(the held-out strip of the stroma image is 375 px wide at full resolution).
Any trained pixel-space ``MaskToImagePipeline`` works; notebook 07 (smoke) saves one.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np
import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pipeline", default="runs/smoke/spade-pixel/pipeline")
    parser.add_argument("--size", type=int, default=320, help="image side")
    parser.add_argument("--region", type=int, default=256, help="side of the repainted square in its centre")
    parser.add_argument("--downsample", type=int, default=1)
    parser.add_argument("--repaint", type=int, nargs=3, default=(250, 10, 10), metavar=("T", "JUMP", "N"))
    parser.add_argument("--fast", type=int, nargs=3, default=(50, 5, 2), metavar=("T", "JUMP", "N"))
    parser.add_argument("--guidance-scale", type=float, default=1.5)
    args = parser.parse_args()

    from histolab_utils.config import load_config, pick_device
    from histolab_utils.data.nuclei import NUCLEUS_CLASSES
    from histolab_utils.data.pairs import image_mask_pairs
    from histolab_utils.diffusion.inpainting import RePaintSettings, model_evaluations
    from histolab_utils.diffusion.schedules import make_scheduler
    from histolab_utils.evaluation.seams import seam_score
    from histolab_utils.models.mask_to_image import MaskToImagePipeline, add_nuclei

    device = pick_device()
    pipeline = MaskToImagePipeline.from_pretrained(args.pipeline).to(device)
    if pipeline.space != "pixel":
        raise SystemExit(f"{args.pipeline} is a latent-space pipeline; give a pixel-space one")
    train_config = load_config("smoke").spade  # only the schedule and prediction type are read
    pipeline.scheduler = make_scheduler("ddim", train_config.schedule, prediction_type=train_config.prediction_type,
                                        clip_sample=True)
    pipeline.set_progress_bar_config(disable=True)
    pair = image_mask_pairs(args.size, "heldout", 1, seed=11, sources=("hgsc_stroma",), downsample=args.downsample)
    region = np.zeros((args.size, args.size), bool)
    start = (args.size - args.region) // 2
    region[start:start + args.region, start:start + args.region] = True
    types, instances = add_nuclei(pair.types[0], pair.instances[0], region, NUCLEUS_CLASSES.index("inflammatory") + 1,
                                  count=20, radius=4.0 / args.downsample, seed=0)
    print(f"{platform.node()} | {device} | {os.cpu_count()} CPUs | torch {torch.__version__} | image {args.size} px, "
          f"region {region.sum() ** 0.5:.0f} px square")
    print(f"seam ratio of the untouched real image: {seam_score(pair.images[0], region)['ratio']:.3f}")
    seconds = {}
    for name, (t_T, jump, n, eta) in {"RePaint": (*args.repaint, 1.0), "DDIM variant": (*args.fast, 0.0)}.items():
        settings = RePaintSettings(t_T, jump, n, eta)
        started = time.perf_counter()
        out = pipeline.inpaint(pair.images, types[None], instances[None], region, settings, args.guidance_scale,
                               generator=torch.Generator().manual_seed(0))
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds[name] = time.perf_counter() - started
        assert (out[0][~region] == pair.images[0][~region]).all()
        print(f"{name:13s} T={t_T} jump={jump}x{n} eta={eta:g}: {model_evaluations(settings)} network calls, "
              f"{seconds[name]:.1f} s per image, seam ratio {seam_score(out[0], region)['ratio']:.3f}")
    print(f"RePaint / DDIM variant: {seconds['RePaint'] / seconds['DDIM variant']:.1f}x the time")


if __name__ == "__main__":
    main()
