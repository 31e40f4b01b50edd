"""Joint image-label synthesis from a nucleus layout and a tissue context (Min, Oh & Jeong 2024, "CoSyn").

The two-stage route (notebooks 06 and 07) makes a mask, then an image. Here one diffusion model
makes both at once: its sample is ``3 + K + 1`` channels, all in [-1, 1],

* RGB, the H&E image;
* K one-hot nucleus-type channels (background: every type channel at -1);
* a distance map: each nucleus pixel's distance to its nucleus's boundary, normalised per instance
  to peak at 1 (0 on background), scaled to [-1, 1].

Departures from CoSyn's code, and why
-------------------------------------
* **Gaussian diffusion on the one-hot type channels**, not multinomial diffusion: one noise
  process and one loss for every channel, and any diffusers scheduler samples it; the type of a
  pixel is the argmax of its channels. Notebook 08 measures what it gives (label consistency and
  layout adherence).
* **Layout** as K per-type point maps (:mod:`~histolab_utils.data.layouts`, Gaussian blobs of
  sigma ``layout_sigma``) **concatenated to the noisy input**, rather than one class-id map embedded
  after the first convolution: the same information, with no order imposed on the types.
* **Context** (the tissue around the tile: tumour, stroma, ...) through the UNet's class
  embedding, standing in for CoSyn's PLIP text prompt: no text encoder can be shipped offline, and
  every training script CoSyn publishes turns the text off. Classifier-free guidance drops the
  context (to a "no context" class) with CoSyn's rate 0.1; the layout is never dropped.
* **Instances**: CoSyn's code stops at the outputs. Here a watershed on the generated distance
  map, seeded at the layout's centroids and confined to the generated nuclear foreground
  (``skimage.segmentation.watershed``), gives the instance map; each instance takes the majority
  type of its pixels. Nuclear foreground that no centroid reaches becomes instances of its own:
  generated nuclei the layout did not ask for ("spurious"), counted by the adherence scores.

An empty layout is a valid request (a tile without nuclei): the model paints tissue with no
nucleus asked for, and any nucleus its label channels still show is decoded as spurious.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..data.layouts import LAYOUT_SIGMA, Layouts, layout_maps, layouts_from_masks
from ..data.nuclei import NUCLEUS_CLASSES, TISSUE_CONTEXTS, context_index, renumber_instances
from ..data.pairs import ImageMaskPairs
from ..diffusion.sampling import guided_denoise, to_uint8
from ..diffusion.training import TrainConfig
from ..engine.trainer import save_pretrained_atomic

try:
    from diffusers import DiffusionPipeline
    from diffusers.utils import BaseOutput
except ImportError:  # pragma: no cover - diffusers is a dependency
    DiffusionPipeline, BaseOutput = object, object

K = len(NUCLEUS_CLASSES)
JOINT_CHANNELS = 3 + K + 1  # RGB, K type channels, distance map
NULL_CONTEXT = len(TISSUE_CONTEXTS)  # the class index of "no context" (classifier-free guidance)
MIN_FRAGMENT_PX = 2  # foreground pieces smaller than this are dropped from the instance map


# -- representation ----------------------------------------------------------------------------
def distance_maps(instances: np.ndarray) -> np.ndarray:
    """float32 [N, S, S]: each nucleus pixel's Euclidean distance to the nearest pixel outside its
    nucleus (the tile's edge counts as outside), divided by its nucleus's largest; 0 on background."""
    from scipy.ndimage import distance_transform_edt, find_objects

    instances = np.asarray(instances)
    if instances.ndim != 3:
        raise ValueError(f"need instance maps [N, H, W]; got shape {instances.shape}")
    out = np.zeros(instances.shape, dtype=np.float32)
    for n, inst in enumerate(instances):
        for label, box in enumerate(find_objects(inst.astype(np.int64)), start=1):
            if box is None:
                continue
            ys, xs = box
            window = np.pad(inst[ys, xs] == label, 1)  # pixels beyond the box (and the tile) are outside
            distance = distance_transform_edt(window)[1:-1, 1:-1]
            out[n, ys, xs] = np.where(window[1:-1, 1:-1], distance / distance.max(), out[n, ys, xs])
    return out


def encode_joint(images: np.ndarray, types: np.ndarray, instances: np.ndarray, dtype=np.float16) -> np.ndarray:
    """uint8 images [N, S, S, 3] with their type and instance maps -> [N, 3 + K + 1, S, S] in [-1, 1]."""
    images, types = np.asarray(images), np.asarray(types)
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"images must be uint8 [N, H, W, 3]; got {images.shape} {images.dtype}")
    if types.shape != images.shape[:3] or np.shape(instances) != types.shape:
        raise ValueError(f"each image needs type and instance maps of its size: images {images.shape[:3]}, "
                         f"types {types.shape}, instances {np.shape(instances)}")
    if types.size and types.max() > K:
        raise ValueError(f"type ids must lie in 0..{K} (0 = background); got up to {types.max()}")
    rgb = images.transpose(0, 3, 1, 2).astype(np.float32) / 127.5 - 1
    one_hot = (types[:, None] == np.arange(1, K + 1)[None, :, None, None]).astype(np.float32) * 2 - 1
    distance = distance_maps(instances)[:, None] * 2 - 1
    return np.concatenate([rgb, one_hot, distance], axis=1).astype(dtype)


@dataclasses.dataclass
class JointOutput(BaseOutput):
    """``images`` uint8 [N, S, S, 3]; ``types`` uint8 and ``instances`` int32 [N, S, S] (instance
    j + 1 grew from layout point j; ids above the tile's layout size are spurious nuclei);
    ``distance`` float [N, S, S] in [0, 1]; ``samples`` the raw [N, 3 + K + 1, S, S] output."""

    images: np.ndarray
    types: np.ndarray
    instances: np.ndarray
    distance: np.ndarray
    samples: np.ndarray


def seeded_watershed(foreground: np.ndarray, distance: np.ndarray, points: np.ndarray,
                     min_fragment_px: int = MIN_FRAGMENT_PX) -> np.ndarray:
    """One tile's instance map [S, S] (int32): a watershed on ``-distance`` inside ``foreground``,
    seeded at the layout ``points`` [M, 3] that lie on foreground (point j grows instance j + 1).
    Foreground no seed reaches becomes instances M + 1, M + 2, ... (4-connected pieces of at least
    ``min_fragment_px`` pixels; smaller pieces are left out)."""
    markers = np.zeros(foreground.shape, dtype=np.int32)
    for j, (y, x, _) in enumerate(np.asarray(points).reshape(-1, 3)):
        if foreground[y, x]:
            markers[y, x] = j + 1
    return _flood(foreground, distance, markers, len(points) + 1, min_fragment_px)


def _flood(foreground: np.ndarray, distance: np.ndarray, markers: np.ndarray, next_id: int,
           min_fragment_px: int) -> np.ndarray:
    """A watershed on ``-distance`` inside ``foreground`` from ``markers``; the foreground no marker reaches becomes
    instances ``next_id``, ``next_id + 1``, ... (4-connected pieces of at least ``min_fragment_px`` pixels)."""
    from skimage.measure import label
    from skimage.segmentation import watershed

    instances = watershed(-distance, markers, mask=foreground).astype(np.int32) if markers.any() \
        else np.zeros(foreground.shape, np.int32)
    pieces = label(foreground & (instances == 0), connectivity=1)
    sizes = np.bincount(pieces.ravel())
    kept = [p for p in range(1, len(sizes)) if sizes[p] >= min_fragment_px]
    for offset, piece in enumerate(kept, start=next_id):
        instances[pieces == piece] = offset
    return instances


def peak_watershed(foreground: np.ndarray, distance: np.ndarray, min_peak: float = 0.5, dynamic: float = 0.2,
                   min_fragment_px: int = MIN_FRAGMENT_PX) -> np.ndarray:
    """One tile's instance map [S, S] (int32) **without a layout**: a watershed on ``-distance`` inside
    ``foreground``, seeded at the distance map's regional maxima that rise at least ``dynamic`` above their
    surroundings (``skimage.morphology.h_maxima``) and reach ``min_peak`` (each nucleus peaks at 1 in its middle,
    and touching nuclei meet in a valley near 0; a ridge along an elongated nucleus is one seed, not several);
    foreground no seed reaches forms 4-connected instances of its own (pieces of at least ``min_fragment_px``
    pixels). Every route of notebook 08's head-to-head is decoded by it, so no route's decoder knows where the
    layout asked for nuclei."""
    from skimage.measure import label
    from skimage.morphology import h_maxima

    distance = np.where(foreground, distance, 0.0).astype(np.float64)
    peaks = foreground & (distance >= min_peak) & h_maxima(distance, dynamic).astype(bool)
    markers = label(peaks, connectivity=2).astype(np.int32)
    return renumber_instances(_flood(foreground, distance, markers, int(markers.max()) + 1, min_fragment_px))


def label_without_layout(pixel_types: np.ndarray, distance: np.ndarray,
                         min_fragment_px: int = MIN_FRAGMENT_PX) -> tuple[np.ndarray, np.ndarray]:
    """(types, instances) [N, S, S] of labels given as a per-pixel type map (0 = background) and a distance map in
    [0, 1]: instances by :func:`peak_watershed`, each taking its majority type."""
    pixel_types, distance = np.asarray(pixel_types), np.asarray(distance, dtype=np.float32)
    instances = np.stack([peak_watershed(t > 0, d, min_fragment_px=min_fragment_px)
                          for t, d in zip(pixel_types, distance)]) if len(pixel_types) else np.zeros(pixel_types.shape, np.int32)
    types = np.stack([majority_types(t, i) for t, i in zip(pixel_types, instances)]) if len(pixel_types) \
        else np.zeros(pixel_types.shape, np.uint8)
    return types.astype(np.uint8), instances.astype(np.int32)


def joint_label_without_layout(samples: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A joint sample's label [N, 3 + K + 1, S, S] decoded without its layout: per-pixel types (argmax where a type
    channel is above 0) and the distance channel through :func:`label_without_layout`."""
    x = np.clip(np.asarray(samples, dtype=np.float32), -1, 1)
    return label_without_layout(_pixel_types(x), (x[:, 3 + K] + 1) / 2)


def _pixel_types(x: np.ndarray) -> np.ndarray:
    """uint8 [N, S, S]: each pixel's type in samples [N, 3 + K + 1, S, S], the argmax of the type channels where
    one is above 0 (nuclear foreground), else 0 (background)."""
    type_channels = x[:, 3:3 + K]
    return np.where(type_channels.max(axis=1) > 0, type_channels.argmax(axis=1) + 1, 0).astype(np.uint8)


def mask_label_without_layout(types: np.ndarray, instances: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A two-stage route's mask decoded like a joint sample's label: its type map and its distance map
    (:func:`distance_maps`) through :func:`label_without_layout`, so both routes meet one decoder."""
    return label_without_layout(np.asarray(types), distance_maps(instances))


def majority_types(types: np.ndarray, instances: np.ndarray) -> np.ndarray:
    """A type map [S, S] in which every instance takes the most frequent type among its pixels
    (pixels outside every instance are background)."""
    flat = instances.ravel().astype(np.int64)
    votes = np.zeros((int(flat.max(initial=0)) + 1, K + 1), dtype=np.int64)
    np.add.at(votes, (flat, types.ravel().astype(np.int64)), 1)
    winner = votes[:, 1:].argmax(axis=1).astype(np.uint8) + 1
    winner[0] = 0
    return winner[instances]


def type_purity(samples: np.ndarray, instances: np.ndarray) -> float:
    """Mean over generated nuclei of the fraction of their pixels whose type argmax agrees with the
    nucleus's majority type: 1 when every nucleus is one type, lower where the Gaussian-diffused
    one-hot channels disagree within a nucleus."""
    pixel_types = np.asarray(samples)[:, 3:3 + K].argmax(axis=1)
    fractions = []
    for kinds, inst in zip(pixel_types, np.asarray(instances)):
        for label in np.unique(inst[inst > 0]):
            votes = np.bincount(kinds[inst == label], minlength=K)
            fractions.append(votes.max() / votes.sum())
    return float(np.mean(fractions)) if fractions else float("nan")


def decode_joint(samples: np.ndarray | torch.Tensor, layouts: Layouts,
                 min_fragment_px: int = MIN_FRAGMENT_PX) -> JointOutput:
    """Model-space samples [N, 3 + K + 1, S, S] -> images, instance and type maps (see the module docstring)."""
    x = samples.detach().float().cpu().numpy() if torch.is_tensor(samples) else np.asarray(samples, dtype=np.float32)
    if x.ndim != 4 or x.shape[1] != JOINT_CHANNELS:
        raise ValueError(f"need joint samples [N, {JOINT_CHANNELS}, S, S]; got shape {x.shape}")
    if len(layouts) != len(x) or layouts.size != x.shape[-1]:
        raise ValueError(f"need one {x.shape[-1]} px layout per sample: {len(layouts)} layouts of {layouts.size} px "
                         f"for {len(x)} samples")
    x = np.clip(x, -1, 1)
    images = to_uint8(torch.from_numpy(x[:, :3]))
    pixel_types = _pixel_types(x)
    foreground = pixel_types > 0
    distance = (x[:, 3 + K] + 1) / 2
    instances = np.zeros(foreground.shape, np.int32)
    types = np.zeros(foreground.shape, np.uint8)
    for i, points in enumerate(layouts.points):
        instances[i] = seeded_watershed(foreground[i], distance[i], points, min_fragment_px)
        types[i] = majority_types(pixel_types[i], instances[i])
    return JointOutput(images=images, types=types, instances=instances, distance=distance, samples=x)


# -- the pipeline ------------------------------------------------------------------------------
class _WithLayout:
    """``unet(cat(x, layout), t, class_labels=...)`` for the sampler: the layout maps go with every
    row (repeated when classifier-free guidance doubles the batch)."""

    def __init__(self, unet, layout: torch.Tensor) -> None:
        self.unet, self.layout = unet, layout

    def __call__(self, x, t, **kwargs):
        layout = self.layout.repeat(len(x) // len(self.layout), 1, 1, 1).to(x.dtype)
        return self.unet(torch.cat([x, layout], dim=1), t, **kwargs)


def context_labels(contexts: Sequence[str | int], n: int) -> np.ndarray:
    """Context indices [n] from names or indices (one per layout), with a clear error otherwise."""
    contexts = list(contexts)
    if len(contexts) != n:
        raise ValueError(f"need one tissue context per layout: {len(contexts)} contexts for {n} layouts")
    return np.array([context_index(c) for c in contexts], dtype=np.int64)


class JointSynthesisPipeline(DiffusionPipeline):
    """A UNet2DModel (layout maps concatenated to its input, context as its class) + a scheduler:
    an H&E image with its nuclei labels for each layout; ``save_pretrained`` / ``from_pretrained``
    like any diffusers pipeline.

    >>> pipeline = JointSynthesisPipeline.from_pretrained("runs/full/joint/pipeline")
    >>> out = pipeline(layouts, ["tumor"] * len(layouts), guidance_scale=2.0, num_inference_steps=50)
    >>> out.images, out.types, out.instances
    """

    def __init__(self, unet, scheduler, layout_sigma: float = LAYOUT_SIGMA) -> None:
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler)
        self.register_to_config(layout_sigma=layout_sigma)

    @torch.no_grad()
    def __call__(self, layouts: Layouts, contexts: Sequence[str | int], guidance_scale: float = 2.0,
                 num_inference_steps: int = 50, generator: torch.Generator | None = None,
                 min_fragment_px: int = MIN_FRAGMENT_PX) -> JointOutput:
        unet = self.unet
        if not isinstance(layouts, Layouts):
            raise TypeError(f"layouts must be a histolab_utils.data.layouts.Layouts, not {type(layouts).__name__}")
        factor = 2 ** (len(unet.config.block_out_channels) - 1)  # convolutional: any size its levels divide
        if layouts.size % factor:
            raise ValueError(f"this model makes tiles of a multiple of {factor} px (trained at "
                             f"{unet.config.sample_size}); the layouts are {layouts.size} px")
        labels = torch.from_numpy(context_labels(contexts, len(layouts))).to(unet.device)
        maps = torch.from_numpy(layout_maps(layouts, self.config.layout_sigma)).to(unet.device)
        shape = (len(layouts), JOINT_CHANNELS, layouts.size, layouts.size)
        x = torch.randn(shape, generator=generator).to(unet.device) * self.scheduler.init_noise_sigma
        if len(layouts):
            x = guided_denoise(_WithLayout(unet, maps), self.scheduler, x, labels, torch.full_like(labels, NULL_CONTEXT),
                               guidance_scale, num_inference_steps, generator, progress=self.progress_bar)
        return decode_joint(x, layouts, min_fragment_px)


def save_joint_pipeline(unet, scheduler, folder: str | Path, layout_sigma: float = LAYOUT_SIGMA,
                        train_config: dict | None = None, trained_contexts: Sequence[str] = ()) -> Path:
    """Save a :class:`JointSynthesisPipeline` atomically, with its vocabulary beside it."""
    pipeline = JointSynthesisPipeline(unet=unet, scheduler=scheduler, layout_sigma=layout_sigma)
    extra = {"vocabulary.json": {"nucleus_classes": list(NUCLEUS_CLASSES), "tissue_contexts": list(TISSUE_CONTEXTS),
                                 "trained_contexts": list(trained_contexts),
                                 "channels": ["R", "G", "B", *NUCLEUS_CLASSES, "distance"]}}
    if train_config is not None:
        extra["histolab_train_config.json"] = train_config
    return save_pretrained_atomic(pipeline, folder, extra)


def trained_contexts(folder: str | Path) -> list[str]:
    """The tissue contexts a saved joint model saw in training (the others are untrained embeddings)."""
    return json.loads((Path(folder) / "vocabulary.json").read_text())["trained_contexts"]


# -- training ----------------------------------------------------------------------------------
def joint_training_set(pairs: ImageMaskPairs, sigma: float = LAYOUT_SIGMA) -> np.ndarray:
    """float16 [N, 3 + K + 1 + K, S, S]: each pair's joint sample, then its layout maps (the
    trainer flips and rotates them together and splits the layout off as the condition)."""
    layouts = layouts_from_masks(pairs.types, pairs.instances)
    return np.concatenate([encode_joint(pairs.images, pairs.types, pairs.instances),
                           layout_maps(layouts, sigma).astype(np.float16)], axis=1)


def train_joint_model(config: TrainConfig, pairs: ImageMaskPairs, out_dir: str | Path,
                      layout_sigma: float = LAYOUT_SIGMA, progress: bool = True, resume: bool = False):
    """Train on train-region pairs and save the EMA model as a :class:`JointSynthesisPipeline` in
    ``out_dir/pipeline``; returns the trainer."""
    from diffusers import DDPMScheduler

    from ..diffusion.training import DiffusionTrainer

    if pairs.region != "train":
        raise ValueError(f"the joint model trains on train-region pairs only; got {pairs.region!r} pairs")
    trainer = DiffusionTrainer(config, joint_training_set(pairs, layout_sigma), out_dir, progress=progress,
                               labels=pairs.contexts)
    trainer.train(resume=resume)
    if trainer.accelerator.is_main_process:
        scheduler = DDPMScheduler.from_config(trainer.noise_scheduler.config, clip_sample=True)  # bounded channels
        seen = [TISSUE_CONTEXTS[c] for c in sorted(set(pairs.contexts.tolist()))]
        save_joint_pipeline(trainer.ema_unet(), scheduler, Path(out_dir) / "pipeline", layout_sigma,
                            train_config=dataclasses.asdict(config), trained_contexts=seen)
    return trainer


def synthesise_joint(pipeline: JointSynthesisPipeline, layouts: Layouts, contexts: Sequence[str | int],
                     guidance_scale: float, steps: int, seed: int = 0, batch_size: int = 64) -> JointOutput:
    """Joint samples for many layouts, in batches, from one seeded generator."""
    generator = torch.Generator().manual_seed(seed)
    contexts = list(contexts)
    if len(contexts) != len(layouts):
        raise ValueError(f"need one tissue context per layout: {len(contexts)} contexts for {len(layouts)} layouts")
    parts = [pipeline(layouts.subset(slice(i, i + batch_size)), contexts[i:i + batch_size], guidance_scale, steps,
                      generator) for i in range(0, len(layouts), batch_size)]
    if not parts:
        return pipeline(layouts, contexts, guidance_scale, steps, generator)
    return JointOutput(*(np.concatenate([getattr(p, f.name) for p in parts]) for f in dataclasses.fields(JointOutput)))


# -- the two-stage route's first stage, for the head-to-head ------------------------------------
def layout_disks(layouts: Layouts, radius: float) -> tuple[np.ndarray, np.ndarray]:
    """Type and instance maps [N, S, S] with a disk of ``radius`` px around every centroid, grown
    from the centroids together so that touching disks split halfway (a Voronoi-clipped disk;
    ``skimage.segmentation.expand_labels``): the simplest layout-to-mask stage."""
    from skimage.segmentation import expand_labels

    size = layouts.size
    types = np.zeros((len(layouts), size, size), np.uint8)
    instances = np.zeros((len(layouts), size, size), np.int32)
    for i, points in enumerate(layouts.points):
        seeds = np.zeros((size, size), np.int32)
        seeds[points[:, 0], points[:, 1]] = np.arange(1, len(points) + 1)
        grown = expand_labels(seeds, distance=radius)
        instances[i] = renumber_instances(grown)
        types[i] = np.concatenate([[0], points[:, 2]])[grown].astype(np.uint8)
    return types, instances


def median_radius(types: np.ndarray, instances: np.ndarray) -> float:
    """The median nucleus's equivalent radius sqrt(area / pi) in px over masks [N, S, S]."""
    areas = np.concatenate([np.bincount(inst.ravel().astype(np.int64))[1:] for inst in np.asarray(instances)])
    areas = areas[areas > 0]
    if not len(areas):
        raise ValueError("no nuclei in these masks to measure")
    return float(np.sqrt(np.median(areas) / np.pi))


@dataclasses.dataclass
class RouteRun:
    """One route of the head-to-head: its images, its label decoded without the layout, the layouts it was asked
    for and (joint routes) the type purity of its nuclei."""

    images: np.ndarray
    types: np.ndarray
    instances: np.ndarray
    layouts: Layouts
    purity: float = float("nan")


def head_to_head(joint: JointSynthesisPipeline, joint_requests: dict[str, tuple[Layouts, np.ndarray, float]],
                 spade, first_stages: dict[str, tuple[np.ndarray, np.ndarray]], layouts: Layouts,
                 spade_guidance_scale: float, steps: int, spade_steps: int, seed: int = 100) -> dict[str, RouteRun]:
    """Notebook 08's head-to-head, every label decoded without its layout (so "located" and "spurious" count alike):

    * ``joint_requests``: name -> (layouts, contexts, guidance scale) for the joint model;
    * ``first_stages``: name -> (types, instances), masks for ``layouts`` that notebook 07's ``spade`` pipeline
      paints at ``spade_guidance_scale`` (the two-stage route; the mask is that image's label).
    """
    from .mask_to_image import synthesise

    runs = {}
    for k, (name, (requested, contexts, guidance_scale)) in enumerate(joint_requests.items()):
        out = synthesise_joint(joint, requested, contexts, guidance_scale, steps, seed=seed + k)
        types, instances = joint_label_without_layout(out.samples)
        runs[f"joint, {name}"] = RouteRun(out.images, types, instances, requested, type_purity(out.samples, instances))
    for name, (types, instances) in first_stages.items():
        images = synthesise(spade, types, instances, spade_guidance_scale, spade_steps, seed=seed + len(joint_requests))
        runs[f"two-stage, {name}"] = RouteRun(images, *mask_label_without_layout(types, instances), layouts)
    return runs
