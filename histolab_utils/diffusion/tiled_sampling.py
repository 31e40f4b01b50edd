"""Painting a canvas larger than the network's tile: four ways to run one sampler over many windows.

A diffusion model trained on S x S tiles is fully convolutional, but it has only seen S px of context. To paint an
H x W canvas (H, W >= S) the sampler runs over square windows of the canvas, and the methods differ in which windows
and how their predictions are joined at every step:

* ``"tiles"``: independent tiles, a partition of the canvas into S x S tiles, each sampled on its own: the seam
  baseline (neighbours never see each other, so their borders disagree);
* ``"whole"``: one window, the whole canvas at once through the convolutional UNet (context grows with the
  canvas, but the network never saw one so large);
* ``"multidiffusion"``: overlapping windows at a stride < S, their predictions averaged at every step
  (MultiDiffusion; Bar-Tal, Yariv, Lipman & Dekel, ICML 2023);
* ``"shifted"``: a tiling at stride S whose origin moves to a random offset at every step, so a tile border at one step
  is a tile's middle at the next (the random patch positions of DiffInfinite; Aversa et al., NeurIPS 2023 Datasets and
  Benchmarks).

Averaging
---------
MultiDiffusion takes one sampler step in every window and sets each pixel to the (weighted) mean of the windows'
results. Here the windows' *network outputs* are averaged with per-pixel weights that sum to one, and one sampler
step is taken over the whole canvas. For a step that is affine in the network output at a fixed x_t (DDIM, and
the mean of a DDPM step, both without x0 clipping) the two agree exactly; with ``clip_sample`` the step is not affine
where the clip is active, and there the two differ. An ancestral step's fresh noise is drawn once per pixel, not
once per window, so averaging does not shrink its variance. With a partition (``"tiles"``, one window per pixel)
the same loop is exactly independent sampling of every tile.

A window plan covers every pixel: windows start at 0, ``stride``, 2 ``stride``, ... and the last one is moved back
to end at the canvas's edge. A shifted plan starts at ``offset - S`` and clamps windows that would leave the
canvas to its edge; the clamped windows overlap their neighbours, and the averaging weights take care of it.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch

Box = tuple[int, int, int, int]  # (y0, x0, y1, x1) in canvas pixels, exclusive ends
METHODS: tuple[str, ...] = ("tiles", "whole", "multidiffusion", "shifted")
# predict(x_windows [B, C, S, S], t, boxes) -> network outputs [B, C', S, S] for those windows of the canvas
WindowPredictor = Callable[[torch.Tensor, torch.Tensor, Sequence[Box]], torch.Tensor]


def _starts(length: int, window: int, stride: int, offset: int = 0) -> list[int]:
    if offset == 0:
        starts = list(range(0, length - window + 1, stride))
        return starts if starts[-1] == length - window else [*starts, length - window]
    raw = range(offset - window, length, stride)
    return sorted({min(max(start, 0), length - window) for start in raw if start + window > 0})


def window_plan(height: int, width: int, window: int, stride: int, offset: tuple[int, int] = (0, 0)) -> list[Box]:
    """Square windows of ``window`` px at ``stride`` covering every pixel of a ``height`` x ``width`` canvas, the
    tiling's origin moved by ``offset`` (dy, dx) px (0 <= offset < stride); windows never leave the canvas."""
    if window < 1 or stride < 1 or stride > window:
        raise ValueError(f"need 1 <= stride <= window; got window={window}, stride={stride}")
    if height < window or width < window:
        raise ValueError(f"the canvas ({height} x {width} px) is smaller than one {window} px window")
    if not all(0 <= o < stride for o in offset):
        raise ValueError(f"offset {offset} must lie in [0, stride={stride}) on both axes")
    return [(y, x, y + window, x + window) for y in _starts(height, window, stride, offset[0])
            for x in _starts(width, window, stride, offset[1])]


def averaging_weights(boxes: Sequence[Box], height: int, width: int) -> torch.Tensor:
    """float [len(boxes), 1, S, S]: each window pixel's weight, 1 / (how many windows hold that canvas pixel), so the
    weights of every canvas pixel sum to one; an error names a pixel no window covers."""
    count = torch.zeros(height, width)
    for y0, x0, y1, x1 in boxes:
        count[y0:y1, x0:x1] += 1
    if (count == 0).any():
        y, x = (int(v) for v in torch.nonzero(count == 0)[0])
        raise ValueError(f"the windows leave canvas pixel (y={y}, x={x}) uncovered")
    return torch.stack([1.0 / count[y0:y1, x0:x1] for y0, x0, y1, x1 in boxes])[:, None]


def method_plan(method: str, height: int, width: int, tile: int, stride: int | None = None,
                offset: tuple[int, int] = (0, 0)) -> list[Box]:
    """The windows of one step of ``method`` (:data:`METHODS`): ``stride`` is MultiDiffusion's (default half a
    tile); ``offset`` (dy, dx) the shifted tiling's origin at this step (:func:`shifted_offsets`)."""
    if method == "tiles":
        if height % tile or width % tile:
            raise ValueError(f"independent tiles need a canvas divisible by the {tile} px tile; got {height} x {width}")
        return window_plan(height, width, tile, tile)
    if method == "whole":
        return [(0, 0, height, width)]
    if method == "multidiffusion":
        return window_plan(height, width, tile, stride or tile // 2)
    if method == "shifted":
        return window_plan(height, width, tile, tile, offset)
    raise ValueError(f"unknown method {method!r}; methods are {METHODS}")


def shifted_offsets(steps: int, tile: int, seed: int = 0) -> list[tuple[int, int]]:
    """Seeded random origins (dy, dx) in [0, tile) of the shifted tiling, one per step; each differs from the one
    before on both axes, so every tile border moves at every step (a tile of 1 px has nowhere to move: an error)."""
    if tile < 2:
        raise ValueError(f"a shifted tiling needs tiles of at least 2 px; got {tile}")
    rng, offsets = np.random.default_rng(seed), []
    for _ in range(steps):
        previous = offsets[-1] if offsets else (-1, -1)
        offsets.append(tuple(int((p + 1 + rng.integers(0, tile - 1)) % tile) if p >= 0 else int(rng.integers(0, tile))
                             for p in previous))
    return offsets


def network_pixels(method: str, height: int, width: int, tile: int, steps: int, stride: int | None = None,
                   seed: int = 0) -> int:
    """Pixels the network evaluates over ``steps`` steps of ``method`` (the cost "equal network calls" equalises;
    the shifted tiling's depends on its offsets, those of ``seed``)."""
    def area(boxes: Sequence[Box]) -> int:
        return sum((y1 - y0) * (x1 - x0) for y0, x0, y1, x1 in boxes)

    if method == "shifted":
        return sum(area(method_plan(method, height, width, tile, offset=o)) for o in shifted_offsets(steps, tile, seed))
    return steps * area(method_plan(method, height, width, tile, stride))


def steps_at_equal_cost(method: str, height: int, width: int, tile: int, steps: int, stride: int | None = None) -> int:
    """How many steps ``method`` may take for the network pixels independent tiles spend in ``steps`` steps (>= 1)."""
    budget = network_pixels("tiles", height, width, tile, steps)
    return max(1, int(round(budget * steps / network_pixels(method, height, width, tile, steps, stride))))


@torch.no_grad()
def tiled_prediction(predict: WindowPredictor, x: torch.Tensor, t: torch.Tensor, boxes: Sequence[Box],
                     batch_size: int = 64) -> torch.Tensor:
    """The canvas's network output [1, C', H, W] at (x [1, C, H, W], t): every window's output, weighted by
    :func:`averaging_weights` and summed in place."""
    height, width = x.shape[-2:]
    weights = averaging_weights(boxes, height, width).to(x.device)
    out = None
    for start in range(0, len(boxes), batch_size):
        chunk = boxes[start:start + batch_size]
        outputs = predict(crop_maps(x, chunk), t, chunk)
        if out is None:
            out = torch.zeros((1, outputs.shape[1], height, width), dtype=outputs.dtype, device=x.device)
        for k, (y0, x0, y1, x1) in enumerate(chunk):
            out[0, :, y0:y1, x0:x1] += outputs[k] * weights[start + k]
    return out


@torch.no_grad()
def tiled_denoise(predict: WindowPredictor, scheduler, x: torch.Tensor, method: str, tile: int, steps: int,
                  stride: int | None = None, generator: torch.Generator | None = None, seed: int = 0,
                  batch_size: int = 64) -> torch.Tensor:
    """Run ``scheduler``'s sampler from noise ``x`` [1, C, H, W] over the canvas by ``method`` (see the module
    docstring; ``seed`` draws the shifted tiling's offsets, ``generator`` the sampler's noise). A learned-variance
    output (2C channels) keeps its variance only for a scheduler that uses it."""
    if x.ndim != 4 or len(x) != 1:
        raise ValueError(f"tiled sampling paints one canvas [1, C, H, W] at a time; got {tuple(x.shape)}")
    height, width = x.shape[-2:]
    scheduler.set_timesteps(steps)
    offsets = shifted_offsets(len(scheduler.timesteps), tile, seed) if method == "shifted" else None
    plan = None if offsets else method_plan(method, height, width, tile, stride)
    learned = scheduler.config.get("variance_type") in ("learned", "learned_range")
    for step, t in enumerate(scheduler.timesteps):
        boxes = plan or method_plan(method, height, width, tile, stride, offsets[step])
        prediction = tiled_prediction(predict, scheduler.scale_model_input(x, t), t, boxes, batch_size)
        if prediction.shape[1] == 2 * x.shape[1] and not learned:
            prediction = prediction[:, :x.shape[1]]
        x = scheduler.step(prediction.to(x.dtype), t, x, generator=generator).prev_sample
    return x


def crop_maps(maps: torch.Tensor, boxes: Sequence[Box]) -> torch.Tensor:
    """The windows ``boxes`` of condition maps [1, C, H, W], stacked [len(boxes), C, S, S]."""
    return torch.cat([maps[..., y0:y1, x0:x1] for y0, x0, y1, x1 in boxes])

