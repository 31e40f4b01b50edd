"""A diffusion UNet conditioned on a spatial map through SPADE, as a diffusers model.

SPADE (Park et al. 2019, "Semantic image synthesis with spatially-adaptive normalization")
normalises a feature map h and then modulates it, pixel by pixel, with a scale and a shift that
small convolutions compute from the segmentation map m, resized (nearest) to h's size:

    SPADE(h, m) = γ(m) ⊙ (h - μ(h)) / σ(h) + β(m)

SDM (Wang et al. 2022, "Semantic image synthesis via diffusion models") puts SPADE into the
decoder of a diffusion UNet, so the noisy image enters through the encoder and the layout through
every decoder normalisation; NASDM (Shrivastava & Fletcher 2023; Sec. 3.2 of its extended version) uses it with a nuclei type map plus
an instance-edge map. MONAI ships that network (``SPADEDiffusionModelUNet``); this module only wraps
it in diffusers' ``ModelMixin`` / ``ConfigMixin`` so it saves and loads like any diffusers model:

>>> unet = SPADEUNet(sample_size=32, in_channels=3, out_channels=3, label_nc=5)
>>> unet(x_t, t, seg=condition).sample
>>> SPADEUNet.from_pretrained("runs/smoke/spade-pixel/pipeline/unet")   # one line

The condition passed as ``seg`` is float [B, label_nc, H, W]; all zeros means "no condition"
(classifier-free guidance), which is why the map carries an explicit background channel: an
empty tile (background everywhere) is not the same as no map at all.
"""

from __future__ import annotations

import math

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.unets.unet_2d import UNet2DOutput
from torch.nn import functional as F


class SPADEUNet(ModelMixin, ConfigMixin):
    """MONAI's ``SPADEDiffusionModelUNet`` (2-D) behind diffusers' model interface.

    ``condition_argument`` tells the project's trainer and samplers to pass the condition as
    ``seg=`` rather than ``class_labels=``.
    """

    condition_argument = "seg"

    @register_to_config
    def __init__(
        self,
        sample_size: int = 32,
        in_channels: int = 3,
        out_channels: int = 3,
        label_nc: int = 5,
        block_out_channels: tuple[int, ...] = (32, 64, 64),
        layers_per_block: int = 1,
        attention_levels: tuple[bool, ...] = (False, False, True),
        norm_num_groups: int = 16,
        num_head_channels: int = 32,
        spade_hidden_channels: int = 64,
    ) -> None:
        super().__init__()
        from monai.networks.nets import SPADEDiffusionModelUNet

        if len(attention_levels) != len(block_out_channels):
            raise ValueError(f"attention_levels {attention_levels} needs one entry per level of {block_out_channels}")
        self.net = SPADEDiffusionModelUNet(
            spatial_dims=2, in_channels=in_channels, out_channels=out_channels, label_nc=label_nc,
            channels=tuple(block_out_channels), num_res_blocks=layers_per_block,
            attention_levels=tuple(attention_levels), norm_num_groups=norm_num_groups,
            num_head_channels=math.gcd(num_head_channels, *block_out_channels),  # must divide every width
            spade_intermediate_channels=spade_hidden_channels)

    def forward(self, sample: torch.Tensor, timestep, seg: torch.Tensor | None = None,
                return_dict: bool = True):
        if seg is None:
            raise ValueError(f"SPADEUNet needs seg: a condition map [B, {self.config.label_nc}, H, W] "
                             "(all zeros for 'no condition')")
        if seg.ndim != 4 or seg.shape[1] != self.config.label_nc:
            raise ValueError(f"seg must be [B, {self.config.label_nc}, H, W]; got {tuple(seg.shape)}")
        if seg.shape[0] != sample.shape[0]:
            raise ValueError(f"seg has {seg.shape[0]} maps for a batch of {sample.shape[0]}")
        timesteps = torch.as_tensor(timestep, device=sample.device)
        timesteps = timesteps.reshape(-1).expand(sample.shape[0]) if timesteps.numel() == 1 else timesteps
        if seg.shape[-2:] != sample.shape[-2:]:  # SPADE resizes itself too; doing it once here is cheaper
            seg = F.interpolate(seg.float(), size=sample.shape[-2:], mode="nearest")
        out = self.net(sample, timesteps, seg.to(sample.dtype))
        return UNet2DOutput(sample=out) if return_dict else (out,)
