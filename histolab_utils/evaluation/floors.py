"""Score generated samples against real crops, with the real-vs-real floors beside them.

The real reference sets are random crops of the embedded default set: two independent draws
from the train region, one from the validation region (what choices are made on) and one from
the held-out region (final scores only), all with the same n as the samples (FID falls as n
grows, so only equal-n numbers are comparable). Their Inception features are cached per
(crop size, n, seed).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from . import metrics
from ..data import DEFAULT_SET, CropSampler, load_images


@dataclass
class RealReference:
    """Real crops and their Inception features, n each."""

    image_size: int
    n: int
    train: np.ndarray
    train_features: np.ndarray
    train_b_features: np.ndarray  # an independent train draw, for the train-vs-train floor
    heldout: np.ndarray
    heldout_features: np.ndarray
    validation: np.ndarray  # the validation region's draw: what a choice between models is made on
    validation_features: np.ndarray


def real_reference(image_size: int, n: int, seed: int = 0, downsample: int = 1) -> RealReference:
    """Draw (and cache the features of) the real reference sets, at the models' ``downsample``: two train draws, one
    held-out and one validation draw, ``n`` crops each."""
    images = load_images(DEFAULT_SET)
    sets = {}
    scale = f"|downsample={downsample}" if downsample != 1 else ""
    draws = (("train", "train", 101), ("train_b", "train", 202), ("heldout", "heldout", 303),
             ("validation", "validation", 404))
    for name, region, offset in draws:
        crops = CropSampler(images, image_size, region, seed=seed + offset, downsample=downsample).sample(n)
        key = f"{','.join(DEFAULT_SET)}|{region}|{image_size}px{scale}|n={n}|seed={seed + offset}"
        sets[name] = (crops, metrics.cached_features(key, lambda c=crops: metrics.inception_features(c)))
    return RealReference(image_size, n, sets["train"][0], sets["train"][1], sets["train_b"][1],
                         sets["heldout"][0], sets["heldout"][1], sets["validation"][0], sets["validation"][1])


def floors(reference: RealReference) -> dict:
    """FID/KID of real against real at the reference's n: the best a generator could score. Train against validation
    is the floor of a sample set's FID against the validation draw (:func:`score_samples`' ``fid_vs_validation``)."""
    return {
        "n": reference.n,
        "fid_train_vs_heldout": metrics.fid(reference.train_features, reference.heldout_features),
        "fid_train_vs_train": metrics.fid(reference.train_features, reference.train_b_features),
        "fid_train_vs_validation": metrics.fid(reference.train_features, reference.validation_features),
        "kid_train_vs_heldout": metrics.kid(reference.train_features, reference.heldout_features)[0],
    }


def score_samples(samples: np.ndarray, reference: RealReference, training_crops: np.ndarray | None = None) -> dict:
    """Every metric of one sample set: vs held-out (the headline), vs validation (what a choice between models uses),
    vs train (beside the train-vs-train floor, and a memorisation signal when far below it), diversity, memorisation.

    ``training_crops`` are the crops the model was trained on; the memorisation check searches
    them for each sample's nearest neighbour (default: the reference's train draw, a stand-in).
    """
    if len(samples) != reference.n:
        raise ValueError(f"score {reference.n} samples to compare with the floors at the same n, got {len(samples)}")
    features = metrics.inception_features(samples)
    kid_mean, kid_std = metrics.kid(reference.heldout_features, features)
    precision, recall = metrics.precision_recall(reference.heldout_features, features, k=min(3, reference.n - 1))
    copies = metrics.memorisation(samples, reference.train if training_crops is None else training_crops)
    return {
        "fid_vs_heldout": metrics.fid(reference.heldout_features, features),
        "kid_vs_heldout": kid_mean,
        "kid_vs_heldout_std": kid_std,
        "fid_vs_validation": metrics.fid(reference.validation_features, features),
        "fid_vs_train": metrics.fid(reference.train_features, features),
        "precision": precision,
        "recall": recall,
        "ms_ssim": metrics.ms_ssim_diversity(samples),
        "near_copy_fraction": copies["near_copy_fraction"],
    }


def heldout_fid(samples: np.ndarray, reference: RealReference) -> float:
    """FID of ``samples`` against the reference's held-out crops, at the reference's n (equal n, like the floors).

    The lighter half of :func:`score_samples`, for a second scoring of the same model (e.g. sampled by another
    implementation) where only the headline number is compared."""
    if len(samples) != reference.n:
        raise ValueError(f"score {reference.n} samples to compare with the floors at the same n, got {len(samples)}")
    return metrics.fid(reference.heldout_features, metrics.inception_features(samples))


CHANNEL_NAMES = {"r": "red", "g": "green", "b": "blue"}


def ddpm_goals(rows: pd.DataFrame, floor: dict, best_model: tuple[str, str], train_colour: dict,
               heldout_colour: dict, plain_fid: float, *, fid_ratio: float = 1.25, colour_levels: float = 6.0,
               solver_tolerance: float = 0.10, plain_tolerance: float = 0.10, max_near_copies: float = 0.01,
               reference_sampler: str = "ddim", fast_sampler: str = "dpm") -> pd.DataFrame:
    """The goals notebook 03 sets its best model, measured: a pandas table of goal, target, measured, met.

    ``rows`` is the score table (one row per schedule, prediction type and sampler, with ``steps``, ``colour_*``
    means and ``near_copy_fraction``), ``best_model`` the (schedule, prediction) picked on the validation draw
    (:func:`~histolab_utils.evaluation.choices.choose_best_model`), never on held-out crops.
    ``train_colour`` and ``heldout_colour`` are :func:`~histolab_utils.evaluation.metrics.colour_stats` of the real
    train-region and held-out draws at the samples' n (:attr:`RealReference.train` and ``.heldout``).

    * Colour is judged against the **training** crops, per channel: they are what the model was trained to
      reproduce. The held-out crops' own offset from them is a property of the split (the regions differ), not of
      the model, so it is reported beside the goal (``met`` None), never folded into it.
    * ``plain_fid`` is the FID against the same held-out crops of the saved model sampled by plain diffusers (its
      ``DDPMPipeline`` with the ``reference_sampler``'s diffusers scheduler, same steps and n): the package's score
      must agree with an independent implementation within ``plain_tolerance`` either way.
    """
    schedule, prediction = best_model
    mine = rows[(rows["schedule"] == schedule) & (rows["prediction"] == prediction)].set_index("sampler")
    for sampler in (reference_sampler, fast_sampler):
        if sampler not in mine.index:
            raise ValueError(f"rows hold no {sampler!r} row of best_model {best_model!r}")
    reference = mine.loc[reference_sampler]
    ratio = reference["fid_vs_heldout"] / floor["fid_train_vs_heldout"]
    goals = [(f"best model's FID vs held-out ({reference_sampler}) over the train-vs-held-out floor", f"<= {fid_ratio}",
              ratio, bool(ratio <= fid_ratio))]
    for c, name in CHANNEL_NAMES.items():
        gap = reference[f"colour_{c}"] - train_colour[f"mean_{c}"]
        goals.append((f"mean {name} of the best model's samples minus the training crops' (levels of 255)",
                      f"within ±{colour_levels:g}", gap, bool(abs(gap) <= colour_levels)))
    for c, name in CHANNEL_NAMES.items():
        goals.append((f"mean {name} of the held-out crops minus the training crops' (the split's own offset, not a "
                      f"goal)", "reported", heldout_colour[f"mean_{c}"] - train_colour[f"mean_{c}"], None))
    solver_gap = mine.loc[fast_sampler, "fid_vs_heldout"] / reference["fid_vs_heldout"] - 1
    plain_gap = plain_fid / reference["fid_vs_heldout"] - 1
    copies = rows["near_copy_fraction"].max()
    goals += [
        (f"{fast_sampler} FID over {reference_sampler} FID, minus 1 (best model)", f"<= {solver_tolerance:g}",
         solver_gap, bool(solver_gap <= solver_tolerance)),
        (f"plain-diffusers {reference_sampler}-{int(reference['steps'])} FID of the saved best model over the package's,"
         f" minus 1", f"within ±{plain_tolerance:g}", plain_gap, bool(abs(plain_gap) <= plain_tolerance)),
        ("largest near-copy fraction of any sample set", f"< {max_near_copies:g}", copies,
         bool(copies < max_near_copies)),
    ]
    return pd.DataFrame(goals, columns=["goal", "target", "measured", "met"])


def vqgan_goals(scores, real_vs_real: dict, model: str, *, min_psnr: float = 24.0, rfid_ratio: float = 0.75,
                min_codebook_usage: float = 0.9):
    """The goals notebook 02 sets its kept VQ-GAN, measured: a pandas table of goal, target, measured, met.

    ``scores`` is the reconstruction table indexed by model (with ``rfid``, ``psnr`` and ``codebook_usage``): the
    VQ-GANs' rows, the baselines' and the JPEG reference's (its name ends in "(reference)"; a reference is not a
    baseline to beat). ``model`` is the kept VQ-GAN's row and ``real_vs_real`` the real-vs-real FIDs at the same n
    (:func:`floors`): the FID of real train against real held-out crops measures the shift between the two regions.
    It is not a floor of rFID, which is 0 for a perfect reconstruction; it says how far the reconstructions' drift
    is from that between real crops of two regions."""
    import pandas as pd

    kept = scores.loc[model]
    ratio = kept["rfid"] / real_vs_real["fid_train_vs_heldout"]
    baselines = scores.drop(index=[m for m in scores.index if m.startswith("VQ-GAN") or m.endswith("(reference)")])
    best_baseline = baselines["rfid"].min()
    goals = [
        ("PSNR on held-out crops (dB)", f">= {min_psnr:g}", kept["psnr"], kept["psnr"] >= min_psnr),
        ("rFID over the FID of real train vs real held-out crops (the shift between regions)", f"<= {rfid_ratio:g}",
         ratio, ratio <= rfid_ratio),
        ("share of the codebook in use on held-out crops", f">= {min_codebook_usage:g}", kept["codebook_usage"],
         kept["codebook_usage"] >= min_codebook_usage),
        ("rFID below every baseline's (mean colour, bicubic)", f"< {best_baseline:.1f}", kept["rfid"],
         kept["rfid"] < best_baseline),
    ]
    return pd.DataFrame(goals, columns=["goal", "target", "measured", "met"])


# the clause a controllability goal's target carries when it is two-sided (``ldm_goals(of_ceiling_low=...)``); a
# record whose target lacks it was made under the one-sided goal
ABOVE_REAL_CLAUSE = ", interval not wholly above 1"


def above_real(of_ceiling_low: float | None) -> bool:
    """Whether a share of the judge's real ceiling is surely above 1: the lower end of its 95 % interval is. The
    judge then files the samples more surely than real held-out tiles, which is exaggeration, not control."""
    return of_ceiling_low is not None and of_ceiling_low > 1.0


def ldm_goals(scores, floor, accuracy: float, ceiling: float, *, chance: float | None = None, fid_ratio: float = 1.2,
              control_ratio: float = 0.8, of_ceiling_low: float | None = None):
    """The goals notebook 05 sets its conditional LDM at the chosen guidance, measured: a pandas table of goal,
    target, measured, met.

    ``scores`` and ``floor`` are :func:`~histolab_utils.models.ldm.per_class_scores` tables (columns ``class``,
    ``name``, ``fid``) of the samples and of real train tiles, each against the cluster's held-out tiles at equal n;
    ``accuracy`` is the independent judge's controllability at that guidance (:mod:`.cluster_judge`) and
    ``ceiling`` the same judge's accuracy on real held-out tiles; ``chance``, when given, the most a label-blind
    generator reaches on the same requests (the commonest cluster's share), adds the goal on the margin over chance
    (a label-blind generator can reach ``control_ratio`` of a weak judge's ceiling). One FID row per scored cluster (class ``-1``, the
    pooled row, is left out). The FID goal is two-sided: the ratio to the floor must lie within ``fid_ratio`` of 1
    either way, since a sample set far *closer* to the held-out tiles than real train tiles are is no win: it says
    the floor is a poor reference (few tiles, or train tiles of the cluster unlike its held-out ones).

    ``of_ceiling_low``, the lower end of the 95 % interval of ``accuracy / ceiling``, makes both controllability goals
    two-sided: when the whole interval lies above 1, the judge files the samples more surely than real held-out
    tiles, which is exaggeration (guidance pushing every sample to its cluster's extreme), not control, and both
    goals fail."""
    import pandas as pd

    floor_fid = floor.set_index("class")["fid"]
    exaggerated = above_real(of_ceiling_low)
    bound = f">= {control_ratio:g}" + (ABOVE_REAL_CLAUSE if of_ceiling_low is not None else "")
    goals = [("controllability by the independent judge over its real ceiling", bound,
              accuracy / ceiling, bool(accuracy / ceiling >= control_ratio and not exaggerated))]
    if chance is not None:
        over = (accuracy - chance) / (ceiling - chance) if ceiling > chance else float("nan")
        goals.append(("controllability's margin over chance, as a share of the ceiling's", bound,
                      over, bool(over >= control_ratio and not exaggerated)))
    for _, row in scores[(scores["class"] >= 0) & scores["fid"].notna()].iterrows():
        ratio = row["fid"] / floor_fid.get(row["class"], float("nan"))
        goals.append((f"FID of cluster '{row['name']}' over its real floor", f"{1 / fid_ratio:.2f} to {fid_ratio:g}",
                      ratio, bool(1 / fid_ratio <= ratio <= fid_ratio)))
    return pd.DataFrame(goals, columns=["goal", "target", "measured", "met"])


def condition_matched(pool: np.ndarray, wanted: np.ndarray, seed: int = 0) -> tuple[np.ndarray, pd.Series]:
    """For each row of ``wanted`` [n, F] (a condition: nucleus types and tissue context, say), the index
    of a ``pool`` row [m, F] with the same condition: the floor of a conditional generator is real data
    drawn with the conditions the generator was asked for, so that a model cannot beat it by matching
    the conditions better than an unmatched real set does.

    Matches are drawn at random without replacement while the pool has unused ones, then with
    replacement; a condition the pool lacks takes a row of the nearest condition (Hamming distance).
    Returns the indices and how many rows were matched exactly, exactly reusing a row, or by the
    nearest condition."""
    pool, wanted = np.asarray(pool), np.asarray(wanted)
    if pool.ndim != 2 or wanted.ndim != 2 or pool.shape[1] != wanted.shape[1]:
        raise ValueError(f"pool and wanted must be [m, F] and [n, F] with one F; got {pool.shape} and {wanted.shape}")
    if not len(pool):
        raise ValueError("the pool is empty")
    rng = np.random.default_rng(seed)
    index = np.empty(len(wanted), dtype=np.int64)
    used = np.zeros(len(pool), dtype=bool)
    how = {"exact": 0, "exact, reused": 0, "nearest": 0}
    for i in rng.permutation(len(wanted)):
        distance = (pool != wanted[i]).sum(axis=1)
        same = np.flatnonzero(distance == 0)
        if len(same):
            fresh = same[~used[same]]
            pick = rng.choice(fresh) if len(fresh) else rng.choice(same)
            how["exact" if len(fresh) else "exact, reused"] += 1
        else:
            pick = rng.choice(np.flatnonzero(distance == distance.min()))
            how["nearest"] += 1
        index[i], used[pick] = pick, True
    return index, pd.Series(how, name="rows")
