"""NASDM stage 1: a diffusion model that generates nuclei masks for a requested set of nucleus
types (Shrivastava & Fletcher 2023; Sec. 3.1 of its extended version) and, beyond NASDM, a tissue context.

Representation
--------------
A mask tile becomes K + 2 channels in {-1, 1}: one-hot channels for background and each of the
K nucleus types (``NUCLEUS_CLASSES``), then one boundary channel, the 4-neighbour
:func:`~histolab_utils.data.nuclei.edge_map` of the instance map. The issue's "K type channels
plus a boundary channel" leaves background implicit; an explicit background channel makes the
type map a plain argmax (no threshold to tune) at the cost of one channel.

Decoding: argmax over the first K + 1 channels gives the type map. Foreground pixels off the
boundary, split into 4-connected components, seed the instances; the seeds grow back over the
boundary pixels of the foreground (``skimage.segmentation.expand_labels``, ``GROW_PX``); foreground
left unclaimed joins the one instance of its type it touches (the far side of a thin, border-cut
nucleus) or forms an instance of its own. Instances under ``MIN_FRAGMENT_PX`` pixels are dropped
from the instance map (their pixels keep their type in the type map, which stays the exact argmax).

A generated mask can also hold specks: blobs of a few pixels that no real nucleus at this scale is
(the cpu model's whole instances had a first quartile of 8 px against real nuclei's 32). Decoding
with ``min_nucleus_px`` removes instances smaller than that from both maps, so that what a later
notebook paints or counts is what was kept (one-pixel fragments, dropped from the instance map
before, keep their type pixels). It is 0 (off) unless chosen: notebook 06 chooses it on
the validation strip (:func:`choose_min_nucleus_px`), and the round trip of real masks never uses it.

Condition
---------
``[multi-hot types (K) | one-hot tissue context (C) | null flag]``, mapped linearly and added to
the time embedding (:class:`~histolab_utils.diffusion.conditioning.VectorConditionedUNet2DModel`).
Training drops the whole vector to the null condition with probability 0.2 (NASDM's rate), and
sampling mixes conditional and unconditional predictions with a guidance scale. An all-zero
multi-hot vector asks for a tile without nuclei: a real condition, distinct from the null one. The
model trains on tiles with nuclei only, so the pipeline answers it with an empty mask (all
background, no instances) rather than with a guess outside its training data.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from ..data.nuclei import (NUCLEUS_CLASSES, TISSUE_CONTEXTS, MaskTiles, as_multi_hot, context_index, edge_map,
                           renumber_instances)
from ..diffusion.conditioning import null_condition
from ..diffusion.sampling import guided_denoise
from ..diffusion.training import TrainConfig
from ..engine.trainer import save_pretrained_atomic

try:
    from diffusers import DiffusionPipeline
    from diffusers.utils import BaseOutput
except ImportError:  # pragma: no cover - diffusers is a dependency
    DiffusionPipeline, BaseOutput = object, object

K = len(NUCLEUS_CLASSES)
MASK_CHANNELS = K + 2  # background, K types, boundary
CONDITION_FEATURES = K + len(TISSUE_CONTEXTS) + 1
MIN_FRAGMENT_PX = 2  # decoded instances below this many pixels (single pixels) are dropped
GROW_PX = 1.5  # how far (px) instance seeds grow back over boundary pixels: the 1-px ring, corners included
CONDITION_DROPOUT = 0.2  # NASDM's rate of training without the condition


# -- representation ----------------------------------------------------------------------------
def encode_masks(types: np.ndarray, instances: np.ndarray, dtype=np.float16) -> np.ndarray:
    """Type [N, H, W] and instance [N, H, W] maps -> [N, K + 2, H, W] in {-1, 1} (exact in float16)."""
    types, instances = np.asarray(types), np.asarray(instances)
    if types.shape != instances.shape or types.ndim != 3:
        raise ValueError(f"need type and instance maps of one shape [N, H, W]; got {types.shape} and {instances.shape}")
    if types.size and (types.min() < 0 or types.max() > K):
        raise ValueError(f"type ids must lie in 0..{K} (0 = background); got {types.min()}..{types.max()}")
    one_hot = types[:, None] == np.arange(K + 1)[None, :, None, None]
    channels = np.concatenate([one_hot, edge_map(instances)[:, None]], axis=1)
    return (channels.astype(dtype) * 2 - 1).astype(dtype)


@dataclasses.dataclass
class DecodedMasks:
    """Decoded masks: ``types`` uint8 [N, H, W] (the argmax) and ``instances`` int32 [N, H, W]."""

    types: np.ndarray
    instances: np.ndarray

    @property
    def multi_hot(self) -> np.ndarray:
        """bool [N, K]: the types present, by the rule real tiles' conditions use (``present_types``)."""
        from ..data.nuclei import present_types

        return present_types(self.types, self.instances)

    def __len__(self) -> int:
        return len(self.types)


def decode_masks(x: np.ndarray | torch.Tensor, min_fragment_px: int = MIN_FRAGMENT_PX,
                 grow_px: float = GROW_PX, min_nucleus_px: int = 0) -> DecodedMasks:
    """[N, K + 2, H, W] model-space masks -> type and instance maps (see the module docstring); instances under
    ``min_nucleus_px`` pixels (0: none) are then removed from both maps."""
    from skimage.measure import label
    from skimage.segmentation import expand_labels

    x = x.detach().float().cpu().numpy() if torch.is_tensor(x) else np.asarray(x, dtype=np.float32)
    if x.ndim != 4 or x.shape[1] != MASK_CHANNELS:
        raise ValueError(f"need masks [N, {MASK_CHANNELS}, H, W]; got shape {x.shape}")
    types = x[:, :K + 1].argmax(axis=1).astype(np.uint8)
    boundary = x[:, K + 1] > 0
    instances = np.zeros(types.shape, dtype=np.int32)
    for i in range(len(x)):
        foreground = types[i] > 0
        seeds = label(foreground & ~boundary[i], connectivity=1)
        grown = expand_labels(seeds, distance=grow_px) * foreground
        instances[i] = _claim_leftovers(grown, foreground & (grown == 0), types[i], min_fragment_px)
        if min_nucleus_px > 0:
            _remove_specks(types[i], instances[i], min_nucleus_px)
    return DecodedMasks(types=types, instances=instances)


def _remove_specks(types: np.ndarray, instances: np.ndarray, min_nucleus_px: int) -> None:
    """In place: instances under ``min_nucleus_px`` pixels become background in both maps; the rest are
    renumbered 1..n."""
    speck = _pixels_of_small_instances(instances, min_nucleus_px)
    types[speck], instances[speck] = 0, 0
    instances[...] = renumber_instances(instances)


def _claim_leftovers(grown: np.ndarray, leftover: np.ndarray, types: np.ndarray, min_fragment_px: int) -> np.ndarray:
    """Foreground the seeds did not reach: a piece touching exactly one instance of its own type
    joins it (the far side of a thin, border-cut nucleus); any other piece is an instance of its
    own. Then instances under ``min_fragment_px`` pixels are dropped."""
    from skimage.measure import label
    from skimage.morphology import dilation

    pieces = label(leftover, connectivity=1)
    next_id = int(grown.max()) + 1
    for piece in range(1, int(pieces.max()) + 1):
        where = pieces == piece
        ring = dilation(where, np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], bool)) & ~where
        neighbours = np.unique(grown[ring & (types == np.bincount(types[where]).argmax())])
        neighbours = neighbours[neighbours > 0]
        if len(neighbours) == 1:
            grown[where] = neighbours[0]
        else:
            grown[where] = next_id
            next_id += 1
    grown[_pixels_of_small_instances(grown, min_fragment_px)] = 0
    return renumber_instances(grown)


def _pixels_of_small_instances(instances: np.ndarray, min_px: int) -> np.ndarray:
    """bool map of the pixels whose instance (not background) has fewer than ``min_px`` pixels."""
    small = np.bincount(instances.ravel()) < min_px
    small[0] = False
    return small[instances]


# -- conditions --------------------------------------------------------------------------------
def condition_vectors(multi_hot: np.ndarray | Sequence, contexts: Sequence[str | int]) -> np.ndarray:
    """float32 [N, K + C + 1] condition vectors from N multi-hot rows (or lists of type names) and
    N tissue contexts (names or indices); the null flag is 0. Errors name what is wrong."""
    rows = [as_multi_hot(row) for row in multi_hot]
    if len(rows) != len(contexts):
        raise ValueError(f"need one tissue context per multi-hot vector: {len(rows)} vectors, {len(contexts)} contexts")
    out = np.zeros((len(rows), CONDITION_FEATURES), dtype=np.float32)
    for i, (row, context) in enumerate(zip(rows, contexts)):
        out[i, :K] = row
        out[i, K + context_index(context)] = 1.0
    return out


def tile_conditions(tiles: MaskTiles) -> np.ndarray:
    """The condition vector of each real tile: the types it holds and its tissue context."""
    return condition_vectors(tiles.multi_hot, tiles.contexts)


# -- the pipeline ------------------------------------------------------------------------------
@dataclasses.dataclass
class MaskPipelineOutput(BaseOutput):
    """``types`` and ``instances`` (decoded) and ``masks`` (the raw [N, K + 2, H, W] output in [-1, 1])."""

    types: np.ndarray
    instances: np.ndarray
    masks: np.ndarray


class NucleiMaskPipeline(DiffusionPipeline):
    """Vector-conditioned UNet + scheduler that generates nuclei masks; ``save_pretrained`` /
    ``from_pretrained`` like any diffusers pipeline.

    >>> pipeline = NucleiMaskPipeline.from_pretrained("runs/full/masks/pipeline")
    >>> out = pipeline([["neoplastic"], ["inflammatory", "connective"]], ["tumor", "stroma"], guidance_scale=2.0)
    >>> out.types.shape, out.instances.shape   # (2, 128, 128) each
    """

    def __init__(self, unet, scheduler) -> None:
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler)

    @torch.no_grad()
    def __call__(self, types: Sequence, contexts: Sequence[str | int], guidance_scale: float = 1.0,
                 num_inference_steps: int = 50, generator: torch.Generator | None = None,
                 min_fragment_px: int = MIN_FRAGMENT_PX, min_nucleus_px: int = 0) -> MaskPipelineOutput:
        conditions = condition_vectors(types, contexts)
        return self.from_conditions(conditions, guidance_scale, num_inference_steps, generator, min_fragment_px,
                                    min_nucleus_px=min_nucleus_px)

    @torch.no_grad()
    def from_conditions(self, conditions: np.ndarray, guidance_scale: float = 1.0, num_inference_steps: int = 50,
                        generator: torch.Generator | None = None,
                        min_fragment_px: int = MIN_FRAGMENT_PX, size: int | None = None,
                        min_nucleus_px: int = 0) -> MaskPipelineOutput:
        """Masks for ready-made condition vectors [N, K + C + 1], of ``size`` px (default: the
        trained size; the UNet is convolutional, so another size divisible by its downsampling works),
        decoded by :func:`decode_masks` (``min_nucleus_px``: the speck filter notebook 06 chose, 0 for none)."""
        unet = self.unet
        conditions = np.asarray(conditions, dtype=np.float32)
        if conditions.ndim != 2 or conditions.shape[1] != unet.config.condition_features:
            raise ValueError(f"condition vectors must be [N, {unet.config.condition_features}]; got {conditions.shape}")
        size, channels = size or unet.config.sample_size, unet.config.in_channels
        factor = 2 ** (len(unet.config.block_out_channels) - 1)
        if size % factor:
            raise ValueError(f"size must be a multiple of {factor} px for this UNet; got {size}")
        x = torch.randn((len(conditions), channels, size, size), generator=generator).to(unet.device)
        x = x * self.scheduler.init_noise_sigma
        condition = torch.from_numpy(conditions).to(unet.device)
        null = torch.from_numpy(null_condition(conditions.shape[1], len(conditions))).to(unet.device)
        x = guided_denoise(unet, self.scheduler, x, condition, null, guidance_scale, num_inference_steps, generator,
                           progress=self.progress_bar)
        masks = x.float().clamp(-1, 1).cpu().numpy()
        # An all-zero multi-hot vector asks for a tile without nuclei. The model never saw one (it
        # trains on tiles with nuclei), so the exact answer is returned instead of its guess.
        empty = (conditions[:, :K] == 0).all(axis=1) & (conditions[:, -1] == 0)
        masks[empty] = encode_masks(np.zeros((1, size, size), np.uint8), np.zeros((1, size, size), np.int32),
                                    dtype=np.float32)[0]
        decoded = decode_masks(masks, min_fragment_px=min_fragment_px, min_nucleus_px=min_nucleus_px)
        return MaskPipelineOutput(types=decoded.types, instances=decoded.instances, masks=masks)


def save_mask_pipeline(unet, scheduler, folder: str | Path, train_config: dict | None = None) -> Path:
    """Save a :class:`NucleiMaskPipeline` atomically, with the vocabulary beside it."""
    pipeline = NucleiMaskPipeline(unet=unet, scheduler=scheduler)
    extra = {"vocabulary.json": {"nucleus_classes": list(NUCLEUS_CLASSES), "tissue_contexts": list(TISSUE_CONTEXTS),
                                 "condition": "multi-hot types | one-hot context | null flag",
                                 "min_fragment_px": MIN_FRAGMENT_PX}}
    if train_config is not None:
        extra["histolab_train_config.json"] = train_config
    return save_pretrained_atomic(pipeline, folder, extra)


def load_vocabulary(folder: str | Path) -> dict:
    return json.loads((Path(folder) / "vocabulary.json").read_text())


def generate_masks(pipeline: NucleiMaskPipeline, conditions: np.ndarray, guidance_scale: float, steps: int,
                   seed: int = 0, batch_size: int = 64, size: int | None = None,
                   min_nucleus_px: int = 0) -> MaskPipelineOutput:
    """Masks for many condition vectors, in batches, from one seeded generator (``min_nucleus_px``: the speck
    filter of :func:`decode_masks`)."""
    generator = torch.Generator().manual_seed(seed)
    parts = [pipeline.from_conditions(conditions[start:start + batch_size], guidance_scale, steps, generator,
                                      size=size, min_nucleus_px=min_nucleus_px)
             for start in range(0, len(conditions), batch_size)]
    if not parts:
        size = size or pipeline.unet.config.sample_size
        empty = np.zeros((0, size, size))
        return MaskPipelineOutput(empty.astype(np.uint8), empty.astype(np.int32), np.zeros((0, MASK_CHANNELS, size, size)))
    return MaskPipelineOutput(*(np.concatenate([getattr(p, key) for p in parts]) for key in ("types", "instances", "masks")))


def choose_min_nucleus_px(masks: np.ndarray, validation: MaskTiles,
                          candidates: Sequence[int]) -> tuple[int, pd.DataFrame]:
    """The speck filter (``decode_masks``' ``min_nucleus_px``) with the lowest morphology FD against the validation
    tiles, for the model-space ``masks`` [N, K + 2, H, W] generated for ``validation``'s conditions, among the
    candidates whose conditioning F1 is at least the smallest candidate's (a filter may not buy morphology with
    conditioning: removing the only specks of a requested type loses it); the smallest on a tie. Returns it and the
    table it was chosen from (``evaluation.mask_generation.score_mask_sets``, one row per candidate). Decoding is
    cheap, so every candidate decodes the same samples: the choice costs no sampling. Call it on validation tiles
    only."""
    from ..evaluation.mask_generation import score_mask_sets

    if validation.region != "validation":
        raise ValueError(f"validation: tiles of the {validation.region!r} region; the speck filter is chosen on "
                         "'validation' tiles only (held-out tiles give final scores)")
    candidates = sorted({int(c) for c in candidates})
    if not candidates or candidates[0] < 0:
        raise ValueError(f"candidates must be pixel counts >= 0; got {candidates}")
    sets = {}
    for px in candidates:
        decoded = decode_masks(masks, min_nucleus_px=px)
        sets[px] = (decoded.types, decoded.instances, np.asarray(masks)[:, -1] > 0)
    table = score_mask_sets(validation.multi_hot, (validation.types, validation.instances), sets)
    table.index.name = "min_nucleus_px"
    f1 = table["f1"].astype(float)
    fd = table["morphology_fd"].astype(float)[f1 >= f1.iloc[0]]
    return int(fd[fd == fd.min()].index.min()), table


def train_mask_generator(config: TrainConfig, tiles: MaskTiles, out_dir: str | Path, progress: bool = True,
                         resume: bool = False):
    """Train on ``tiles`` (flipped and rotated at random) and save the EMA model as a
    :class:`NucleiMaskPipeline` in ``out_dir/pipeline``; returns the trainer."""
    from ..diffusion.training import DiffusionTrainer

    if tiles.region != "train":
        raise ValueError(f"the mask generator trains on train-region tiles only; got {tiles.region!r} tiles")
    trainer = DiffusionTrainer(config, encode_masks(tiles.types, tiles.instances), out_dir, progress=progress,
                               labels=tile_conditions(tiles))
    trainer.train(resume=resume)
    if trainer.accelerator.is_main_process:
        from diffusers import DDPMScheduler

        # masks are bounded like images: the saved sampler clips its x0 estimates to [-1, 1]
        scheduler = DDPMScheduler.from_config(trainer.noise_scheduler.config, clip_sample=True)
        save_mask_pipeline(trainer.ema_unet(), scheduler, Path(out_dir) / "pipeline",
                           train_config=dataclasses.asdict(config))
    return trainer
