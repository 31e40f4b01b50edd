"""Score runs trained elsewhere (another machine, ``python -m histolab_utils.train``) the way their notebook does:
every "score runs made elsewhere" path of the project.

    python -m histolab_utils.score vqgans runs/full/vqgan-4ch/heldout_reconstructions.npz runs/full/vqgan-8ch/... \\
        --out results/full/02_vqgan.json --note "one NVIDIA H100, train vqgan --eval 1000"
    python -m histolab_utils.score segmenters runs/full/segmentation-h100 --profile full \\
        --arms real_25,classic_25,duplicated_25,real_100,classic_100,add_spade_real_75 --out results/full/09_arms.json \\
        --trained-on "one NVIDIA H100"
    python -m histolab_utils.score spade-paint runs/full/spade-pixel/pipeline --profile full --out painted.npz  # GPU
    python -m histolab_utils.score spade-painted painted.npz --profile full --out results/full/07_spade_pixel.json \
        --trained-on "one NVIDIA H200" --note "..."
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

import pandas as pd

from .config import load_config
from .paths import atomic_write_text
from .report import metrics_record, to_jsonable
from .segmentation.experiments import (HEADLINE, arm_catalogue, arm_results, arm_size, describe_pool,
                                       experiment_record, finished_counts, formatted_results, heldout_tiles,
                                       pick_arms, real_pool)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m histolab_utils.score {vqgans,segmenters} ...``: one scorer per kind of run."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("spade-paint", "spade-painted"):  # notebook 07's pixel SPADE, painted on a GPU
        return score_painted_spade(argv)
    if argv and argv[0] == "vqgans":  # notebook 02's: held-out reconstructions saved by `train vqgan --eval N`
        from .stages.vqgan import score_main

        return score_main(argv[1:])
    return score_segmenters(argv)


def score_painted_spade(argv: Sequence[str]) -> int:
    """``spade-paint PIPELINE --out X.npz`` paints notebook 07's validation and held-out sets with a pixel SPADE
    (on the GPU it trained on); ``spade-painted X.npz --out Y.json`` chooses its guidance on validation by notebook
    07's rule and scores held-out against the floor, here where the FID network is
    (``models.painted_sets``)."""
    from .config import pick_device
    from .models import painted_sets

    parser = argparse.ArgumentParser(prog="python -m histolab_utils.score", description=score_painted_spade.__doc__)
    parser.add_argument("what", choices=["spade-paint", "spade-painted"])
    parser.add_argument("source", type=Path, help="spade-paint: a pipeline folder; spade-painted: its .npz")
    parser.add_argument("--profile", default="full", help="the profile the SPADE was trained with")
    parser.add_argument("--out", type=Path, required=True, help="the .npz (spade-paint) or JSON record to write")
    parser.add_argument("--batch-size", type=int, default=256, help="spade-paint: masks per batch")
    parser.add_argument("--trained-on", default="", help="spade-painted: the hardware it trained on, in words")
    parser.add_argument("--note", default="", help="spade-painted: how it was trained (command, steps, seconds)")
    parser.add_argument("--lenient", action="store_true",
                        help="spade-painted: choose even if no scale follows the mask (a smoke-sized model)")
    parser.add_argument("--gallery", type=Path, help="spade-painted: also a PNG of 8 held-out tiles drawn at random")
    args = parser.parse_args(argv)
    config = load_config(args.profile)
    if args.what == "spade-paint":
        from .diffusion.pipelines import load_pipeline
        from .models.mask_to_image import MaskToImagePipeline

        if not args.source.is_dir():
            parser.error(f"source: {args.source} is not a pipeline folder")
        pipeline = load_pipeline(MaskToImagePipeline, args.source, pick_device())
        print(painted_sets.paint_sets(pipeline, config, args.out, batch_size=args.batch_size))
        return 0
    try:
        metrics = painted_sets.score_painted(args.source, config, strict=not args.lenient)
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    metrics.update(trained_on=args.trained_on, note=args.note)
    stamped = metrics_record(args.out.stem, metrics, profile=config.name)
    atomic_write_text(args.out, json.dumps(to_jsonable(stamped), indent=2) + "\n")
    if args.gallery is not None:
        painted_sets.painted_gallery(args.source, config, metrics["guidance_scale"]).savefig(args.gallery, dpi=80)
    print(f"wrote {args.out}: chose s = {metrics['guidance_scale']:g} on {metrics['n_validation']} validation pairs; "
          f"held-out n = {metrics['n']}: FID {metrics['chosen']['fid']:.1f} against the floor's "
          f"{metrics['floor_real_vs_real']['fid']:.1f}")
    return 0


def score_segmenters(argv: Sequence[str] | None = None) -> int:
    """``python -m histolab_utils.score segmenters RUNS --profile full --arms ... --out results/full/09_X.json``:
    score arms trained elsewhere (``RUNS/ARM/seed-N``, from ``python -m histolab_utils.train segmenter``) as notebook
    09 does: hierarchical-bootstrap contrasts with each arm's reference, Holm over every (arm, score), the null arm.
    Synthetic arms too: their training-set sizes follow from the real pool; which generator made their tiles is
    for ``--note`` to say (the runs' folders do not record it)."""
    parser = argparse.ArgumentParser(prog="python -m histolab_utils.score", description=score_segmenters.__doc__)
    parser.add_argument("what", choices=["vqgans", "segmenters"], help="what the runs trained")
    parser.add_argument("runs", type=Path, help="folder holding ARM/seed-N run folders")
    parser.add_argument("--profile", required=True, help="the profile the runs were trained with")
    parser.add_argument("--arms", required=True, help="comma-separated arm names, e.g. real_25,duplicated_25,real_100")
    parser.add_argument("--out", type=Path, required=True, help="JSON to write (its stem names the record)")
    parser.add_argument("--trained-on", required=True, help="the hardware the runs were trained on, in words")
    parser.add_argument("--note", default="", help="how the runs were made (command, timings)")
    args = parser.parse_args(argv)
    config = load_config(args.profile)
    section = config.segmentation
    try:
        arms = pick_arms(args.arms.split(","), arm_catalogue(section.addition, section.replacement))
    except ValueError as error:
        parser.error(f"--arms: {error}")
    test = heldout_tiles(section.tile_size, section.downsample, config.seed, section.n_test)
    try:
        counts = finished_counts(args.runs, section, arms, test)
    except (FileNotFoundError, ValueError) as error:  # a missing or different run, named with its folder
        print(f"error: {error}", file=sys.stderr)
        return 2
    results = arm_results(counts, arms, section.seeds, section.n_resamples, seed=config.seed)
    pool = real_pool(section.tile_size, section.downsample, config.seed, section.n_real)
    sizes = {arm.name: arm_size(arm, pool) for arm in arms}
    record = experiment_record(results, arms, sizes, describe_pool(pool, test), section, device=args.trained_on,
                               note=args.note)
    # stamped like a notebook's metrics file (its hardware: the scoring machine's), so published_metrics reads it
    stamped = metrics_record(args.out.stem, record, profile=config.name, headline=[*HEADLINE, "n_test_tiles"])
    atomic_write_text(args.out, json.dumps(to_jsonable(stamped), indent=2) + "\n")
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(formatted_results(results))
    print(f"wrote {args.out}: {len(counts)} runs, {record['contrasts_tested']} contrasts Holm-adjusted together")
    return 0


if __name__ == "__main__":
    sys.exit(main())
