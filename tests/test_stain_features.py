"""The no-model baseline features for notebook 04: shape, names, and that they tell stains apart."""

import numpy as np
import pytest

from histolab_utils.latent.clustering import cluster
from histolab_utils.latent.latents import standardise
from histolab_utils.latent.stain_features import FEATURE_NAMES, stain_features

NUCLEI = (70, 40, 140)  # haematoxylin-rich purple
STROMA = (235, 150, 200)  # eosin-rich pink


def _tiles(colour, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = np.broadcast_to(np.array(colour, float), (n, 16, 16, 3))
    return np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)


def test_shape_and_names():
    features = stain_features(_tiles(NUCLEI, 5, 0))
    assert features.shape == (5, len(FEATURE_NAMES)) == (5, 14)
    assert np.isfinite(features).all()


def test_haematoxylin_and_eosin_rich_tiles_differ_where_expected():
    nuclei, stroma = stain_features(_tiles(NUCLEI, 20, 1)), stain_features(_tiles(STROMA, 20, 2))
    h, e = FEATURE_NAMES.index("haematoxylin_mean"), FEATURE_NAMES.index("eosin_mean")
    assert nuclei[:, h].min() > stroma[:, h].max()
    assert (nuclei[:, h] - nuclei[:, e]).min() > (stroma[:, h] - stroma[:, e]).max()


def test_kmeans_on_them_recovers_the_two_tissues():
    tiles = np.concatenate([_tiles(NUCLEI, 30, 3), _tiles(STROMA, 30, 4)])
    labels = cluster(standardise(stain_features(tiles)), "kmeans", 2)
    assert len(set(labels[:30])) == 1 and len(set(labels[30:])) == 1 and labels[0] != labels[-1]


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="uint8"):
        stain_features(np.zeros((2, 8, 8, 3), np.float32))
    with pytest.raises(ValueError, match=r"\[N, H, W, 3\]"):
        stain_features(np.zeros((8, 8, 3), np.uint8))
