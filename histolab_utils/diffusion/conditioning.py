"""A diffusers UNet conditioned on a vector: a learned linear map of the condition vector is added
to the time embedding (NASDM, Shrivastava & Fletcher 2023; Sec. 3.1 of its extended version: "we add a
linear transformation of the multi-hot vector to the time-embedding of the U-Net backbone").

The condition vector ends in a "null" flag: classifier-free guidance trains with the whole vector
replaced by ``null_condition`` (zeros, flag 1), so a real all-zero condition (say, "no nuclei")
stays distinct from "no condition".
"""

from __future__ import annotations

import numpy as np
import torch
from diffusers import UNet2DModel
from diffusers.configuration_utils import register_to_config
from diffusers.models.modeling_utils import ModelMixin  # noqa: F401  diffusers' pipeline loader looks the base class up here
from torch import nn


class VectorConditionedUNet2DModel(UNet2DModel):
    """``UNet2DModel`` whose class embedding is ``nn.Linear(condition_features, time_embed_dim)``;
    pass the float condition vectors [B, condition_features] as ``class_labels``.

    >>> unet = VectorConditionedUNet2DModel(sample_size=32, in_channels=5, out_channels=5, condition_features=11)
    >>> unet(x, t, class_labels=conditions).sample
    >>> VectorConditionedUNet2DModel.from_pretrained("runs/masks/pipeline/unet")   # loads back in one line
    """

    # The saved config also holds the UNet2DModel keys this signature fixes; declaring UNet2DModel
    # compatible lets diffusers drop them on loading instead of warning about each.
    has_compatibles = True

    @classmethod
    def _get_compatibles(cls) -> list[type]:
        return [UNet2DModel]

    @register_to_config
    def __init__(
        self,
        sample_size: int = 32,
        in_channels: int = 3,
        out_channels: int = 3,
        down_block_types: tuple[str, ...] = ("DownBlock2D", "DownBlock2D", "DownBlock2D"),
        up_block_types: tuple[str, ...] = ("UpBlock2D", "UpBlock2D", "UpBlock2D"),
        block_out_channels: tuple[int, ...] = (32, 64, 64),
        layers_per_block: int = 1,
        norm_num_groups: int = 32,
        condition_features: int = 1,
    ) -> None:
        super().__init__(sample_size=sample_size, in_channels=in_channels, out_channels=out_channels,
                         down_block_types=tuple(down_block_types), up_block_types=tuple(up_block_types),
                         block_out_channels=tuple(block_out_channels), layers_per_block=layers_per_block,
                         norm_num_groups=norm_num_groups, class_embed_type="identity")
        if condition_features < 1:
            raise ValueError(f"condition_features must be >= 1, got {condition_features}")
        self.class_embedding = nn.Linear(condition_features, block_out_channels[0] * 4)

    def forward(self, sample, timestep, class_labels=None, return_dict: bool = True):
        if class_labels is None:
            raise ValueError("VectorConditionedUNet2DModel needs class_labels: condition vectors "
                             f"[B, {self.config.condition_features}] (use null_condition for 'no condition')")
        if class_labels.shape[-1] != self.config.condition_features:
            raise ValueError(f"condition vectors have {class_labels.shape[-1]} features; this UNet takes "
                             f"{self.config.condition_features}")
        return super().forward(sample, timestep, class_labels=class_labels.to(sample.dtype), return_dict=return_dict)


def null_condition(features: int, n: int = 1) -> np.ndarray:
    """``n`` "no condition" vectors: zeros with the final (null) flag set."""
    vector = np.zeros((n, features), dtype=np.float32)
    vector[:, -1] = 1.0
    return vector


def condition_kwargs(model, condition) -> dict:
    """The keyword a model takes its condition by: ``class_labels`` for diffusers' UNets, ``seg`` for
    the SPADE UNet (its ``condition_argument``); nothing for an unconditional model (``None``)."""
    if condition is None:
        return {}
    inner = model
    while hasattr(inner, "_orig_mod") or isinstance(getattr(inner, "module", None), nn.Module):
        inner = inner._orig_mod if hasattr(inner, "_orig_mod") else inner.module  # torch.compile, DDP
    return {getattr(inner, "condition_argument", "class_labels"): condition}
