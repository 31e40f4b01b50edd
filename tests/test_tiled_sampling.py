"""Notebook 10: tiled sampling of canvases larger than a tile, fields of the slide, and seams at tile borders."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler

from histolab_utils.diffusion.tiled_sampling import (METHODS, averaging_weights, method_plan, network_pixels,
                                                     shifted_offsets, steps_at_equal_cost, tiled_denoise,
                                                     tiled_prediction, window_plan)
from histolab_utils.evaluation.seams import tile_grid, tile_seam_score


def covered(boxes, height, width) -> np.ndarray:
    count = np.zeros((height, width), int)
    for y0, x0, y1, x1 in boxes:
        assert 0 <= y0 < y1 <= height and 0 <= x0 < x1 <= width, (y0, x0, y1, x1)
        count[y0:y1, x0:x1] += 1
    return count


@pytest.mark.parametrize("height, width, window, stride, offset", [
    (64, 64, 32, 32, (0, 0)), (64, 64, 32, 16, (0, 0)), (70, 45, 32, 12, (0, 0)), (32, 32, 32, 32, (0, 0)),
    (64, 96, 32, 32, (5, 31)), (50, 50, 16, 16, (15, 1))])
def test_a_window_plan_covers_every_pixel_and_stays_on_the_canvas(height, width, window, stride, offset):
    boxes = window_plan(height, width, window, stride, offset)
    assert (covered(boxes, height, width) >= 1).all()
    assert all(y1 - y0 == window and x1 - x0 == window for y0, x0, y1, x1 in boxes)


def test_every_method_covers_the_canvas_and_tiles_are_a_partition():
    for method in METHODS:
        count = covered(method_plan(method, 96, 64, 32, offset=(7, 20)), 96, 64)
        assert (count >= 1).all(), method
    assert (covered(method_plan("tiles", 96, 64, 32), 96, 64) == 1).all()


def test_a_plan_refuses_what_it_cannot_tile():
    with pytest.raises(ValueError, match="stride"):
        window_plan(64, 64, 32, 40)
    with pytest.raises(ValueError, match="smaller than one 32 px window"):
        window_plan(16, 64, 32, 16)
    with pytest.raises(ValueError, match="divisible"):
        method_plan("tiles", 48, 64, 32)
    with pytest.raises(ValueError, match="unknown method"):
        method_plan("mosaic", 64, 64, 32)


@pytest.mark.parametrize("method", METHODS)
def test_the_averaging_weights_of_every_pixel_sum_to_one(method):
    boxes = method_plan(method, 80, 64, 16, stride=6, offset=(3, 11))
    weights = averaging_weights(boxes, 80, 64)
    total = torch.zeros(80, 64)
    for (y0, x0, y1, x1), w in zip(boxes, weights):
        total[y0:y1, x0:x1] += w[0]
    assert torch.allclose(total, torch.ones(80, 64))


def test_uncovered_pixels_are_named():
    with pytest.raises(ValueError, match=r"\(y=0, x=32\)"):
        averaging_weights([(0, 0, 32, 32)], 32, 64)


def test_the_shifted_windows_move_at_every_step():
    offsets = shifted_offsets(50, 32, seed=3)
    assert all(a[0] != b[0] and a[1] != b[1] for a, b in zip(offsets[:-1], offsets[1:]))
    plans = [method_plan("shifted", 64, 64, 32, offset=o) for o in offsets]
    assert all(set(a) != set(b) for a, b in zip(plans[:-1], plans[1:]))
    assert shifted_offsets(50, 32, seed=3) == offsets  # seeded


def ddim(prediction_type: str = "epsilon") -> DDIMScheduler:
    return DDIMScheduler(num_train_timesteps=100, prediction_type=prediction_type, clip_sample=False)


@pytest.mark.parametrize("method", METHODS)
def test_a_constant_output_model_gives_a_constant_canvas_with_no_seam(method):
    """A model that predicts one clean image value everywhere: whatever the windows, the canvas ends at that value
    exactly (DDIM's last step returns the predicted x0), with no step or seam at any window border."""
    def predict(x, t, boxes):
        return torch.full_like(x, 0.3)

    x = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(0))
    out = tiled_denoise(predict, ddim("sample"), x, method, 32, steps=5, seed=1)
    assert torch.allclose(out, torch.full_like(out, 0.3), atol=1e-5)


def test_independent_tiles_are_each_tile_sampled_on_its_own():
    """The partition plan is exactly independent sampling: each tile equals the same sampler run on that tile alone."""
    def predict(x, t, boxes):  # depends on the window's content, so neighbours would show if they leaked
        return 0.5 * x + torch.roll(x, 1, dims=-1) * 0.1

    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    canvas = tiled_denoise(predict, ddim(), x.clone(), "tiles", 32, steps=6)
    for y0, x0, y1, x1 in method_plan("tiles", 64, 64, 32):
        alone = tiled_denoise(predict, ddim(), x[..., y0:y1, x0:x1].clone(), "whole", 32, steps=6)
        assert torch.allclose(canvas[..., y0:y1, x0:x1], alone, atol=1e-5)


def test_averaging_outputs_is_averaging_multidiffusion_steps_for_ddim():
    """MultiDiffusion averages the windows' next states; for DDIM's step (affine in the output at fixed x_t) that is
    one step with the averaged output."""
    scheduler = ddim()
    scheduler.set_timesteps(5)
    t = scheduler.timesteps[1]
    x = torch.randn(1, 3, 48, 48, generator=torch.Generator().manual_seed(2))

    def predict(window, t, boxes):
        return torch.tanh(window * 2) + 0.1 * torch.arange(len(boxes)).view(-1, 1, 1, 1)  # windows disagree

    boxes = window_plan(48, 48, 32, 16)
    ours = scheduler.step(tiled_prediction(predict, x, t, boxes), t, x).prev_sample
    value, count = torch.zeros_like(x), torch.zeros_like(x)
    for k, (y0, x0, y1, x1) in enumerate(boxes):
        view = x[..., y0:y1, x0:x1]
        output = predict(torch.cat([x[..., b[0]:b[2], b[1]:b[3]] for b in boxes]), t, boxes)[k:k + 1]
        value[..., y0:y1, x0:x1] += scheduler.step(output, t, view).prev_sample
        count[..., y0:y1, x0:x1] += 1
    assert torch.allclose(ours, value / count, atol=1e-5)


def test_equal_cost_steps_and_network_pixels():
    assert network_pixels("tiles", 64, 64, 32, 10) == 10 * 64 * 64
    assert network_pixels("whole", 64, 64, 32, 10) == 10 * 64 * 64
    assert network_pixels("multidiffusion", 64, 64, 32, 10) == 10 * 9 * 32 * 32  # 3 x 3 windows at stride 16
    assert steps_at_equal_cost("multidiffusion", 64, 64, 32, 18) == 8
    assert steps_at_equal_cost("whole", 64, 64, 32, 18) == 18
    assert network_pixels("shifted", 64, 64, 32, 4, seed=0) > network_pixels("tiles", 64, 64, 32, 4)


def test_the_tile_seam_score_sees_seams_and_not_smooth_images():
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:96, 0:96]
    texture = (128 + 40 * np.sin(yy / 3.0) * np.cos(xx / 4.0) + rng.normal(0, 5, (96, 96))).clip(0, 255)
    smooth = np.repeat(texture[..., None], 3, axis=2).astype(np.uint8)
    tiled = smooth.astype(int)
    grid = tile_grid(96, 96, 32)
    tiled[grid] += 50  # every other tile brighter: a seam at every border
    tiled = tiled.clip(0, 255).astype(np.uint8)
    assert 0.8 < tile_seam_score(smooth, 32)["ratio"] < 1.25
    assert tile_seam_score(tiled, 32)["ratio"] > 2 * tile_seam_score(smooth, 32)["ratio"]
    assert grid[0, 0] == 0 and grid[0, 32] == 1 and grid[32, 32] == 0


# -- the generators on canvases, and fields of the slide ---------------------------------------
def test_spade_paints_a_canvas_by_every_method_at_the_cost_it_reports():
    from histolab_utils.models.large_regions import paint_spade
    from test_mask_to_image import tiny_pipeline

    pipeline = tiny_pipeline()
    types = np.zeros((32, 32), np.uint8)
    instances = np.zeros((32, 32), np.int32)
    types[4:9, 4:9], instances[4:9, 4:9] = 1, 1
    costs = {}
    for method in METHODS:
        canvas = paint_spade(pipeline, types, instances, method, 16, steps=2, guidance_scale=1.5)
        assert canvas.image.shape == (32, 32, 3) and canvas.image.dtype == np.uint8
        costs[method] = canvas.network_pixels
    assert costs["tiles"] == costs["whole"] == 2 * 2 * 32 * 32  # two steps, both guidance halves
    assert costs["multidiffusion"] == 2 * 2 * 9 * 16 * 16
    with pytest.raises(ValueError, match="square canvas"):
        paint_spade(pipeline, types[:, :20], instances[:, :20], "tiles", 16, 2, 1.5)


def test_the_joint_canvas_keeps_its_raw_sample_for_the_layout_blind_decoder():
    """Notebook 10 scores the joint canvas's label decoded without the layout, as notebook 08 scores: the canvas
    keeps the sample that decoder reads, the same one its image and drawn label come from."""
    from histolab_utils.data.layouts import Layouts
    from histolab_utils.diffusion.schedules import make_scheduler
    from histolab_utils.models.joint_synthesis import (JOINT_CHANNELS, JointSynthesisPipeline,
                                                       joint_label_without_layout)
    from histolab_utils.models.large_regions import paint_joint
    from histolab_utils.diffusion.unets import build_unet
    from test_joint_synthesis import tiny_config

    torch.manual_seed(0)
    pipeline = JointSynthesisPipeline(build_unet(tiny_config()).eval(),
                                      make_scheduler("ddim", "cosine", prediction_type="v_prediction", clip_sample=True))
    layout = Layouts((np.array([[5, 6, 1], [20, 25, 2]]),), 32)
    canvas = paint_joint(pipeline, layout, np.zeros((32, 32), np.int64), "multidiffusion", 16, 2, 1.5)
    assert canvas.samples.shape == (JOINT_CHANNELS, 32, 32) and np.abs(canvas.samples).max() <= 1
    assert np.abs(canvas.image.astype(float) / 127.5 - 1 - canvas.samples[:3].transpose(1, 2, 0)).max() < 0.01
    types, instances = joint_label_without_layout(canvas.samples[None])
    assert types.shape == instances.shape == (1, 32, 32)


def test_window_conditions_read_the_field_under_each_window():
    from histolab_utils.data.nuclei import NUCLEUS_CLASSES, TISSUE_CONTEXTS
    from histolab_utils.models.large_regions import mask_conditions, window_contexts

    types = np.zeros((32, 64), np.uint8)
    instances = np.zeros((32, 64), np.int32)
    types[10:15, 40:45], instances[10:15, 40:45] = 2, 1  # one inflammatory nucleus, in the right window
    contexts = np.zeros((32, 64), np.int64)
    contexts[:, 32:] = TISSUE_CONTEXTS.index("stroma")
    boxes = [(0, 0, 32, 32), (0, 32, 32, 64)]
    assert window_contexts(contexts, boxes).tolist() == [0, TISSUE_CONTEXTS.index("stroma")]
    vectors = mask_conditions(types, instances, contexts, boxes)
    k = len(NUCLEUS_CLASSES)
    assert vectors[0, :k].tolist() == [0, 0, 0] and vectors[1, :k].tolist() == [0, 1, 0]
    assert vectors[1, k + TISSUE_CONTEXTS.index("stroma")] == 1 and vectors[:, -1].tolist() == [0, 0]


def test_a_slide_field_lies_in_its_region_and_matches_the_mask_tiles_rasteriser():
    from histolab_utils.data.nuclei import densest_field, tissue_context, tissue_context_map, wsi_field

    x0, y0 = densest_field("heldout", 64, 2.0, candidates=16, seed=0)
    field = wsi_field(x0, y0, 64, 2.0)
    assert field.region == "heldout" and field.types.shape == (1, 64, 64) and field.instances.max() > 5
    contexts = tissue_context_map(field.boxes[0], (64, 64))
    assert np.bincount(contexts.ravel()).argmax() == tissue_context(field.boxes)[0]
    with pytest.raises(ValueError, match="leaves the slide"):
        wsi_field(x0 - 1e7, y0, 64, 2.0)
