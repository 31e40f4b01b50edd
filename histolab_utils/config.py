"""Run profiles as typed, frozen dataclasses; device choice and seeding.

The profiles themselves are TOML files (``histolab_utils/profiles/*.toml``): ``HISTO_PROFILE=smoke``
(the default: CPU, 2 cores, a minute or two per notebook, used by CI), ``cpu`` (real results on a
2-core CPU) and ``full`` (one GPU) run the same code; only sizes and step counts differ.
``HISTO_PROFILE=/path/to/mine.toml`` loads a researcher's own file (``extends = "cpu"`` and a few keys).
A profile's ``[training]`` table holds the defaults every trained model's section inherits.
"""

from __future__ import annotations

import dataclasses
import os
import random
import time
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from .profiles import (PROFILE_ENV, PROFILES, ProfileError, current_profile, current_spec,  # noqa: F401
                       profile_name, profile_path, read_profile)


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


@dataclass(frozen=True, kw_only=True)
class DiffusionTraining:
    """What the training of every diffusion model shares. A profile's ``[training]`` table sets these (and
    any other field of a diffusion section) once for all of them; a section overrides what it needs."""

    prediction_type: str  # "epsilon", "v_prediction" or "sample" (v: chosen by measurement, see the README)
    train_steps: int
    batch_size: int
    learning_rate: float
    warmup_steps: int
    ema_decay: float
    block_out_channels: tuple[int, ...]  # the UNet's widths, one per level
    layers_per_block: int
    attention: bool  # self-attention at the lowest level
    checkpoint_every: int
    compile: bool = False  # torch.compile (worth it on a GPU; under 5 % on a CPU)
    mixed_precision: str = "auto"  # "auto": bf16 on a GPU or a CPU with native bf16, else fp32; or "no", "bf16"
    # the training recipe by name (diffusion/recipes.py): it fills the settings below that neither the section nor
    # [training] sets
    recipe: str = "baseline"
    loss_weighting: str = "uniform"  # "uniform" or "min_snr"
    snr_gamma: float = 5.0
    preconditioning: str = "none"  # "none" or "edm"
    lr_schedule: str = "cosine"  # after the warm-up: "cosine" or "constant"
    ema: str = "diffusers"  # "diffusers" or "power"
    ema_gamma: float = 6.94
    norm_num_groups: int = 0  # GroupNorm groups; 0: the narrow-UNet rule


@dataclass(frozen=True, kw_only=True)
class GuidedDiffusion(DiffusionTraining):
    """A conditional diffusion model sampled with one named sampler and classifier-free guidance."""

    schedule: str  # "linear", "cosine" or "sigmoid"
    sampler: str  # "ddpm", "ddim" or "dpm"
    sampler_steps: int
    guidance_scales: tuple[float, ...]  # the sweep; 0 = the unconditional model where there is one
    guidance_scale: float  # the scale of the headline scores, gallery and widget


@dataclass(frozen=True, kw_only=True)
class DDPMConfig(DiffusionTraining):
    """Notebook 03 and ``python -m histolab_utils.train ddpm``: one DDPM per schedule."""

    image_size: int
    n_train_crops: int
    n_eval: int  # samples per (schedule, prediction type, sampler), and real crops per floor set
    sampler_steps: tuple[tuple[str, int], ...]
    # (schedule, prediction type) of each DDPM notebook 03 trains; ``prediction_type`` is the
    # default of the CLI and of the schedule comparison
    models: tuple[tuple[str, str], ...]
    zero_terminal_snr: bool = False
    ancestral_steps: int = 0  # > 0: the best model is also sampled with ancestral DDPM at this many steps
    # the best model is also sampled with each of these fast solvers at each of these step counts (cost and quality)
    fast_solvers: tuple[str, ...] = ("dpm", "unipc")
    fast_solver_steps: tuple[int, ...] = (10, 20)
    downsample: int = 1  # DOWNSAMPLE: 2 = 32 px crops of 64 px fields, box-averaged
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
    learning_rate: float  # the generator's and the critic's
    warmup_steps: int
    disc_start: int
    perceptual_weight: float
    code_restart_every: int  # 0: off; N: codes unused for N steps move onto encoder outputs
    checkpoint_every: int
    n_train_crops: int
    n_eval: int  # held-out crops for PSNR, SSIM and rFID
    # image px per tile px: 2 = 32 px tiles of 64 px fields, box-averaged (training crops, the held-out
    # crops, and the tiles notebooks 04 and 05 cluster and generate)
    downsample: int = 1
    mixed_precision: str = "auto"  # as [training]'s: "auto", "no" or "bf16"


@dataclass(frozen=True)
class ClusterSection:
    """Notebook 04: tiles of the default set, their latent features, UMAP and the clustering sweep."""

    min_tissue: float  # fraction of a tile's pixels above the glass saturation floor
    max_tiles: int  # a seeded random subset when the grid gives more
    ks: tuple[int, ...]
    umap_neighbors: int
    gallery_size: int


@dataclass(frozen=True, kw_only=True)
class LDMSection(GuidedDiffusion):
    """Notebook 05: a class-conditional diffusion model on the VQ-GAN's latents."""

    label_dropout: float
    augment_copies: int  # dihedral copies of each training tile that are encoded
    min_eval_tiles: int  # clusters with fewer held-out tiles are not scored
    max_eval_per_class: int  # at most this many held-out tiles (and samples) per cluster are scored
    gallery_size: int


@dataclass(frozen=True, kw_only=True)
class MaskSection(GuidedDiffusion):
    """Notebook 06 and ``python -m histolab_utils.train masks``: the nuclei-mask generator (NASDM stage 1).
    Guidance scale 0 is the unconditional model: the chance level of conditioning."""

    tile_size: int  # px of a mask tile
    downsample: float  # DOWNSAMPLE (of the HGSC slide's level 0); the same as [spade]'s and [segmentation]'s
    n_train_tiles: int  # train-region tiles of the slide
    n_eval: int  # held-out tiles; every set compared with them (generated, floor, baseline) has as many
    gallery_per_condition: int
    # speck filters notebook 06 chooses among on validation (models.mask_generator.choose_min_nucleus_px): decoded
    # instances under this many px are removed from both maps; 0 is no filter, and the only candidate by default
    min_nucleus_px: tuple[int, ...] = (0,)


@dataclass(frozen=True, kw_only=True)
class SpadeSection(GuidedDiffusion):
    """Notebook 07 and ``python -m histolab_utils.train spade``: mask-to-image synthesis (NASDM stage 2)
    in pixel and VQ latent space, and RePaint inpainting. SDM samples at guidance 1.5; scale 0 is the
    unconditional model. ``train_steps`` and ``block_out_channels`` are the pixel-space model's."""

    tile_size: int  # px of an image-mask pair
    downsample: int  # DOWNSAMPLE; the same as [masks]'s and [segmentation]'s (checked when the profile is read)
    n_train_pairs: int  # random train-region crops of the nest and stroma images
    n_eval: int  # held-out pairs; every scored set has as many images
    learned_variance: bool  # NASDM's hybrid loss L_simple + 0.001 L_vlb with a learned variance
    latent_train_steps: int
    latent_block_out_channels: tuple[int, ...]
    spade_hidden_channels: int
    latent_copies: int  # dihedral copies of each pair encoded for the latent model
    vqgan_latent_channels: int  # which of notebook 02's VQ-GANs: runs/<profile>/vqgan-<c>ch
    gallery_size: int
    inpaint_size: int  # px of each inpainted image: non-overlapping held-out tiles of this size (at downsample)
    n_inpaint: int  # held-out tiles each inpainting edit is applied to (fewer where fewer qualify)
    repaint: tuple[int, int, int]  # RePaint's (t_T, jump_length, jump_n_sample)
    repaint_fast: tuple[int, int, int]  # the DDIM variant's


@dataclass(frozen=True, kw_only=True)
class JointSection(GuidedDiffusion):
    """Joint image-label synthesis from a nucleus layout (notebook 08, Min et al. 2024). It trains and
    scores on notebook 07's image-mask pairs (``spade``: tile_size, downsample, n_train_pairs, n_eval),
    so the head-to-head with the two-stage route compares like with like. CoSyn samples at guidance 2.0;
    scale 0 ignores the context (the layout still conditions)."""

    context_dropout: float  # CoSyn drops its prompt with p = 0.1 for classifier-free guidance
    layout_sigma: float  # px of each centroid's blob in the layout maps
    gallery_size: int


@dataclass(frozen=True)
class SegmentationSection:
    """Notebook 09 and ``python -m histolab_utils.train segmenter``: does synthetic data help a nuclei
    segmenter? Every arm trains for ``train_steps`` at ``batch_size``; only the data differ."""

    architecture: str  # "hovernet_fast" (MONAI's HoVerNet, 256 px only) or "basic_unet" (MONAI's BasicUNet)
    tile_size: int  # px of a training and test tile
    downsample: int  # DOWNSAMPLE; the generators' ([masks], [spade]), whose tiles it trains on
    features: tuple[int, ...]  # BasicUNet's six widths (unused by HoVerNet)
    n_real: int  # the real pool: tiles of a non-overlapping grid over the train region (R25 = a seeded quarter)
    n_test: int  # test tiles every arm is scored on: of a non-overlapping grid over the held-out strips
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
    mixed_precision: str = "auto"  # as [training]'s: "auto", "no" or "bf16"


@dataclass(frozen=True)
class LargeRegionsSection:
    """Notebook 10: canvases many tiles wide, painted by notebooks 06-08's generators (it trains nothing; the
    generators' tile size, scale and samplers are theirs: [masks], [spade], [joint])."""

    canvas_size: int  # px of a canvas at the generators' scale: 512 at [spade] downsample 2 is 1,024 slide px
    n_canvases: int  # held-out fields of the slide painted per method; FID crops are drawn from them
    n_crops: int  # random crops per set for FID / KID, at the tile size and at twice it; floors at the same n
    steps: int  # sampler steps of independent tiles; with equal_cost the other methods take as many network pixels
    stride: int  # MultiDiffusion's window stride in px (0: half a tile)
    methods: tuple[str, ...]  # of "tiles", "whole", "multidiffusion", "shifted" (diffusion.tiled_sampling.METHODS)
    equal_cost: bool  # True: every method gets independent tiles' network pixels; False: `steps` steps each
    field_candidates: int  # seeded positions per field; the one with the most nuclei is painted
    real_size: int  # px of hgsc_nest's held-out block painted beside its real pixels (0: the whole block)


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
    large_regions: LargeRegionsSection


# Every section's ``downsample`` means one thing, DOWNSAMPLE: source-image pixels per model pixel (box-averaged; 1 is
# full resolution). The generators of notebooks 06-08 and notebook 09's segmenter share one scale, because the
# segmenter trains on the generators' tiles: a profile whose scales differ is refused where it is read.
SHARED_SCALE = ("masks", "spade", "segmentation")

# Sections of trained models: they inherit the profile's [training] defaults for every field they have.
TRAINED_SECTIONS = ("vqgan", "ddpm", "ldm", "masks", "spade", "joint", "segmentation")

# Keys that were renamed (old -> new): a profile or override still using the old name is told the new one.
RENAMED_KEYS = {"guidance": "guidance_scale"}


def _unknown_key(name: str, known: Iterable[str]) -> str:
    """What to say of a key a section lacks: the new name when it is one of :data:`RENAMED_KEYS`."""
    new = RENAMED_KEYS.get(name)
    return f"; it was renamed: rename it to {new!r}" if new in set(known) else ""


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) if typing.get_origin(hint) is None else str(hint).replace("typing.", "")


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """``value`` (as TOML gives it) as ``hint`` says: lists become tuples, ints become floats where a
    float is wanted; anything else of the wrong kind is a :class:`ProfileError` naming ``where``."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is tuple and isinstance(value, (list, tuple)):
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(item, args[0], f"{where}[{i}]") for i, item in enumerate(value))
        if len(value) == len(args):
            return tuple(_coerce(item, arg, f"{where}[{i}]") for i, (item, arg) in enumerate(zip(value, args)))
    elif hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    elif hint in (bool, str) and type(value) is hint:
        return value
    elif hint is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    raise ProfileError(f"{where} must be {_type_name(hint)}, got {value!r}")


def _recipe_of(table: dict, defaults: dict, fields: dict, sources: dict, section: str, origin: Path) -> dict:
    """The settings of the training recipe a section names (its own ``recipe`` or ``[training]``'s), for the fields
    the section has; an unknown recipe is a ProfileError naming the file and table."""
    if "recipe" not in fields:
        return {}
    where = ("training", "recipe") if "recipe" not in table else (section, "recipe")
    name = table.get("recipe", defaults.get("recipe", fields["recipe"].default))
    from .diffusion.recipes import recipe_settings

    try:
        settings = recipe_settings(name)
    except ValueError as error:
        raise ProfileError(f"{sources.get(where, origin)}: [{where[0]}] recipe: {error}") from None
    return {key: value for key, value in settings.items() if key in fields}


def _section(cls: type, table: dict, defaults: dict, sources: dict, section: str, origin: Path) -> Any:
    """One frozen section from its TOML table, the [training] defaults filling the fields it leaves out."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(table) - set(fields))
    if unknown:
        where = sources.get((section, unknown[0]), origin)
        raise ProfileError(f"{where}: [{section}] has no key {unknown[0]!r}{_unknown_key(unknown[0], fields)}; its keys "
                           f"are {', '.join(fields)}")
    values = {}
    recipe = _recipe_of(table, defaults, fields, sources, section, origin)
    for name, field in fields.items():
        if name in table:
            key, value = (section, name), table[name]
        elif name in defaults:
            key, value = ("training", name), defaults[name]
        elif name in recipe:  # a recipe fills only what neither the section nor [training] set
            key, value = (section, "recipe"), recipe[name]
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise ProfileError(f"{origin}: [{section}] lacks {name!r} ({_type_name(hints[name])}), and no "
                               f"file it extends sets it")
        else:
            continue
        values[name] = _coerce(value, hints[name], f"{sources.get(key, origin)}: [{key[0]}] {name}")
    return cls(**values)


def profile_from_tables(data: dict, sources: dict, name: str, origin: Path) -> "ProfileConfig":
    """The typed, frozen :class:`ProfileConfig` of a profile's merged TOML tables (``read_profile``)."""
    data = dict(data)
    defaults = data.pop("training", {})
    sections = {f.name: f for f in dataclasses.fields(ProfileConfig) if f.name not in ("name", "seed")}
    shared = set().union(*({f.name for f in dataclasses.fields(typing.get_type_hints(ProfileConfig)[s])}
                           for s in TRAINED_SECTIONS))
    for key in sorted(set(defaults) - shared):
        raise ProfileError(f"{sources.get(('training', key), origin)}: [training] has no key {key!r}"
                           f"{_unknown_key(key, shared)}; it sets defaults for fields of the trained models' sections "
                           f"{TRAINED_SECTIONS}")
    for key in sorted(set(data) - set(sections) - {"seed"}):
        raise ProfileError(f"{sources.get((key,), origin)}: no profile section or key {key!r}; sections are "
                           f"{', '.join(['training', *sections])}")
    if "seed" not in data:
        raise ProfileError(f"{origin}: the profile sets no seed")
    hints = typing.get_type_hints(ProfileConfig)
    built = {}
    for section in sections:
        if section not in data:
            raise ProfileError(f"{origin}: the profile has no [{section}] table, and no file it extends has one")
        built[section] = _section(hints[section], data[section], defaults if section in TRAINED_SECTIONS else {},
                                  sources, section, origin)
    seed = _coerce(data["seed"], int, f"{sources.get(('seed',), origin)}: seed")
    scales = {section: built[section].downsample for section in SHARED_SCALE}
    if len({float(v) for v in scales.values()}) > 1:
        where = ", ".join(f"[{s}] downsample = {v} ({sources.get((s, 'downsample'), origin)})" for s, v in scales.items())
        raise ProfileError(f"{origin}: the generators and the segmenter must share one scale, but {where}: notebook 09 "
                           f"trains the segmenter on the generators' tiles")
    return ProfileConfig(name=name, seed=seed, **built)


def read_config(spec: str) -> "ProfileConfig":
    """The frozen config of a shipped profile's name or a TOML file's path, without ``HISTO_OVERRIDES``."""
    data, sources = read_profile(spec)
    return profile_from_tables(data, sources, profile_name(spec), profile_path(spec))


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
        names = {f.name for f in dataclasses.fields(section)}
        if field_name not in names:
            raise ValueError(f"{OVERRIDES_ENV}: section {section_name!r} has no field {field_name!r}"
                             f"{_unknown_key(field_name, names)}")
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
    """The frozen config of ``profile`` (a shipped profile's name or a TOML file's path; default:
    ``HISTO_PROFILE``), with any ``HISTO_OVERRIDES`` applied (e.g. fewer steps to fit a time limit;
    printed by the setup cell)."""
    return apply_overrides(read_config(current_spec() if profile is None else profile),
                           os.environ.get(OVERRIDES_ENV, ""))


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

    @property
    def hardware(self) -> str:
        """What a result was made on, in words, for its metrics and model card: the GPU's name, or the CPU's model,
        cores and bf16 kind (e.g. "AMD EPYC, 2 cores, AVX-512 BF16 (native bf16)")."""
        if getattr(self.device, "type", str(self.device)) == "cuda":
            import torch

            return torch.cuda.get_device_name(0)
        from .engine.precision import cpu_in_words

        return cpu_in_words()

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
