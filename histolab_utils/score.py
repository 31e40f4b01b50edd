"""Score runs trained elsewhere (another machine, ``python -m histolab_utils.train``) the way their notebook does:
every "score runs made elsewhere" path of the project.

    python -m histolab_utils.score vqgans runs/full/vqgan-4ch/heldout_reconstructions.npz runs/full/vqgan-8ch/... \\
        --out results/full/02_vqgan.json --note "one NVIDIA H100, train vqgan --eval 1000"
    python -m histolab_utils.score segmenters runs/full/segmentation-h100 --profile full \\
        --arms real_25,classic_25,duplicated_25,real_100,classic_100,add_spade_real_75 --out results/full/09_arms.json \\
        --trained-on "one NVIDIA H100"
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
    if argv and argv[0] == "vqgans":  # notebook 02's: held-out reconstructions saved by `train vqgan --eval N`
        from .stages.vqgan import score_main

        return score_main(argv[1:])
    return score_segmenters(argv)


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
