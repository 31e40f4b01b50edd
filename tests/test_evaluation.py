from __future__ import annotations

import numpy as np
import pytest

from histolab_utils.evaluation.floors import floors, real_reference, score_samples


def test_scores_and_floors_on_real_crops(real_data):
    reference = real_reference(image_size=32, n=8, seed=5)
    assert reference.train.shape == reference.heldout.shape == (8, 32, 32, 3)
    floor = floors(reference)
    assert floor["n"] == 8 and floor["fid_train_vs_heldout"] > 0 and floor["fid_train_vs_train"] > 0
    noise = np.random.default_rng(0).integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
    scores = score_samples(noise, reference)
    assert scores["fid_vs_heldout"] > floor["fid_train_vs_heldout"]
    copies = score_samples(reference.train.copy(), reference)
    assert copies["near_copy_fraction"] == 1.0 and scores["near_copy_fraction"] == 0.0
    # Memorisation searches the crops the model trained on when they are given.
    trained_on = np.concatenate([noise[:3], reference.heldout])
    assert score_samples(noise, reference, training_crops=trained_on)["near_copy_fraction"] == 3 / 8
    with pytest.raises(ValueError, match="same n"):
        score_samples(noise[:4], reference)
