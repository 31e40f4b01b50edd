from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import linalg

from histolab_utils.data import CropSampler, load_images, require_file
from histolab_utils.evaluation import metrics


def scipy_frechet(a: np.ndarray, b: np.ndarray) -> float:
    """An independent Fréchet distance, written out in the test."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = linalg.sqrtm(cov_a @ cov_b).real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * root))


@pytest.fixture(scope="module")
def heldout_features(real_data):
    """Inception features of two disjoint held-out crop sets and of uniform noise (n = 24 each)."""
    images = load_images()
    crops = CropSampler(images, 64, "heldout", seed=0).sample(48)
    noise = np.random.default_rng(0).integers(0, 256, (24, 64, 64, 3), dtype=np.uint8)
    features = metrics.inception_features(np.concatenate([crops, noise]))
    return features[:24], features[24:48], features[48:], crops


def test_inception_features_equal_a_direct_torchscript_call(real_data):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (3, 299, 299, 3), dtype=np.uint8)
    ours = metrics.inception_features(images, device="cpu")
    model = torch.jit.load(str(require_file("fid_inception", "default_1.pt")), map_location="cpu").eval()
    with torch.no_grad():
        direct = model(torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1).double().numpy()
    assert ours.shape == (3, 2048)
    np.testing.assert_allclose(ours, direct, atol=1e-4, rtol=0)
    tensor_input = metrics.inception_features(torch.from_numpy(images[:1]))
    np.testing.assert_allclose(tensor_input, direct[:1], atol=1e-4, rtol=0)


def test_inception_features_of_a_set_seen_before_come_from_the_cache_and_a_changed_pixel_misses_it(monkeypatch):
    images = np.random.default_rng(2).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    first = metrics.inception_features(images)
    first[:] = 0  # each call owns its copy: changing it leaves the cache alone
    calls = []
    monkeypatch.setattr(metrics, "load_inception", lambda device: calls.append(device) or (lambda x: 1 / 0))
    again = metrics.inception_features(images.copy())
    assert not calls and np.abs(again).sum() > 0
    changed = images.copy()
    changed[1, 5, 5, 0] ^= 1
    with pytest.raises(ZeroDivisionError):  # a new set runs the network
        metrics.inception_features(changed)
    assert len(calls) == 1


def test_inception_features_reject_bad_input():
    with pytest.raises(ValueError, match="uint8 images"):
        metrics.inception_features(np.zeros((2, 64, 64, 3), np.float32))
    with pytest.raises(ValueError, match="uint8 images"):
        metrics.inception_features(np.zeros((64, 64, 3), np.uint8))


@pytest.mark.parametrize("n", [40, 400], ids=["fewer samples than dims", "more samples than dims"])
def test_fid_equals_scipy_frechet_distance_of_the_features(n):
    rng = np.random.default_rng(0)
    a = rng.normal(size=(n, 128)) @ rng.normal(size=(128, 128))
    b = rng.normal(loc=0.1, scale=1.2, size=(n, 128)) @ rng.normal(size=(128, 128))
    assert metrics.fid(a, b) == pytest.approx(scipy_frechet(a, b), rel=1e-3)
    assert metrics.fid(a, a) == pytest.approx(0.0, abs=1e-6 * np.trace(np.cov(a, rowvar=False)))


def test_fid_on_images_uses_the_inception_features(heldout_features):
    first, second, _, crops = heldout_features
    # The done-when check on real 2048-d Inception features, against scipy's sqrtm.
    assert metrics.fid(first, second) == pytest.approx(scipy_frechet(first, second), rel=1e-3)
    from_images = metrics.fid(crops[:8], crops[24:32])
    # Batches of 8 and of 72 may take different float32 conv paths (oneDNN picks by shape), so the
    # features agree to ~1e-7, not bit for bit; another resize or scaling would move FID by percents.
    assert from_images == pytest.approx(metrics.fid(first[:8], second[:8]), rel=1e-6)


def test_disjoint_real_sets_are_far_closer_than_real_and_noise(heldout_features):
    first, second, noise, _ = heldout_features
    real_vs_real = metrics.fid(first, second)
    real_vs_noise = metrics.fid(first, noise)
    assert real_vs_real < 0.5 * real_vs_noise, (real_vs_real, real_vs_noise)
    kid_real, _ = metrics.kid(first, second, subsets=20, subset_size=20)
    kid_noise, _ = metrics.kid(first, noise, subsets=20, subset_size=20)
    assert kid_real < 0.25 * kid_noise


def test_kid_matches_a_direct_double_loop():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(6, 2048)), rng.normal(0.3, 1.0, size=(5, 2048))
    k = lambda u, v: (u @ v / 2048 + 1) ** 3  # noqa: E731
    xx = sum(k(x[i], x[j]) for i in range(6) for j in range(6) if i != j) / 30
    yy = sum(k(y[i], y[j]) for i in range(5) for j in range(5) if i != j) / 20
    xy = sum(k(x[i], y[j]) for i in range(6) for j in range(5)) / 30
    mean, std = metrics.kid(x, y, subsets=3, subset_size=10)  # subset = whole sets
    assert mean == pytest.approx(xx + yy - 2 * xy, rel=1e-9) and std == pytest.approx(0, abs=1e-9)


def test_precision_and_recall():
    rng = np.random.default_rng(0)
    real = rng.normal(size=(100, 2048))
    assert metrics.precision_recall(real, real.copy()) == (1.0, 1.0)
    far = real + 100.0
    assert metrics.precision_recall(real, far) == (0.0, 0.0)
    collapsed = np.repeat(real[:1], 100, axis=0) + rng.normal(scale=1e-3, size=(100, 2048))
    precision, recall = metrics.precision_recall(real, collapsed)
    assert precision == 1.0 and recall < 0.1, "mode collapse: precise but no recall"


def test_ms_ssim_diversity():
    rng = np.random.default_rng(0)
    same = np.repeat(rng.integers(0, 256, (1, 32, 32, 3), dtype=np.uint8), 8, axis=0)
    varied = rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
    assert metrics.ms_ssim_diversity(same) == pytest.approx(1.0, abs=1e-4)
    assert metrics.ms_ssim_diversity(varied) < 0.2


def test_memorisation_flags_copies_and_not_novel_samples():
    rng = np.random.default_rng(0)
    train = rng.integers(0, 256, (60, 16, 16, 3), dtype=np.uint8)
    copies = train[[3, 7, 11]]
    novel = rng.integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    result = metrics.memorisation(np.concatenate([copies, novel]), train)
    assert list(result["nearest_index"][:3]) == [3, 7, 11]
    assert (result["ratio"][:3] == 0).all() and (result["ratio"][3:] > 0.8).all()
    assert result["near_copy_fraction"] == 0.5


def test_cached_features_compute_once(tmp_path, real_data):
    calls = []
    compute = lambda: calls.append(1) or np.ones((2, 3))  # noqa: E731
    first = metrics.cached_features("demo|train|64|n=2", compute, cache_dir=tmp_path)
    second = metrics.cached_features("demo|train|64|n=2", compute, cache_dir=tmp_path)
    assert calls == [1] and np.array_equal(first, second)
    metrics.cached_features("demo|train|64|n=3", compute, cache_dir=tmp_path)
    assert calls == [1, 1]


def test_colour_problems_pass_a_dark_but_pink_set_and_name_what_grey_noise_breaks():
    real = {"mean_r": 175.0, "mean_g": 124.0, "mean_b": 183.0, "saturated_fraction": 0.0}
    dark = {"mean_r": 154.0, "mean_g": 105.0, "mean_b": 165.0, "saturated_fraction": 0.0}  # 03's split-3 DDIM samples
    assert metrics.colour_problems(dark, real) == []
    grey = {"mean_r": 129.0, "mean_g": 126.0, "mean_b": 128.0, "saturated_fraction": 0.0}  # its linear-eps model's
    problems = metrics.colour_problems(grey, real)
    assert any("mean R" in p for p in problems) and any("wrong hue" in p for p in problems)
    assert not any("mean G" in p for p in problems)  # green alone is close: brightness alone would miss grey
    assert metrics.colour_problems({**dark, "saturated_fraction": 0.57}, real) == ["57% of pixels saturated (under 5%)"]
    assert metrics.colour_problems({**dark, "mean_b": 105.0}, real)  # blue lost: wrong hue and brightness
