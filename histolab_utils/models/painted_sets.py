"""Paint on a GPU, choose and score on the CPU: notebook 07's pixel SPADE when the FID network cannot travel.

A lent GPU machine gets a few minutes and a 64 MiB working tree, too little for the Inception weights (87 MB) that
every FID here uses. So the GPU paints what notebook 07 would score, with the same pairs, samplers and seeds, and
the CPU makes notebook 07's choice and its held-out scores from those images:

1. :func:`paint_sets` (GPU): every guidance scale of the profile's ``[spade]`` with DDIM, on notebook 07's validation
   pairs (seed 200, as :func:`~histolab_utils.models.mask_to_image.choose_sampling` paints them) and on its held-out
   grid (seed 100, as the notebook paints its held-out sets), saved with a fingerprint of the masks they were painted
   for.
2. :func:`score_painted` (CPU): the same pairs rebuilt and checked against the fingerprint; the guidance chosen on
   validation by notebook 07's own rule (``choose_sampling`` itself, replaying the painted images through
   :class:`PaintedPipeline`); then the held-out table, nucleus appearance and goals of the chosen scale and of s = 0.

The sampler is DDIM only (where a profile's ``learned_variance`` would also try the ancestral samplers): the record
says so. ``python -m histolab_utils.score spade-paint|spade-painted --help``.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict, deque
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

VALIDATION_SEED = 200  # choose_sampling's painting seed
HELDOUT_SEED = 100  # notebook 07's seed for its held-out sets under real masks
SAMPLER = "DDIM"


def notebook_pairs(config) -> dict:
    """Notebook 07's validation pairs, validation floor, held-out grid and held-out floor for profile ``config``
    (built as its cells build them), and the train images its haematoxylin detector is fitted on."""
    from ..data.pairs import grid_pairs, image_mask_pairs, source_counts

    section, seed = config.spade, config.seed
    validation = image_mask_pairs(section.tile_size, "validation", max(section.n_eval // 2, 16), seed=seed + 4,
                                  downsample=section.downsample)
    heldout = grid_pairs(section.tile_size, "heldout", downsample=section.downsample, n=section.n_eval, seed=seed + 1)
    return {"validation": validation, "heldout": heldout,
            "validation_floor": grid_pairs(section.tile_size, "train", downsample=section.downsample,
                                           n=source_counts(validation), seed=seed + 3),
            "heldout_floor": grid_pairs(section.tile_size, "train", downsample=section.downsample,
                                        n=source_counts(heldout), seed=seed + 2)}


def mask_fingerprint(types: np.ndarray, instances: np.ndarray) -> str:
    """sha256 of a set's masks, in order: the scorer refuses images painted for other masks."""
    digest = hashlib.sha256()
    for array in (np.ascontiguousarray(types, np.uint8), np.ascontiguousarray(instances, np.int64)):
        digest.update(str(array.shape).encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def paint_sets(pipeline, config, out: str | Path, *, batch_size: int = 256) -> Path:
    """Paint notebook 07's validation pairs and held-out grid at every guidance scale of ``config.spade`` with
    DDIM, and write them, the masks' fingerprints and the settings to ``out`` (an ``.npz``, written whole or not
    at all)."""
    from .mask_to_image import named_sampler, synthesise

    section, pairs = config.spade, notebook_pairs(config)
    pipeline.scheduler = named_sampler(SAMPLER, section, clip_sample=pipeline.space == "pixel")
    arrays: dict[str, np.ndarray] = {}
    for region, seed in (("validation", VALIDATION_SEED), ("heldout", HELDOUT_SEED)):
        masks = pairs[region]
        for scale in section.guidance_scales:
            arrays[f"{region}/{scale:g}"] = synthesise(pipeline, masks.types, masks.instances, scale,
                                                       section.sampler_steps, seed=seed, batch_size=batch_size)
    settings = {"profile": config.name, "sampler": SAMPLER, "sampler_steps": section.sampler_steps,
                "guidance_scales": list(section.guidance_scales), "seeds": {"validation": VALIDATION_SEED,
                                                                            "heldout": HELDOUT_SEED},
                "fingerprints": {region: mask_fingerprint(pairs[region].types, pairs[region].instances)
                                 for region in ("validation", "heldout")}}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial.npz")
    np.savez_compressed(partial, settings=np.array(json.dumps(settings)), **arrays)
    partial.replace(out)
    return out


class PaintedPipeline:
    """Stands in for a ``MaskToImagePipeline`` that painted elsewhere: called as one, it returns the images painted
    for these masks at this guidance scale with the sampler it was set to, in the order they were painted (so a
    mask that occurs twice gets its two images in turn). A scale, sampler or mask it has no image for is a
    KeyError naming it."""

    space = "pixel"

    def __init__(self, painted: dict[float, np.ndarray], types: np.ndarray, instances: np.ndarray,
                 sampler_name: str = SAMPLER):
        self.sampler_name = sampler_name
        self.scheduler = None  # choose_sampling sets it; only the images painted with sampler_name exist
        self._queues: dict[tuple[float, str], deque] = defaultdict(deque)
        for scale, images in painted.items():
            for image, key in zip(images, self._keys(types, instances)):
                self._queues[(float(scale), key)].append(image)

    @staticmethod
    def _keys(types: np.ndarray, instances: np.ndarray) -> list[str]:
        return [mask_fingerprint(t, i) for t, i in zip(types, instances)]

    def __call__(self, types, instances, guidance_scale, steps, generator=None) -> SimpleNamespace:
        sampler = type(self.scheduler).__name__ if self.scheduler is not None else None
        if sampler not in (None, "DDIMScheduler"):
            raise KeyError(f"only {self.sampler_name} images were painted; asked for {sampler}")
        images = []
        for key in self._keys(np.asarray(types), np.asarray(instances)):
            queue = self._queues.get((float(guidance_scale), key))
            if not queue:
                raise KeyError(f"no image painted for this mask at guidance scale {guidance_scale:g}")
            images.append(queue.popleft())
        return SimpleNamespace(images=np.stack(images))


def read_painted(path: str | Path) -> tuple[dict, dict[str, dict[float, np.ndarray]]]:
    """The settings and the images (region -> guidance scale -> uint8 NHWC) of a :func:`paint_sets` file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no painted sets (make them with `python -m "
                                f"histolab_utils.score spade-paint`)")
    with np.load(path) as data:
        if "settings" not in data.files:
            raise ValueError(f"{path}: not a painted-sets file (no 'settings' key)")
        settings = json.loads(str(data["settings"]))
        images: dict[str, dict[float, np.ndarray]] = defaultdict(dict)
        for key in data.files:
            if key != "settings":
                region, scale = key.split("/")
                images[region][float(scale)] = data[key]
    return settings, dict(images)


def score_painted(path: str | Path, config, *, appearance_k: float = 3.0, fid_ratio: float = 1.4,
                  strict: bool = True) -> dict[str, Any]:
    """Notebook 07's choice on validation and its held-out scores for the images of ``path`` (:func:`paint_sets`),
    with the pairs rebuilt here for profile ``config``; a fingerprint that differs (another split, profile or
    seed) is a ValueError. ``strict``: as in ``choose_sampling`` (no guided scale that follows the mask is an
    error; False for a smoke-sized model). Returns the record's metrics."""
    import dataclasses

    from ..data.pairs import pairs_summary
    from ..evaluation.mask_fidelity import FLOOR_REAL, HaematoxylinDetector, mask_to_image_goals, synthesis_scores
    from ..evaluation.nucleus_appearance import IMAGE_FEATURES, appearance_goals, appearance_scores, nucleus_features
    from ..report import row_values, table_records
    from .mask_to_image import choose_sampling

    settings, images = read_painted(path)
    pairs = notebook_pairs(config)
    for region in ("validation", "heldout"):
        here = mask_fingerprint(pairs[region].types, pairs[region].instances)
        if settings["fingerprints"][region] != here:
            raise ValueError(f"{path}: its {region} images were painted for other masks than profile "
                             f"{config.name!r} builds here (another split, profile or seed)")
    section = dataclasses.replace(config.spade, learned_variance=False)  # DDIM only: nothing else was painted
    validation, heldout = pairs["validation"], pairs["heldout"]
    detector = HaematoxylinDetector.fit(_detector_images(config))
    replay = PaintedPipeline(images["validation"], validation.types, validation.instances)
    choice = choose_sampling(replay, validation, pairs["validation_floor"], detector, section, seed=VALIDATION_SEED,
                             score_seed=config.seed, strict=strict)
    chosen = f"pixel, real masks, s = {choice.guidance_scale:g}"
    unguided = "pixel, real masks, s = 0"
    sets = {chosen: images["heldout"][choice.guidance_scale], unguided: images["heldout"][0.0]}
    scores = synthesis_scores(detector, heldout.images, heldout.types, pairs["heldout_floor"].images,
                              {name: (made, heldout.types) for name, made in sets.items()}, seed=config.seed)
    floor = pairs["heldout_floor"]
    appearance = appearance_scores(
        {name: nucleus_features(made, heldout.instances, heldout.types) for name, made in sets.items()},
        nucleus_features(floor.images, floor.instances, floor.types),
        nucleus_features(heldout.images, heldout.instances, heldout.types), features=IMAGE_FEATURES,
        seed=config.seed)
    goals = mask_to_image_goals(scores, chosen, appearance_goals(appearance, [chosen], k=appearance_k),
                                fid_ratio=fid_ratio)
    return {"n": len(heldout), "heldout": pairs_summary(heldout), "n_validation": len(validation),
            "painted": {key: settings[key] for key in ("sampler", "sampler_steps", "guidance_scales", "seeds")},
            "guidance_scale": choice.guidance_scale, "follows_mask": choice.follows_mask, "sampler": SAMPLER,
            "sampler_note": "DDIM only: the profile's learned variance would also try the ancestral samplers, "
                            "which were not painted",
            "validation_guidance_sweep": table_records(
                choice.sweep[["fid", "kid", "dice", "appearance", "n"]].astype(float)),
            "scores": table_records(scores.astype(float)),
            "floor_real_vs_real": row_values(scores, FLOOR_REAL),
            "chosen": row_values(scores, chosen), "unguided": row_values(scores, unguided),
            "appearance": table_records(appearance.astype(float)),
            "goals": goals.astype({"measured": float}).to_dict("records"),
            "detector_threshold": detector.threshold}


def _detector_images(config) -> np.ndarray:
    """The train-region images notebook 07 fits its haematoxylin detector on (its train pairs' first 1,000)."""
    from ..data.pairs import image_mask_pairs

    section = config.spade
    return image_mask_pairs(section.tile_size, "train", min(section.n_train_pairs, 1000), seed=config.seed,
                            downsample=section.downsample).images


def painted_gallery(path: str | Path, config, scale: float, n: int = 8, seed: int = 0):
    """A figure of ``n`` held-out tiles drawn at random (``seed``): each one's mask, its painting at guidance
    ``scale`` and at s = 0 (from a :func:`paint_sets` file), and the real tile."""
    from ..plotting import image_grid, mask_images

    _, images = read_painted(path)
    heldout = notebook_pairs(config)["heldout"]
    pick = np.sort(np.random.default_rng(seed).choice(len(heldout), n, replace=False))
    rows = {"mask (held-out)": mask_images(heldout.types[pick], heldout.instances[pick]),
            f"painted, s = {scale:g}": images["heldout"][float(scale)][pick],
            "s = 0": images["heldout"][0.0][pick], "real": heldout.images[pick]}
    return image_grid([image for row in rows.values() for image in row], ncols=n,
                      titles=[name if i == 0 else "" for name in rows for i in range(n)], size=1.5)

