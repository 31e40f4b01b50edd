"""One Accelerate trainer for the project's diffusion models.

* AdamW (fused on CUDA), linear warm-up then cosine learning rate, EMA of the weights,
  gradient clipping and gradient accumulation.
* bf16 autocast on GPU, fp32 on CPU; channels_last and optional ``torch.compile`` on GPU.
* The training crops live on the device as one uint8 tensor; batches, flips/rotations,
  timesteps and noise all come from one seeded generator whose state is checkpointed, so
  N steps + resume + N steps gives bitwise the same weights as 2N steps straight (on CPU).
* ``accelerator.save_state`` every ``checkpoint_every`` steps; ``resume=True`` continues
  from the latest checkpoint. A non-finite loss stops training with a message, and the last
  good checkpoint (never written from a non-finite state) is kept.
* The EMA model is saved as a diffusers ``DDPMPipeline`` that plain diffusers can load.
* Multi-GPU: run the same code under ``accelerate launch``; each process draws its own batches.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .paths import atomic_write_text
from .schedules import make_scheduler


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the message names the step and the kept checkpoint."""


@dataclass(frozen=True)
class TrainConfig:
    """Everything a run depends on; saved next to its checkpoints."""

    schedule: str = "linear"
    prediction_type: str = "epsilon"
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
    block_out_channels: tuple[int, ...] = (32, 64, 64)
    layers_per_block: int = 1
    attention: bool = False
    mixed_precision: str = "auto"  # "auto": bf16 on CUDA, fp32 ("no") on CPU
    compile: bool = False
    seed: int = 0
    extra: dict = field(default_factory=dict)


def build_unet(config: TrainConfig):
    """A diffusers UNet2DModel for RGB images of ``config.image_size``."""
    from diffusers import UNet2DModel

    levels = len(config.block_out_channels)
    down = ["DownBlock2D"] * levels
    up = ["UpBlock2D"] * levels
    if config.attention and levels > 1:
        down[-2], up[1] = "AttnDownBlock2D", "AttnUpBlock2D"
    return UNet2DModel(
        sample_size=config.image_size, in_channels=3, out_channels=3, layers_per_block=config.layers_per_block,
        block_out_channels=tuple(config.block_out_channels), down_block_types=tuple(down), up_block_types=tuple(up),
        norm_num_groups=min(32, min(config.block_out_channels)),
    )


class BatchSource:
    """Random augmented batches from a resident uint8 crop tensor, drawn from a checkpointable
    generator (one per process, saved with each checkpoint, so resuming restores its exact state)."""

    def __init__(self, crops: np.ndarray, device: torch.device, seed: int) -> None:
        if crops.ndim != 4 or crops.shape[-1] != 3 or crops.dtype != np.uint8:
            raise ValueError(f"training crops must be uint8 [N, H, W, 3], got {crops.shape} {crops.dtype}")
        self.data = torch.from_numpy(np.ascontiguousarray(crops)).permute(0, 3, 1, 2).to(device)
        self.generator = torch.Generator(device="cpu").manual_seed(seed)
        self.device = device

    def batch(self, size: int) -> torch.Tensor:
        """A float batch in [-1, 1] with a random dihedral transform per batch element."""
        index = torch.randint(len(self.data), (size,), generator=self.generator)
        x = self.data[index.to(self.device)].float() / 127.5 - 1.0
        turns = torch.randint(4, (size,), generator=self.generator)
        flips = torch.rand(size, generator=self.generator) < 0.5
        for k in range(4):
            chosen = (turns == k).to(self.device)
            if k and chosen.any():
                x[chosen] = torch.rot90(x[chosen], k, dims=(2, 3))
        flip = flips.to(self.device)
        x[flip] = x[flip].flip(-1)
        return x

    def randn_like(self, x: torch.Tensor) -> torch.Tensor:
        return torch.randn(x.shape, generator=self.generator).to(x.device, x.dtype)

    def timesteps(self, size: int, steps: int) -> torch.Tensor:
        return torch.randint(steps, (size,), generator=self.generator).to(self.device)

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])


def _checkpoints(out_dir: Path) -> list[Path]:
    folder = out_dir / "checkpoints"
    return sorted(folder.glob("step-*"), key=lambda p: int(p.name.split("-")[1])) if folder.is_dir() else []


class DiffusionTrainer:
    """Train a UNet2DModel on uint8 crops with one noise schedule.

    >>> trainer = DiffusionTrainer(TrainConfig(schedule="cosine", steps=500), crops, "runs/cosine")
    >>> log = trainer.train()          # pandas DataFrame: step, loss, lr
    >>> trainer.save_pipeline()        # runs/cosine/pipeline, loadable by DDPMPipeline.from_pretrained
    """

    def __init__(self, config: TrainConfig, crops: np.ndarray, out_dir: str | Path, progress: bool = True) -> None:
        from accelerate import Accelerator
        from accelerate.utils import set_seed
        from diffusers.optimization import get_cosine_schedule_with_warmup
        from diffusers.training_utils import EMAModel

        if crops.shape[1] != config.image_size:
            raise ValueError(f"crops are {crops.shape[1]} px but config.image_size is {config.image_size}")
        self.config, self.out_dir, self.progress = config, Path(out_dir), progress
        precision = config.mixed_precision
        if precision == "auto":
            precision = "bf16" if torch.cuda.is_available() else "no"
        # cpu=True on a machine without CUDA: without it, a multi-process CPU launch (torchrun) is
        # not joined into one process group and every rank trains alone as "rank 0".
        self.accelerator = Accelerator(mixed_precision=precision, gradient_accumulation_steps=config.grad_accumulation,
                                       cpu=not torch.cuda.is_available())
        set_seed(config.seed, device_specific=True)
        device = self.accelerator.device
        self.noise_scheduler = make_scheduler("ddpm", config.schedule, prediction_type=config.prediction_type)
        self.train_steps = self.noise_scheduler.config.num_train_timesteps

        model = build_unet(config)
        if device.type == "cuda":
            model = model.to(memory_format=torch.channels_last)
        self.ema = EMAModel(model.parameters(), decay=config.ema_decay, model_cls=type(model), model_config=model.config)
        optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay,
                                      fused=device.type == "cuda")
        lr_scheduler = get_cosine_schedule_with_warmup(optimizer, config.warmup_steps, config.steps)
        self.model, self.optimizer, self.lr_scheduler = self.accelerator.prepare(model, optimizer, lr_scheduler)
        if config.compile:
            self.model = torch.compile(self.model)
        self.ema.to(device)
        seed = config.seed * 1000 + self.accelerator.process_index
        self.batches = BatchSource(crops, device, seed)
        self.accelerator.register_for_checkpointing(self.ema)
        self.step = 0
        self.log: list[dict] = []

    # -- checkpoints -----------------------------------------------------------------------
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
        torch.save(self.batches.state_dict(), staging / f"batches_{self.accelerator.process_index}.pt")
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            (staging / "trainer.json").write_text(json.dumps({"step": self.step, "log": self.log,
                                                              "config": asdict(self.config)}, default=list))
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
        self.accelerator.load_state(str(latest))
        own = latest / f"batches_{self.accelerator.process_index}.pt"
        if not own.is_file():
            raise FileNotFoundError(f"{latest} has no generator state for process {self.accelerator.process_index} "
                                    "(resumed with more processes than it was saved with?)")
        self.batches.load_state_dict(torch.load(own))
        state = json.loads((latest / "trainer.json").read_text())
        self.step, self.log = state["step"], state["log"]
        return True

    # -- training ----------------------------------------------------------------------------
    def _loss(self, x0: torch.Tensor) -> torch.Tensor:
        noise = self.batches.randn_like(x0)
        t = self.batches.timesteps(len(x0), self.train_steps)
        noisy = self.noise_scheduler.add_noise(x0, noise, t)
        if self.config.prediction_type == "v_prediction":
            target = self.noise_scheduler.get_velocity(x0, noise, t)
        else:
            target = noise
        with self.accelerator.autocast():
            prediction = self.model(noisy, t).sample
        return torch.nn.functional.mse_loss(prediction.float(), target.float())

    def train(self, steps: int | None = None, resume: bool = False) -> pd.DataFrame:
        """Train until ``steps`` (default ``config.steps``) optimiser steps have been taken in all."""
        from tqdm.auto import tqdm

        if resume:
            self.resume()
        total = steps or self.config.steps
        bar = tqdm(total=total, initial=self.step, desc=f"train {self.config.schedule}",
                   disable=not (self.progress and self.accelerator.is_main_process))
        started = time.perf_counter()
        while self.step < total:
            for _ in range(self.config.grad_accumulation):
                with self.accelerator.accumulate(self.model):
                    loss = self._loss(self.batches.batch(self.config.batch_size))
                    if not torch.isfinite(loss):
                        kept = _checkpoints(self.out_dir)
                        raise TrainingDiverged(
                            f"loss became {loss.item()} at step {self.step + 1} ({self.config.schedule} schedule); "
                            f"stopped. Last good checkpoint: {kept[-1] if kept else 'none written yet'}")
                    self.accelerator.backward(loss)
                    if self.accelerator.sync_gradients:
                        self.accelerator.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
                    self.optimizer.step()
                    self.lr_scheduler.step()
                    self.optimizer.zero_grad(set_to_none=True)
            self.ema.step(self.model.parameters())
            self.step += 1
            self.log.append({"step": self.step, "loss": float(loss.detach()), "lr": self.lr_scheduler.get_last_lr()[0]})
            bar.update()
            bar.set_postfix(loss=f"{self.log[-1]['loss']:.4f}")
            if self.step % self.config.checkpoint_every == 0 or self.step == total:
                self.save_checkpoint()
        bar.close()
        self.seconds = time.perf_counter() - started
        self.save_log()
        return self.loss_frame()

    def loss_frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.log, columns=["step", "loss", "lr"])

    def save_log(self) -> None:
        if self.accelerator.is_main_process:
            atomic_write_text(self.out_dir / "loss.csv", self.loss_frame().to_csv(index=False))

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
            staging = folder.with_name(f".{folder.name}.tmp")
            shutil.rmtree(staging, ignore_errors=True)
            pipeline.save_pretrained(staging)
            (staging / "histolab_train_config.json").write_text(json.dumps(asdict(self.config), default=list, indent=2))
            shutil.rmtree(folder, ignore_errors=True)
            staging.rename(folder)
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
