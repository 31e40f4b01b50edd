"""Which training recipe buys the most quality per CPU-minute? Notebook 03's cpu DDPM, trained by several recipes for
the same minutes and scored the same way (README, "Quality per CPU-hour").

    nohup nice python benchmarks/recipes.py --minutes 10 > logs/recipes.log 2>&1 &     # resumable: run it again
    python benchmarks/recipes.py --table-only                                          # the table from what finished

Equal minutes, not equal steps: before anything trains, each recipe's step is timed alone (the median of
``--timing-steps`` steps after 5 warm-up steps), and it trains ``floor(minutes x 60 / seconds per step)`` steps. The step count is fixed before
training, so a learning-rate schedule that decays to the end is the recipe's own, and later load on the machine
(which inflates wall time) cannot change what a recipe learns; the record keeps the timed and the actual seconds.

Every run is scored like notebook 03: n = ``--n`` samples from its EMA weights with two samplers (DDIM-50 and
DPM-Solver++-20; EDM's own Euler-50 and DPM-Solver++(2M)-20 for the EDM recipe), FID against held-out crops beside the
train-vs-held-out floor at the same n, FID against validation crops (which choose the recipes that get a second
seed; the held-out scores choose nothing), and the mean colour against the train and held-out crops. Runs live in
``--out`` (checkpoints every 250 steps; a stopped run continues where it stopped), the table in ``--table``.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from histolab_utils.config import load_config  # noqa: E402
from histolab_utils.data import training_crops  # noqa: E402
from histolab_utils.data.datasets import SPLIT_VERSION  # noqa: E402
from histolab_utils.engine.configs import config_from_section  # noqa: E402
from histolab_utils.diffusion.recipes import TRAINING_RECIPES  # noqa: E402
from histolab_utils.diffusion.training import DiffusionTrainer, TrainConfig  # noqa: E402
from histolab_utils.engine.precision import cpu_in_words, resolve_mixed_precision  # noqa: E402
from histolab_utils.paths import atomic_write_text  # noqa: E402

SCHEDULE = "cosine"
PREDICTION = "v_prediction"
PUBLISHED_TABLE = ROOT / "results" / "cpu" / "recipes.json"
# the cpu DDPM's UNet shape on splits 1 and 2, which "today" and every row that does not set a shape train with
STUDY_SHAPE = {"layers_per_block": 1, "norm_num_groups": 0}


@dataclass(frozen=True)
class Recipe:
    """One way to spend the minutes: changes to the cpu profile's DDPM config, and where it trains."""

    description: str
    source: str  # the paper (real authors) or code the recipe comes from
    changes: dict = field(default_factory=dict)
    space: str = "pixel"  # "pixel", or "latent": the released VQ-GAN's latents, decoded to be scored


def named(name: str, **extra) -> "Recipe":
    """A recipe the package names (``diffusion/recipes.py``, what profiles select), as a row of the study."""
    recipe = TRAINING_RECIPES[name]
    return Recipe(recipe.description, recipe.source, {**recipe.settings, **extra})


# "today" is the package's "baseline": the name the published tables of splits 1 and 2 use for it
RECIPES: dict[str, Recipe] = {
    "today": named("baseline"),
    "min_snr": named("min_snr"),
    "plain_loop": named("plain_loop"),
    "edm": named("edm"),
    "latent": Recipe(
        "today's recipe on the released 4-channel VQ-GAN's 8 x 8 latents (the cpu LDM's UNet 64/128, 2 layers, "
        "batch 64), decoded to be scored",
        "Rombach, Blattmann, Lorenz, Esser & Ommer 2022 (latent diffusion, CVPR)",
        {"block_out_channels": (64, 128), "layers_per_block": 2, "batch_size": 64}, space="latent"),
    "attention": Recipe(
        "today's, with self-attention in the 16 x 16 level (as DDPM's UNet has at 16 x 16)",
        "Ho, Jain & Abbeel 2020 (DDPM's architecture)",
        {"attention": True}),
    "power_ema": named("power_ema"),
    "min_snr_plain_loop": Recipe(
        "the plain loop's settings with min-SNR-5: the pilot's best row, through our trainer",
        "Hang et al. 2023; diffusers' train_unconditional example",
        {"layers_per_block": 2, "norm_num_groups": 32, "lr_schedule": "constant", "loss_weighting": "min_snr",
         "snr_gamma": 5.0}),
    # the plain loop's three differences from today's, one at a time (which of them buys its gain?)
    "depth_2": Recipe(
        "today's, with 2 layers per block (the plain loop's depth) and nothing else changed",
        "diffusers' train_unconditional example (its UNet depth)",
        {"layers_per_block": 2}),
    "norm_groups_32": Recipe(
        "today's, with 32 GroupNorm groups (the plain loop's; today's narrow-UNet rule gives 8) and nothing else",
        "diffusers' train_unconditional example (UNet2DModel's default norm groups)",
        {"norm_num_groups": 32}),
    "constant_lr": Recipe(
        "today's, with a constant learning rate after warm-up (the plain loop's) instead of the cosine decay",
        "the pilot's plain diffusers loop (diffusers' train_unconditional example defaults to a cosine schedule)",
        {"lr_schedule": "constant"}),
}


def recipe_config(name: str, seed: int, steps: int = 0) -> TrainConfig:
    """The trainer's config of recipe ``name``: the cpu profile's DDPM section, the recipe's changes, ``steps``."""
    recipe = RECIPES[name]
    ddpm = load_config("cpu").ddpm
    config = config_from_section(TrainConfig, ddpm, seed, own={"schedule": SCHEDULE, "prediction_type": PREDICTION, "extra": {
        "downsample": ddpm.downsample, "n_train_crops": ddpm.n_train_crops, "recipe": name}})
    # every row starts from the baseline at the UNet shape the cpu profile had when the study ran, whatever the
    # profile has adopted since (the plain loop's shape is in its own row)
    changes = {**STUDY_SHAPE, **TRAINING_RECIPES["baseline"].settings, **recipe.changes}
    if recipe.space == "latent":
        changes.update(in_channels=4, image_size=ddpm.image_size // 4)
    return replace(config, **changes, checkpoint_every=250, **({"steps": steps} if steps else {}))


def training_data(name: str, seed: int) -> np.ndarray:
    """uint8 crops (pixel recipes) or the released VQ-GAN's scaled latents of the same crops (latent)."""
    ddpm = load_config("cpu").ddpm
    crops = training_crops(ddpm.image_size, ddpm.n_train_crops, seed=seed, downsample=ddpm.downsample)
    if RECIPES[name].space == "pixel":
        return crops
    from histolab_utils.models.vqgan import encode

    vqmodel = released_vqgan()
    return (encode(vqmodel, crops) * vqmodel.config.scaling_factor).astype(np.float32)


@functools.lru_cache(maxsize=1)
def released_vqgan():
    """The cpu profile's 4-channel VQ-GAN of today's split: the release, or this machine's run of notebook 02 when the
    release was made on an earlier split (whose VQ-GAN saw today's validation and held-out pixels: refused)."""
    from histolab_utils.models.vqgan import load_vqmodel
    from histolab_utils.stages import stage

    return load_vqmodel(stage("vqgan").model_or_release("cpu", "4ch")).float().eval()


def seconds_per_step(name: str, data: np.ndarray, timing_steps: int, folder: Path) -> float:
    """One recipe's training step: the median of ``timing_steps`` steps timed one by one after 5 warm-up steps
    (the median, so that a moment of other load on the machine does not move it)."""
    trainer = DiffusionTrainer(recipe_config(name, 0, steps=1000), data, folder, progress=False)
    for _ in range(5):
        trainer.train_step()
    times = []
    for _ in range(timing_steps):
        started = time.perf_counter()
        trainer.train_step()
        times.append(time.perf_counter() - started)
    return float(np.median(times))


def samplers(name: str) -> dict[str, object]:
    """The two samplers a recipe is scored with, by column: ``fast`` (20 calls) and ``steady`` (50)."""
    if RECIPES[name].changes.get("preconditioning") == "edm":
        from histolab_utils.diffusion.edm import edm_scheduler

        return {"edm-euler-50": (edm_scheduler("euler"), 50), "edm-dpm-20": (edm_scheduler("dpm"), 20)}
    from histolab_utils.diffusion.schedules import make_scheduler

    clip = RECIPES[name].space == "pixel"  # latents have unit variance, not bounds
    return {"ddim-50": (make_scheduler("ddim", SCHEDULE, prediction_type=PREDICTION, clip_sample=clip), 50),
            "dpm-20": (make_scheduler("dpm", SCHEDULE, prediction_type=PREDICTION, clip_sample=clip), 20)}


def draw_samples(name: str, unet, scheduler, steps: int, n: int, seed: int) -> np.ndarray:
    from histolab_utils.diffusion.sampling import sample_model_space, to_uint8, unet_denoiser

    config = unet.config
    x = sample_model_space(unet_denoiser(unet), scheduler, n, config.sample_size, steps, seed=seed,
                           channels=config.in_channels)
    if RECIPES[name].space == "pixel":
        return to_uint8(x)
    from histolab_utils.models.vqgan import decode

    vqmodel = released_vqgan()
    with torch.no_grad():
        return decode(vqmodel, x / vqmodel.config.scaling_factor)


@dataclass
class References:
    """Real crops at the DDPM's scale, n each, with Inception features: held-out, validation and two train draws."""

    n: int
    features: dict
    colour: dict
    floor: dict


def references(n: int, seed: int = 0) -> References:
    """Notebook 03's real reference sets at the cpu DDPM's scale (``real_reference``: its validation draw is the one
    that chooses), their colours, and the floors beside them."""
    from histolab_utils.evaluation import metrics
    from histolab_utils.evaluation.floors import floors, real_reference

    ddpm = load_config("cpu").ddpm
    reference = real_reference(ddpm.image_size, n, seed=seed, downsample=ddpm.downsample)
    colour = {region: metrics.colour_stats(crops) for region, crops in
              (("train", reference.train), ("heldout", reference.heldout), ("validation", reference.validation))}
    return References(n, {"heldout": reference.heldout_features, "train": reference.train_features,
                          "validation": reference.validation_features}, colour, floors(reference))


def score_run(name: str, unet, refs: References, seed: int) -> list[dict]:
    """One row per sampler: FIDs against held-out, validation and train crops, colour, sampler seconds."""
    from histolab_utils.evaluation import metrics

    rows = []
    for sampler, (scheduler, steps) in samplers(name).items():
        started = time.perf_counter()
        images = draw_samples(name, unet, scheduler, steps, refs.n, seed=10_000 + seed)
        seconds = time.perf_counter() - started
        features = metrics.inception_features(images)
        colour = metrics.colour_stats(images)
        rows.append({
            "sampler": sampler, "sampler_steps": steps, "sampling_seconds_per_image": seconds / refs.n,
            **{f"fid_vs_{region}": metrics.fid(refs.features[region], features) for region in refs.features},
            "mean_rgb": [round(colour[f"mean_{c}"], 2) for c in "rgb"],
            **{f"colour_gap_vs_{region}": float(max(abs(colour[f"mean_{c}"] - refs.colour[region][f"mean_{c}"])
                                                    for c in "rgb")) for region in ("train", "heldout")},
        })
    return rows


def run_recipe(name: str, seed: int, steps: int, seconds_per: float, out: Path, refs: References,
               table: Path = PUBLISHED_TABLE) -> dict:
    """Train (resuming), save the EMA UNet, score; the run's record is written last, so a record means done."""
    from diffusers import UNet2DModel

    folder = out / f"{name}-seed{seed}"
    record_path = folder / "record.json"
    if record_path.is_file():
        return json.loads(record_path.read_text())
    if (published := published_run(name, seed, steps, table)) is not None:  # finished on a machine since handed back
        return published
    unet_folder = folder / "ema_unet"
    config = recipe_config(name, seed, steps)
    if not (unet_folder / "config.json").is_file():
        trainer = DiffusionTrainer(config, training_data(name, seed), folder, progress=False)
        trainer.train(resume=True)
        from histolab_utils.engine.trainer import save_pretrained_atomic

        save_pretrained_atomic(trainer.ema_unet(), unet_folder, {"train_seconds.json": {
            "train_seconds": trainer.train_seconds, "final_loss": trainer.log[-1]["loss"]}})
        del trainer
    unet = UNet2DModel.from_pretrained(unet_folder).eval()
    trained = json.loads((unet_folder / "train_seconds.json").read_text())
    record = {"recipe": name, "seed": seed, "steps": steps, "timed_seconds_per_step": seconds_per,
              "budget_minutes": steps * seconds_per / 60, "wall_minutes": trained["train_seconds"] / 60,
              "final_loss": trained["final_loss"], "precision": resolve_mixed_precision(config.mixed_precision),
              "config": json.loads(json.dumps(asdict(config), default=list)),
              "rows": score_run(name, unet, refs, seed)}
    atomic_write_text(record_path, json.dumps(record, indent=2))
    return record


def published_run(name: str, seed: int, steps: int, table_path: Path = PUBLISHED_TABLE) -> dict | None:
    """The finished run of (recipe, seed) in the committed table, if it trained the same number of steps: runs/
    is not kept when a machine is handed back, and a finished run is not trained again."""
    if not table_path.is_file():
        return None
    published = json.loads(table_path.read_text())
    if published.get("split_version") != SPLIT_VERSION:  # another split's crops and floor: nothing to reuse
        return None
    for record in published["runs"]:
        if record["recipe"] == name and record["seed"] == seed and record["steps"] == steps:
            return record
    return None


def table(records: list[dict], refs_floor: dict) -> "pd.DataFrame":
    import pandas as pd

    floor = refs_floor["fid_train_vs_heldout"]
    rows = []
    for record in records:
        for row in record["rows"]:
            rows.append({"recipe": record["recipe"], "seed": record["seed"], "sampler": row["sampler"],
                         "steps": record["steps"], "minutes": round(record["budget_minutes"], 1),
                         "fid_heldout": round(row["fid_vs_heldout"], 1),
                         "fid_over_floor": round(row["fid_vs_heldout"] / floor, 2),
                         "fid_validation": round(row["fid_vs_validation"], 1),
                         "fid_train": round(row["fid_vs_train"], 1),
                         "colour_gap_train": round(row["colour_gap_vs_train"], 1),
                         "colour_gap_heldout": round(row["colour_gap_vs_heldout"], 1),
                         "mean_rgb": row["mean_rgb"],
                         "s_per_image": round(row["sampling_seconds_per_image"], 3)})
    return pd.DataFrame(rows)


def best_by_validation(records: list[dict], count: int = 2, exclude: Sequence[str] = ()) -> list[str]:
    """The ``count`` recipes whose seed-0 run has the lowest validation FID (best sampler): they get a second seed.
    ``exclude``: recipes whose validation FID is not an independent score (a latent row whose autoencoder was trained
    on an earlier split that put today's validation strip in its training region), so it cannot choose."""
    scores = {r["recipe"]: min(row["fid_vs_validation"] for row in r["rows"]) for r in records
              if r["seed"] == 0 and r["recipe"] not in exclude}
    return sorted(scores, key=scores.get)[:count]


def write_table(path: Path, records: list[dict], refs: References, minutes: float, order: list[str],
                timing: dict, exclude: Sequence[str] = ()) -> None:
    from histolab_utils.report import git_commit

    frame = table(records, refs.floor)
    document = {
        "benchmark": "benchmarks/recipes.py", "profile": "cpu", "split_version": SPLIT_VERSION, "n": refs.n,
        "hardware": cpu_in_words(), "budget_minutes_per_run": minutes, "commit": git_commit(),
        "scored_against": "random crops of the held-out region (notebook 03's scoring), floor = train vs held-out "
                          "crops at the same n; validation FID chose the second seeds",
        "floor": refs.floor, "real_colour": refs.colour, "timed_seconds_per_step": timing,
        "recipes": {name: asdict(RECIPES[name]) for name in order},
        "second_seed_for": best_by_validation(records, exclude=exclude) if all(
            any(r["recipe"] == n and r["seed"] == 0 for r in records) for n in order) else None,
        "not_eligible_for_a_second_seed": list(exclude),
        "rows": frame.to_dict(orient="records"), "runs": records,
    }
    atomic_write_text(path, json.dumps(document, indent=2, default=list))
    print(frame.to_string(index=False), flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="training minutes per run (equal for every recipe)")
    parser.add_argument("--only", default=",".join(RECIPES), help="comma-separated recipes, in the order to run")
    parser.add_argument("--n", type=int, default=500, help="samples per sampler, and real crops per reference set")
    parser.add_argument("--second-seeds", type=int, default=2, help="how many of the best get a second seed")
    parser.add_argument("--not-chosen-by-validation", default="", metavar="RECIPES",
                        help="comma-separated recipes whose validation FID cannot choose (their model saw the "
                             "validation strip, e.g. latent on an earlier split's VQ-GAN); they are scored, not chosen")
    parser.add_argument("--also-second-seed", default="", metavar="RECIPES",
                        help="comma-separated recipes that get a second seed besides those validation chooses (a "
                             "recipe a rule outside the study picks, to be adopted: it needs its seed noise)")
    parser.add_argument("--timing-steps", type=int, default=30)
    # one folder and one table per split, so that a study never mixes two splits' crops, floors and checkpoints
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "cpu" / f"recipes-split{SPLIT_VERSION}")
    parser.add_argument("--table", type=Path,
                        default=PUBLISHED_TABLE.with_name(f"recipes-split{SPLIT_VERSION}.json"))
    parser.add_argument("--table-only", action="store_true", help="write the table from finished runs; train nothing")
    args = parser.parse_args(argv)
    order = [name.strip() for name in args.only.split(",") if name.strip()]
    exclude = [name.strip() for name in args.not_chosen_by_validation.split(",") if name.strip()]
    also = [name.strip() for name in args.also_second_seed.split(",") if name.strip()]
    unknown = [name for name in order + exclude + also if name not in RECIPES]
    if unknown:
        parser.error(f"unknown recipe {unknown[0]!r}; known: {', '.join(RECIPES)}")
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"{cpu_in_words()}; {args.minutes} min a run; recipes {order}", flush=True)

    timing_path = args.out / "timing.json"
    timing = json.loads(timing_path.read_text()) if timing_path.is_file() else {}
    if args.table.is_file():  # the committed table keeps the timings, so runs continue with the same step counts
        timing = {**json.loads(args.table.read_text()).get("timed_seconds_per_step", {}), **timing}
    if not args.table_only:
        if any(name not in timing for name in order):  # the process's first trainer runs slow (one-off set-up)
            seconds_per_step(order[0], training_data(order[0], 0), 10, args.out / ".timing" / "warm-up")
        for name in order:  # every recipe timed before any trains: nothing else runs meanwhile
            if name not in timing:
                timing[name] = seconds_per_step(name, training_data(name, 0), args.timing_steps,
                                                args.out / ".timing" / name)
                print(f"timed {name}: {timing[name]:.3f} s a step", flush=True)
                atomic_write_text(timing_path, json.dumps(timing, indent=2))

    refs = references(args.n)
    print(f"floor (train vs held-out, n = {args.n}): FID {refs.floor['fid_train_vs_heldout']:.1f}", flush=True)
    records = []

    def run(name: str, seed: int) -> None:
        steps = math.floor(args.minutes * 60 / timing[name])
        folder = args.out / f"{name}-seed{seed}"
        if args.table_only and not (folder / "record.json").is_file() and published_run(name, seed, steps,
                                                                                         args.table) is None:
            return
        started = time.perf_counter()
        records.append(run_recipe(name, seed, steps, timing[name], args.out, refs, args.table))
        print(f"{name} seed {seed}: {steps} steps, done in {(time.perf_counter() - started) / 60:.1f} min", flush=True)
        write_table(args.table, records, refs, args.minutes, order, timing, exclude)

    for name in order:
        if name in timing:
            run(name, 0)
    if all(any(r["recipe"] == n and r["seed"] == 0 for r in records) for n in order):
        chosen = best_by_validation(records, args.second_seeds, exclude)
        for name in chosen + [name for name in also if name not in chosen]:
            run(name, 1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
