"""The diffusion trainer (pixels or VQ-GAN latents; unconditional, or conditioned on classes, vectors or maps),
its config (:class:`TrainConfig`) and the recipes it knows. It runs on the project's engine
(:class:`~histolab_utils.engine.trainer.AcceleratedTrainer`: checkpoints, exact resume, the non-finite-loss
guard; :mod:`histolab_utils.engine.precision`: ``mixed_precision="auto"``); the UNets come from
:mod:`histolab_utils.diffusion.unets`.

* AdamW (fused on CUDA), linear warm-up then cosine (or constant) learning rate, EMA of the weights
  (diffusers' or the power EMA), gradient clipping and gradient accumulation.
* Loss: the prediction type's MSE, min-SNR-γ weighted, EDM-preconditioned, or the hybrid loss with a
  learned variance. channels_last and optional ``torch.compile`` on GPU.
* The EMA model is saved as a diffusers ``DDPMPipeline`` that plain diffusers can load.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..engine.precision import make_accelerator
from ..engine.trainer import AcceleratedTrainer, BatchSource, save_pretrained_atomic
from .conditioning import condition_kwargs, null_condition
from .hybrid_loss import hybrid_loss
from .prediction import DEFAULT_PREDICTION_TYPE, min_snr_weight, training_target
from .schedules import make_scheduler
from .unets import build_unet, condition_kinds


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


def _check_labels(labels: np.ndarray | None, config: TrainConfig) -> None:
    kinds = condition_kinds(config)
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
