"""The project's Accelerate trainers: a shared base (:class:`AcceleratedTrainer`) and the
diffusion trainer (pixels or VQ-GAN latents, optionally class-conditional); ``vqgan`` adds the VQ-GAN's.

* AdamW (fused on CUDA), linear warm-up then cosine learning rate, EMA of the weights,
  gradient clipping and gradient accumulation.
* ``mixed_precision="auto"``: bf16 autocast on a GPU, and on a CPU with native bf16 matrix instructions
  (AVX-512 BF16 or AMX, asked of torch's cpuinfo, never assumed); fp32 elsewhere. Master weights stay
  fp32 either way. channels_last and optional ``torch.compile`` on GPU.
* The training crops live on the device as one uint8 tensor (latents as float); batches and
  flips/rotations come from a seeded CPU generator, timesteps and noise from a seeded device
  generator, and both states are checkpointed, so N steps + resume + N steps gives bitwise the
  same weights as 2N steps straight (on CPU).
* ``accelerator.save_state`` every ``checkpoint_every`` steps; ``resume=True`` continues
  from the latest checkpoint. A non-finite loss stops training with a message, and the last
  good checkpoint (never written from a non-finite state) is kept.
* The EMA model is saved as a diffusers ``DDPMPipeline`` that plain diffusers can load.
* Multi-GPU: run the same code under ``accelerate launch``; each process draws its own batches.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import shutil
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..paths import atomic_write_text
from .conditioning import condition_kwargs, null_condition
from .hybrid_loss import hybrid_loss
from .prediction import DEFAULT_PREDICTION_TYPE, min_snr_weight, training_target
from .schedules import make_scheduler


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the message names the step and the kept checkpoint."""


class ResumeMismatch(ValueError):
    """A run folder's checkpoint was written under another config; the message names the fields."""


@dataclass(frozen=True)
class TrainConfig:
    """Everything a run depends on; saved next to its checkpoints."""

    schedule: str = "linear"
    prediction_type: str = DEFAULT_PREDICTION_TYPE  # "epsilon", "v_prediction" or "sample"
    zero_terminal_snr: bool = False  # rescale the schedule to end at pure noise (needs v_prediction or sample)
    image_size: int = 32
    steps: int = 200
    batch_size: int = 16
    learning_rate: float = 2e-4
    warmup_steps: int = 20
    weight_decay: float = 0.0
    ema_decay: float = 0.999
    grad_clip: float = 1.0
    grad_accumulation: int = 1
    checkpoint_every: int = 100
    keep_checkpoints: int = 2
    in_channels: int = 3  # 3 for images; the VQ-GAN's latent channels for latent diffusion
    num_classes: int = 0  # > 0: class-conditional, with class index num_classes as "no class"
    label_dropout: float = 0.0  # probability of training on "no class"/"no condition" (classifier-free guidance)
    condition_features: int = 0  # > 0: conditioned on float vectors of this length (the last: the null flag)
    spatial_condition_channels: int = 0  # > 0: a SPADE UNet conditioned on paired maps [N, C, H, W] (zeros: none)
    spade_hidden_channels: int = 64  # width of SPADE's convolutions from the map to gamma and beta
    # > 0: the last this many channels of the training data are condition maps concatenated to the noisy
    # input (never noised, never dropped; CoSyn's layout); the model generates the first in_channels
    concat_condition_channels: int = 0
    learned_variance: bool = False  # output 2x channels; hybrid loss L_simple + vlb_weight * L_vlb (Nichol & Dhariwal)
    vlb_weight: float = 0.001
    augment_float: bool = False  # random flips/rotations of float data too (masks: yes; VQ latents: no)
    block_out_channels: tuple[int, ...] = (32, 64, 64)
    layers_per_block: int = 1
    attention: bool = False
    norm_num_groups: int = 0  # GroupNorm groups; 0: norm_groups()'s rule for narrow UNets
    # The training recipe (benchmarks/recipes.py compares them at equal minutes; README, "Quality per CPU-hour"):
    loss_weighting: str = "uniform"  # "uniform" (plain MSE of the prediction type) or "min_snr" (Hang et al. 2023)
    snr_gamma: float = 5.0  # min-SNR's γ
    preconditioning: str = "none"  # "none": the DDPM parameterisation; "edm": Karras et al. 2022 (diffusion/edm.py)
    lr_schedule: str = "cosine"  # after the linear warm-up: "cosine" decay to 0, or "constant"
    ema: str = "diffusers"  # "diffusers": decay (1 + s) / (10 + s) capped at ema_decay; "power": Karras et al. 2024
    ema_gamma: float = 6.94  # the power EMA's γ: (1 - 1/t)^(γ + 1); 6.94 is σ_rel = 0.10 of the run's length
    mixed_precision: str = "auto"  # "auto": bf16 on CUDA and on CPUs with native bf16, else fp32 ("no")
    compile: bool = False
    seed: int = 0
    extra: dict = field(default_factory=dict)


RECIPE_CHOICES = {"loss_weighting": ("uniform", "min_snr"), "preconditioning": ("none", "edm"),
                  "lr_schedule": ("cosine", "constant"), "ema": ("diffusers", "power")}


def check_recipe(config: TrainConfig) -> None:
    """Refuse an unknown recipe setting, naming the field, and combinations that have no meaning."""
    for name, choices in RECIPE_CHOICES.items():
        if getattr(config, name) not in choices:
            raise ValueError(f"TrainConfig.{name} must be one of {choices}, got {getattr(config, name)!r}")
    if config.preconditioning == "edm" and (config.loss_weighting != "uniform" or config.learned_variance
                                            or config.concat_condition_channels):
        raise ValueError("preconditioning='edm' has its own loss weighting and no learned variance or concatenated "
                         "maps here; set loss_weighting='uniform', learned_variance=False, concat_condition_channels=0")


# A profile section's fields that the trainer knows under another name.
SECTION_FIELD_NAMES = {"train_steps": "steps"}


def section_train_config(section, seed: int = 0, own: dict | None = None, **overrides) -> TrainConfig:
    """The trainer's config from a profile section (any dataclass): every section field that
    :class:`TrainConfig` has by name (``train_steps`` as ``steps``), then ``own`` (what the model
    fixes: its channels, condition, image size), then ``overrides`` (the caller's: CLI flags, a
    notebook's exercise), whose ``None`` values are ignored, as an unset flag should be."""
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    values = {"seed": seed}
    for f in dataclasses.fields(section):
        name = SECTION_FIELD_NAMES.get(f.name, f.name)
        if name in known:
            values[name] = getattr(section, f.name)
    values.update(own or {})
    values.update({k: v for k, v in overrides.items() if v is not None})
    unknown = sorted(set(values) - known)
    if unknown:
        raise TypeError(f"TrainConfig has no field {unknown[0]!r}")
    return TrainConfig(**values)


def norm_groups(channels: tuple[int, ...], min_channels_per_group: int = 4) -> int:
    """GroupNorm groups for a UNet with these level widths: diffusers' 32 where every group keeps at
    least ``min_channels_per_group`` channels, fewer for narrow UNets.

    One channel per group is instance norm: it removes each feature map's mean, and with it the
    crop's overall colour. Measured on the smoke DDPM (channels 16/32/32, linear, v, 300 steps):
    16 groups gave DDPM samples 18/23 levels too red/blue; 4 groups brought them within 5.
    """
    groups = max(1, min(32, min(channels) // min_channels_per_group))
    while any(c % groups for c in channels):
        groups -= 1
    return groups


def build_unet(config: TrainConfig):
    """A diffusers UNet2DModel for ``config.in_channels`` x ``config.image_size``², with a class
    embedding of ``num_classes + 1`` entries (the last one: "no class") when class-conditional, or a
    :class:`~histolab_utils.diffusion.conditioning.VectorConditionedUNet2DModel` when
    ``config.condition_features`` > 0."""
    from diffusers import UNet2DModel

    from .conditioning import VectorConditionedUNet2DModel

    _condition_kinds(config)
    levels = len(config.block_out_channels)
    out_channels = config.in_channels * (2 if config.learned_variance else 1)
    in_channels = config.in_channels + config.concat_condition_channels
    if config.concat_condition_channels and (config.spatial_condition_channels or config.condition_features):
        raise ValueError("concat_condition_channels combine with num_classes (or nothing), not with SPADE maps "
                         "or condition vectors")
    if config.spatial_condition_channels:
        from .spade import SPADEUNet

        return SPADEUNet(
            sample_size=config.image_size, in_channels=config.in_channels, out_channels=out_channels,
            label_nc=config.spatial_condition_channels, block_out_channels=tuple(config.block_out_channels),
            layers_per_block=config.layers_per_block,
            attention_levels=tuple([False] * (levels - 1) + [bool(config.attention)]),
            norm_num_groups=config.norm_num_groups or norm_groups(tuple(config.block_out_channels)),
            spade_hidden_channels=config.spade_hidden_channels)
    down = ["DownBlock2D"] * levels
    up = ["UpBlock2D"] * levels
    if config.attention and levels > 1:
        down[-2], up[1] = "AttnDownBlock2D", "AttnUpBlock2D"
    if config.condition_features:
        return VectorConditionedUNet2DModel(
            sample_size=config.image_size, in_channels=config.in_channels, out_channels=out_channels,
            down_block_types=tuple(down), up_block_types=tuple(up), block_out_channels=tuple(config.block_out_channels),
            layers_per_block=config.layers_per_block,
            norm_num_groups=config.norm_num_groups or norm_groups(tuple(config.block_out_channels)),
            condition_features=config.condition_features)
    return UNet2DModel(
        sample_size=config.image_size, in_channels=in_channels, out_channels=out_channels,
        num_class_embeds=config.num_classes + 1 if config.num_classes else None, layers_per_block=config.layers_per_block,
        block_out_channels=tuple(config.block_out_channels), down_block_types=tuple(down), up_block_types=tuple(up),
        norm_num_groups=config.norm_num_groups or norm_groups(tuple(config.block_out_channels)),
    )


class BatchSource:
    """Random batches from a resident training set, drawn from a checkpointable generator (one
    per process, saved with each checkpoint, so resuming restores its exact state).

    ``data`` is either uint8 images [N, H, W, 3] (scaled to [-1, 1], with a random dihedral
    transform per element) or float data [N, C, H, W] (kept in their dtype, cast per batch; used as
    they are unless ``augment``: augment VQ latents by encoding augmented images, but masks can be
    flipped and rotated directly). With ``labels`` (class indices [N] or float condition vectors
    [N, F]), :meth:`draw` also returns each element's label, replaced by ``null_label`` (an index or
    a vector) with probability ``label_dropout`` (classifier-free guidance).

    ``labels`` may also be paired spatial maps [N, C, H, W] (uint8 or float; a SPADE model's
    condition): each map is drawn with its example and goes through the same flip and rotation, and
    a dropped map becomes all zeros. ``vector_field`` names two map channels that hold a planar
    vector per pixel, (horizontal, vertical) (HoVer-Net's distance maps): a rotation or flip moves
    those pixels and also turns their vectors, so the components are swapped and negated to match.
    """

    def __init__(self, data: np.ndarray, device: torch.device, seed: int, labels: np.ndarray | None = None,
                 label_dropout: float = 0.0, null_label: int | np.ndarray | None = None,
                 augment: bool | None = None, vector_field: tuple[int, int] | None = None) -> None:
        self.images = data.dtype == np.uint8
        if self.images and (data.ndim != 4 or data.shape[-1] != 3):
            raise ValueError(f"training images must be uint8 [N, H, W, 3], got {data.shape} {data.dtype}")
        if not self.images and (data.ndim != 4 or not np.issubdtype(data.dtype, np.floating)):
            raise ValueError(f"training latents must be float [N, C, H, W], got {data.shape} {data.dtype}")
        tensor = torch.from_numpy(np.ascontiguousarray(data))
        self.data = (tensor.permute(0, 3, 1, 2) if self.images else tensor).to(device)
        self.augment = self.images if augment is None else augment
        self.labels = None
        if labels is not None:
            labels = np.asarray(labels)
            if labels.shape[:1] != (len(data),) or labels.ndim not in (1, 2, 4):
                raise ValueError(f"need one label (condition vector or map) per training example: labels of shape "
                                 f"{labels.shape} for {len(data)} examples")
            if labels.ndim == 4 and labels.shape[-2:] != tuple(self.data.shape[-2:]):
                raise ValueError(f"condition maps of {labels.shape[-2]}x{labels.shape[-1]} px do not match the "
                                 f"{self.data.shape[-2]}x{self.data.shape[-1]} px training data")
            dtype = {1: np.int64, 2: np.float32, 4: np.uint8 if labels.dtype == np.uint8 else np.float32}[labels.ndim]
            self.labels = torch.from_numpy(np.ascontiguousarray(labels, dtype=dtype)).to(device)
        self.spatial = self.labels is not None and self.labels.ndim == 4
        if vector_field is not None and (not self.spatial or max(vector_field) >= self.labels.shape[1]):
            raise ValueError(f"vector_field {vector_field} names channels of the condition maps, which are "
                             f"{'absent' if not self.spatial else self.labels.shape[1]}")
        self.vector_field = vector_field
        if self.spatial:
            null_label = torch.zeros(self.labels.shape[1:], device=device)
        elif null_label is not None and self.labels is not None and self.labels.ndim == 2:
            null_label = torch.as_tensor(np.asarray(null_label, dtype=np.float32)).to(device)
        self.label_dropout, self.null_label = label_dropout, null_label
        # Indices and augmentation choices come from a CPU generator (tiny draws); noise and timesteps
        # from one on the device, so no large tensor crosses the bus. Both are checkpointed.
        self.generator = torch.Generator(device="cpu").manual_seed(seed)
        self.noise_generator = torch.Generator(device=device).manual_seed(seed + 1)
        self.device = device

    def draw(self, size: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """A float batch (and its labels, some dropped to ``null_label``, when there are labels)."""
        index = torch.randint(len(self.data), (size,), generator=self.generator).to(self.device)
        x = self.data[index].float() / 127.5 - 1.0 if self.images else self.data[index].float()
        labels = None if self.labels is None else self.labels[index]
        if self.augment:
            turns = torch.randint(4, (size,), generator=self.generator).to(self.device).view(-1, 1, 1, 1)
            flips = (torch.rand(size, generator=self.generator) < 0.5).to(self.device).view(-1, 1, 1, 1)
            if self.spatial:  # one transform for the example and its map: they stay aligned
                x, labels = self._dihedral(torch.cat([x, labels.float()], 1), turns, flips).split(
                    [x.shape[1], labels.shape[1]], dim=1)
                if self.vector_field is not None:
                    labels = self._turn_vectors(labels, turns, flips)
            else:
                x = self._dihedral(x, turns, flips)
        return x, self._dropped(labels)

    @staticmethod
    def _dihedral(x: torch.Tensor, turns: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
        # torch.where rather than boolean-mask indexing: a mask index waits for the GPU every time.
        turned = x
        for k in (1, 2, 3):
            turned = torch.where(turns == k, torch.rot90(x, k, dims=(2, 3)), turned)
        return torch.where(flips, turned.flip(-1), turned)

    def _turn_vectors(self, maps: torch.Tensor, turns: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
        # torch.rot90 by one turn sends the pixel at (row, col) to (W - 1 - col, row): a displacement
        # (dx, dy) becomes (dy, -dx). A flip of the columns negates dx.
        h_index, v_index = self.vector_field
        h, v = maps[:, h_index:h_index + 1], maps[:, v_index:v_index + 1]
        new_h = torch.where(turns == 1, v, torch.where(turns == 2, -h, torch.where(turns == 3, -v, h)))
        new_v = torch.where(turns == 1, -h, torch.where(turns == 2, -v, torch.where(turns == 3, h, v)))
        maps = maps.clone()
        maps[:, h_index:h_index + 1] = torch.where(flips, -new_h, new_h)
        maps[:, v_index:v_index + 1] = new_v
        return maps

    def _dropped(self, labels: torch.Tensor | None) -> torch.Tensor | None:
        if labels is None:
            return None
        if self.spatial:
            labels = labels.float()
        if self.label_dropout > 0:
            dropped = (torch.rand(len(labels), generator=self.generator) < self.label_dropout).to(self.device)
            if labels.ndim > 1:
                dropped = dropped.view(-1, *[1] * (labels.ndim - 1))
                labels = torch.where(dropped, self.null_label.expand_as(labels), labels)
            else:
                labels = torch.where(dropped, torch.full_like(labels, self.null_label), labels)
        return labels

    def batch(self, size: int) -> torch.Tensor:
        """A float batch without labels."""
        return self.draw(size)[0]

    def randn_like(self, x: torch.Tensor) -> torch.Tensor:
        return torch.randn(x.shape, generator=self.noise_generator, device=self.device, dtype=x.dtype)

    def timesteps(self, size: int, steps: int) -> torch.Tensor:
        return torch.randint(steps, (size,), generator=self.noise_generator, device=self.device)

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state(), "noise_generator": self.noise_generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        self.noise_generator.set_state(state["noise_generator"])


def _checkpoints(out_dir: Path) -> list[Path]:
    folder = out_dir / "checkpoints"
    return sorted(folder.glob("step-*"), key=lambda p: int(p.name.split("-")[1])) if folder.is_dir() else []


def save_pretrained_atomic(model, folder: str | Path, extra: dict[str, dict] | None = None) -> Path:
    """``model.save_pretrained`` into a staging folder that replaces ``folder`` only when complete;
    ``extra`` maps file names to JSON-able dicts written beside it."""
    folder = Path(folder)
    staging = folder.with_name(f".{folder.name}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging)
    for name, content in (extra or {}).items():
        (staging / name).write_text(json.dumps(content, default=list, indent=2))
    shutil.rmtree(folder, ignore_errors=True)
    staging.rename(folder)
    return folder


class AcceleratedTrainer:
    """What every trainer of the project shares: the step loop with a progress bar, checkpoints
    written aside and renamed (every ``config.checkpoint_every`` steps, keeping the last
    ``config.keep_checkpoints``), exact resume, the non-finite-loss guard and the loss log.

    A subclass sets ``config``, ``out_dir``, ``progress``, ``accelerator`` and ``batches`` (a
    :class:`BatchSource`), then implements :meth:`train_step`, returning that step's log entries
    (0-d tensors or floats).

    Reading a loss on the host waits for the GPU, so the entries are kept on the device and read
    every ``LOG_EVERY`` steps, before every checkpoint and at the end. That is also when a
    non-finite loss is caught: training stops, names the step, and no checkpoint is written from
    the bad state, so the last checkpoint on disk is a good one.
    """

    name = "train"
    step: int = 0
    log: list[dict]
    LOG_EVERY = 25
    train_seconds: float = 0.0  # wall time of every session of this run, resumes included
    seconds: float = 0.0  # wall time of the last call to train()
    _started: float = 0.0

    def autocast(self):
        """Autocast at this trainer's own precision, fixed when it was built: Accelerate's process-wide state may
        have been reset since by an Accelerator of another precision (:func:`allow_precision_change`)."""
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.accelerator.histolab_precision)
        return torch.autocast(self.accelerator.device.type, dtype=dtype, enabled=dtype is not None)

    # -- checkpoints -----------------------------------------------------------------------
    def local_state(self) -> dict:
        """This process's own state beyond the models, optimisers and generators (saved per rank)."""
        return {}

    def load_local_state(self, state: dict) -> None:
        """Restore what :meth:`local_state` returned."""

    def save_checkpoint(self) -> Path:
        """``accelerator.save_state`` into checkpoints/step-N (written aside, then renamed)."""
        target = self.out_dir / "checkpoints" / f"step-{self.step}"
        staging = target.with_name(f".{target.name}.tmp")
        if self.accelerator.is_main_process:
            shutil.rmtree(staging, ignore_errors=True)
        self.accelerator.wait_for_everyone()
        self.accelerator.save_state(str(staging))
        # accelerate saves registered objects from the main process only; every rank keeps its own
        # batch/noise generator, so each saves it, and all must finish before the folder is renamed.
        torch.save({**self.batches.state_dict(), **self.local_state()},
                   staging / f"batches_{self.accelerator.process_index}.pt")
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            (staging / "trainer.json").write_text(json.dumps({
                "step": self.step, "log": self.log, "config": asdict(self.config),
                "train_seconds": self.train_seconds + (time.perf_counter() - self._started if self._started else 0.0),
            }, default=list))
            shutil.rmtree(target, ignore_errors=True)
            staging.rename(target)
            for old in _checkpoints(self.out_dir)[: -self.config.keep_checkpoints]:
                shutil.rmtree(old)
        self.accelerator.wait_for_everyone()
        return target

    def resume(self) -> bool:
        """Load the latest checkpoint, if any; return whether one was loaded."""
        checkpoints = _checkpoints(self.out_dir)
        if not checkpoints:
            return False
        latest = checkpoints[-1]
        own = latest / f"batches_{self.accelerator.process_index}.pt"
        if not own.is_file():
            raise FileNotFoundError(f"{latest} has no generator state for process {self.accelerator.process_index} "
                                    "(resumed with more processes than it was saved with?)")
        state = json.loads((latest / "trainer.json").read_text())
        self._check_resumable(state["config"], latest)
        self.accelerator.load_state(str(latest))
        local = torch.load(own)
        self.batches.load_state_dict(local)
        self.load_local_state(local)
        self.step, self.log = state["step"], state["log"]
        self.train_seconds = state.get("train_seconds", 0.0)
        return True

    # what a resumed run may change: how long it goes on (--steps), and settings that do not change what it computes
    RESUMABLE_CHANGES = frozenset({"steps", "checkpoint_every", "keep_checkpoints", "compile"})

    def _check_resumable(self, saved: dict, checkpoint: Path) -> None:
        """Refuse to continue a checkpoint written under another config: the result would be neither run."""
        current = json.loads(json.dumps(asdict(self.config), default=list))
        # a field added since the checkpoint was written held its default then
        defaults = json.loads(json.dumps(asdict(type(self.config)()), default=list))
        saved = {**{k: v for k, v in defaults.items() if k not in saved}, **saved}
        changed = sorted(k for k in set(saved) | set(current)
                         if saved.get(k) != current.get(k) and k not in self.RESUMABLE_CHANGES)
        if changed:
            detail = ", ".join(f"{k}: {saved.get(k)!r} there, {current.get(k)!r} now" for k in changed)
            raise ResumeMismatch(f"cannot resume from {checkpoint}: it was trained with another config ({detail}); "
                             f"use another output folder, or delete {checkpoint.parent} to start again")

    def _flush_log(self) -> None:
        """Read the pending entries on the host (one transfer), check the losses, extend the log."""
        pending, self._pending = getattr(self, "_pending", []), []
        if not pending:
            return
        keys = [k for k, v in pending[0][1].items() if torch.is_tensor(v)]
        values = (torch.stack([torch.stack([entry[k].detach().float().reshape(()) for k in keys])
                               for _, entry in pending]).cpu().tolist() if keys else [[]] * len(pending))
        for (step, entry), row in zip(pending, values):
            record = {"step": step, **entry, **dict(zip(keys, row))}
            for key in keys:
                if key.endswith("loss") and not np.isfinite(record[key]):
                    kept = _checkpoints(self.out_dir)
                    raise TrainingDiverged(
                        f"{key.replace('_', ' ')} became {record[key]} at step {step} ({self.name}); stopped. "
                        f"Last good checkpoint: {kept[-1] if kept else 'none written yet'}")
            self.log.append(record)

    # -- training ----------------------------------------------------------------------------
    def train_step(self) -> dict:
        raise NotImplementedError

    def train(self, steps: int | None = None, resume: bool = False) -> pd.DataFrame:
        """Train until ``steps`` (default ``config.steps``) optimiser steps have been taken in all."""
        from tqdm.auto import tqdm

        if resume:
            self.resume()
        total = steps or self.config.steps
        bar = tqdm(total=total, initial=self.step, desc=self.name,
                   disable=not (self.progress and self.accelerator.is_main_process))
        started = self._started = time.perf_counter()
        self._pending = []
        while self.step < total:
            entry = self.train_step()
            self.step += 1
            self._pending.append((self.step, entry))
            bar.update()
            checkpoint = self.step % self.config.checkpoint_every == 0 or self.step == total
            if checkpoint or self.step % self.LOG_EVERY == 0:
                self._flush_log()
                bar.set_postfix(loss=f"{self.log[-1]['loss']:.4f}")
            if checkpoint:
                self.save_checkpoint()
        bar.close()
        self.seconds = time.perf_counter() - started
        self.train_seconds += self.seconds
        self._started = time.perf_counter()
        self.save_log()
        return self.loss_frame()

    def loss_frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.log)

    def save_log(self) -> None:
        if self.accelerator.is_main_process:
            atomic_write_text(self.out_dir / "loss.csv", self.loss_frame().to_csv(index=False))


MIXED_PRECISIONS = ("auto", "bf16", "fp16", "no")

# "1": "auto" treats this CPU as one with native bf16 (AVX-512 BF16 or AMX), "0": as one without; unset: ask torch.
# The suite runs both ways (README, "Tests and CI"), so a machine of either kind is tested on its own paths and the
# other's. On a CPU without native bf16, "1" makes "auto" train in emulated bf16: correct, and about 17x slower.
CPU_BF16_ENV = "HISTO_CPU_BF16"


def _cpu_bf16_override() -> bool | None:
    value = os.environ.get(CPU_BF16_ENV, "").strip().lower()
    if not value:
        return None
    if value in ("1", "true", "yes"):
        return True
    if value in ("0", "false", "no"):
        return False
    raise ValueError(f"{CPU_BF16_ENV} must be 1 (treat the CPU as bf16-native) or 0 (as not), got {value!r}")


def cpu_has_native_bf16(capabilities: dict | None = None) -> bool:
    """Whether this CPU multiplies bf16 matrices natively (AVX-512 BF16 or AMX-BF16), as torch's cpuinfo
    reports it, unless ``HISTO_CPU_BF16`` says otherwise. Without them, bf16 autocast on a CPU is emulated and
    slower than fp32. Given ``capabilities`` (a dict like ``torch.cpu.get_capabilities()``), those are read."""
    if capabilities is None:
        override = _cpu_bf16_override()
        if override is not None:
            return override
        get = getattr(torch.cpu, "get_capabilities", None)
        if get is None:  # older torch: the private probes
            return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
        capabilities = get()
    return bool(capabilities.get("avx512_bf16") or capabilities.get("amx_bf16"))


def cpu_in_words() -> str:
    """This machine's processor for a record or card: model, cores and its bf16 kind, e.g.
    "AMD EPYC, 2 cores, AVX-512 BF16 (native bf16)" or "..., AVX2 only (bf16 emulated)"."""
    import platform

    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    get = getattr(torch.cpu, "get_capabilities", None)
    capabilities = get() if get else {}
    if capabilities.get("amx_bf16"):
        kind = "AMX (native bf16)"
    elif capabilities.get("avx512_bf16"):
        kind = "AVX-512 BF16 (native bf16)"
    elif capabilities.get("avx512f") or capabilities.get("avx512"):
        kind = "AVX-512 without BF16 (bf16 emulated)"
    else:
        kind = "AVX2 only (bf16 emulated)"
    return f"{model}, {os.cpu_count()} cores, {kind}"


def resolve_mixed_precision(setting: str, cuda: bool | None = None, cpu_bf16: bool | None = None) -> str:
    """The precision ``setting`` means here: ``"auto"`` is ``"bf16"`` on CUDA or on a CPU with native
    bf16 (:func:`cpu_has_native_bf16`), ``"no"`` (fp32) otherwise; any other setting is kept as it is."""
    if setting not in MIXED_PRECISIONS:
        raise ValueError(f"mixed_precision must be one of {MIXED_PRECISIONS}, got {setting!r}")
    if setting != "auto":
        return setting
    cuda = torch.cuda.is_available() if cuda is None else cuda
    if cuda:
        return "bf16"
    return "bf16" if (cpu_has_native_bf16() if cpu_bf16 is None else cpu_bf16) else "no"


def allow_precision_change() -> None:
    """Let a single process build Accelerators of different precisions one after another.

    Accelerate keeps one process-wide state and refuses a second ``Accelerator(mixed_precision=...)`` of another
    precision ("AcceleratorState has already been initialized and cannot be changed"). In a notebook that is the
    normal case: one of our trainers ran in bf16 ("auto" on a bf16-native CPU), then a cell builds its own
    ``Accelerator(mixed_precision="no")``, or the other way round. Between bf16 and fp32 the state matters only to
    autocast, and our trainers autocast at their own precision (:meth:`AcceleratedTrainer.autocast`; a prepared
    model's forward keeps the autocast it was prepared with), so a new precision resets the state, with a warning
    that says so. Earlier Accelerators then *report* the new precision. fp16 is different: Accelerate unscales its
    gradients by the process-wide setting, so a change to or from fp16 is refused, with a message that says what to
    do. Multi-process runs (``accelerate launch``) keep Accelerate's check. Idempotent; :func:`make_accelerator`
    installs it, so it is in force once any of our trainers has been built.
    """
    from accelerate.state import AcceleratorState, PartialState

    check = AcceleratorState._check_initialized
    if getattr(check, "allows_precision_change", False):
        return

    def _check_initialized(self, mixed_precision=None, cpu=None):
        wanted = None if mixed_precision is None else str(mixed_precision).lower()
        if (self.initialized and wanted is not None and wanted != self._mixed_precision
                and self.__dict__.get("num_processes", 1) == 1):
            if "fp16" in (wanted, self._mixed_precision):
                raise ValueError(
                    f"this process already trains with mixed_precision={self._mixed_precision!r} and Accelerate "
                    f"unscales fp16 gradients by that one process-wide setting, so an Accelerator with "
                    f"{wanted!r} cannot follow it here: restart the kernel, or use {self._mixed_precision!r}")
            warnings.warn(f"histolab_utils: Accelerate's process-wide precision was {self._mixed_precision!r} "
                          f"(an earlier trainer or Accelerator); reset to {wanted!r} for this Accelerator. Our trainers "
                          "built before keep autocasting at their own precision.", stacklevel=4)
            AcceleratorState._shared_state.clear()
            self.__dict__.update(PartialState._shared_state)
            return None
        return check(self, mixed_precision, cpu)

    _check_initialized.allows_precision_change = True
    AcceleratorState._check_initialized = _check_initialized


def make_accelerator(mixed_precision: str, grad_accumulation: int = 1):
    """An Accelerator with the precision :func:`resolve_mixed_precision` picks for ``mixed_precision``; it may
    follow an Accelerator of another precision in the same process (:func:`allow_precision_change`)."""
    from accelerate import Accelerator

    allow_precision_change()
    mixed_precision = resolve_mixed_precision(mixed_precision)
    with warnings.catch_warnings():  # our own trainers changing precision in turn is expected, not news
        warnings.filterwarnings("ignore", message="histolab_utils: Accelerate's process-wide precision")
        # cpu=True on a machine without CUDA: without it, a multi-process CPU launch (torchrun) is
        # not joined into one process group and every rank trains alone as "rank 0".
        accelerator = Accelerator(mixed_precision=mixed_precision, gradient_accumulation_steps=grad_accumulation,
                                  cpu=not torch.cuda.is_available())
    accelerator.histolab_precision = mixed_precision
    return accelerator


def _check_training_data(data: np.ndarray, config: TrainConfig) -> None:
    images = data.dtype == np.uint8
    layout = "uint8 images [N, H, W, 3]" if images else "float latents [N, C, H, W]"
    if data.ndim != 4:
        raise ValueError(f"training data must be {layout}; got shape {data.shape}")
    height, width, channels = (data.shape[1:3] + data.shape[3:]) if images else (data.shape[2:] + data.shape[1:2])
    if (height, width) != (config.image_size, config.image_size):
        raise ValueError(f"training data ({layout}, shape {data.shape}) are {height}x{width} px but "
                         f"config.image_size is {config.image_size}")
    expected = config.in_channels + config.concat_condition_channels
    if channels != expected:
        fields = "config.in_channels" + (" + config.concat_condition_channels" if config.concat_condition_channels else "")
        raise ValueError(f"training data ({layout}, shape {data.shape}) have {channels} channels but {fields} is {expected}")


def _condition_kinds(config: TrainConfig) -> dict[str, int]:
    """The config's condition settings, checked: at most one kind (class labels, vectors or maps) is set."""
    kinds = {"num_classes": config.num_classes, "condition_features": config.condition_features,
             "spatial_condition_channels": config.spatial_condition_channels}
    if sum(map(bool, kinds.values())) > 1:
        raise ValueError(f"set one of num_classes, condition_features and spatial_condition_channels; got {kinds}")
    return kinds


def _check_labels(labels: np.ndarray | None, config: TrainConfig) -> None:
    kinds = _condition_kinds(config)
    conditional = any(kinds.values())
    if (labels is None) == conditional:
        raise ValueError("give labels exactly when the config is conditional "
                         f"({', '.join(f'{k}={v}' for k, v in kinds.items())}; "
                         f"labels {'given' if labels is not None else 'absent'})")
    if labels is None:
        return
    labels = np.asarray(labels)
    if config.spatial_condition_channels:
        if labels.ndim != 4 or labels.shape[1] != config.spatial_condition_channels:
            raise ValueError(f"condition maps must be [N, {config.spatial_condition_channels}, H, W]; "
                             f"got shape {labels.shape}")
    elif config.condition_features:
        if labels.ndim != 2 or labels.shape[1] != config.condition_features:
            raise ValueError(f"condition vectors must be float [N, {config.condition_features}]; got shape {labels.shape}")
    elif np.min(labels) < 0 or np.max(labels) >= config.num_classes:
        raise ValueError(f"labels must lie in 0..{config.num_classes - 1}; got {np.min(labels)}..{np.max(labels)}")


@functools.lru_cache(maxsize=1)
def _power_ema_class():
    from diffusers.training_utils import EMAModel

    class PowerEMA(EMAModel):
        """EMA whose decay at step t is (1 - 1/t)^(γ + 1) (Karras, Aittala, Lehtinen, Hellsten, Aila & Laine,
        "Analyzing and Improving the Training Dynamics of Diffusion Models", CVPR 2024, eq. 3): the average's
        length grows with the run, a fixed fraction of it (σ_rel), rather than a fixed number of steps."""

        gamma: float = 6.94

        def get_decay(self, optimization_step: int) -> float:
            step = max(1, optimization_step)
            return (1 - 1 / step) ** (self.gamma + 1)

        def state_dict(self) -> dict:
            return {**super().state_dict(), "gamma": self.gamma}

        def load_state_dict(self, state_dict: dict) -> None:
            state_dict = dict(state_dict)
            self.gamma = state_dict.pop("gamma", self.gamma)
            super().load_state_dict(state_dict)

    return PowerEMA


def __getattr__(name: str):
    if name == "PowerEMA":  # built on first use: diffusers is imported lazily
        return _power_ema_class()
    raise AttributeError(name)


class DiffusionTrainer(AcceleratedTrainer):
    """Train a UNet2DModel with one noise schedule, on uint8 crops or on float latents, optionally
    conditioned on class labels (with label dropout for classifier-free guidance).

    >>> trainer = DiffusionTrainer(TrainConfig(schedule="cosine", steps=500), crops, "runs/cosine")
    >>> log = trainer.train()          # pandas DataFrame: step, loss, lr
    >>> trainer.save_pipeline()        # runs/cosine/pipeline, loadable by DDPMPipeline.from_pretrained
    """

    def __init__(self, config: TrainConfig, crops: np.ndarray, out_dir: str | Path, progress: bool = True,
                 labels: np.ndarray | None = None) -> None:
        from accelerate.utils import set_seed
        from diffusers.optimization import get_constant_schedule_with_warmup, get_cosine_schedule_with_warmup
        from diffusers.training_utils import EMAModel

        _check_training_data(crops, config)
        _check_labels(labels, config)
        check_recipe(config)
        self.config, self.out_dir, self.progress = config, Path(out_dir), progress
        self.name = (f"train {config.schedule} {config.prediction_type}"
                     + (f" | {config.num_classes} classes" if config.num_classes else "")
                     + (f" | {config.condition_features}-d condition" if config.condition_features else "")
                     + (f" | {config.concat_condition_channels} map channels" if config.concat_condition_channels
                        else ""))
        self.accelerator = make_accelerator(config.mixed_precision, config.grad_accumulation)
        set_seed(config.seed, device_specific=True)
        device = self.accelerator.device
        # x0 estimates are clipped to [-1, 1] for images only: latents have unit variance, not bounds
        self.noise_scheduler = make_scheduler("ddpm", config.schedule, prediction_type=config.prediction_type,
                                              zero_terminal_snr=config.zero_terminal_snr,
                                              clip_sample=crops.dtype == np.uint8)
        self.train_steps = self.noise_scheduler.config.num_train_timesteps

        model = build_unet(config)
        if device.type == "cuda":
            model = model.to(memory_format=torch.channels_last)
        ema_class = _power_ema_class() if config.ema == "power" else EMAModel
        self.ema = ema_class(model.parameters(), decay=config.ema_decay, model_cls=type(model), model_config=model.config)
        if config.ema == "power":
            self.ema.gamma = config.ema_gamma
        optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay,
                                      fused=device.type == "cuda")
        lr_scheduler = (get_cosine_schedule_with_warmup(optimizer, config.warmup_steps, config.steps)
                        if config.lr_schedule == "cosine" else get_constant_schedule_with_warmup(optimizer,
                                                                                                 config.warmup_steps))
        self.model, self.optimizer, self.lr_scheduler = self.accelerator.prepare(model, optimizer, lr_scheduler)
        if config.compile:
            self.model = torch.compile(self.model)
        self.ema.to(device)
        seed = config.seed * 1000 + self.accelerator.process_index
        null = null_condition(config.condition_features)[0] if config.condition_features else config.num_classes
        self.batches = BatchSource(crops, device, seed, labels=labels, label_dropout=config.label_dropout,
                                   null_label=null, augment=True if config.augment_float else None)
        self.accelerator.register_for_checkpointing(self.ema)
        self.step = 0
        self.log = []

    def _loss(self, x0: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        maps = None
        if self.config.concat_condition_channels:  # the data's last channels: maps that condition, not data
            x0, maps = x0.split([self.config.in_channels, self.config.concat_condition_channels], dim=1)
        noise = self.batches.randn_like(x0)
        if self.config.preconditioning == "edm":
            from .edm import edm_loss

            normal = self.batches.randn_like(x0[:, 0, 0, 0])
            return edm_loss(self.model, x0, noise, normal, autocast=self.autocast,
                            **condition_kwargs(self.model, labels))
        t = self.batches.timesteps(len(x0), self.train_steps)
        noisy = self.noise_scheduler.add_noise(x0, noise, t)
        target = training_target(self.noise_scheduler, x0, noise, t)
        model_input = noisy if maps is None else torch.cat([noisy, maps], dim=1)
        with self.autocast():
            prediction = self.model(model_input, t, **condition_kwargs(self.model, labels)).sample
        if self.config.learned_variance:
            return hybrid_loss(self.noise_scheduler, prediction, target, x0, noisy, t, self.config.vlb_weight)[0]
        if self.config.loss_weighting == "min_snr":
            weight = min_snr_weight(self.noise_scheduler, t, self.config.snr_gamma)
            per_example = (prediction.float() - target.float()).pow(2).mean(dim=(1, 2, 3))
            return (weight * per_example).mean()
        return torch.nn.functional.mse_loss(prediction.float(), target.float())

    def train_step(self) -> dict:
        for _ in range(self.config.grad_accumulation):
            with self.accelerator.accumulate(self.model):
                loss = self._loss(*self.batches.draw(self.config.batch_size))
                self.accelerator.backward(loss)
                if self.accelerator.sync_gradients:
                    self.accelerator.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
                self.optimizer.step()
                self.lr_scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
        self.ema.step(self.model.parameters())
        return {"loss": loss.detach(), "lr": self.lr_scheduler.get_last_lr()[0]}

    def loss_frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.log, columns=["step", "loss", "lr"])

    # -- outputs -----------------------------------------------------------------------------
    def ema_unet(self):
        """A copy of the model with the EMA weights."""
        unet = build_unet(self.config)
        self.ema.copy_to(unet.parameters())
        return unet.eval()

    def save_pipeline(self, folder: str | Path | None = None) -> Path:
        """Save the EMA model as a diffusers DDPMPipeline (its scheduler carries our betas)."""
        from diffusers import DDPMPipeline

        folder = Path(folder or self.out_dir / "pipeline")
        if self.accelerator.is_main_process:
            pipeline = DDPMPipeline(unet=self.ema_unet(), scheduler=self.noise_scheduler)
            save_pretrained_atomic(pipeline, folder, {"histolab_train_config.json": asdict(self.config)})
        self.accelerator.wait_for_everyone()
        return folder


def plot_losses(logs: dict[str, pd.DataFrame], ax=None, smooth: int = 20):
    """Loss curves (rolling mean over ``smooth`` steps) of several runs on one axis."""
    import matplotlib.pyplot as plt

    ax = ax or plt.gca()
    for name, log in logs.items():
        ax.plot(log["step"], log["loss"].rolling(smooth, min_periods=1).mean(), label=name)
    ax.set_xlabel("step")
    ax.set_ylabel(f"loss (rolling mean of {smooth})")
    ax.set_yscale("log")
    ax.legend()
    return ax
