"""A HoVer-Net-style nuclei segmenter (Graham et al. 2019), built from MONAI's parts.

Three heads read one image:

* **NP** (nuclear pixels): 2 logits per pixel, nucleus or background;
* **HV**: each nucleus pixel's horizontal and vertical distance from its nucleus's centre of mass,
  normalised to [-1, 1] within the nucleus (MONAI's ``ComputeHoVerMaps``); the maps' sharp
  sign changes between touching nuclei are what splits them;
* **NC** (nuclear class): ``1 + n_types`` logits per pixel.

The loss is MONAI's ``HoVerNetLoss`` (Dice + cross-entropy on NP and NC, MSE on HV and on its
Sobel gradients inside nuclei); MONAI's ``HoVerNetInstanceMapPostProcessing`` (marker-controlled
watershed on the HV gradients) and ``HoVerNetNuclearTypePostProcessing`` (majority type per
instance) turn the outputs into instance and type maps.

Two bodies, one interface: MONAI's ``BasicUNet`` with the three heads as 2 + 2 + (1 + n_types)
output channels (every profile's: the generators' tiles are 32-64 px), and MONAI's ``HoVerNet`` in
FAST mode (256 px input only; selectable for tiles that size). No pretrained weights can be
downloaded here, so both train from scratch.

Training is the project's Accelerate trainer (seeded, bf16 where "auto" picks it, checkpoints,
exact resume, a non-finite loss stops it); with ``augment`` a batch is flipped and rotated (the
HV vectors turned with it) and stain- and colour-jittered (:func:`~histolab_utils.stain.jitter.stain_jitter`).
"""

from __future__ import annotations

import json
import shutil
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..engine.precision import make_accelerator
from ..engine.trainer import AcceleratedTrainer, BatchSource
from ..stain.jitter import stain_jitter

ARCHITECTURES = ("basic_unet", "hovernet_fast")
HOVERNET_FAST_SIZE = 256
NP, HV, NC = "nucleus_prediction", "horizontal_vertical", "type_prediction"  # MONAI's HoVerNetBranch values
TARGET_CHANNELS = ("nucleus", "type", "horizontal", "vertical")  # the training maps, per pixel


@dataclass(frozen=True)
class SegmenterConfig:
    """Everything a segmenter run depends on; saved beside its weights."""

    architecture: str = "basic_unet"
    tile_size: int = 32
    n_types: int = 3
    features: tuple[int, ...] = (16, 16, 32, 64, 128, 16)  # BasicUNet's six widths
    steps: int = 200
    batch_size: int = 16
    learning_rate: float = 1e-3
    warmup_steps: int = 20
    weight_decay: float = 1e-4
    grad_clip: float = 5.0
    grad_accumulation: int = 1
    checkpoint_every: int = 100
    keep_checkpoints: int = 1
    augment: bool = False  # dihedral + stain and colour jitter (the "classic augmentation" arm)
    stain_sigma: float = 0.05
    colour_sigma: float = 0.1
    # HoVer-Net's post-processing defaults suit nuclei of ~7 px radius (40x); at a coarser scale both
    # shrink with the nuclei (set from the scale, never tuned on the test region)
    min_object_size: int = 10  # px; smaller predicted instances and markers are dropped
    marker_radius: int = 2  # px of the disk that opens the watershed markers
    mixed_precision: str = "auto"  # bf16 on CUDA and on CPUs with native bf16, else fp32
    compile: bool = False
    seed: int = 0
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"architecture must be one of {ARCHITECTURES}, not {self.architecture!r}")
        if self.architecture == "basic_unet" and (self.tile_size % 16 or self.tile_size < 32):
            raise ValueError(f"BasicUNet halves a tile four times and instance-normalises the result: tile_size "
                             f"must be a multiple of 16 and at least 32; got {self.tile_size}")
        if self.architecture == "hovernet_fast" and self.tile_size != HOVERNET_FAST_SIZE:
            raise ValueError(f"MONAI's HoVerNet in FAST mode reads {HOVERNET_FAST_SIZE} px tiles only; "
                             f"tile_size is {self.tile_size}")


def segmentation_targets(types: np.ndarray, instances: np.ndarray) -> np.ndarray:
    """float32 [N, 4, H, W] training maps (:data:`TARGET_CHANNELS`): nucleus 0/1, type id, and
    the HV maps from MONAI's ``ComputeHoVerMaps``."""
    from monai.transforms import ComputeHoVerMaps

    types, instances = np.asarray(types), np.asarray(instances)
    if types.shape != instances.shape or types.ndim != 3:
        raise ValueError(f"type and instance maps must both be [N, H, W]; got {types.shape} and {instances.shape}")
    hover = ComputeHoVerMaps(dtype="float32")
    maps = np.zeros((len(types), 4, *types.shape[1:]), np.float32)
    maps[:, 0] = instances > 0
    maps[:, 1] = np.where(instances > 0, types, 0)
    for i, inst in enumerate(instances):
        maps[i, 2:] = hover(inst[None].astype(np.int32))
    return maps


class HeadedBasicUNet(nn.Module):
    """MONAI's 2-D ``BasicUNet`` whose output channels are split into HoVer-Net's three heads."""

    def __init__(self, n_types: int, features: tuple[int, ...]) -> None:
        super().__init__()
        from monai.networks.nets import BasicUNet

        self.n_types = n_types
        self.body = BasicUNet(spatial_dims=2, in_channels=3, out_channels=4 + n_types + 1, features=tuple(features))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        nucleus, hover, kind = self.body(x).split([2, 2, self.n_types + 1], dim=1)
        return {NP: nucleus, HV: hover, NC: kind}


def build_segmenter(config: SegmenterConfig) -> nn.Module:
    """The config's network, untrained: HoVerNet (FAST) or the headed BasicUNet."""
    if config.architecture == "hovernet_fast":
        from monai.networks.nets import HoVerNet

        return HoVerNet(mode="fast", in_channels=3, np_out_channels=2, out_classes=config.n_types + 1,
                        decoder_padding=True)
    return HeadedBasicUNet(config.n_types, config.features)


def _targets(maps: torch.Tensor, n_types: int) -> dict[str, torch.Tensor]:
    one_hot = lambda index, classes: nn.functional.one_hot(index.round().long(), classes).permute(0, 3, 1, 2).float()  # noqa: E731
    return {NP: one_hot(maps[:, 0], 2), HV: maps[:, 2:4], NC: one_hot(maps[:, 1], n_types + 1)}


class SegmenterTrainer(AcceleratedTrainer):
    """Train a segmenter on uint8 images [N, S, S, 3] with type and instance maps [N, S, S].

    >>> trainer = SegmenterTrainer(SegmenterConfig(steps=300), images, types, instances, "runs/seg")
    >>> trainer.train()            # the loss log
    >>> trainer.save_model()       # runs/seg/model: load_segmenter(...) reads it back
    """

    def __init__(self, config: SegmenterConfig, images: np.ndarray, types: np.ndarray, instances: np.ndarray,
                 out_dir: str | Path, progress: bool = True) -> None:
        from accelerate.utils import set_seed
        from diffusers.optimization import get_cosine_schedule_with_warmup
        from monai.apps.pathology.losses import HoVerNetLoss

        images = np.asarray(images)
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (config.tile_size, config.tile_size, 3):
            raise ValueError(f"training images must be uint8 [N, {config.tile_size}, {config.tile_size}, 3] "
                             f"(config.tile_size); got {images.shape} {images.dtype}")
        if len(images) == 0:
            raise ValueError("a segmenter needs at least one training tile")
        if np.asarray(types).max(initial=0) > config.n_types:
            raise ValueError(f"type ids run to {np.asarray(types).max()} but config.n_types is {config.n_types}")
        self.config, self.out_dir, self.progress = config, Path(out_dir), progress
        self.name = f"segmenter {config.architecture} {config.extra.get('arm', '')}".strip()
        self.accelerator = make_accelerator(config.mixed_precision, config.grad_accumulation)
        set_seed(config.seed, device_specific=True)
        device = self.accelerator.device
        model = build_segmenter(config)
        if device.type == "cuda":
            model = model.to(memory_format=torch.channels_last)
        optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay,
                                      fused=device.type == "cuda")
        lr_scheduler = get_cosine_schedule_with_warmup(optimizer, config.warmup_steps, config.steps)
        self.model, self.optimizer, self.lr_scheduler = self.accelerator.prepare(model, optimizer, lr_scheduler)
        if config.compile:
            self.model = torch.compile(self.model)
        self.loss_fn = HoVerNetLoss()
        self.batches = BatchSource(images, device, config.seed * 1000 + self.accelerator.process_index,
                                   labels=segmentation_targets(types, instances), augment=config.augment,
                                   vector_field=(2, 3))
        self.step, self.log = 0, []

    def train_step(self) -> dict:
        for _ in range(self.config.grad_accumulation):
            with self.accelerator.accumulate(self.model):
                x, maps = self.batches.draw(self.config.batch_size)
                if self.config.augment:
                    x = stain_jitter(x, self.batches.generator, self.config.stain_sigma, self.config.colour_sigma,
                                     self.config.colour_sigma)
                with self.autocast():
                    out = self.model(x)
                loss = self.loss_fn({k: v.float() for k, v in out.items()}, _targets(maps, self.config.n_types))
                self.accelerator.backward(loss)
                if self.accelerator.sync_gradients:
                    self.accelerator.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
                self.optimizer.step()
                self.lr_scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
        return {"loss": loss.detach(), "lr": self.lr_scheduler.get_last_lr()[0]}

    def save_model(self, folder: str | Path | None = None) -> Path:
        """The trained weights and config in ``folder`` (default ``out_dir/model``), written aside first."""
        folder = Path(folder or self.out_dir / "model")
        if self.accelerator.is_main_process:
            staging = folder.with_name(f".{folder.name}.tmp")
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir(parents=True)
            model = self.accelerator.unwrap_model(self.model)
            model = getattr(model, "_orig_mod", model)
            torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, staging / "model.pt")
            (staging / "segmenter_config.json").write_text(json.dumps(asdict(self.config), default=list, indent=2))
            shutil.rmtree(folder, ignore_errors=True)
            staging.rename(folder)
        self.accelerator.wait_for_everyone()
        return folder


def load_segmenter(folder: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, SegmenterConfig]:
    """A segmenter saved by :meth:`SegmenterTrainer.save_model`, in eval mode, and its config."""
    folder = Path(folder)
    if not (folder / "model.pt").is_file() or not (folder / "segmenter_config.json").is_file():
        raise FileNotFoundError(f"{folder} holds no saved segmenter (model.pt and segmenter_config.json)")
    raw = json.loads((folder / "segmenter_config.json").read_text())
    config = SegmenterConfig(**{**raw, "features": tuple(raw["features"])})
    model = build_segmenter(config)
    model.load_state_dict(torch.load(folder / "model.pt", map_location="cpu"))
    return model.to(device).eval(), config


@torch.no_grad()
def segment(model: nn.Module, images: np.ndarray, n_types: int, min_object_size: int = 10, marker_radius: int = 2,
            batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Type maps uint8 [N, H, W] and instance maps int32 [N, H, W] for uint8 images [N, H, W, 3],
    through MONAI's HoVer-Net post-processing."""
    from monai.apps.pathology.transforms import HoVerNetInstanceMapPostProcessing, HoVerNetNuclearTypePostProcessing

    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must be uint8 [N, H, W, 3]; got {images.shape} {images.dtype}")
    model.eval()
    device = next(model.parameters()).device
    instance_step = HoVerNetInstanceMapPostProcessing(min_object_size=min_object_size, marker_radius=marker_radius)
    type_step = HoVerNetNuclearTypePostProcessing()
    types = np.zeros(images.shape[:3], np.uint8)
    instances = np.zeros(images.shape[:3], np.int32)
    for start in range(0, len(images), batch_size):
        x = torch.from_numpy(images[start:start + batch_size]).permute(0, 3, 1, 2).float().to(device) / 127.5 - 1
        out = {k: v.float().cpu() for k, v in model(x).items()}
        for j in range(len(x)):
            with warnings.catch_warnings():  # MONAI 1.6 calls scikit-image's deprecated min_size: not ours to fix
                warnings.simplefilter("ignore", FutureWarning)
                info, instance_map = instance_step(out[NP][j], out[HV][j])
            _, type_map = type_step(out[NC][j], info, instance_map)
            instances[start + j] = np.asarray(instance_map)[0]
            types[start + j] = np.clip(np.asarray(type_map)[0], 0, n_types)
    return types, instances
