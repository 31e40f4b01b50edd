"""Painted on one machine, scored on another: the replay must give each mask its own image, and refuse the rest."""

import json

import numpy as np
import pytest

from histolab_utils.models.painted_sets import PaintedPipeline, mask_fingerprint, read_painted, score_painted


def masks(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    instances = rng.integers(0, 4, (n, 8, 8))
    return (instances > 0).astype(np.uint8) * 2, instances


def test_the_replay_returns_each_masks_own_image_in_batches_and_duplicates_in_turn():
    types, instances = masks(5)
    types[3], instances[3] = types[1], instances[1]  # one mask twice: its two images come back in painting order
    painted = {1.5: np.arange(5)[:, None, None, None] * np.ones((5, 8, 8, 3), np.uint8)}
    replay = PaintedPipeline(painted, types, instances)
    first = replay(types[:2], instances[:2], 1.5, 50).images
    rest = replay(types[2:], instances[2:], 1.5, 50).images
    assert [int(image[0, 0, 0]) for image in (*first, *rest)] == [0, 1, 2, 3, 4]


def test_the_replay_refuses_a_scale_a_mask_or_a_sampler_it_has_no_image_for():
    from diffusers import DDPMScheduler

    types, instances = masks(3)
    replay = PaintedPipeline({1.0: np.zeros((3, 8, 8, 3), np.uint8)}, types, instances)
    with pytest.raises(KeyError, match="guidance scale 2"):
        replay(types, instances, 2.0, 50)
    other_types, other_instances = masks(1, seed=9)
    with pytest.raises(KeyError, match="no image painted for this mask"):
        replay(other_types, other_instances, 1.0, 50)
    replay.scheduler = DDPMScheduler()
    with pytest.raises(KeyError, match="only DDIM images were painted; asked for DDPMScheduler"):
        replay(types, instances, 1.0, 50)


def test_a_fingerprint_changes_with_any_pixel_of_the_masks():
    types, instances = masks(4)
    moved = instances.copy()
    moved[2, 3, 3] += 1
    assert mask_fingerprint(types, instances) == mask_fingerprint(types.copy(), instances.copy())
    assert mask_fingerprint(types, instances) != mask_fingerprint(types, moved)


def test_a_missing_or_foreign_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.npz: no painted sets"):
        read_painted(tmp_path / "nothing.npz")
    np.savez(tmp_path / "other.npz", images=np.zeros(3))
    with pytest.raises(ValueError, match="other.npz: not a painted-sets file"):
        read_painted(tmp_path / "other.npz")


def test_images_painted_for_other_masks_are_refused_before_any_score(tmp_path):
    from histolab_utils.config import load_config

    settings = {"fingerprints": {"validation": "0" * 64, "heldout": "0" * 64}, "sampler": "DDIM"}
    path = tmp_path / "painted.npz"
    np.savez(path, settings=np.array(json.dumps(settings)), **{"validation/1": np.zeros((1, 8, 8, 3), np.uint8)})
    with pytest.raises(ValueError, match="validation images were painted for other masks"):
        score_painted(path, load_config("smoke"))
