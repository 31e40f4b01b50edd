"""Run profiles, device choice and seeding, kept in one place.

``HISTO_PROFILE=smoke`` (the default: CPU, 2 cores, a minute or two per notebook, used by CI)
and ``HISTO_PROFILE=full`` (GPU, real results) run the same code; only the sizes and step
counts below differ.
"""

from __future__ import annotations

import dataclasses
import os
import random
import time
from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np

from .profiles import PROFILE_ENV, PROFILES, current_profile  # noqa: F401  (re-exported)


@dataclass(frozen=True)
class DataTourConfig:
    """Notebook 00: how many crops to draw for the crop gallery and colour statistics."""

    crop_size: int
    n_crops: int
    gallery_size: int


@dataclass(frozen=True)
class TilingConfig:
    """Notebook 01: tiling the CMU slide and the HGSC image, and stain normalisation."""

    tile_size: int
    overlap: float
    min_tissue: float
    hgsc_tile_size: int
    target_label: str
    min_label: float
    gallery_size: int
    stain_batch: int


@dataclass(frozen=True)
class DDPMConfig:
    """Notebook 03 and ``python -m histolab_utils.train ddpm``: one DDPM per schedule."""

    image_size: int
    train_steps: int
    batch_size: int
    learning_rate: float
    warmup_steps: int
    ema_decay: float
    block_out_channels: tuple[int, ...]
    layers_per_block: int
    attention: bool
    checkpoint_every: int
    compile: bool
    n_train_crops: int
    n_eval: int  # samples per (schedule, prediction type, sampler), and real crops per floor set
    sampler_steps: tuple[tuple[str, int], ...]
    # (schedule, prediction type) of each DDPM notebook 03 trains; ``prediction_type`` is the
    # default of the CLI and of the schedule comparison (v: chosen by measurement, see the README)
    models: tuple[tuple[str, str], ...]
    prediction_type: str = "v_prediction"
    zero_terminal_snr: bool = False
    diagnostic_timesteps: tuple[int, ...] = (0, 100, 250, 500, 650, 800, 900, 950, 990, 999)


@dataclass(frozen=True)
class VQGANSection:
    """Notebook 02: one VQ-GAN per entry of ``latent_channels`` (the first is kept for 04 and 05)."""

    image_size: int
    latent_channels: tuple[int, ...]
    num_vq_embeddings: int
    block_out_channels: tuple[int, ...]
    layers_per_block: int
    attention: bool
    train_steps: int
    batch_size: int
    learning_rate: float
    disc_start: int
    perceptual_weight: float
    code_restart_every: int  # 0: off; N: codes unused for N steps move onto encoder outputs
    checkpoint_every: int
    n_train_crops: int
    n_eval: int  # held-out crops for PSNR, SSIM and rFID


@dataclass(frozen=True)
class ClusterSection:
    """Notebook 04: tiles of the default set, their latent features, UMAP and the clustering sweep."""

    min_tissue: float  # fraction of a tile's pixels above the glass saturation floor
    max_tiles: int  # a seeded random subset when the grid gives more
    ks: tuple[int, ...]
    umap_neighbors: int
    gallery_size: int


@dataclass(frozen=True)
class LDMSection:
    """Notebook 05: a class-conditional diffusion model on the VQ-GAN's latents."""

    schedule: str
    prediction_type: str
    train_steps: int
    batch_size: int
    learning_rate: float
    warmup_steps: int
    ema_decay: float
    block_out_channels: tuple[int, ...]
    layers_per_block: int
    attention: bool
    label_dropout: float
    checkpoint_every: int
    augment_copies: int  # dihedral copies of each training tile that are encoded
    sampler: str
    sampler_steps: int
    guidance_scales: tuple[float, ...]
    guidance: float  # the scale used for the per-cluster scores and gallery
    min_eval_tiles: int  # clusters with fewer held-out tiles are not scored
    max_eval_per_class: int  # at most this many held-out tiles (and samples) per cluster are scored
    gallery_size: int


@dataclass(frozen=True)
class MaskSection:
    """Notebook 06 and ``python -m histolab_utils.train masks``: the nuclei-mask generator (NASDM stage 1)."""

    tile_size: int  # px of a mask tile
    downsample: float  # level-0 px of the slide per mask px
    n_train_tiles: int  # train-region tiles of the slide
    n_eval: int  # held-out tiles; every set compared with them (generated, floor, baseline) has as many
    schedule: str
    prediction_type: str
    train_steps: int
    batch_size: int
    learning_rate: float
    warmup_steps: int
    ema_decay: float
    block_out_channels: tuple[int, ...]
    layers_per_block: int
    attention: bool
    checkpoint_every: int
    compile: bool
    sampler: str
    sampler_steps: int
    guidance_scales: tuple[float, ...]  # 0 = the unconditional model (the chance level of conditioning)
    guidance: float  # the scale of the gallery, the widget and the headline scores
    gallery_per_condition: int


@dataclass(frozen=True)
class SpadeSection:
    """Notebook 07 and ``python -m histolab_utils.train spade``: mask-to-image synthesis (NASDM stage 2)
    in pixel and VQ latent space, and RePaint inpainting."""

    tile_size: int  # px of an image-mask pair
    downsample: int  # image px per pair px (the mask generator's scale: notebook 06)
    n_train_pairs: int  # random train-region crops of the nest and stroma images
    n_eval: int  # held-out pairs; every scored set has as many images
    schedule: str
    prediction_type: str
    learned_variance: bool  # NASDM's hybrid loss L_simple + 0.001 L_vlb with a learned variance
    train_steps: int  # pixel space
    latent_train_steps: int
    batch_size: int
    learning_rate: float
    warmup_steps: int
    ema_decay: float
    block_out_channels: tuple[int, ...]  # pixel-space SPADE UNet
    latent_block_out_channels: tuple[int, ...]
    layers_per_block: int
    attention: bool  # self-attention at the lowest level
    spade_hidden_channels: int
    latent_copies: int  # dihedral copies of each pair encoded for the latent model
    vqgan_latent_channels: int  # which of notebook 02's VQ-GANs: runs/<profile>/vqgan-<c>ch
    checkpoint_every: int
    compile: bool
    sampler: str
    sampler_steps: int
    guidance_scales: tuple[float, ...]  # the sweep; 0 = the unconditional model
    guidance: float  # the headline scores, gallery and widget (SDM samples at 1.5)
    gallery_size: int
    inpaint_size: int  # px of the inpainting demo's image
    repaint: tuple[int, int, int]  # RePaint's (t_T, jump_length, jump_n_sample)
    repaint_fast: tuple[int, int, int]  # the DDIM variant's


@dataclass(frozen=True)
class JointSection:
    """Joint image-label synthesis from a nucleus layout (notebook 08, Min et al. 2024). It trains and
    scores on notebook 07's image-mask pairs (``spade``: tile_size, downsample, n_train_pairs, n_eval),
    so the head-to-head with the two-stage route compares like with like."""

    schedule: str
    prediction_type: str
    train_steps: int
    batch_size: int
    learning_rate: float
    warmup_steps: int
    ema_decay: float
    block_out_channels: tuple[int, ...]
    layers_per_block: int
    attention: bool
    checkpoint_every: int
    compile: bool
    context_dropout: float  # CoSyn drops its prompt with p = 0.1 for classifier-free guidance
    layout_sigma: float  # px of each centroid's blob in the layout maps
    sampler: str
    sampler_steps: int
    guidance_scales: tuple[float, ...]  # the sweep; 0 = context ignored (the layout still conditions)
    guidance: float  # the headline scores, gallery and widget (CoSyn samples at 2.0)
    gallery_size: int


@dataclass(frozen=True)
class SegmentationSection:
    """Notebook 09 and ``python -m histolab_utils.train segmenter``: does synthetic data help a nuclei
    segmenter? Every arm trains for ``train_steps`` at ``batch_size``; only the data differ."""

    architecture: str  # "hovernet_fast" (MONAI's HoVerNet, 256 px only) or "basic_unet" (MONAI's BasicUNet)
    tile_size: int  # px of a training and test tile
    downsample: int  # image px per tile px (the generators' scale: notebook 07's pairs)
    features: tuple[int, ...]  # BasicUNet's six widths (unused by HoVerNet)
    n_real: int  # the real pool of train-region pairs (R25 = a seeded quarter of it)
    n_test: int  # held-out tiles every arm is scored on
    train_steps: int
    batch_size: int
    learning_rate: float
    warmup_steps: int
    checkpoint_every: int
    compile: bool
    min_object_size: int  # HoVer-Net post-processing, scaled with the nuclei (10 px at ~7 px radius)
    marker_radius: int  # likewise (2 px at ~7 px radius)
    seeds: tuple[int, ...]  # segmenter seeds per arm
    arms: tuple[str, ...]  # the arms the notebook runs; ("all",) for every one
    addition: tuple[float, ...]  # (a): synthetic tiles added, as shares of the pool
    replacement: tuple[float, ...]  # (b): shares of the pool replaced
    n_resamples: int  # bootstrap and permutation resamples
    overlays: int  # test tiles drawn with TP / FP / FN


@dataclass(frozen=True)
class ProfileConfig:
    """Every size and step count of every notebook, for one profile."""

    name: str
    seed: int
    data_tour: DataTourConfig
    tiling: TilingConfig
    ddpm: DDPMConfig
    vqgan: VQGANSection
    clusters: ClusterSection
    ldm: LDMSection
    masks: MaskSection
    spade: SpadeSection
    joint: JointSection
    segmentation: SegmentationSection


_CONFIGS = {
    "smoke": ProfileConfig(
        name="smoke", seed=0, data_tour=DataTourConfig(crop_size=64, n_crops=256, gallery_size=16),
        tiling=TilingConfig(tile_size=256, overlap=0.5, min_tissue=0.5, hgsc_tile_size=128,
                            target_label="neoplastic", min_label=0.1, gallery_size=16, stain_batch=16),
        ddpm=DDPMConfig(image_size=32, train_steps=300, batch_size=16, learning_rate=2e-3, warmup_steps=15,
                        ema_decay=0.99, block_out_channels=(16, 32, 32), layers_per_block=1, attention=False,
                        checkpoint_every=75, compile=False, n_train_crops=1024, n_eval=24,
                        sampler_steps=(("ddpm", 100), ("ddim", 50), ("dpm", 20)),
                        models=(("linear", "epsilon"), ("linear", "v_prediction"), ("cosine", "v_prediction"),
                                ("sigmoid", "v_prediction"))),
        vqgan=VQGANSection(image_size=32, latent_channels=(4,), num_vq_embeddings=256, block_out_channels=(16, 32, 32),
                           layers_per_block=1, attention=False, train_steps=200, batch_size=16, learning_rate=1e-3,
                           disc_start=100, perceptual_weight=0.1, code_restart_every=25,
                           checkpoint_every=100, n_train_crops=2048, n_eval=48),
        clusters=ClusterSection(min_tissue=0.5, max_tiles=600, ks=(2, 3, 4, 5, 6), umap_neighbors=15, gallery_size=16),
        ldm=LDMSection(schedule="cosine", prediction_type="v_prediction", train_steps=300, batch_size=32,
                       learning_rate=1e-3, warmup_steps=30, ema_decay=0.99, block_out_channels=(32, 64),
                       layers_per_block=1, attention=False, label_dropout=0.1, checkpoint_every=150, augment_copies=2,
                       sampler="ddim", sampler_steps=20, guidance_scales=(1.0, 3.0), guidance=3.0, min_eval_tiles=4,
                       max_eval_per_class=32, gallery_size=8),
        masks=MaskSection(tile_size=32, downsample=2.0, n_train_tiles=4096, n_eval=96, schedule="cosine",
                          prediction_type="v_prediction", train_steps=400, batch_size=16, learning_rate=2e-3,
                          warmup_steps=20, ema_decay=0.99, block_out_channels=(16, 32, 32), layers_per_block=1,
                          attention=False, checkpoint_every=200, compile=False, sampler="ddim", sampler_steps=25,
                          guidance_scales=(0.0, 1.0, 2.0), guidance=2.0, gallery_per_condition=4),
        spade=SpadeSection(tile_size=32, downsample=2, n_train_pairs=2048, n_eval=64, schedule="cosine",
                           prediction_type="v_prediction", learned_variance=True, train_steps=200,
                           latent_train_steps=200, batch_size=16, learning_rate=2e-3, warmup_steps=20, ema_decay=0.99,
                           block_out_channels=(16, 32, 32), latent_block_out_channels=(32, 64), layers_per_block=1,
                           attention=False, spade_hidden_channels=32, latent_copies=2, vqgan_latent_channels=4,
                           checkpoint_every=100, compile=False, sampler="ddim", sampler_steps=10,
                           guidance_scales=(0.0, 1.0, 1.5, 3.0), guidance=1.5, gallery_size=8, inpaint_size=64,
                           repaint=(50, 5, 3), repaint_fast=(10, 5, 2)),
        joint=JointSection(schedule="cosine", prediction_type="v_prediction", train_steps=400, batch_size=16,
                           learning_rate=2e-3, warmup_steps=25, ema_decay=0.99, block_out_channels=(16, 32, 32),
                           layers_per_block=1, attention=False, checkpoint_every=200, compile=False,
                           context_dropout=0.1, layout_sigma=1.0, sampler="ddim", sampler_steps=10,
                           guidance_scales=(0.0, 1.0, 2.0), guidance=2.0, gallery_size=8),
        segmentation=SegmentationSection(
            architecture="basic_unet", tile_size=32, downsample=2, features=(16, 16, 32, 64, 128, 16), n_real=96,
            n_test=64, train_steps=80, batch_size=16, learning_rate=3e-3, warmup_steps=8, checkpoint_every=80,
            compile=False, min_object_size=3, marker_radius=1, seeds=(0, 1),
            arms=("real_25", "classic_25", "duplicated_25", "add_spade_real_75", "add_spade_generated_75",
                  "add_joint_75", "real_100", "replace_spade_real_50", "rare_spade_generated"),
            addition=(0.25, 0.5, 0.75), replacement=(0.25, 0.5, 0.75, 1.0), n_resamples=1000, overlays=4),
    ),
    "full": ProfileConfig(
        name="full", seed=0, data_tour=DataTourConfig(crop_size=128, n_crops=4096, gallery_size=32),
        tiling=TilingConfig(tile_size=256, overlap=0.5, min_tissue=0.5, hgsc_tile_size=128,
                            target_label="neoplastic", min_label=0.1, gallery_size=32, stain_batch=128),
        ddpm=DDPMConfig(image_size=64, train_steps=20000, batch_size=64, learning_rate=2e-4, warmup_steps=500,
                        ema_decay=0.999, block_out_channels=(128, 256, 256, 512), layers_per_block=2, attention=True,
                        checkpoint_every=2000, compile=True, n_train_crops=20000, n_eval=2000,
                        sampler_steps=(("ddpm", 1000), ("ddim", 100), ("dpm", 20)),
                        models=tuple((s, p) for s in ("linear", "cosine", "sigmoid")
                                     for p in ("epsilon", "v_prediction"))),
        vqgan=VQGANSection(image_size=64, latent_channels=(4, 8), num_vq_embeddings=1024,
                           block_out_channels=(128, 256, 256), layers_per_block=2, attention=True, train_steps=20000,
                           batch_size=32, learning_rate=2e-4, disc_start=10000, perceptual_weight=0.5,
                           code_restart_every=200, checkpoint_every=2000, n_train_crops=20000, n_eval=1000),
        clusters=ClusterSection(min_tissue=0.5, max_tiles=4000, ks=tuple(range(2, 17)), umap_neighbors=30,
                                gallery_size=32),
        ldm=LDMSection(schedule="cosine", prediction_type="v_prediction", train_steps=20000, batch_size=128,
                       learning_rate=2e-4, warmup_steps=500, ema_decay=0.999, block_out_channels=(128, 256, 256),
                       layers_per_block=2, attention=True, label_dropout=0.1, checkpoint_every=2000, augment_copies=8,
                       sampler="dpm", sampler_steps=20, guidance_scales=(1.0, 2.0, 3.0, 5.0), guidance=2.0,
                       min_eval_tiles=20, max_eval_per_class=500, gallery_size=16),
        masks=MaskSection(tile_size=128, downsample=1.0, n_train_tiles=20000, n_eval=1000, schedule="cosine",
                          prediction_type="v_prediction", train_steps=20000, batch_size=64, learning_rate=2e-4,
                          warmup_steps=500, ema_decay=0.999, block_out_channels=(64, 128, 256, 256), layers_per_block=2,
                          attention=True, checkpoint_every=2000, compile=True, sampler="dpm", sampler_steps=25,
                          guidance_scales=(0.0, 1.0, 1.5, 2.0, 3.0), guidance=2.0, gallery_per_condition=8),
        spade=SpadeSection(tile_size=64, downsample=1, n_train_pairs=20000, n_eval=1000, schedule="cosine",
                           prediction_type="v_prediction", learned_variance=True, train_steps=20000,
                           latent_train_steps=20000, batch_size=64, learning_rate=2e-4, warmup_steps=500,
                           ema_decay=0.999, block_out_channels=(64, 128, 256), latent_block_out_channels=(128, 256),
                           layers_per_block=2, attention=True, spade_hidden_channels=128, latent_copies=8,
                           vqgan_latent_channels=4, checkpoint_every=2000, compile=False, sampler="ddim",
                           sampler_steps=50, guidance_scales=(0.0, 1.0, 1.5, 2.0, 3.0), guidance=1.5, gallery_size=16,
                           inpaint_size=256, repaint=(250, 10, 10), repaint_fast=(50, 5, 2)),
        joint=JointSection(schedule="cosine", prediction_type="v_prediction", train_steps=4000, batch_size=64,
                           learning_rate=2e-4, warmup_steps=200, ema_decay=0.999, block_out_channels=(64, 128, 256, 256),
                           layers_per_block=2, attention=True, checkpoint_every=1000, compile=False,
                           context_dropout=0.1, layout_sigma=1.0, sampler="ddim", sampler_steps=50,
                           guidance_scales=(0.0, 1.0, 2.0, 3.0), guidance=2.0, gallery_size=16),
        segmentation=SegmentationSection(
            architecture="hovernet_fast", tile_size=256, downsample=1, features=(32, 32, 64, 128, 256, 32),
            n_real=1000, n_test=200, train_steps=3000, batch_size=16, learning_rate=3e-4, warmup_steps=100,
            checkpoint_every=500, compile=False, min_object_size=10, marker_radius=2, seeds=(0, 1, 2), arms=("all",),
            addition=(0.25, 0.5, 0.75), replacement=(0.25, 0.5, 0.75, 1.0), n_resamples=5000, overlays=6),
    ),
}


OVERRIDES_ENV = "HISTO_OVERRIDES"


def apply_overrides(config: ProfileConfig, overrides: str) -> ProfileConfig:
    """``config`` with ``"section.field=value,..."`` replaced, e.g. ``"masks.train_steps=6000"``.

    Values are Python literals (``6000``, ``(64, 128)``, ``'ddim'``) and must keep the field's type,
    so a typo or a wrong kind of value is an error naming it, never a silent no-op.
    """
    import ast

    for item in filter(None, (part.strip() for part in _split_top_level(overrides))):
        key, sep, text = item.partition("=")
        section_name, dot, field_name = key.strip().partition(".")
        if not sep or not dot:
            raise ValueError(f"{OVERRIDES_ENV}: {item!r} is not of the form section.field=value")
        section = getattr(config, section_name, None)
        if not dataclasses.is_dataclass(section):
            raise ValueError(f"{OVERRIDES_ENV}: no config section {section_name!r}")
        if field_name not in {f.name for f in dataclasses.fields(section)}:
            raise ValueError(f"{OVERRIDES_ENV}: section {section_name!r} has no field {field_name!r}")
        try:
            value = ast.literal_eval(text.strip())
        except (ValueError, SyntaxError) as error:
            raise ValueError(f"{OVERRIDES_ENV}: {key.strip()} = {text.strip()!r} is not a Python literal") from error
        old = getattr(section, field_name)
        if isinstance(old, float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if type(value) is not type(old):
            raise ValueError(f"{OVERRIDES_ENV}: {key.strip()} must be a {type(old).__name__}, got {value!r}")
        config = dataclasses.replace(config, **{section_name: dataclasses.replace(section, **{field_name: value})})
    return config


def _split_top_level(text: str) -> list[str]:
    """Split on commas that are not inside brackets, so tuples survive: ``a.b=(1, 2),c.d=3``."""
    parts, depth, start = [], 0, 0
    for i, char in enumerate(text):
        depth += char in "([{"
        depth -= char in ")]}"
        if char == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    return parts + [text[start:]]


def load_config(profile: str | None = None) -> ProfileConfig:
    """The frozen config of ``profile`` (default: ``HISTO_PROFILE``), with any
    ``HISTO_OVERRIDES`` applied (e.g. fewer steps to fit a time limit; printed by the setup cell)."""
    name = current_profile() if profile is None else profile
    if name not in _CONFIGS:
        raise ValueError(f"unknown profile {name!r}; use one of {PROFILES}")
    return apply_overrides(_CONFIGS[name], os.environ.get(OVERRIDES_ENV, ""))


def pick_device(prefer: str | None = None):
    """CUDA when present (or ``prefer``, e.g. ``"cpu"``), else CPU. Returns a ``torch.device``."""
    import torch

    if prefer:
        return torch.device(prefer)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def seed_everything(seed: int, *, deterministic: bool = False) -> None:
    """Seed Python, NumPy and torch (all devices). With ``deterministic``, also make torch
    refuse non-deterministic kernels, and check that the switch really took effect."""
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False
        torch.use_deterministic_algorithms(True)
        if not torch.are_deterministic_algorithms_enabled():
            raise RuntimeError("torch did not enable deterministic algorithms")


def config_lines(config: Any, prefix: str = "") -> Iterable[str]:
    """Flatten a (nested) dataclass into ``key = value`` lines."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            yield from config_lines(value, prefix=f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name} = {value!r}"


@dataclass
class NotebookContext:
    """What a notebook's setup cell gets back: its config, device and start time."""

    notebook: str
    config: ProfileConfig
    device: Any
    started: float

    @property
    def profile(self) -> str:
        return self.config.name

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def save_metrics(self, metrics: dict, headline: Iterable[str] = ()) -> "os.PathLike[str]":
        """Write this notebook's metrics JSON, stamped with the wall time so far."""
        from .report import save_metrics  # report never imports config: no loop

        return save_metrics(self.notebook, metrics, profile=self.profile, wall_time_s=self.elapsed(),
                            headline=headline)


def setup_notebook(notebook: str, profile: str | None = None, *, deterministic: bool = False) -> NotebookContext:
    """The setup cell of every notebook: load the profile, pick the device, seed, print it all."""
    started = time.perf_counter()
    config = load_config(profile)
    device = pick_device()
    seed_everything(config.seed, deterministic=deterministic)
    print(f"notebook {notebook} | profile {config.name} | device {device}")
    if os.environ.get(OVERRIDES_ENV):
        print(f"  overridden by {OVERRIDES_ENV}: {os.environ[OVERRIDES_ENV]}")
    for line in config_lines(config):
        print("  " + line)
    return NotebookContext(notebook=notebook, config=config, device=device, started=started)
