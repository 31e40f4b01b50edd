"""The engine every trainer of the project runs on: :class:`AcceleratedTrainer` (the step loop, checkpoints,
exact resume, the non-finite-loss guard, the loss log) and :class:`BatchSource` (batches from a resident
training set). The diffusion trainer (``diffusion.training``), the VQ-GAN's (``models.vqgan``) and the
segmenter's (``segmentation.hovernet``) are its subclasses.

* The training crops live on the device as one uint8 tensor (latents as float); batches and
  flips/rotations come from a seeded CPU generator, timesteps and noise from a seeded device
  generator, and both states are checkpointed, so N steps + resume + N steps gives bitwise the
  same weights as 2N steps straight (on CPU).
* ``accelerator.save_state`` every ``checkpoint_every`` steps; ``resume=True`` continues
  from the latest checkpoint, and refuses one written under another config (:class:`ResumeMismatch`).
  A non-finite loss stops training with a message (:class:`TrainingDiverged`), and the last
  good checkpoint (never written from a non-finite state) is kept.
* Models are saved with :func:`save_pretrained_atomic`: a folder is replaced only when complete.
* Multi-GPU: run the same code under ``accelerate launch``; each process draws its own batches.
  The Accelerator and its precision come from :mod:`histolab_utils.engine.precision`.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..paths import atomic_write_text


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the message names the step and the kept checkpoint."""


class ResumeMismatch(ValueError):
    """A run folder's checkpoint was written under another config; the message names the fields."""



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


def logged_train_seconds(out_dir: str | Path) -> float | None:
    """The training wall time a run in ``out_dir`` logged in its latest checkpoint: every session of it, resumes
    included, so a run read back later still reports what it took. None when it has no checkpoint."""
    checkpoints = _checkpoints(Path(out_dir))
    if not checkpoints:
        return None
    return float(json.loads((checkpoints[-1] / "trainer.json").read_text()).get("train_seconds", 0.0))


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
