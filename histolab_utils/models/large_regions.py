"""Large regions from a whole slide's layout (notebook 10): the tile-sized generators of notebooks 06-08 painting a
canvas many tiles wide with :mod:`~histolab_utils.diffusion.tiled_sampling`.

* :func:`paint_spade`: an H&E canvas for a canvas-sized nuclei mask (notebook 07's SPADE; its one-hot types and edge
  map are cropped to each window);
* :func:`paint_joint`: an H&E canvas with its labels for a canvas-sized layout (notebook 08's joint model; per-type
  point maps cropped to each window, each window's tissue context the majority one under it);
* :func:`generate_canvas_masks`: a canvas of nuclei masks from notebook 06's generator, each window conditioned on
  the tissue context under it and the nucleus types a field of the slide holds there (DiffInfinite's first stage,
  Aversa et al. 2023, on a CPU), decoded once over the whole canvas.

Each returns a :class:`Canvas`: what was painted, with the CPU seconds and the network pixels it cost.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from ..data.layouts import Layouts, layout_maps
from ..data.nuclei import NO_CONTEXT, TISSUE_CONTEXTS, present_types
from ..diffusion.conditioning import null_condition
from ..diffusion.sampling import guided_prediction, to_uint8
from ..diffusion.tiled_sampling import Box, crop_maps, network_pixels, tiled_denoise
from .joint_synthesis import JOINT_CHANNELS, NULL_CONTEXT, _WithLayout, decode_joint
from .mask_generator import MASK_CHANNELS, condition_vectors, decode_masks
from .mask_to_image import MaskToImagePipeline, condition_maps


@dataclasses.dataclass
class Canvas:
    """One painted canvas: ``image`` uint8 [H, W, 3] (None for masks), ``types`` and ``instances`` [H, W] (the
    label: the input mask, the joint model's decoded label, or the generated mask), the ``method``, its ``steps``,
    ``seconds`` of wall-clock time and ``network_pixels`` (pixels the network evaluated, both guidance halves);
    ``samples`` the joint model's raw output [3 + K + 1, H, W] (None otherwise), to decode its label without the
    layout for scoring (:func:`~histolab_utils.models.joint_synthesis.joint_label_without_layout`)."""

    image: np.ndarray | None
    types: np.ndarray
    instances: np.ndarray
    method: str
    steps: int
    seconds: float
    network_pixels: int
    samples: np.ndarray | None = None


def _noise(channels: int, size: int, seed: int) -> tuple[torch.Tensor, torch.Generator]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn((1, channels, size, size), generator=generator), generator


def _check_square(types: np.ndarray, tile: int) -> int:
    types = np.asarray(types)
    if types.ndim != 2 or types.shape[0] != types.shape[1] or types.shape[0] < tile:
        raise ValueError(f"need one square canvas [S, S] of at least the {tile} px tile; got {types.shape}")
    return types.shape[0]


def _cost(method: str, size: int, tile: int, steps: int, stride: int | None, guidance_scale: float, seed: int) -> int:
    halves = 1 if guidance_scale in (0.0, 1.0) else 2
    return halves * network_pixels(method, size, size, tile, steps, stride, seed)


def paint_spade(pipeline: MaskToImagePipeline, types: np.ndarray, instances: np.ndarray, method: str, tile: int,
                steps: int, guidance_scale: float, stride: int | None = None, seed: int = 0) -> Canvas:
    """Paint one canvas-sized mask (``types``, ``instances`` [S, S]) with a pixel-space SPADE pipeline by ``method``."""
    if pipeline.vqvae is not None:
        raise ValueError("tiled painting here runs the pixel-space SPADE model; this pipeline is the latent one")
    size = _check_square(types, tile)
    maps = torch.from_numpy(condition_maps(np.asarray(types)[None], np.asarray(instances)[None])).float()
    unet = pipeline.unet

    def predict(x: torch.Tensor, t: torch.Tensor, boxes: Sequence[Box]) -> torch.Tensor:
        condition = crop_maps(maps, boxes).to(x.device)
        return guided_prediction(unet, x, t, condition, torch.zeros_like(condition), guidance_scale)

    x, generator = _noise(unet.config.in_channels, size, seed)
    started = time.perf_counter()
    x = tiled_denoise(predict, pipeline.scheduler, x * pipeline.scheduler.init_noise_sigma, method, tile, steps,
                      stride, generator, seed)
    image = to_uint8(x.float())[0]
    return Canvas(image, np.asarray(types), np.asarray(instances), method, steps, time.perf_counter() - started,
                  _cost(method, size, tile, steps, stride, guidance_scale, seed))


def window_contexts(contexts: np.ndarray, boxes: Sequence[Box]) -> np.ndarray:
    """The majority tissue context (index) under each window of a per-pixel context map [S, S]."""
    return np.array([np.bincount(contexts[y0:y1, x0:x1].ravel(), minlength=len(TISSUE_CONTEXTS)).argmax()
                     for y0, x0, y1, x1 in boxes], dtype=np.int64)


def paint_joint(pipeline, layout: Layouts, contexts: np.ndarray, method: str, tile: int, steps: int,
                guidance_scale: float, stride: int | None = None, seed: int = 0) -> Canvas:
    """Paint one canvas-sized ``layout`` (a one-layout :class:`Layouts` of S px) with notebook 08's joint pipeline by
    ``method``, each window's context the majority of ``contexts`` [S, S] under it; the label is decoded once over
    the canvas (watershed seeded at the layout's centroids: for drawing; score ``samples`` decoded without it)."""
    if len(layout) != 1:
        raise ValueError(f"paint one canvas layout at a time; got {len(layout)} layouts")
    contexts = np.asarray(contexts)
    if contexts.shape != (layout.size, layout.size):
        raise ValueError(f"need a context map of the canvas's {layout.size} px; got {contexts.shape}")
    unet = pipeline.unet
    maps = torch.from_numpy(layout_maps(layout, pipeline.config.layout_sigma))

    def predict(x: torch.Tensor, t: torch.Tensor, boxes: Sequence[Box]) -> torch.Tensor:
        labels = torch.from_numpy(window_contexts(contexts, boxes)).to(x.device)
        with_layout = _WithLayout(unet, crop_maps(maps, boxes).to(x.device))
        return guided_prediction(with_layout, x, t, labels, torch.full_like(labels, NULL_CONTEXT), guidance_scale)

    x, generator = _noise(JOINT_CHANNELS, layout.size, seed)
    started = time.perf_counter()
    x = tiled_denoise(predict, pipeline.scheduler, x * pipeline.scheduler.init_noise_sigma, method, tile, steps,
                      stride, generator, seed)
    out = decode_joint(x, layout)
    return Canvas(out.images[0], out.types[0], out.instances[0], method, steps, time.perf_counter() - started,
                  _cost(method, layout.size, tile, steps, stride, guidance_scale, seed), out.samples[0])


def mask_conditions(types: np.ndarray, instances: np.ndarray, contexts: np.ndarray,
                    boxes: Sequence[Box]) -> np.ndarray:
    """Notebook 06's condition vector for each window: the nucleus types a field's mask (``types``, ``instances``
    [S, S]) holds there and the majority tissue context (``contexts`` [S, S])."""
    crops = [(types[y0:y1, x0:x1], instances[y0:y1, x0:x1]) for y0, x0, y1, x1 in boxes]
    sizes = {crop[0].shape for crop in crops}
    multi_hot = (np.concatenate([present_types(t[None], i[None]) for t, i in crops]) if len(sizes) > 1
                 else present_types(np.stack([c[0] for c in crops]), np.stack([c[1] for c in crops])))
    return condition_vectors(multi_hot.astype(int), window_contexts(contexts, boxes))


def generate_canvas_masks(pipeline, field_types: np.ndarray, field_instances: np.ndarray, contexts: np.ndarray,
                          method: str, tile: int, steps: int, guidance_scale: float, stride: int | None = None,
                          seed: int = 0, min_nucleus_px: int = 0) -> Canvas:
    """A canvas of nuclei masks from notebook 06's generator by ``method``: each window asks for the types the slide's
    field holds under it, in its tissue context, and the canvas is decoded once, as a whole. A window over a field
    without nuclei asks for none: a request the generator never trained on (its pipeline answers it with an exact
    empty tile, which a window shared with its neighbours cannot be), so such windows show what the model guesses.
    ``min_nucleus_px``: the speck filter notebook 06 chose (``mask_generator.decode_masks``; 0 for none)."""
    size = _check_square(field_types, tile)
    unet = pipeline.unet
    field_types, field_instances = np.asarray(field_types), np.asarray(field_instances)

    def predict(x: torch.Tensor, t: torch.Tensor, boxes: Sequence[Box]) -> torch.Tensor:
        condition = torch.from_numpy(mask_conditions(field_types, field_instances, contexts, boxes)).to(x.device)
        null = torch.from_numpy(null_condition(condition.shape[1], len(boxes))).to(x.device)
        return guided_prediction(unet, x, t, condition, null, guidance_scale)

    x, generator = _noise(MASK_CHANNELS, size, seed)
    started = time.perf_counter()
    x = tiled_denoise(predict, pipeline.scheduler, x * pipeline.scheduler.init_noise_sigma, method, tile, steps,
                      stride, generator, seed)
    decoded = decode_masks(x.float().clamp(-1, 1), min_nucleus_px=min_nucleus_px)
    return Canvas(None, decoded.types[0], decoded.instances[0], method, steps, time.perf_counter() - started,
                  _cost(method, size, tile, steps, stride, guidance_scale, seed))


def random_crops(images: Sequence[np.ndarray], size: int, n: int, seed: int = 0) -> np.ndarray:
    """``n`` seeded ``size`` px crops [n, size, size, 3] drawn evenly from uint8 canvases [H, W, 3] (for FID/KID of
    canvases beside tiles)."""
    rng = np.random.default_rng(seed)
    images = list(images)
    if not images or any(min(im.shape[:2]) < size for im in images):
        raise ValueError(f"need canvases of at least {size} px to crop; got {[im.shape[:2] for im in images]}")
    picks = [images[k % len(images)] for k in range(n)]
    out = []
    for image in picks:
        y, x = (int(rng.integers(0, dim - size + 1)) for dim in image.shape[:2])
        out.append(image[y:y + size, x:x + size])
    return np.stack(out) if out else np.zeros((0, size, size, 3), np.uint8)


def context_names(contexts: np.ndarray) -> dict[str, float]:
    """Share of each tissue context in a per-pixel context map (for a field's description)."""
    counts = np.bincount(np.asarray(contexts).ravel(), minlength=len(TISSUE_CONTEXTS))
    return {name: float(c / counts.sum()) for name, c in zip(TISSUE_CONTEXTS, counts) if c}


def method_steps(method: str, size: int, tile: int, steps: int, stride: int | None, equal_cost: bool,
                 seed: int = 0) -> int:
    """Steps ``method`` takes on a ``size`` px canvas: ``steps``, or with ``equal_cost`` as many as spend the network
    pixels independent tiles spend in ``steps``."""
    from ..diffusion.tiled_sampling import steps_at_equal_cost

    return steps_at_equal_cost(method, size, size, tile, steps, stride) if equal_cost else steps


def canvas_seams(images: dict[str, Sequence[np.ndarray]], tile: int) -> pd.DataFrame:
    """Per set of uint8 images (canvases, or real crops): the mean tile-border seam ratio over its images
    (:func:`~histolab_utils.evaluation.seams.tile_seam_score` at the ``tile`` px grid), its spread and n."""
    from ..evaluation.seams import tile_seam_score

    rows = {}
    for name, group in images.items():
        ratios = np.array([tile_seam_score(image, tile)["ratio"] for image in group])
        rows[name] = {"seam ratio": float(ratios.mean()), "std": float(ratios.std()), "n": len(ratios)}
    return pd.DataFrame(rows).T


def crop_scores(sets: dict[str, np.ndarray], heldout: np.ndarray) -> pd.DataFrame:
    """FID and KID of each set of uint8 crops [n, S, S, 3] against the held-out crops (equal n is the caller's:
    every set should hold as many crops as ``heldout``)."""
    from ..evaluation.metrics import fid, inception_features, kid

    reference = inception_features(heldout)
    rows = {}
    for name, crops in sets.items():
        features = inception_features(crops)
        rows[name] = {"fid": fid(reference, features), "kid": kid(reference, features)[0], "n": len(crops)}
    return pd.DataFrame(rows).T


def large_region_goals(seams: pd.DataFrame, best: str, real: str, fid_canvas: float, fid_tiles: float,
                       seconds_512: float, adherence_canvas: float, adherence_tiles: float) -> pd.DataFrame:
    """Notebook 10's goals, reported met or not: the ``best`` method's seam ratio within 10 % of the ``real`` images'
    while independent tiles' is further off than 10 %; canvas-crop FID within 10 % of tile-level FID; a 512 px canvas
    in at most 10 min; layout adherence (F1) over the canvas at least 0.9 x the tile-level figure."""
    off = {name: abs(float(seams.loc[name, "seam ratio"]) / float(seams.loc[real, "seam ratio"]) - 1)
           for name in (best, "tiles")}
    rows = [(f"seam ratio of {best} within 10 % of the real images'", "<= 0.10", off[best], off[best] <= 0.10),
            ("independent tiles' seam ratio off the real images' by more than 10 %", "> 0.10", off["tiles"],
             off["tiles"] > 0.10),
            ("canvas-crop FID over tile-level FID (tile size)", "<= 1.10", fid_canvas / fid_tiles,
             fid_canvas / fid_tiles <= 1.10),
            ("seconds for a 512 px canvas (scaled by pixels)", "<= 600", seconds_512, seconds_512 <= 600),
            ("layout adherence F1 over the canvas / tile-level", ">= 0.90", adherence_canvas / adherence_tiles,
             adherence_canvas / adherence_tiles >= 0.90)]
    return pd.DataFrame(rows, columns=["goal", "target", "measured", "met"]).astype({"met": bool})


__all__ = ["Canvas", "NO_CONTEXT", "canvas_seams", "context_names", "crop_scores", "generate_canvas_masks",
           "large_region_goals", "mask_conditions", "method_steps", "paint_joint", "paint_spade", "random_crops",
           "window_contexts"]
