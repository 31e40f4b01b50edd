"""Augmentation experiments: does synthetic data help a nuclei segmenter? (notebook 09)

A **real pool** of image-mask pairs is a seeded set of tiles of a non-overlapping grid over the
train region (where the generators of notebooks 06-08 trained, at their scale), and the test tiles
are the grids over the held-out region's boxes: no two tiles share a pixel, so each is a separate unit. A
seeded permutation splits the pool into a quarter (R25) and the other three quarters (R75),
disjoint in pixels. Every synthetic tile is made from one pool tile's masks by one **source**:

* ``spade_real``: notebook 07's SPADE model paints the tile's real masks (label = the real masks);
* ``spade_generated``: notebook 06 generates new masks asked for the tile's nucleus types and
  tissue context, and SPADE paints them (label = the generated masks);
* ``joint``: notebook 08's model makes image and label together from the tile's nucleus layout.

The **arms** (NASDM Tables 3-5, Tanczos 6.6), each trained for the same optimiser steps at the
same batch size, scored on the held-out region's tiles, and compared with its real-only reference:

* baselines: ``real_25`` / ``real_100`` (R25 / the whole pool), ``classic_25`` / ``classic_100``
  (the same with dihedral, stain and colour jitter), ``duplicated_25`` (R25 repeated, shuffled, to
  the pool's size: with equal steps and uniform batches it trains on the same tiles as ``real_25``
  in another random stream, so its difference from ``real_25`` is the noise of the comparison);
* (a) addition, ``add_<source>_<pct>``: R25 + synthetic tiles from R75's masks, pct % of the pool;
* (a') addition on top of classical augmentation, ``classic_plus_<source>_<pct>``: the tiles of ``add_<source>_<pct>``
  trained with ``classic_25``'s augmentation (drawn batches are flipped, rotated and stain-jittered whatever their
  origin, so real and synthetic tiles alike), and compared with ``classic_25``: does synthetic data add anything
  that flips and stain jitter do not already give?
* (b) replacement, ``replace_<source>_<pct>``: the pool with pct % of its tiles replaced by their
  synthetic versions; at 100 % these are (c), NASDM Table 5: images from the generator's own
  training masks against the real images;
* (d) rare-class rebalancing, ``rare_spade_generated``: the pool + tiles made from notebook 06's
  masks asked for the rarest nucleus type and kept when richest in it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from ..data.datasets import split_description
from ..data.layouts import layouts_from_masks
from ..data.nuclei import NUCLEUS_CLASSES, describe_tiles, present_types
from ..data.pairs import PAIR_SOURCES, ImageMaskPairs, distinct_nuclei, grid_pairs
from ..engine.trainer import logged_train_seconds
from ..evaluation.hierarchical_bootstrap import holm, holm_interval_levels
from ..evaluation.segmentation import (REPORTED_SCORES, TESTED_SCORES, arm_contrast, nuclei_per_type, seed_summary,
                                       segmentation_scores, tile_counts)
from ..paths import atomic_path, atomic_write_text
from .hovernet import SegmenterConfig, SegmenterTrainer, segment

SOURCES = ("spade_real", "spade_generated", "joint")
EXPERIMENTS = {"baseline": "baselines", "addition": "(a) addition, NASDM Table 3",
               "classic_plus": "(a') addition on top of classical augmentation, against classic_25",
               "replacement": "(b) replacement, NASDM Table 4; at 100 %: (c) Table 5",
               "rare": "(d) rare-class rebalancing, Tanczos 6.6"}


@dataclass(frozen=True)
class Arm:
    """One training set recipe. ``fraction``: synthetic tiles added (addition, rare) or real tiles
    replaced (replacement), as a share of the real pool."""

    name: str
    experiment: str
    reference: str  # the arm it is compared with: real-only, or classic_25 for the classic_plus arms
    source: str | None = None
    fraction: float = 0.0
    real_share: float = 1.0  # the share of the pool used as real tiles (0.25 or 1)
    augment: bool = False
    duplicate: bool = False


ADDING = ("addition", "classic_plus")  # the experiments whose arms add synthetic tiles from R75's masks to R25


def arm_catalogue(addition: Sequence[float] = (0.25, 0.5, 0.75), replacement: Sequence[float] = (0.25, 0.5, 0.75, 1.0),
                  sources: Sequence[str] = SOURCES, classic_plus: Sequence[float] = (0.75,)) -> dict[str, Arm]:
    """Every arm, by name (``classic_plus``: the fractions at which synthetic tiles are added on top of classical
    augmentation, each arm against ``classic_25``)."""
    arms = [Arm("real_25", "baseline", "real_25", real_share=0.25),
            Arm("classic_25", "baseline", "real_25", real_share=0.25, augment=True),
            Arm("duplicated_25", "baseline", "real_25", real_share=0.25, duplicate=True),
            Arm("real_100", "baseline", "real_100"),
            Arm("classic_100", "baseline", "real_100", augment=True)]
    for source in sources:
        arms += [Arm(f"add_{source}_{round(100 * f)}", "addition", "real_25", source, f, 0.25) for f in addition]
        arms += [Arm(f"classic_plus_{source}_{round(100 * f)}", "classic_plus", "classic_25", source, f, 0.25,
                     augment=True) for f in classic_plus]
        arms += [Arm(f"replace_{source}_{round(100 * f)}", "replacement", "real_100", source, f) for f in replacement]
    arms.append(Arm("rare_spade_generated", "rare", "real_100", "spade_generated", 0.5))
    return {arm.name: arm for arm in arms}


def pick_arms(names: Sequence[str] | str, catalogue: dict[str, Arm]) -> list[Arm]:
    """The named arms (``"all"``: every one) with their references and theirs (``classic_plus_*`` reads classic_25,
    which reads real_25), in the catalogue's order: references, all baselines, first."""
    names = list(catalogue) if names == "all" else list(names)
    unknown = [n for n in names if n not in catalogue]
    if unknown:
        raise ValueError(f"unknown arm(s) {unknown}; arms are {sorted(catalogue)}")
    wanted = set(names)
    while {catalogue[n].reference for n in wanted} - wanted:
        wanted |= {catalogue[n].reference for n in wanted}
    return [arm for name, arm in catalogue.items() if name in wanted]


@dataclass
class Pool:
    """The real pool and its seeded 25 / 75 split (``order``: a permutation; the first quarter is R25)."""

    pairs: ImageMaskPairs
    order: np.ndarray

    @property
    def quarter(self) -> np.ndarray:
        return self.order[: len(self.order) // 4]

    @property
    def rest(self) -> np.ndarray:
        return self.order[len(self.order) // 4:]


def _grid_tiles(tile_size: int, region: str, downsample: int, n: int | None, rng: np.random.Generator,
                key: str) -> ImageMaskPairs:
    """Every tile of the non-overlapping grid over ``region``, or a seeded ``n`` of them (``key``: the profile key
    that asked for ``n``, named when the grid holds fewer)."""
    tiles = grid_pairs(tile_size, region, downsample=downsample)
    if n is None:
        return tiles
    if n > len(tiles):
        raise ValueError(f"{n} tiles asked for by segmentation.{key}, but the {region} region's {tile_size} px grid at "
                         f"downsample {downsample} holds {len(tiles)}: lower segmentation.{key}")
    return tiles.subset(np.sort(rng.choice(len(tiles), n, replace=False)))


def real_pool(tile_size: int, downsample: int, seed: int, n: int | None = None) -> Pool:
    """The real pool: the tiles of a non-overlapping grid over the train region of both labelled images (every one,
    or a seeded ``n`` of them), and its seeded 25 / 75 split. No two tiles share a pixel, so R25 and R75 are disjoint
    in pixels, and every pool tile lies where the generators of notebooks 06-08 trained."""
    rng = np.random.default_rng(seed + 10)
    pairs = _grid_tiles(tile_size, "train", downsample, n, rng, "n_real")
    return Pool(pairs, rng.permutation(len(pairs)))


def heldout_tiles(tile_size: int, downsample: int, seed: int, n: int | None = None) -> ImageMaskPairs:
    """The test tiles every arm is scored on: non-overlapping grids over the held-out region's boxes (every tile, or a seeded
    ``n`` of them), so each is a separate unit for the bootstrap. No model ever trains on them."""
    return _grid_tiles(tile_size, "heldout", downsample, n, np.random.default_rng(seed + 1), "n_test")


def describe_pool(pool: Pool, test: ImageMaskPairs) -> pd.DataFrame:
    """R25, R75 and the test tiles: tiles, nuclei per type summed over tiles (a nucleus cut by a tile border counts in
    both), and the distinct nuclei of the source images they show (counted once)."""
    rows = {}
    for name, pairs in (("R25", pool.pairs.subset(pool.quarter)), ("R75", pool.pairs.subset(pool.rest)), ("test", test)):
        table = describe_tiles(pairs)
        rows[name] = {"tiles": len(pairs), "region": pairs.region,
                      **{f"{c} nuclei": int(table[f"n_{c}"].sum()) for c in NUCLEUS_CLASSES},
                      "distinct nuclei": distinct_nuclei(pairs)["all"]}
    return pd.DataFrame(rows).T


def rarest_type(types: np.ndarray, instances: np.ndarray) -> int:
    """The type id (1..K) with the fewest nuclei in these (training) masks."""
    table = layouts_from_masks(types, instances).counts.sum(0)
    return int(np.argmin(table)) + 1


@dataclass
class Synthetic:
    """Synthetic tiles: uint8 images [N, S, S, 3], types, instances, and for each the pool index of
    the masks it came from (-1: generated masks)."""

    images: np.ndarray
    types: np.ndarray
    instances: np.ndarray
    made_from: np.ndarray

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, index) -> "Synthetic":
        return Synthetic(self.images[index], self.types[index], self.instances[index], self.made_from[index])

    def rows(self, pool_index: np.ndarray) -> np.ndarray:
        """The rows made from these pool pairs (an error names any pair without one)."""
        where = {int(p): row for row, p in enumerate(self.made_from)}
        missing = [int(p) for p in pool_index if int(p) not in where]
        if missing:
            raise ValueError(f"no synthetic tile was made from pool pairs {missing[:5]}...; build the bank with "
                             "needed_pool_pairs(arms, pool)")
        return np.array([where[int(p)] for p in pool_index], dtype=np.int64)


@dataclass
class Generators:
    """The trained generators of notebooks 06-08, with each one's sampling settings:
    (guidance scale, sampler steps)."""

    spade: object | None = None
    masks: object | None = None
    joint: object | None = None
    spade_settings: tuple[float, int] = (1.5, 10)
    mask_settings: tuple[float, int] = (2.0, 25)
    joint_settings: tuple[float, int] = (2.0, 10)
    trained_at: dict[str, tuple[int, int]] | None = None  # each model's (tile px, downsample) in training
    mask_min_nucleus_px: int = 0  # the speck filter notebook 06 chose (models.mask_generator.decode_masks)

    def check_scale(self, size: int, downsample: int) -> None:
        """Refuse to make tiles at a scale a generator did not train at (a convolutional UNet samples any size, but
        nobody has tested what the change of scale does to its tiles)."""
        for name, (trained_size, trained_downsample) in (self.trained_at or {}).items():
            if (trained_size, trained_downsample) != (size, downsample):
                raise ValueError(f"the {name} generator trained on {trained_size} px tiles at downsample "
                                 f"{trained_downsample}, but the segmenter's tiles are {size} px at downsample "
                                 f"{downsample}: set segmentation.tile_size and downsample to the generators' (or "
                                 f"train them at the segmenter's)")

    def fingerprint(self) -> str:
        """Which models and settings made a bank (their saved configs and weights' sizes and times)."""
        parts = [repr((self.spade_settings, self.mask_settings, self.joint_settings))]
        if self.mask_min_nucleus_px:  # (absent when off: banks made before the filter existed keep their key)
            parts.append(f"min_nucleus_px={self.mask_min_nucleus_px}")
        for pipeline in (self.spade, self.masks, self.joint):
            folder = getattr(getattr(pipeline, "config", None), "_name_or_path", None)
            if folder and Path(folder).is_dir():
                parts += [f"{p.relative_to(folder)}:{p.stat().st_size}:{p.stat().st_mtime_ns}"
                          for p in sorted(Path(folder).rglob("*")) if p.is_file()]
        return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def generators_for(sources: Iterable[str]) -> set[str]:
    """The generators (keys of :func:`load_generators`' ``folders``) that these synthetic sources ("rare"
    included) draw on."""
    needs = {"spade_real": {"spade"}, "spade_generated": {"masks", "spade"}, "joint": {"joint"},
             "rare": {"masks", "spade"}}
    unknown = [s for s in sources if s not in needs]
    if unknown:
        raise ValueError(f"unknown synthetic source {unknown[0]!r}; sources are {', '.join(needs)}")
    return set().union(*(needs[s] for s in sources))


def load_generators(folders: dict[str, str | Path], masks, spade, joint, device="cpu", *,
                    mask_guidance_scale: float | None = None, spade_guidance_scale: float | None = None,
                    spade_sampler: str | None = None, joint_guidance_scale: float | None = None,
                    mask_min_nucleus_px: int | None = None, only: Iterable[str] | None = None) -> Generators:
    """Notebooks 06, 07 and 08's pipelines from ``folders`` (keys ``masks``, ``spade``, ``joint``: a saved run's
    ``pipeline`` folder or a released one), each with its profile section's sampler, steps and guidance scale
    (``masks``, ``spade``, ``joint``: a profile's sections), unless the settings each notebook chose on its validation
    strip are given: the mask guidance scale and speck filter (06), the SPADE guidance scale and sampler (07, a name of
    ``models.mask_to_image.SAMPLERS``) and the joint model's guidance scale (08). A missing folder says which
    notebook makes it. ``only``: load just these keys (see :func:`generators_for`); the others stay None and need no
    folder."""
    from ..diffusion.schedules import make_scheduler
    from ..models.joint_synthesis import JointSynthesisPipeline
    from ..models.mask_generator import NucleiMaskPipeline
    from ..models.mask_to_image import MaskToImagePipeline, named_sampler

    loaded, trained_at = {}, {}
    wanted = {"masks", "spade", "joint"} if only is None else set(only)  # once: ``only`` may be a one-pass iterator
    for key, kind, section in (("masks", NucleiMaskPipeline, masks), ("spade", MaskToImagePipeline, spade),
                               ("joint", JointSynthesisPipeline, joint)):
        if key not in wanted:
            continue
        path = Path(folders[key])
        if not path.is_dir():
            raise FileNotFoundError(f"{path} does not exist: the {key} generator's saved pipeline is needed "
                                    f"(stages.segmenter.load_generators says which notebook makes it)")
        pipeline = kind.from_pretrained(path).to(device)
        if key == "spade" and spade_sampler is not None:
            pipeline.scheduler = named_sampler(spade_sampler, section)
        else:
            pipeline.scheduler = make_scheduler(section.sampler, section.schedule,
                                                prediction_type=section.prediction_type, clip_sample=True)
        pipeline.set_progress_bar_config(disable=True)
        loaded[key] = pipeline
        trained_at[key] = (int(pipeline.unet.config.sample_size), int(getattr(section, "downsample", spade.downsample)))

    def chosen(value, default):
        return default if value is None else value

    return Generators(**loaded, trained_at=trained_at,
                      spade_settings=(chosen(spade_guidance_scale, spade.guidance_scale), spade.sampler_steps),
                      mask_settings=(chosen(mask_guidance_scale, masks.guidance_scale), masks.sampler_steps),
                      joint_settings=(chosen(joint_guidance_scale, joint.guidance_scale), joint.sampler_steps),
                      mask_min_nucleus_px=int(chosen(mask_min_nucleus_px, 0)))


def _need(model, name: str):
    if model is None:
        raise ValueError(f"this source needs notebook {name}'s model; pass it in Generators")
    return model


def synthesise_from_pool(source: str, pairs: ImageMaskPairs, generators: Generators, seed: int = 0,
                         made_from: np.ndarray | None = None) -> Synthetic:
    """One synthetic tile per pair of ``pairs``, made from its masks by ``source`` (``made_from``:
    the pairs' indices in the pool, recorded with the tiles)."""
    from ..models.joint_synthesis import synthesise_joint
    from ..models.mask_generator import condition_vectors
    from ..models.mask_to_image import synthesise

    made_from = np.arange(len(pairs)) if made_from is None else np.asarray(made_from)
    if source == "spade_real":
        guidance_scale, steps = generators.spade_settings
        images = synthesise(_need(generators.spade, "07"), pairs.types, pairs.instances, guidance_scale, steps,
                            seed=seed)
        return Synthetic(images, pairs.types, pairs.instances.astype(np.int32), made_from)
    if source == "spade_generated":
        conditions = condition_vectors(present_types(pairs.types, pairs.instances), pairs.contexts)
        return _paint_generated(conditions, pairs.size, generators, seed, made_from)
    if source == "joint":
        guidance_scale, steps = generators.joint_settings
        out = synthesise_joint(_need(generators.joint, "08"), layouts_from_masks(pairs.types, pairs.instances),
                               pairs.contexts, guidance_scale, steps, seed=seed)
        return Synthetic(out.images, out.types, out.instances.astype(np.int32), made_from)
    raise ValueError(f"unknown synthetic source {source!r}; sources are {SOURCES}")


def _paint_generated(conditions: np.ndarray, size: int, generators: Generators, seed: int,
                     made_from: np.ndarray) -> Synthetic:
    from ..models.mask_generator import generate_masks
    from ..models.mask_to_image import synthesise

    guidance_scale, steps = generators.mask_settings
    made = generate_masks(_need(generators.masks, "06"), conditions, guidance_scale, steps, seed=seed, size=size,
                          min_nucleus_px=generators.mask_min_nucleus_px)
    guidance_scale, steps = generators.spade_settings
    images = synthesise(_need(generators.spade, "07"), made.types, made.instances, guidance_scale, steps,
                        seed=seed + 1)
    return Synthetic(images, made.types.astype(np.uint8), made.instances.astype(np.int32), made_from)


def rare_class_tiles(pool: Pool, n: int, generators: Generators, seed: int = 0, oversample: int = 2) -> Synthetic:
    """``n`` tiles rich in the pool's rarest nucleus type: notebook 06 is asked ``oversample`` x n
    times for masks holding it (with the type mix and context of random pool tiles), SPADE paints
    the ``n`` whose nuclei are most often of that type."""
    from ..models.mask_generator import condition_vectors

    pairs = pool.pairs
    rare = rarest_type(pairs.types, pairs.instances)
    rng = np.random.default_rng(seed)
    donors = rng.choice(len(pairs), oversample * n, replace=True)
    wanted = present_types(pairs.types[donors], pairs.instances[donors])
    wanted[:, rare - 1] = 1
    conditions = condition_vectors(wanted, pairs.contexts[donors])
    made = _paint_generated(conditions, pairs.size, generators, seed, np.full(len(donors), -1))
    counts = layouts_from_masks(made.types, made.instances).counts
    share = counts[:, rare - 1] / np.maximum(counts.sum(1), 1)
    return made.subset(np.argsort(-share, kind="stable")[:n])


def needed_pool_pairs(arms: Sequence[Arm], pool: Pool) -> dict[str, np.ndarray]:
    """For each source the arms use, the pool pairs whose masks they need synthesised (sorted);
    "rare" maps to the number of rare-class tiles instead."""
    n, needed = len(pool.pairs), {}
    for arm in arms:
        count = round(arm.fraction * n)
        if arm.experiment in ADDING:
            needed.setdefault(arm.source, set()).update(pool.rest[:count].tolist())
        elif arm.experiment == "replacement":
            needed.setdefault(arm.source, set()).update(pool.order[n - count:].tolist())
        elif arm.experiment == "rare":
            needed["rare"] = {max(count, len(needed.get("rare", ())))}
    return {k: (np.array(sorted(v)) if k != "rare" else np.array(sorted(v))[-1:]) for k, v in needed.items()}


def synthetic_bank(source: str, pool: Pool, generators: Generators, needed: np.ndarray,
                   folder: str | Path | None = None, seed: int = 0) -> Synthetic:
    """:func:`synthesise_from_pool` over the ``needed`` pool pairs (``source`` = "rare":
    :func:`rare_class_tiles`, ``needed[0]`` of them), cached in ``folder`` and reused while the
    pool, pairs, models and settings match."""
    generators.check_scale(pool.pairs.size, pool.pairs.downsample)
    needed = np.asarray(needed, dtype=np.int64)
    key = hashlib.sha256(pool.pairs.types.tobytes() + pool.pairs.instances.tobytes() + pool.order.tobytes()
                         + needed.tobytes() + f"{source}|{seed}|{generators.fingerprint()}".encode()).hexdigest()[:16]
    path = Path(folder) / f"{source}-{key}.npz" if folder else None
    if path is not None and path.is_file():
        with np.load(path) as cached:
            return Synthetic(*(cached[k] for k in ("images", "types", "instances", "made_from")))
    if source == "rare":
        bank = rare_class_tiles(pool, int(needed[0]), generators, seed)
    else:
        bank = synthesise_from_pool(source, pool.pairs.subset(needed), generators, seed, made_from=needed)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as staging:
            with open(staging, "wb") as handle:
                np.savez(handle, **asdict(bank))
    return bank


@dataclass
class TrainingSet:
    """An arm's tiles and where each came from: ``origin`` "real" or "synthetic", ``pool_index``
    (the pool pair whose pixels or masks it carries; -1 for generated masks)."""

    images: np.ndarray
    types: np.ndarray
    instances: np.ndarray
    origin: np.ndarray
    pool_index: np.ndarray

    def __len__(self) -> int:
        return len(self.images)


def _joined(parts: Sequence[tuple[str, np.ndarray, np.ndarray, np.ndarray, np.ndarray]]) -> TrainingSet:
    return TrainingSet(np.concatenate([p[1] for p in parts]), np.concatenate([p[2] for p in parts]).astype(np.uint8),
                       np.concatenate([p[3] for p in parts]).astype(np.int32),
                       np.concatenate([np.full(len(p[1]), p[0]) for p in parts]),
                       np.concatenate([p[4] for p in parts]))


def arm_training_set(arm: Arm, pool: Pool, banks: dict[str, Synthetic]) -> TrainingSet:
    """The tiles an arm trains on (``banks``: each source's :func:`synthetic_bank`, and "rare")."""
    pairs, n = pool.pairs, len(pool.pairs)

    def real(index):
        return ("real", pairs.images[index], pairs.types[index], pairs.instances[index], np.asarray(index))

    def synthetic(bank: Synthetic, rows):
        return ("synthetic", bank.images[rows], bank.types[rows], bank.instances[rows], bank.made_from[rows])

    if arm.source is not None and (arm.source if arm.experiment != "rare" else "rare") not in banks:
        raise ValueError(f"arm {arm.name} needs the {arm.source!r} synthetic bank; banks given: {sorted(banks)}")
    base = pool.quarter if arm.real_share < 1 else pool.order
    if arm.experiment == "baseline":
        # np.resize alone would repeat R25 in order, and a uniform draw of index r % 96 then lands on
        # tile r % 24: the very batches of real_25. Shuffled, the copies give the same tiles in
        # another random stream.
        index = np.random.default_rng(len(base)).permutation(np.resize(base, n)) if arm.duplicate else base
        return _joined([real(index)])
    if arm.experiment in ADDING:  # classic_plus: the same tiles; its config augments every drawn batch
        count = round(arm.fraction * n)
        if count > len(pool.rest):
            raise ValueError(f"{arm.name}: {count} synthetic tiles asked for, but R75 has {len(pool.rest)} masks")
        bank = banks[arm.source]
        return _joined([real(pool.quarter), synthetic(bank, bank.rows(pool.rest[:count]))])
    if arm.experiment == "replacement":
        count = round(arm.fraction * n)
        # replaced from the end of the order, i.e. from R75 up to 75 %: the synthetic tiles the
        # addition arms need (made from R75's masks) serve these arms too, and are made only once
        replaced, kept = pool.order[n - count:], pool.order[:n - count]
        bank = banks[arm.source]
        return _joined([real(kept), synthetic(bank, bank.rows(replaced))])
    if arm.experiment == "rare":
        bank = banks["rare"]
        return _joined([real(pool.order), synthetic(bank, np.arange(min(len(bank), round(arm.fraction * n))))])
    raise ValueError(f"unknown experiment {arm.experiment!r} of arm {arm.name}")


def arm_size(arm: Arm, pool: Pool) -> int:
    """How many tiles :func:`arm_training_set` gives ``arm``, without its synthetic bank (for scoring runs
    trained elsewhere)."""
    n = len(pool.pairs)
    if arm.experiment == "baseline":
        return n if arm.duplicate else len(pool.quarter if arm.real_share < 1 else pool.order)
    if arm.experiment in ADDING:
        return len(pool.quarter) + round(arm.fraction * n)
    if arm.experiment == "replacement":
        return n
    if arm.experiment == "rare":
        return n + round(arm.fraction * n)
    raise ValueError(f"unknown experiment {arm.experiment!r} of arm {arm.name}")


def segmenter_config(section, arm: Arm, seed: int) -> SegmenterConfig:
    """The segmenter's config for one arm and seed from a profile's ``segmentation`` section: every field the
    segmenter has by name (``train_steps`` as ``steps``; ``mixed_precision`` and ``compile`` too), the same for every
    arm; only ``augment`` and the seed differ."""
    from ..engine.configs import config_from_section

    return config_from_section(SegmenterConfig, section, seed, own={
        "n_types": len(NUCLEUS_CLASSES), "features": tuple(section.features), "augment": arm.augment,
        "extra": {"arm": arm.name}})


def _as_saved(config: SegmenterConfig) -> dict:
    """``config`` as its run saves it (``model/segmenter_config.json``): tuples become lists."""
    return json.loads(json.dumps(asdict(config), default=list))


def run_arm(config: SegmenterConfig, training: TrainingSet, test: ImageMaskPairs, out_dir: str | Path,
            progress: bool = False, resume: bool = False) -> pd.DataFrame:
    """Train one arm with one seed, segment the test tiles and return (and save) their counts.
    A finished run with the same config is read back instead of retrained."""
    out_dir = Path(out_dir)
    done, saved = out_dir / "test_counts.csv", out_dir / "model" / "segmenter_config.json"
    wanted = _as_saved(config)
    # the same config on other tiles (a changed pool or test grid) is another run: key the counts by the data too
    data_key = hashlib.sha256(b"".join(np.ascontiguousarray(a).tobytes() for a in (
        training.images, training.types, training.instances, test.images, test.types, test.instances))).hexdigest()
    key_file = out_dir / "data_key.txt"
    same_data = key_file.is_file() and key_file.read_text().strip() == data_key
    if same_data and done.is_file() and saved.is_file() and json.loads(saved.read_text()) == wanted:
        return pd.read_csv(done)
    # a checkpoint is resumed only on the data it was trained on: the key is written before training starts
    resume = resume and same_data
    trainer = SegmenterTrainer(config, training.images, training.types, training.instances, out_dir, progress)
    if trainer.accelerator.is_main_process:
        done.unlink(missing_ok=True)  # another run's counts must not be read back as this one's if it stops
        atomic_write_text(key_file, data_key + "\n")
    trainer.train(resume=resume)
    trainer.save_model()
    model = trainer.accelerator.unwrap_model(trainer.model)
    types, instances = segment(getattr(model, "_orig_mod", model), test.images, config.n_types,
                               config.min_object_size, config.marker_radius)
    counts = tile_counts(test.types, test.instances, types, instances, NUCLEUS_CLASSES)
    if trainer.accelerator.is_main_process:
        atomic_write_text(done, counts.to_csv(index=False))
        np.savez_compressed(out_dir / "test_predictions.npz", types=types, instances=instances)
    return counts


def arm_results(counts: dict[tuple[str, int], pd.DataFrame], arms: Sequence[Arm], seeds: Sequence[int],
                n_resamples: int = 2000, seed: int = 0, scores: Sequence[str] = REPORTED_SCORES,
                confidence: float = 0.95, tested: Sequence[str] = TESTED_SCORES) -> pd.DataFrame:
    """One row per arm: mean and std over seeds of each of ``scores``, and for every arm that is not its own reference
    the contrast with it in each ``tested`` score (:func:`~histolab_utils.evaluation.segmentation.arm_contrast`: seeds
    and test tiles resampled): difference, 95 % interval, p-value, the p-value adjusted by Holm's method over every
    (arm, tested score) here, the interval at the test's Holm level, and a verdict that reads the adjusted p-value:
    *gain* or *loss* only when it is below 1 - ``confidence``. IoU is reported, not tested (by default): pooled, it
    is Dice / (2 - Dice), so its test would repeat Dice's and only make Holm's family larger."""
    from scipy import stats

    untested = [score for score in tested if score not in scores]
    if untested:
        raise ValueError(f"tested scores {untested} are not among the reported {list(scores)}")
    rows = []
    for arm in arms:
        per_seed = [counts[(arm.name, s)] for s in seeds]
        row = {"arm": arm.name, "experiment": arm.experiment, "source": arm.source or "real",
               "fraction": arm.fraction, "reference": arm.reference,
               **seed_summary(per_seed, NUCLEUS_CLASSES, scores)}
        if arm.reference != arm.name:
            reference = [counts[(arm.reference, s)] for s in seeds]
            for score in tested:
                contrast = arm_contrast(per_seed, reference, NUCLEUS_CLASSES, score, n_resamples, confidence, seed=seed)
                row.update({f"{score}_diff": contrast["difference"], f"{score}_ci_low": contrast["ci_low"],
                            f"{score}_ci_high": contrast["ci_high"], f"{score}_se": contrast["se"],
                            f"{score}_df": contrast["df"], f"{score}_p": contrast["p_value"]})
        rows.append(row)
    table = pd.DataFrame(rows).set_index("arm")
    family = [(arm, score) for score in tested if f"{score}_p" in table for arm in table.index
              if pd.notna(table.loc[arm, f"{score}_p"])]
    p_values = [table.loc[arm, f"{score}_p"] for arm, score in family]
    for (arm, score), adjusted, level in zip(family, holm(p_values), holm_interval_levels(p_values, confidence)):
        row = table.loc[arm]
        half = stats.t.ppf(0.5 + level / 2, row[f"{score}_df"]) * row[f"{score}_se"]
        table.loc[arm, [f"{score}_p_holm", f"{score}_ci_holm_low", f"{score}_ci_holm_high"]] = (
            adjusted, row[f"{score}_diff"] - half, row[f"{score}_diff"] + half)
        significant = adjusted < 1 - confidence
        table.loc[arm, f"{score}_verdict"] = ("gain" if significant and row[f"{score}_diff"] > 0 else
                                              "loss" if significant and row[f"{score}_diff"] < 0 else "no gain")
    return table


def _contrast_column(score: str) -> str:
    return f"{score} diff [Holm-level CI] p(Holm)"


def _contrast_text(difference, low, high, p_holm, verdict) -> str:
    if difference is None or pd.isna(difference):
        return "reference"
    return f"{difference:+.3f} [{low:+.3f}, {high:+.3f}] p={p_holm:.3f} {verdict}"


def formatted_results(results: pd.DataFrame, scores: Sequence[str] = REPORTED_SCORES,
                      contrasts: Sequence[str] = TESTED_SCORES) -> pd.DataFrame:
    """:func:`arm_results` for reading: each score as mean +- std over seeds, and each contrast as difference [interval
    at its Holm level, the one its verdict reads], Holm-adjusted p and verdict."""
    out = pd.DataFrame(index=results.index)
    out["reference"] = results["reference"]
    for score in scores:
        out[score] = [f"{m:.3f} ± {s:.3f}" for m, s in zip(results[f"{score}_mean"], results[f"{score}_std"])]
    for score in contrasts:
        if f"{score}_diff" not in results:
            continue
        out[_contrast_column(score)] = [_contrast_text(*row) for row in zip(
            results[f"{score}_diff"], results[f"{score}_ci_holm_low"], results[f"{score}_ci_holm_high"],
            results[f"{score}_p_holm"], results[f"{score}_verdict"])]
    return out


def contrasts_tested(results: pd.DataFrame) -> int:
    """How many (arm, score) contrasts :func:`arm_results` Holm-adjusted together."""
    return int(results.filter(like="_p_holm").notna().to_numpy().sum())


def experiment_tables(results: pd.DataFrame, arms: Sequence[Arm], scores: Sequence[str] = REPORTED_SCORES,
                      contrasts: Sequence[str] = TESTED_SCORES) -> dict[str, pd.DataFrame]:
    """:func:`formatted_results` per experiment of :data:`EXPERIMENTS` that ``arms`` run, keyed by its title: its arms
    and the references they are compared with, in the arms' order."""
    tables = {}
    for experiment, title in EXPERIMENTS.items():
        members = [a for a in arms if a.experiment == experiment]
        if not members:
            continue
        references = {a.reference for a in members} if experiment != "baseline" else set()
        names = [a.name for a in arms if a.experiment == experiment or a.name in references]
        tables[title] = formatted_results(results.loc[names], scores, contrasts)
    return tables


def run_path(folder: str | Path, arm: str, seed: int) -> Path:
    """One run's folder among an experiment's: ``folder/ARM/seed-N``, where :func:`run_experiments` has
    :func:`run_arm` write it and every reader of a run looks."""
    return Path(folder) / arm / f"seed-{seed}"


def seconds_trained(folder: str | Path, runs: Iterable[tuple[str, int]]) -> float:
    """The training seconds the (arm, seed) runs in ``folder`` logged, summed (:func:`logged_train_seconds`): what
    training them took, whenever it happened, where a timer around a notebook cell that reads finished runs back
    measures the read. A run without a checkpoint is an error naming it."""
    total = 0.0
    for arm, seed in runs:
        run = run_path(folder, arm, seed)
        seconds = logged_train_seconds(run)
        if seconds is None:
            raise FileNotFoundError(f"{run} has no checkpoint: it logged no training time")
        total += seconds
    return total


def steps_taken(folder: str | Path, runs: Iterable[tuple[str, int]]) -> dict[tuple[str, int], int]:
    """The optimiser steps each (arm, seed) run in ``folder`` logged (its loss log has a row per step)."""
    return {(arm, seed): len(pd.read_csv(run_path(folder, arm, seed) / "loss.csv")) for arm, seed in runs}


def record_table(record: dict, scores: Sequence[str] = REPORTED_SCORES,
                 contrasts: Sequence[str] = TESTED_SCORES) -> pd.DataFrame:
    """A published metrics record's arms (:func:`experiment_record`) as :func:`formatted_results` shows live ones,
    with each arm's training tiles."""
    rows = {}
    for name, arm in record["arms"].items():
        row = {"reference": arm["reference"], "training tiles": arm["training_tiles"]}
        row.update({score: f"{arm[score]['mean']:.3f} ± {arm[score]['std']:.3f}" for score in scores})
        for score in contrasts:
            contrast = arm[score].get("difference_from_reference")
            row[_contrast_column(score)] = "reference" if contrast is None else _contrast_text(
                contrast["difference"], *contrast["ci_holm"], contrast["p_holm"], contrast["verdict"])
        rows[name] = row
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("arm")


def arm_record(results: pd.DataFrame, name: str, training_tiles: int, scores: Sequence[str] = REPORTED_SCORES) -> dict:
    """One arm of :func:`arm_results` as a JSON-ready record (notebook 09's metrics file)."""
    row = results.loc[name]
    record = {"experiment": row["experiment"], "source": row["source"], "fraction": float(row["fraction"]),
              "reference": row["reference"], "n_seeds": int(row["n_seeds"]), "training_tiles": int(training_tiles)}
    for score in scores:
        record[score] = {"mean": float(row[f"{score}_mean"]), "std": float(row[f"{score}_std"])}
        if name != row["reference"] and f"{score}_diff" in row and pd.notna(row[f"{score}_diff"]):
            record[score]["difference_from_reference"] = {
                "difference": float(row[f"{score}_diff"]),
                "ci95": [float(row[f"{score}_ci_low"]), float(row[f"{score}_ci_high"])],
                "p_value": float(row[f"{score}_p"]), "p_holm": float(row[f"{score}_p_holm"]),
                "ci_holm": [float(row[f"{score}_ci_holm_low"]), float(row[f"{score}_ci_holm_high"])],
                "verdict": row[f"{score}_verdict"]}
    return record


def saved_predictions(folder: str | Path, arm: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The type and instance maps one run (``folder/ARM/seed-N``, :func:`run_arm`) predicted for the test tiles."""
    path = run_path(folder, arm, seed) / "test_predictions.npz"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: run arm {arm!r} with seed {seed} first")
    with np.load(path) as saved:
        return saved["types"], saved["instances"]


def per_seed_scores(counts: dict[tuple[str, int], pd.DataFrame],
                    scores: Sequence[str] = REPORTED_SCORES) -> pd.DataFrame:
    """Long table (arm, seed, score, value) of each run's pooled scores, for point plots."""
    rows = [{"arm": arm, "seed": s, "score": name, "value": value}
            for (arm, s), frame in counts.items()
            for name, value in segmentation_scores(frame, NUCLEUS_CLASSES).items() if name in scores]
    return pd.DataFrame(rows)


def per_type_pq(counts: dict[tuple[str, int], pd.DataFrame], arms: Sequence[Arm], seeds: Sequence[int],
                true_types: np.ndarray, true_instances: np.ndarray) -> pd.DataFrame:
    """PQ of each nucleus type for each arm, beside ``test_nuclei``: how many nuclei of that type the test tiles hold
    (:func:`~histolab_utils.evaluation.segmentation.nuclei_per_type` of their true maps ``true_types`` and
    ``true_instances`` [N, H, W], the tiles ``counts`` were counted on). Rows (arm, type); PQ (mean and std over seeds),
    DQ and SQ (means) are each run's pooled ``pq_<type>``, ``dq_<type>``, ``sq_<type>``, the PQs mPQ+ averages. A type
    with few test nuclei has a noisy PQ, and mPQ+ weighs it as much as the others. Every run must have counted as many
    true nuclei of each type (its TP + FN) as the maps hold: runs counted on other tiles are an error."""
    nuclei = nuclei_per_type(true_types, true_instances, NUCLEUS_CLASSES)
    rows = []
    for arm in arms:
        runs = [counts[(arm.name, s)] for s in seeds]
        for s, run in zip(seeds, runs):
            counted = [int(run[f"pq_tp_{c}"].sum() + run[f"pq_fn_{c}"].sum()) for c in NUCLEUS_CLASSES]
            if counted != nuclei.tolist():
                raise ValueError(f"{arm.name}, seed {s}: PQ counted {counted} true nuclei per type "
                                 f"({', '.join(NUCLEUS_CLASSES)}), the test maps hold {nuclei.tolist()}: other tiles")
        scores = pd.DataFrame([segmentation_scores(run, NUCLEUS_CLASSES) for run in runs])
        for c in NUCLEUS_CLASSES:
            rows.append({"arm": arm.name, "type": c, "test_nuclei": int(nuclei[c]),
                         "pq_mean": scores[f"pq_{c}"].mean(), "pq_std": scores[f"pq_{c}"].std(ddof=1),
                         "dq_mean": scores[f"dq_{c}"].mean(), "sq_mean": scores[f"sq_{c}"].mean()})
    return pd.DataFrame(rows).set_index(["arm", "type"])


def per_type_pq_view(table: pd.DataFrame) -> pd.DataFrame:
    """:func:`per_type_pq` for reading: one row per arm, a column per nucleus type headed by its test nuclei, each
    cell PQ's mean ± std over seeds."""
    nuclei = table["test_nuclei"].groupby(level="type", sort=False).first()
    text = pd.Series([f"{m:.3f} ± {s:.3f}" for m, s in zip(table["pq_mean"], table["pq_std"])], index=table.index)
    view = text.unstack("type")[list(nuclei.index)]
    view.columns = [f"PQ {c} ({n} test nuclei)" for c, n in nuclei.items()]
    return view.loc[list(dict.fromkeys(table.index.get_level_values("arm")))]


def run_experiments(section, arms: Sequence[Arm], pool: Pool, test: ImageMaskPairs, banks: dict[str, Synthetic],
                    folder: str | Path, progress: bool = True, resume: bool = True) -> dict[tuple[str, int], pd.DataFrame]:
    """Every arm with every seed of ``section`` (a profile's ``segmentation``), one after another;
    each run lives in ``folder/ARM/seed-N``: a finished one is read back, an unfinished one continues from its
    latest checkpoint (``resume``), so a stopped notebook loses at most ``checkpoint_every`` steps."""
    from tqdm.auto import tqdm

    counts = {}
    runs = [(arm, seed) for arm in arms for seed in section.seeds]
    training = {arm.name: arm_training_set(arm, pool, banks) for arm in arms}
    for arm, seed in tqdm(runs, desc="arms x seeds", disable=not progress):
        counts[(arm.name, seed)] = run_arm(segmenter_config(section, arm, seed), training[arm.name], test,
                                           run_path(folder, arm.name, seed), resume=resume)
    return counts


def finished_counts(folder: str | Path, section, arms: Sequence[Arm],
                    test: ImageMaskPairs) -> dict[tuple[str, int], pd.DataFrame]:
    """The test counts of runs made elsewhere (``python -m histolab_utils.train segmenter`` on another machine) in
    ``folder/ARM/seed-N``, one per arm and seed of ``section`` (a profile's ``segmentation``). Each must be the run the
    profile asks for (the same saved segmenter config), counted on ``test``'s tiles in order (each tile's true pixels
    per type must match: the masks are exact where another machine's JPEG decoder may differ in the images' last
    bit): a missing or different run is an error naming its folder."""
    truth = {f"px_true_{name}": (test.types == i).sum(axis=(1, 2)) for i, name in enumerate(NUCLEUS_CLASSES, 1)}
    truth["px_true_all"] = (test.types > 0).sum(axis=(1, 2))
    counts = {}
    for arm in arms:
        for seed in section.seeds:
            run = run_path(folder, arm.name, seed)
            done, saved = run / "test_counts.csv", run / "model" / "segmenter_config.json"
            if not (done.is_file() and saved.is_file()):
                raise FileNotFoundError(f"{run}: no finished run (test_counts.csv and model/segmenter_config.json); "
                                        f"make it with: python -m histolab_utils.train segmenter --arm {arm.name} "
                                        f"--seed {seed} --profile PROFILE --out {run}")
            wanted, found = _as_saved(segmenter_config(section, arm, seed)), json.loads(saved.read_text())
            differs = sorted(key for key in wanted.keys() | found.keys() if wanted.get(key) != found.get(key))
            if differs:
                raise ValueError(f"{saved}: this run differs from the profile's in {differs}")
            frame = pd.read_csv(done)
            if len(frame) != len(test) or any(not np.array_equal(frame[k], v) for k, v in truth.items()):
                raise ValueError(f"{done}: counted on other test tiles than the profile's {len(test)} ({len(frame)} "
                                 "rows, or other true nuclei per tile)")
            counts[(arm.name, seed)] = frame
    return counts


HEADLINE = ("real_100_mpq_plus", "real_100_dice", "arms_with_mpq_gain_after_holm", "arms_with_any_gain_after_holm")


def experiment_record(results: pd.DataFrame, arms: Sequence[Arm], training_tiles: dict[str, int],
                      data_table: pd.DataFrame, section, **context) -> dict:
    """Notebook 09's metrics: the data (tiles and distinct nuclei of R25, R75 and the test set), the protocol, every
    arm's :func:`arm_record`, the null arm's contrasts, and the headline (:data:`HEADLINE`: real_100's scores, or
    ``None`` where it was not run, and the arms whose gain survives Holm). ``context``: what the caller adds
    (device, timings, figures)."""
    verdicts = results.filter(like="_verdict")
    reference = results.loc["real_100"] if "real_100" in results.index else None
    record = {
        "n_test_tiles": int(data_table.loc["test", "tiles"]), "seeds": list(section.seeds),
        "split": split_description(PAIR_SOURCES),
        "units": "test tiles and pool tiles from non-overlapping grids; R25 and R75 disjoint in pixels",
        "distinct_nuclei": {name: int(v) for name, v in data_table["distinct nuclei"].items()},
        "tiles": {name: int(v) for name, v in data_table["tiles"].items()},
        "architecture": section.architecture, "pretrained": False, "tile_size": section.tile_size,
        "downsample": section.downsample, "train_steps_per_arm": section.train_steps, "batch_size": section.batch_size,
        "bootstrap": (f"seeds and test tiles resampled (tiles shared by every seed), {section.n_resamples} resamples "
                      "each, seed-by-tile noise counted once, Satterthwaite t interval, 95 %; Holm over every "
                      "(arm, tested score); IoU reported, not tested (pooled, it is Dice / (2 - Dice))"),
        "contrasts_tested": contrasts_tested(results),
        "scores_tested": [score for score in TESTED_SCORES if f"{score}_p_holm" in results],
        "arms_run": [a.name for a in arms],
        "arms": {a.name: arm_record(results, a.name, training_tiles[a.name]) for a in arms},
        **context,
        "real_100_mpq_plus": None if reference is None else float(reference["mpq_plus_mean"]),
        "real_100_dice": None if reference is None else float(reference["dice_mean"]),
        "arms_with_mpq_gain_after_holm": int((results.get("mpq_plus_verdict") == "gain").sum()),
        "arms_with_any_gain_after_holm": int((verdicts == "gain").any(axis=1).sum()),
    }
    if "duplicated_25" in results.index:
        null = record["arms"]["duplicated_25"]
        record["null_arm"] = {score: null[score]["difference_from_reference"] for score in REPORTED_SCORES
                              if "difference_from_reference" in null[score]}
        record["null_arm_shows_a_gain"] = bool((verdicts.loc["duplicated_25"] == "gain").any())
    return record
