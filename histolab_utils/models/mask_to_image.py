"""NASDM stage 2: paint an H&E image for a nuclei mask with a SPADE diffusion UNet, in pixel space or
in the latent space of notebook 02's VQ-GAN, and inpaint a region with the same model (Tánczos 2025,
Sec. 6.3 and 6.6).

Condition
---------
A mask becomes K + 2 binary channels: background, the K nucleus types (one-hot), and the
instance-edge map that separates touching nuclei (NASDM, Sec. 3.2). It enters every decoder
normalisation of the UNet through SPADE (:class:`~histolab_utils.diffusion.spade.SPADEUNet`). In
latent space the map is resized to the latent grid by nearest neighbour, as SPADE resizes it to
each feature map. Training drops the whole map to zeros with probability 0.2; the explicit
background channel keeps "no nuclei here" (background = 1) distinct from "no condition" (all 0).
Sampling mixes the two predictions with a guidance scale (SDM samples at 1.5).

Samples drawn for real held-out masks are NASDM's setting; for masks from notebook 06's
generator, NASDM++.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch
from torch.nn import functional as F

from ..data.pairs import ImageMaskPairs
from ..diffusion.inpainting import REPAINT, RePaintSettings, check_region, repaint
from ..diffusion.sampling import guided_denoise, guided_prediction, to_uint8
from ..diffusion.spade import SPADEUNet  # noqa: F401  diffusers' loader finds the UNet's class by its module
from ..diffusion.training import TrainConfig
from ..engine.trainer import save_pretrained_atomic
from .mask_generator import MASK_CHANNELS, encode_masks

if TYPE_CHECKING:
    import pandas as pd

try:
    from diffusers import DiffusionPipeline, ImagePipelineOutput
except ImportError:  # pragma: no cover - diffusers is a dependency
    DiffusionPipeline, ImagePipelineOutput = object, None

SEG_CHANNELS = MASK_CHANNELS  # background, K types, edge
CONDITION_DROPOUT = 0.2  # NASDM's and SDM's rate of training without the map


def condition_maps(types: np.ndarray, instances: np.ndarray) -> np.ndarray:
    """Type and instance maps [N, H, W] -> uint8 [N, K + 2, H, W] in {0, 1}: background, types, edges.

    Type ids outside 0..K or maps of two shapes are errors that say so.
    """
    return ((encode_masks(types, instances, dtype=np.float32) + 1) / 2).astype(np.uint8)


def check_pairs(images: np.ndarray, types: np.ndarray) -> None:
    """Images uint8 [N, H, W, 3] and type maps [N, H, W] of one size each, or a clear error."""
    images, types = np.asarray(images), np.asarray(types)
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"images must be uint8 [N, H, W, 3]; got {images.shape} {images.dtype}")
    if types.shape != images.shape[:3]:
        raise ValueError(f"each image needs a mask of its own size: images {images.shape[:3]} vs masks {types.shape}")


def resize_maps(maps: torch.Tensor | np.ndarray, size: int) -> torch.Tensor:
    """Condition maps [N, C, H, W] resized to ``size`` x ``size`` by nearest neighbour."""
    maps = torch.as_tensor(np.asarray(maps) if not torch.is_tensor(maps) else maps)
    if maps.shape[-1] == size and maps.shape[-2] == size:
        return maps
    return F.interpolate(maps.float(), size=(size, size), mode="nearest").to(maps.dtype)


def latent_factor(vqvae) -> int:
    """How many pixels one latent cell spans along a side."""
    return 2 ** (len(vqvae.config.block_out_channels) - 1)


class MaskToImagePipeline(DiffusionPipeline):
    """SPADE UNet + scheduler (+ the VQ-GAN in latent space): H&E images for nuclei masks, and
    inpainting; ``save_pretrained`` / ``from_pretrained`` like any diffusers pipeline.

    >>> pipeline = MaskToImagePipeline.from_pretrained("runs/full/spade-pixel/pipeline")
    >>> images = pipeline(types, instances, guidance_scale=1.5, num_inference_steps=50).images  # uint8 NHWC
    """

    _optional_components = ["vqvae"]  # None in pixel space

    def __init__(self, unet, scheduler, vqvae=None) -> None:
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler, vqvae=vqvae)

    @property
    def space(self) -> str:
        return "pixel" if self.vqvae is None else "latent"

    def _maps(self, types: np.ndarray, instances: np.ndarray) -> torch.Tensor:
        maps = torch.from_numpy(condition_maps(types, instances)).to(self.unet.device, torch.float32)
        factor = 1 if self.vqvae is None else latent_factor(self.vqvae)
        if maps.shape[-1] % factor or maps.shape[-2] % factor:
            raise ValueError(f"masks of {maps.shape[-2]}x{maps.shape[-1]} px do not divide into this VQ-GAN's "
                             f"{factor}x{factor} px latent cells")
        return resize_maps(maps, maps.shape[-1] // factor) if factor > 1 else maps

    def _to_images(self, x: torch.Tensor) -> np.ndarray:
        if self.vqvae is None:
            return to_uint8(x.float())
        return to_uint8(self.vqvae.decode(x / self.vqvae.config.scaling_factor).sample.float())

    @torch.no_grad()
    def __call__(self, types: np.ndarray, instances: np.ndarray, guidance_scale: float = 1.5,
                 num_inference_steps: int = 50, generator: torch.Generator | None = None, output_type: str = "np"):
        maps = self._maps(types, instances)
        unet = self.unet
        shape = (len(maps), unet.config.in_channels, maps.shape[-2], maps.shape[-1])
        x = torch.randn(shape, generator=generator).to(unet.device) * self.scheduler.init_noise_sigma
        x = guided_denoise(unet, self.scheduler, x, maps, torch.zeros_like(maps), guidance_scale, num_inference_steps,
                           generator, progress=self.progress_bar)
        images = self._to_images(x)
        if output_type == "pil":
            from PIL import Image

            images = [Image.fromarray(image) for image in images]
        return ImagePipelineOutput(images=images)

    @torch.no_grad()
    def inpaint(self, images: np.ndarray, types: np.ndarray, instances: np.ndarray, region: np.ndarray,
                settings: RePaintSettings = REPAINT, guidance_scale: float = 1.5,
                generator: torch.Generator | None = None) -> np.ndarray:
        """Repaint ``region`` (bool [H, W] or [N, H, W], True = regenerate) of uint8 ``images``
        [N, H, W, 3] to match the (edited) masks; every pixel outside the region comes back unchanged.

        In latent space the latent cells touching the region are regenerated and decoded, and the
        original pixels are pasted back outside the region.
        """
        check_pairs(images, types)
        region = check_region(region, images.shape[1:3])
        region = np.broadcast_to(region, images.shape[:3])
        device = self.unet.device
        maps = self._maps(types, instances)
        pixels = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).to(device).float() / 127.5 - 1
        unknown = torch.from_numpy(np.ascontiguousarray(region)).to(device)[:, None].float()
        if self.vqvae is None:
            x0 = pixels
        else:
            x0 = self.vqvae.encode(pixels).latents * self.vqvae.config.scaling_factor
            unknown = F.max_pool2d(unknown, latent_factor(self.vqvae))
        null = torch.zeros_like(maps)

        def denoiser(x, t):
            return guided_prediction(self.unet, x, t, maps, null, guidance_scale)

        x = repaint(denoiser, self.scheduler, x0, 1 - unknown, settings, generator, clip=self.vqvae is None)
        painted = self._to_images(x)
        return np.where(region[..., None], painted, images)


def save_mask_to_image_pipeline(unet, scheduler, folder: str | Path, vqvae=None,
                                train_config: dict | None = None) -> Path:
    """Save a :class:`MaskToImagePipeline` atomically."""
    pipeline = MaskToImagePipeline(unet=unet, scheduler=scheduler, vqvae=vqvae)
    extra = {"histolab_train_config.json": train_config} if train_config is not None else None
    return save_pretrained_atomic(pipeline, folder, extra)


def latent_training_set(vqmodel, pairs: ImageMaskPairs, copies: int = 1,
                        batch_size: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """Scaled VQ latents of every pair under ``copies`` dihedral transforms (VQ latents do not
    rotate with the image, so augmented images are encoded), and the condition maps under the same
    transforms, resized to the latent grid (nearest)."""
    from ..data import dihedral
    from ..data.crops import DIHEDRAL_TRANSFORMS
    from .ldm import latent_training_set as dihedral_latents

    latents, _ = dihedral_latents(vqmodel, pairs.images, np.arange(len(pairs)), copies, batch_size)
    maps = condition_maps(pairs.types, pairs.instances).transpose(0, 2, 3, 1)  # [N, H, W, C] for dihedral()
    turned = np.concatenate([np.stack([dihedral(m, k, flip) for m in maps]) for k, flip in DIHEDRAL_TRANSFORMS[:copies]])
    return latents, resize_maps(np.ascontiguousarray(turned.transpose(0, 3, 1, 2)), latents.shape[-1]).numpy()


def train_mask_to_image(config: TrainConfig, pairs: ImageMaskPairs, out_dir: str | Path, vqmodel=None,
                        latent_copies: int = 1, progress: bool = True, resume: bool = False):
    """Train the SPADE model on train-region pairs (pixels flipped and rotated with their maps, or
    VQ latents of ``latent_copies`` dihedral copies) and save the EMA model as a
    :class:`MaskToImagePipeline` in ``out_dir/pipeline``; returns the trainer."""
    from diffusers import DDPMScheduler

    from ..diffusion.training import DiffusionTrainer

    if pairs.region != "train":
        raise ValueError(f"the image model trains on train-region pairs only; got {pairs.region!r} pairs")
    check_pairs(pairs.images, pairs.types)
    if vqmodel is None:
        data, maps = pairs.images, condition_maps(pairs.types, pairs.instances)
    else:
        data, maps = latent_training_set(vqmodel, pairs, latent_copies)
    trainer = DiffusionTrainer(config, data, out_dir, progress=progress, labels=maps)
    trainer.train(resume=resume)
    if trainer.accelerator.is_main_process:
        scheduler = DDPMScheduler.from_config(
            trainer.noise_scheduler.config, clip_sample=vqmodel is None,
            variance_type="learned_range" if config.learned_variance else "fixed_small")
        save_mask_to_image_pipeline(trainer.ema_unet(), scheduler, Path(out_dir) / "pipeline", vqvae=vqmodel,
                                    train_config=dataclasses.asdict(config))
    return trainer


def synthesise(pipeline: MaskToImagePipeline, types: np.ndarray, instances: np.ndarray, guidance_scale: float,
               steps: int, seed: int = 0, batch_size: int = 64) -> np.ndarray:
    """uint8 images for many masks, in batches, from one seeded generator."""
    generator = torch.Generator().manual_seed(seed)
    parts = [pipeline(types[i:i + batch_size], instances[i:i + batch_size], guidance_scale, steps, generator).images
             for i in range(0, len(types), batch_size)]
    return np.concatenate(parts) if parts else np.zeros((0, *np.shape(types)[1:], 3), np.uint8)


def edit_mask(types: np.ndarray, instances: np.ndarray, retype: dict[int, int] | None = None,
              erase: Sequence[int] = (), copy: Sequence[tuple[int, int, int]] = ()) -> tuple[np.ndarray, np.ndarray]:
    """An edited copy of one mask [H, W]: ``retype`` {instance: new type id}, ``erase`` instances,
    ``copy`` (instance, dy, dx): paste an instance shifted by (dy, dx) as a new one (clipped to the tile)."""
    from ..data.nuclei import NUCLEUS_CLASSES

    types, instances = np.array(types, dtype=np.uint8), np.array(instances, dtype=np.int64)
    present = set(np.unique(instances)) - {0}
    for instance in [*(retype or {}), *erase, *(c[0] for c in copy)]:
        if instance not in present:
            raise ValueError(f"instance {instance} is not in this mask (instances: {sorted(present)})")
    for instance, new_type in (retype or {}).items():
        if not 1 <= new_type <= len(NUCLEUS_CLASSES):
            raise ValueError(f"type id {new_type} is outside 1..{len(NUCLEUS_CLASSES)} ({NUCLEUS_CLASSES})")
        types[instances == instance] = new_type
    originals = instances.copy(), types.copy()
    for instance in erase:
        types[instances == instance] = 0
        instances[instances == instance] = 0
    next_id = int(originals[0].max()) + 1
    for instance, dy, dx in copy:
        ys, xs = np.nonzero(originals[0] == instance)
        ys, xs = ys + dy, xs + dx
        keep = (ys >= 0) & (ys < types.shape[0]) & (xs >= 0) & (xs < types.shape[1])
        source_type = originals[1][originals[0] == instance][0]
        instances[ys[keep], xs[keep]] = next_id
        types[ys[keep], xs[keep]] = source_type
        next_id += 1
    return types, instances.astype(np.int32)


def add_nuclei(types: np.ndarray, instances: np.ndarray, region: np.ndarray, type_id: int, count: int,
               radius: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """One mask [H, W] with up to ``count`` round nuclei of ``type_id`` added inside ``region``,
    on background only and apart from each other (e.g. inflammatory cells into stroma)."""
    from skimage.draw import disk

    types, instances = np.array(types, dtype=np.uint8), np.array(instances, dtype=np.int32)
    rng = np.random.default_rng(seed)
    ys, xs = np.nonzero(np.asarray(region, bool))
    next_id, added = int(instances.max()) + 1, 0
    for index in rng.permutation(len(ys)):
        if added == count:
            break
        rr, cc = disk((ys[index], xs[index]), radius + 1, shape=types.shape)  # one px of clearance
        if instances[rr, cc].any() or not region[rr, cc].all():
            continue
        rr, cc = disk((ys[index], xs[index]), radius, shape=types.shape)
        types[rr, cc], instances[rr, cc] = type_id, next_id
        next_id, added = next_id + 1, added + 1
    return types, instances


def remove_nuclei(types: np.ndarray, instances: np.ndarray, region: np.ndarray,
                  type_id: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One mask [H, W] without the nuclei of ``type_id`` whose centre lies in ``region``, and the
    region grown to cover them whole (their pixels outside it must be repainted too)."""
    from scipy.ndimage import binary_dilation

    types, instances = np.array(types, dtype=np.uint8), np.array(instances, dtype=np.int32)
    region = np.array(region, dtype=bool)
    grown = region.copy()
    for instance in np.unique(instances[(types == type_id) & region]):
        pixels = instances == instance
        ys, xs = np.nonzero(pixels)
        if region[int(round(ys.mean())), int(round(xs.mean()))]:
            types[pixels], instances[pixels] = 0, 0
            grown |= binary_dilation(pixels, iterations=2)
    return types, instances, grown


@dataclasses.dataclass(frozen=True)
class EditBatch:
    """One edit applied to several real tiles: the tiles' ``images`` uint8 [N, S, S, 3], their own ``types`` and
    ``instances``, the edited masks ``edited_types`` / ``edited_instances`` [N, S, S], the ``regions`` to repaint
    (bool [N, S, S]) and ``tiles``, each image's index in the pairs it was cut from."""

    name: str
    images: np.ndarray
    types: np.ndarray
    instances: np.ndarray
    edited_types: np.ndarray
    edited_instances: np.ndarray
    regions: np.ndarray
    tiles: np.ndarray

    def __len__(self) -> int:
        return len(self.images)


def centre_square(size: int) -> np.ndarray:
    """bool [size, size]: the centre square of half the side, the region an edit repaints."""
    if size < 4:
        raise ValueError(f"an edit's tile needs at least 4 px a side; got {size}")
    region = np.zeros((size, size), bool)
    region[size // 4:3 * size // 4, size // 4:3 * size // 4] = True
    return region


def edit_batch(name: str, pairs: ImageMaskPairs, n: int, seed: int, edit) -> EditBatch:
    """``edit`` applied to up to ``n`` tiles of ``pairs``: a seeded random draw among the tiles whose mask the edit
    changes (an edit that changes nothing tests nothing), fewer when fewer qualify. ``edit(types, instances)`` returns
    the edited (types, instances, region) of one tile."""
    if int(n) != n or n < 1:
        raise ValueError(f"an edit needs n >= 1 images; got {n}")
    kept: list[tuple[int, tuple]] = []
    for index in np.random.default_rng(seed).permutation(len(pairs)):
        if len(kept) == n:
            break
        edited = edit(pairs.types[index], pairs.instances[index])
        if (edited[0] != pairs.types[index]).any():
            kept.append((int(index), edited))
    if not kept:
        raise ValueError(f"the edit {name!r} changes none of the {len(pairs)} tiles it was offered")
    tiles = np.array([index for index, _ in kept])
    return EditBatch(name, pairs.images[tiles], pairs.types[tiles], pairs.instances[tiles],
                     *(np.stack([edited[k] for _, edited in kept]) for k in range(3)), tiles)


def notebook_edits(pairs: ImageMaskPairs, n: int, seed: int = 0, count: int = 8) -> dict[str, EditBatch]:
    """Notebook 07's two edits on up to ``n`` tiles each of ``pairs`` (tiles that must not overlap: a non-overlapping
    grid, :func:`~histolab_utils.data.pairs.grid_pairs`): **add inflammatory**, up to ``count`` round inflammatory
    nuclei (radius 4 slide px, at least 2 px) on background in the centre square of stroma tiles, and **remove
    neoplastic**, the neoplastic nuclei whose centre lies in the centre square of nest tiles (the region grown to
    cover them whole). Each edit keeps only the tiles it changes."""
    from ..data.nuclei import NUCLEUS_CLASSES

    centre = centre_square(pairs.size)
    inflammatory, neoplastic = NUCLEUS_CLASSES.index("inflammatory") + 1, NUCLEUS_CLASSES.index("neoplastic") + 1
    radius = max(2.0, 4.0 / pairs.downsample)

    def add(types, instances):
        return (*add_nuclei(types, instances, centre, inflammatory, count=count, radius=radius, seed=seed), centre)

    def remove(types, instances):
        return remove_nuclei(types, instances, centre, neoplastic)

    stroma, nest = (pairs.subset(np.flatnonzero(pairs.sources == name)) for name in ("hgsc_stroma", "hgsc_nest"))
    return {"add inflammatory": edit_batch("add inflammatory", stroma, n, seed, add),
            "remove neoplastic": edit_batch("remove neoplastic", nest, n, seed + 1, remove)}


def inpainting_benchmark(pipelines: dict[str, MaskToImagePipeline], edits: dict[str, EditBatch],
                         methods: dict[str, RePaintSettings], guidance_scale: float | dict[str, float], detector,
                         seed: int = 3):
    """Repaint every edit's regions for its edited masks with every pipeline (pixel, latent) and every method
    (RePaint, its DDIM variant), at ``guidance_scale`` (one for all, or each pipeline's own by its key), and score
    each image: time, network calls, the seam ratio (1 = no edge along the
    region's outline), the colour step across it (grey levels: a region repainted paler or in another tint than its
    surroundings; :func:`~histolab_utils.evaluation.seams.seam_score`) and the edit's success
    (:func:`~histolab_utils.evaluation.mask_fidelity.edit_success`: haematoxylin Dice inside the region against the
    edited mask, against the original one, and their margin). The untouched real images are scored too (space
    ``"real"``, method ``"untouched"``: an edit that did nothing).

    Returns ``(painted, table)``: the images per (space, method) and edit, and one row per (space, method, edit,
    image); :func:`~histolab_utils.evaluation.mask_fidelity.edit_summary` gives each edit's mean and interval."""
    import time

    import pandas as pd

    scales = guidance_scale if isinstance(guidance_scale, dict) else dict.fromkeys(pipelines, guidance_scale)
    if set(pipelines) - set(scales):
        raise ValueError(f"guidance_scale names no scale for {sorted(set(pipelines) - set(scales))} (it has "
                         f"{sorted(scales)})")
    painted, frames = {}, [_edit_rows("real", "untouched", edits, {name: e.images for name, e in edits.items()},
                                      None, float("nan"), detector)]
    for space, pipeline in pipelines.items():
        for method, settings in methods.items():
            out, seconds = {}, 0.0
            for name, edit in edits.items():
                started = time.perf_counter()
                out[name] = pipeline.inpaint(edit.images, edit.edited_types, edit.edited_instances, edit.regions,
                                             settings, scales[space], generator=torch.Generator().manual_seed(seed))
                seconds += time.perf_counter() - started
            painted[(space, method)] = out
            per_image = seconds / sum(len(e) for e in edits.values())
            frames.append(_edit_rows(space, method, edits, out, settings, per_image, detector))
    return painted, pd.concat(frames).set_index(["space", "method", "edit", "image"])


def _edit_rows(space: str, method: str, edits: dict[str, EditBatch], images: dict[str, np.ndarray],
               settings: RePaintSettings | None, seconds: float, detector):
    """One row per image of each edit: its seam and its edit success."""
    import pandas as pd

    from ..diffusion.inpainting import model_evaluations
    from ..evaluation.mask_fidelity import edit_success
    from ..evaluation.seams import seam_score

    rows = []
    for name, edit in edits.items():
        success = edit_success(detector, images[name], edit.regions, edit.edited_types, edit.types)
        for k in range(len(edit)):
            seam = seam_score(images[name][k], edit.regions[k])
            rows.append({"space": space, "method": method, "edit": name, "image": k,
                         "network calls": model_evaluations(settings) if settings else 0,
                         "seconds per image": seconds, "seam ratio": seam["ratio"], "colour step": seam["step"],
                         **success.iloc[k].to_dict()})
    return pd.DataFrame(rows)


SAMPLERS = ("DDIM", "DDPM, learned variance", "DDPM, fixed variance")


def named_sampler(name: str, section, clip_sample: bool = True):
    """The scheduler notebook 07 names ``name`` (one of :data:`SAMPLERS`) for a model of profile ``section`` (its
    schedule, prediction type and ``sampler``: DDIM means the section's own sampler). "DDPM, learned variance" is
    ancestral sampling with the model's learned variance (diffusers' ``variance_type="learned_range"``), "DDPM, fixed
    variance" the same with the posterior variance of the schedule."""
    from diffusers import DDPMScheduler

    from ..diffusion.schedules import make_scheduler

    if name == "DDIM":
        return make_scheduler(section.sampler, section.schedule, prediction_type=section.prediction_type,
                              clip_sample=clip_sample)
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; samplers are {SAMPLERS}")
    ancestral = make_scheduler("ddpm", section.schedule, prediction_type=section.prediction_type, clip_sample=clip_sample)
    variance = "learned_range" if name == "DDPM, learned variance" else "fixed_small"
    return DDPMScheduler.from_config(ancestral.config, variance_type=variance)


@dataclasses.dataclass
class SamplingChoice:
    """The guidance scale and the sampler :func:`choose_sampling` chose for one model on validation pairs, with the
    tables they were chosen from."""

    space: str  # "pixel" or "latent"
    guidance_scale: float
    sampler: str  # one of SAMPLERS
    sweep: pd.DataFrame  # by guidance scale, with DDIM: fid, kid, dice, dice_std, n and appearance (over its floor)
    sampler_scores: pd.DataFrame  # by sampler, at the chosen scale and equal network calls: fid, kid, dice, n
    scores: pd.DataFrame  # the sweep's synthesis_scores, with the validation floors and the real-pair reference
    follows_mask: bool  # whether the chosen scale's Dice cleared the mismatched-pair floor (False: no scale did)
    whole_nuclei: int  # whole nuclei per set and draw that the appearance distance rests on


def choose_sampling(pipeline: MaskToImagePipeline, validation: ImageMaskPairs, floor: ImageMaskPairs, detector,
                    section, *, seed: int = 200, score_seed: int = 0, strict: bool = True) -> SamplingChoice:
    """Choose a guidance scale and then a sampler for ``pipeline`` on validation pairs, by the rule notebook 07
    applies to its pixel and its latent model alike (``evaluation.choices.SAMPLING_RULE``).

    The model paints ``validation``'s masks with DDIM at every scale of ``section.guidance_scales`` (the profile's
    ``[spade]`` section: its scales, ``sampler_steps``, schedule and ``learned_variance``). The chosen scale has the
    lowest nucleus appearance distance over its floor (real train nuclei of ``floor`` against the validation ones)
    among the guided scales (s > 0) whose haematoxylin Dice (``detector``) clears the mismatched-pair floor and whose
    FID is within 10 % of the best of those. s = 0 is scored and shown, never chosen: it is the unconditional model,
    which ignores the mask by construction, and its Dice can clear the floor by chance. At that scale and the same network calls, each of :data:`SAMPLERS` (DDIM alone
    without a learned variance) paints the same masks, and the lowest FID wins. ``floor`` gives the real-vs-real
    FID and the appearance floor at the validation n (real train-region pairs).

    Only validation and train pixels inform the choice: pairs of another region are an error. Where no scale clears
    the mismatched-pair floor, ``strict`` makes that an error; otherwise the scale is chosen among all of them and
    ``follows_mask`` says so (a smoke-sized model may follow no mask). The pipeline is left with the chosen
    sampler."""
    from ..evaluation.choices import choose_guidance_scale, choose_sampler
    from ..evaluation.mask_fidelity import FLOOR_MISMATCHED, synthesis_scores
    from ..evaluation.nucleus_appearance import IMAGE_FEATURES, appearance_scores, nucleus_features

    for pairs, name, region in ((validation, "validation", "validation"), (floor, "floor", "train")):
        if pairs.region != region:
            raise ValueError(f"{name}: pairs of the {pairs.region!r} region; a choice is made on {region!r} pairs "
                             "only (held-out pairs give final scores)")
    samplers = {name: named_sampler(name, section, clip_sample=pipeline.space == "pixel")
                for name in (SAMPLERS if section.learned_variance else SAMPLERS[:1])}

    def paint(scheduler_name: str, guidance_scale: float) -> tuple[np.ndarray, np.ndarray]:
        pipeline.scheduler = samplers[scheduler_name]
        return synthesise(pipeline, validation.types, validation.instances, guidance_scale, section.sampler_steps,
                          seed=seed), validation.types

    def score(sets: dict):
        return synthesis_scores(detector, validation.images, validation.types, floor.images, sets, seed=score_seed)

    guidance_sets = {f"s = {s:g}": paint("DDIM", s) for s in section.guidance_scales}
    scores = score(guidance_sets)
    sweep = scores.loc[list(guidance_sets)].set_axis(list(section.guidance_scales)).rename_axis("guidance_scale")
    appearance = appearance_scores(
        {name: nucleus_features(images, validation.instances, validation.types)
         for name, (images, _) in guidance_sets.items()},
        nucleus_features(floor.images, floor.instances, floor.types),
        nucleus_features(validation.images, validation.instances, validation.types), features=IMAGE_FEATURES,
        seed=score_seed)
    sweep["appearance"] = appearance.loc[list(guidance_sets), "over_floor"].to_numpy(float)
    guided = sweep[sweep.index > 0]  # the candidates: s = 0 ignores the mask by construction
    if guided.empty:
        raise ValueError(f"section.guidance_scales={list(section.guidance_scales)}: no scale above 0 to choose")
    follows = ("dice", float(scores.loc[FLOOR_MISMATCHED, "dice"]))  # the check every candidate passes
    follows_mask = bool((guided["dice"].astype(float) > follows[1]).any())
    guidance_scale = choose_guidance_scale(guided, "appearance", higher_is_better=False, within=("fid", 1.1),
                                           above=follows if follows_mask or strict else None)  # strict: none is an error
    sampler_sets = {"DDIM": guidance_sets[f"s = {guidance_scale:g}"]}  # the sweep's own images at the chosen scale
    sampler_sets.update({name: paint(name, guidance_scale) for name in samplers if name != "DDIM"})
    sampler_scores = score(sampler_sets).loc[list(sampler_sets)]
    sampler = choose_sampler(sampler_scores)
    pipeline.scheduler = samplers[sampler]
    return SamplingChoice(pipeline.space, guidance_scale, sampler, sweep, sampler_scores, scores, follows_mask,
                          int(appearance["n"].iloc[0]))
