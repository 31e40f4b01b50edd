"""Nucleus appearance: how real do the nuclei of a synthetic image (or of a generated mask) look, scored so that
closer to real is better and real against real is the floor.

Why not mask fidelity alone: :mod:`~histolab_utils.evaluation.mask_fidelity` asks whether a haematoxylin detector
finds nuclei where the mask says. A generator that paints every nucleus as a uniform dark oval beats real images on
that score (real nuclei are vesicular, paler and textured), so a higher Dice can mean less realism. The scores here
are two-sided: nuclei too small, too dark, too pale or too uniform all score far from real.

Per nucleus (one row per instance id > 0 of an instance map):

* from the mask alone (:func:`mask_features`, what notebook 06 has): ``area`` (px), ``eccentricity`` (of the
  ellipse with the region's second moments: 0 for a disc), ``solidity``, the centroid, ``type`` when a type map is
  given (the most frequent type id among its pixels) and ``touches_border``: the nucleus has a pixel on the crop's
  edge, so it is a fragment of a nucleus the crop cuts. Fragments bias the area low; every distance here uses
  whole nuclei only, by default;
* with the image too (:func:`nucleus_features`): ``h_mean`` and ``h_std``, the haematoxylin optical density
  inside the nucleus (colour deconvolution, Ruifrok & Johnston 2001, through
  :func:`~histolab_utils.evaluation.mask_fidelity.haematoxylin` *unsmoothed*: the texture is a feature), and
  ``ring_contrast``, mean haematoxylin inside minus mean haematoxylin over the background pixels within
  ``ring_width`` px of the nucleus (other nuclei are left out of the ring; NaN when no background pixel is that
  close). A dark nucleus on pale stroma has a positive contrast.

Distance (:func:`appearance_distance`): per feature, the 2-sample 1-D Wasserstein distance (the earth mover's
distance between the two empirical distributions, ``scipy.stats.wasserstein_distance``; as a two-sample statistic:
Ramdas, García Trillos & Cuturi, "On Wasserstein two-sample testing and related families of nonparametric tests",
Entropy 19:47, 2017) between the two sets' values of that feature, divided by the real set's robust scale (IQR /
1.349, the standard deviation of a normal with that IQR), then averaged over the features (``mean``). Each term is
in units of "real spreads" and is zero only when the two distributions agree, whichever side a difference lies
on: nuclei too small, too large, too dark, too pale, too uniform or without contrast all score far. It is the
per-feature distance :mod:`~histolab_utils.evaluation.morphology` already uses for masks, with a robust scale
because nucleus areas have a heavy right tail.

Floor, equal n and types (:func:`appearance_scores`): a Wasserstein distance between two finite samples is positive
even for one distribution and shrinks as n grows, so every set is compared with real held-out nuclei at one n,
drawn several times (mean and a percentile interval over the draws); real *train* nuclei against the same held-out
nuclei give the floor, what real data of another region scores (near it is as real as real). Regions differ in
what nuclei they hold, so each set is drawn with the held-out draw's nucleus types when types are known, the
condition-matched floor of :func:`~histolab_utils.evaluation.floors.condition_matched`. Whole nuclei are fewer and
smaller in smaller tiles (a large nucleus touches an edge more often), so compare sets cut at one tile size.

Goals (:func:`appearance_goals`): the mean distance within k x the floor's, and each feature's within k x its own
floor's (a mean over five features dilutes one that is far off). Every distance is two-sided, so a goal "within k x
the floor" fails nuclei too small and too large alike.

Masks alone (notebook 06): :func:`area_distribution` scores the whole-nucleus area of generated masks against real
held-out masks beside the floor, and :func:`whole_areas` gives the areas themselves for a plot.

Images painted under given masks (notebook 07): ``area`` and ``eccentricity`` are then the mask's, the same for
the generated set as for the real held-out nuclei it is drawn against, so they score near zero by construction while
the floor's train nuclei do not: score such images on ``IMAGE_FEATURES`` (what the image decides), and read the
masks' shape from notebook 06. The distances are unsigned; :func:`appearance_shifts` gives each feature's signed
shift from real (darker, more uniform, ...) in words, the *why* beside the *how far*.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

MASK_FEATURES: tuple[str, ...] = ("area", "eccentricity")
APPEARANCE_FEATURES: tuple[str, ...] = (*MASK_FEATURES, "h_mean", "h_std", "ring_contrast")
RING_WIDTH = 3  # px of background around a nucleus that its contrast is measured against
ROBUST_SCALE = 1.349  # IQR of the standard normal: IQR / 1.349 estimates a normal's standard deviation
SCALE_FLOOR = 0.1  # a real feature's scale is at least this share of its standard deviation (never 0)
FLOOR_ROW = "real (train vs held-out)"
DRAWS = 20
INTERVAL = (5.0, 95.0)  # percentiles of the draws reported beside each mean


# -- per nucleus --------------------------------------------------------------------------------------------------
def _stack(array, name: str, ndim: int) -> np.ndarray:
    """``array`` as a stack: one item of ``ndim - 1`` dims gains a leading axis; anything else is an error."""
    array = np.asarray(array)
    if array.ndim == ndim - 1:
        return array[None]
    if array.ndim != ndim:
        item = "[H, W, 3]" if ndim == 4 else "[H, W]"
        raise ValueError(f"{name} must be {item} or a stack of them; got shape {array.shape}")
    return array


def mask_features(instances: np.ndarray, types: np.ndarray | None = None) -> pd.DataFrame:
    """One row per nucleus of an instance map [H, W] or a stack of them [N, H, W] (0 = background): ``tile``,
    ``label`` (its instance id), ``area``, ``eccentricity``, ``solidity``, ``y``, ``x``, ``type`` (only with a
    per-pixel type map ``types`` of the same shape, as :class:`~histolab_utils.data.pairs.ImageMaskPairs` holds) and
    ``touches_border`` (a pixel on the crop's edge: a fragment, left out of the distances by default)."""
    from .morphology import nucleus_features as morphology_nuclei

    instances = _stack(instances, "instances", 3)
    if not np.issubdtype(instances.dtype, np.integer):
        raise ValueError(f"instances must be an integer instance map; got dtype {instances.dtype}")
    if types is not None:
        types = _stack(types, "types", 3)
        if types.shape != instances.shape:
            raise ValueError(f"types {types.shape} and instances {instances.shape} must have one shape")
    table = morphology_nuclei(instances > 0 if types is None else types, instances)
    edges = [set(np.concatenate([inst[0], inst[-1], inst[:, 0], inst[:, -1]]).tolist()) for inst in instances]
    table["touches_border"] = [int(label) in edges[int(tile)] for tile, label in zip(table["tile"], table["label"])]
    table = table.astype({"tile": int, "label": int, "area": float, "touches_border": bool})
    return table.drop(columns="type") if types is None else table


def nucleus_features(image: np.ndarray, instances: np.ndarray, types: np.ndarray | None = None, *,
                     ring_width: int = RING_WIDTH) -> pd.DataFrame:
    """:func:`mask_features` of ``instances`` [H, W] (or [N, H, W]) plus what the RGB uint8 ``image`` [H, W, 3]
    (or [N, H, W, 3]) shows of each nucleus: ``h_mean``, ``h_std`` (haematoxylin optical density inside it) and
    ``ring_contrast`` (``h_mean`` minus the mean over the background pixels within ``ring_width`` px of it)."""
    from scipy.ndimage import distance_transform_edt, find_objects

    from .mask_fidelity import haematoxylin

    images, instances = _stack(image, "image", 4), _stack(instances, "instances", 3)
    if images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"image must be RGB uint8 [H, W, 3] or [N, H, W, 3]; got {images.shape} {images.dtype}")
    if images.shape[:3] != instances.shape:
        raise ValueError(f"each image needs its instance map: image {images.shape[:3]} vs instances {instances.shape}")
    if int(ring_width) != ring_width or ring_width < 1:
        raise ValueError(f"ring_width must be a whole number of px >= 1; got {ring_width}")
    table = mask_features(instances, types)
    density = haematoxylin(images, sigma=0)  # unsmoothed: a nucleus's texture is one of the features
    stats = {}
    for tile, (inst, h) in enumerate(zip(instances.astype(np.int64), density)):
        count = np.bincount(inst.ravel(), minlength=1)
        total = np.bincount(inst.ravel(), weights=h.ravel(), minlength=1)
        squares = np.bincount(inst.ravel(), weights=h.ravel() ** 2, minlength=1)
        background = inst == 0
        for label, box in enumerate(find_objects(inst), start=1):
            if box is None:
                continue
            box = tuple(slice(max(s.start - ring_width, 0), s.stop + ring_width) for s in box)
            distance = distance_transform_edt(inst[box] != label)
            ring = (distance > 0) & (distance <= ring_width) & background[box]
            mean = total[label] / count[label]
            std = np.sqrt(max(squares[label] / count[label] - mean ** 2, 0.0))
            contrast = mean - h[box][ring].mean() if ring.any() else np.nan
            stats[tile, label] = (mean, std, contrast)
    keys = list(zip(table["tile"], table["label"]))
    values = np.array([stats[key] for key in keys], dtype=np.float64).reshape(len(keys), 3)
    return table.assign(h_mean=values[:, 0], h_std=values[:, 1], ring_contrast=values[:, 2])


# -- distances ------------------------------------------------------------------------------------------------------
def _whole(table: pd.DataFrame, name: str, whole_only: bool) -> pd.DataFrame:
    if not isinstance(table, pd.DataFrame):
        raise TypeError(f"{name} must be a feature table (pandas DataFrame); got {type(table).__name__}")
    if whole_only and "touches_border" in table:
        table = table[~table["touches_border"].astype(bool)]
    if not len(table):
        raise ValueError(f"{name} holds no {'whole ' if whole_only else ''}nuclei to score")
    return table


def _features(tables: Mapping[str, pd.DataFrame], features: Sequence[str] | None) -> tuple[str, ...]:
    """The features to score: those asked for (each must be a column of every table), or every one of
    ``APPEARANCE_FEATURES`` that all tables have."""
    if features is None:
        features = tuple(f for f in APPEARANCE_FEATURES if all(f in t for t in tables.values()))
        if not features:
            raise ValueError(f"the tables share none of the features {list(APPEARANCE_FEATURES)}")
        return features
    features = (features,) if isinstance(features, str) else tuple(features)
    if not features:
        raise ValueError("features is empty")
    for name, table in tables.items():
        missing = [f for f in features if f not in table]
        if missing:
            raise ValueError(f"{name} has no column {missing}; it has {list(table.columns)}")
    return features


def robust_scale(values) -> float:
    """IQR / 1.349 of ``values`` (NaN left out), at least ``SCALE_FLOOR`` x their standard deviation and never 0
    (1.0 for a constant feature, whose distances are then in its own units)."""
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if not len(values):
        return float("nan")
    q1, q3 = np.percentile(values, [25, 75])
    scale = max((q3 - q1) / ROBUST_SCALE, SCALE_FLOOR * float(values.std()))
    return float(scale) if scale > 0 else 1.0


def _distance(generated: pd.DataFrame, real: pd.DataFrame, features: Sequence[str], scales: Mapping[str, float]):
    from scipy.stats import wasserstein_distance

    out = {}
    for feature in features:
        a = generated[feature].to_numpy(np.float64)
        b = real[feature].to_numpy(np.float64)
        a, b = a[np.isfinite(a)], b[np.isfinite(b)]
        out[feature] = float(wasserstein_distance(a, b) / scales[feature]) if len(a) and len(b) else float("nan")
    values = [v for v in out.values() if np.isfinite(v)]
    out["mean"] = float(np.mean(values)) if values else float("nan")
    return pd.Series(out, name="distance")


def appearance_distance(generated: pd.DataFrame, real: pd.DataFrame, features: Sequence[str] | None = None, *,
                        whole_only: bool = True) -> pd.Series:
    """How far the nuclei of ``generated`` lie from those of ``real`` (feature tables of :func:`nucleus_features`
    or :func:`mask_features`): per feature, the 2-sample 1-D Wasserstein distance (``scipy.stats.
    wasserstein_distance``) over ``real``'s robust scale (:func:`robust_scale`, IQR / 1.349), and their ``mean``.

    Two-sided: 0 when the distributions agree, and large for nuclei too small, too large, too dark, too pale, too
    uniform or without contrast alike. ``features``: default every one of ``APPEARANCE_FEATURES`` both tables have.
    With ``whole_only`` nuclei touching the crop border are left out (their area is a fragment's). Values depend on
    n (see :func:`appearance_scores` for scores at equal n beside the real floor). NaN feature values (a ring with no
    background) are left out of that feature."""
    generated, real = _whole(generated, "generated", whole_only), _whole(real, "real", whole_only)
    features = _features({"generated": generated, "real": real}, features)
    return _distance(generated, real, features, {f: robust_scale(real[f]) for f in features})


def appearance_scores(sets: Mapping[str, pd.DataFrame], real_train: pd.DataFrame, real_heldout: pd.DataFrame, *,
                      n: int | None = None, seed: int = 0, draws: int = DRAWS, features: Sequence[str] | None = None,
                      match_types: bool | None = None, whole_only: bool = True,
                      interval: tuple[float, float] = INTERVAL) -> pd.DataFrame:
    """Every set's appearance distance from real held-out nuclei, at one n, beside the real floor.

    ``sets`` maps a name to a feature table (:func:`nucleus_features`, or :func:`mask_features` for masks alone);
    ``real_train`` and ``real_heldout`` are the same tables of real nuclei of the train and held-out regions. Each
    of ``draws`` random draws takes ``n`` whole nuclei without replacement from the held-out nuclei (the reference
    of every row of that draw) and ``n`` from every set and from the train nuclei, and computes
    :func:`appearance_distance` scaled by the robust scale of *all* held-out nuclei (one scale for every row and
    draw). ``n`` defaults to the smallest count of whole nuclei (the held-out and train sets included); a set with
    fewer is an error.

    ``match_types`` (default: when every table has a ``type`` column) draws each set's nuclei with the types of the
    reference draw, nucleus for nucleus (:func:`~histolab_utils.evaluation.floors.condition_matched`: without
    replacement while a type lasts, then with; a type the set lacks takes a nucleus of another type). Regions differ
    in what nuclei they hold (``hgsc_nest``'s held-out strip is nearly all connective nuclei, its train region
    mostly neoplastic and inflammatory ones), and a floor drawn with other types measures that difference, not
    realism: the floor of a generator asked for the held-out types is real nuclei of those types.

    One row per set and a last row ``FLOOR_ROW`` (real train against held-out): ``n``, ``draws``, ``distance`` (the
    mean over draws of the features' mean), ``distance_lo`` / ``distance_hi`` (the ``interval`` percentiles over
    draws), ``over_floor`` (distance / the floor's), each feature's mean distance (``w_<feature>``) and, with
    ``match_types``, the share of drawn nuclei that repeat one already drawn (``type_reused``) or are of another
    type than asked (``type_unmatched``)."""
    if not isinstance(sets, Mapping):
        raise TypeError(f"sets must map a name to a feature table; got {type(sets).__name__}")
    if FLOOR_ROW in sets:
        raise ValueError(f"{FLOOR_ROW!r} names the floor row: rename that set")
    if int(draws) != draws or draws < 1:
        raise ValueError(f"draws must be a whole number >= 1; got {draws}")
    tables = {name: _whole(table, f"sets[{name!r}]", whole_only) for name, table in sets.items()}
    tables[FLOOR_ROW] = _whole(real_train, "real_train", whole_only)
    heldout = _whole(real_heldout, "real_heldout", whole_only)
    features = _features({**tables, "real_heldout": heldout}, features)
    typed = all("type" in table for table in (*tables.values(), heldout))
    if match_types is None:
        match_types = typed
    elif match_types and not typed:
        untyped = [name for name, table in {**tables, "real_heldout": heldout}.items() if "type" not in table]
        raise ValueError(f"match_types needs a type column in every table; {untyped} have none")
    counts = {name: len(table) for name, table in {**tables, "real_heldout": heldout}.items()}
    if n is None:
        n = min(counts.values())
    if int(n) != n or n < 2:
        raise ValueError(f"n must be a whole number >= 2; got {n} (whole nuclei per set: {counts})")
    small = {name: count for name, count in counts.items() if count < n}
    if small:
        raise ValueError(f"n = {n} whole nuclei, but {small} hold fewer: pass a smaller n")
    n = int(n)
    if match_types:
        from .floors import condition_matched
    scales = {f: robust_scale(heldout[f]) for f in features}
    rng = np.random.default_rng(seed)
    results: dict[str, list[pd.Series]] = {name: [] for name in tables}
    matching = {name: np.zeros(2) for name in tables}
    for _ in range(int(draws)):
        reference = heldout.iloc[rng.choice(len(heldout), n, replace=False)]
        for name, table in tables.items():
            if match_types:
                index, how = condition_matched(table[["type"]].to_numpy(), reference[["type"]].to_numpy(),
                                               seed=int(rng.integers(2 ** 31)))
                matching[name] += (how["exact, reused"] / n, how["nearest"] / n)
            else:
                index = rng.choice(len(table), n, replace=False)
            results[name].append(_distance(table.iloc[index], reference, features, scales))
    rows = {}
    for name, series in results.items():
        frame = pd.DataFrame(series)
        lo, hi = np.percentile(frame["mean"], interval)
        rows[name] = {"n": n, "draws": int(draws), "distance": float(frame["mean"].mean()),
                      "distance_lo": float(lo), "distance_hi": float(hi),
                      **{f"w_{f}": float(frame[f].mean()) for f in features}}
        if match_types:
            rows[name].update(type_reused=matching[name][0] / draws, type_unmatched=matching[name][1] / draws)
    table = pd.DataFrame(rows).T
    table.insert(5, "over_floor", table["distance"] / max(float(table.loc[FLOOR_ROW, "distance"]), 1e-12))
    return table.astype({"n": int, "draws": int}).rename_axis("set")


def _masks(masks, name: str) -> pd.DataFrame:
    """:func:`mask_features` of an instance stack, or of a (types, instances) pair."""
    if isinstance(masks, tuple):
        if len(masks) != 2:
            raise ValueError(f"{name} must be instance maps or a (types, instances) pair; got a tuple of {len(masks)}")
        return mask_features(masks[1], masks[0])
    return mask_features(masks)


def area_distribution(sets: Mapping[str, object], real_train, real_heldout, *, n: int | None = None, seed: int = 0,
                      draws: int = DRAWS, match_types: bool | None = None) -> pd.DataFrame:
    """The whole-nucleus area of masks alone (notebook 06: no image), each set against real held-out masks at equal
    n beside the real train-vs-held-out floor: an :func:`appearance_scores` table on ``area`` only.

    ``sets`` maps a name to masks: an instance map stack [N, H, W] or a (types, instances) pair of stacks (with types
    everywhere, nuclei are drawn with the held-out draw's types, ``match_types``); ``real_train`` and
    ``real_heldout`` are real masks of the same kind. Beside the scores, each set's ``whole`` nuclei (scored),
    ``fragments`` (touching a crop border, left out: they are what makes the area of all nuclei look small) and
    the quartiles of its whole nuclei's area (``area_q1``, ``area_median``, ``area_q3``, px); a last row
    ``real held-out`` gives the reference's."""
    tables = {name: _masks(masks, f"sets[{name!r}]") for name, masks in sets.items()}
    train, heldout = _masks(real_train, "real_train"), _masks(real_heldout, "real_heldout")
    scores = appearance_scores(tables, train, heldout, n=n, seed=seed, draws=draws, features=("area",),
                               match_types=match_types)
    summary = {}
    for name, table in {**tables, FLOOR_ROW: train, "real held-out": heldout}.items():
        whole = table.loc[~table["touches_border"], "area"]
        q1, median, q3 = np.percentile(whole, [25, 50, 75])
        summary[name] = {"whole": len(whole), "fragments": int(table["touches_border"].sum()),
                         "area_q1": q1, "area_median": median, "area_q3": q3}
    summary = pd.DataFrame(summary).T.astype({"whole": int, "fragments": int})
    table = scores.join(summary, how="outer").loc[[*tables, FLOOR_ROW, "real held-out"]]
    return table.astype({"n": "Int64", "draws": "Int64"}).rename_axis("set")  # the held-out row has no n


def whole_areas(sets: Mapping[str, object]) -> pd.DataFrame:
    """The area (px) of every whole nucleus (one not touching its crop's border) of each named set of masks, as a long
    table with columns ``set`` and ``area`` for plotting (``seaborn.ecdfplot(data=..., x="area", hue="set")``).
    ``sets`` maps a name to masks as :func:`area_distribution` takes them: an instance map stack [N, H, W] or a
    (types, instances) pair. A set without a whole nucleus is an error naming it."""
    frames = []
    for name, masks in sets.items():
        table = _whole(_masks(masks, f"sets[{name!r}]"), f"sets[{name!r}]", True)
        frames.append(pd.DataFrame({"set": name, "area": table["area"].to_numpy(np.float64)}))
    if not frames:
        raise ValueError("sets is empty: name at least one set of masks")
    return pd.concat(frames, ignore_index=True)


def median_area_goal(areas: pd.DataFrame, chosen: str, tolerance: float = 0.2) -> pd.DataFrame:
    """Notebook 06's size goal, one row of goal, target, measured, met: the median area of the ``chosen`` set's whole
    nuclei over the real held-out nuclei's, within ``tolerance`` of 1 (two-sided: too small and too large both
    miss). ``areas`` is an :func:`area_distribution` table (its ``area_median`` column and ``real held-out`` row)."""
    for name in (chosen, "real held-out"):
        if name not in areas.index:
            raise ValueError(f"areas has no {name!r} row: pass an area_distribution table; rows: {list(areas.index)}")
    ratio = float(areas.loc[chosen, "area_median"]) / float(areas.loc["real held-out", "area_median"])
    return pd.DataFrame([(f"whole-nucleus median area over the real held-out nuclei's ({chosen})",
                          f"{1 - tolerance:g} to {1 + tolerance:g}", ratio, bool(abs(ratio - 1) <= tolerance))],
                        columns=["goal", "target", "measured", "met"])


def appearance_goals(scores: pd.DataFrame, chosen: str | Sequence[str] | None = None, k: float = 1.5, *,
                     per_feature: bool = True) -> pd.DataFrame:
    """The appearance goals, measured (reported whether met or not): a pandas table of goal, target, measured, met
    for ``chosen`` sets of an :func:`appearance_scores` (or :func:`area_distribution`) table (default every set but
    the floor): the mean appearance distance over the real train-vs-held-out floor's, at most ``k``; and with
    ``per_feature``, each feature's distance over that feature's floor, at most ``k``. The mean over features
    dilutes a failure in one (masks eroded to half the area move the mean of five features by less than the
    area alone), so the per-feature rows say which feature is off."""
    if FLOOR_ROW not in scores.index:
        raise ValueError(f"scores has no {FLOOR_ROW!r} row: pass an appearance_scores table")
    if chosen is None:
        chosen = [name for name in scores.index if name not in (FLOOR_ROW, "real held-out")]
    chosen = [chosen] if isinstance(chosen, str) else list(chosen)
    missing = [name for name in chosen if name not in scores.index]
    if missing:
        raise ValueError(f"chosen names rows the scores lack: {missing}; rows: {list(scores.index)}")
    n = int(scores.loc[FLOOR_ROW, "n"])
    features = [c[2:] for c in scores.columns if c.startswith("w_")]
    columns = ["distance", *(f"w_{f}" for f in features)] if per_feature and len(features) > 1 else ["distance"]
    rows = []
    for name in chosen:
        for column in columns:
            floor = max(float(scores.loc[FLOOR_ROW, column]), 1e-12)
            ratio = float(scores.loc[name, column]) / floor
            if column != "distance":
                what = f"{column[2:]} distance"
            else:  # one feature alone (area_distribution): its name, not the mean's
                what = f"{features[0]} distance" if len(features) == 1 else "mean appearance distance"
            rows.append((f"{what} over the real floor ({name}, n = {n})", f"<= {k:g}", ratio, bool(ratio <= k)))
    return pd.DataFrame(rows, columns=["goal", "target", "measured", "met"])


# -- image-label pairs, and routes ranked by realism ----------------------------------------------------------------
MIN_NUCLEI = 10  # whole nuclei a set needs to be scored; one with fewer gets NaN distances (and fails every goal)
FIDELITY_MARGIN = 0.2  # mask fidelity more than this share above the real pairs' is flagged


def pairs_appearance_scores(sets: Mapping[str, tuple], real_train: tuple, real_heldout: tuple, *,
                            min_nuclei: int = MIN_NUCLEI, n: int | None = None, seed: int = 0,
                            draws: int = DRAWS) -> pd.DataFrame:
    """:func:`appearance_scores` of image-label pairs: ``sets``, ``real_train`` and ``real_heldout`` are (uint8 images
    [N, H, W, 3], type maps [N, H, W] or None, instance maps [N, H, W]) triples, or objects with those three
    attributes (:class:`~histolab_utils.data.pairs.ImageMaskPairs`), each scored on its own label (a generated
    pair's nuclei are the ones its label says). Adds ``whole``, each set's count of whole nuclei. A set
    with fewer than ``min_nuclei`` (an untrained model's label holds none, or nuclei everywhere in one blob) keeps a
    row of NaN distances, which fails every :func:`appearance_goals` goal, and does not set ``n``; ``n`` defaults to
    the smallest count of the other sets and the real ones."""
    def features(triple, name):
        if all(hasattr(triple, a) for a in ("images", "types", "instances")):
            triple = (triple.images, triple.types, triple.instances)
        if not isinstance(triple, tuple) or len(triple) != 3:
            raise ValueError(f"{name} must be an (images, types, instances) triple or pairs; got {type(triple).__name__}")
        images, types, instances = triple
        return nucleus_features(images, np.asarray(instances).astype(np.int32, copy=False), types)

    tables = {name: features(triple, f"sets[{name!r}]") for name, triple in sets.items()}
    train, heldout = features(real_train, "real_train"), features(real_heldout, "real_heldout")
    whole = {name: int((~table["touches_border"]).sum()) for name, table in tables.items()}
    scored = {name: table for name, table in tables.items() if whole[name] >= min_nuclei}
    scores = appearance_scores(scored, train, heldout, n=n, seed=seed, draws=draws)
    scores = scores.reindex([*tables, FLOOR_ROW]).assign(whole=pd.Series(
        {**whole, FLOOR_ROW: int((~train["touches_border"]).sum())}))
    return scores.astype({"n": "Int64", "draws": "Int64"}).rename_axis("set")


def realism_ranking(scores: pd.DataFrame, fidelity: Mapping[str, float], reference: float, floor: float, *,
                    margin: float = FIDELITY_MARGIN) -> pd.DataFrame:
    """Sets ranked by realism, with mask fidelity as a check beside the real pairs' value, never a reward.

    ``scores`` is an :func:`appearance_scores` table (its ``FLOOR_ROW`` too); ``fidelity`` maps each set to its
    mask-fidelity Dice (the image shows nuclei where its label says, :mod:`~histolab_utils.evaluation.
    mask_fidelity`); ``reference`` is the real held-out pairs' Dice and ``floor`` the mismatched real pairs'. A set
    ranks by its appearance distance to real held-out nuclei (two-sided: lower is more real), and a set whose Dice is
    not above ``floor`` (its image ignores its label) ranks after every set whose Dice is. A Dice above the real
    pairs' earns nothing: past ``(1 + margin) x reference`` it is flagged, as nuclei easier to find than real ones
    (uniform dark paint, say). One row per set (rank 1 is the most real), then ``FLOOR_ROW`` unranked; columns
    ``rank``, the distance and its interval, ``over_floor``, ``dice``, ``dice_over_real_pairs``, ``follows_label``
    and ``fidelity``, the check in words."""
    if FLOOR_ROW not in scores.index:
        raise ValueError(f"scores has no {FLOOR_ROW!r} row: pass an appearance_scores table")
    missing = [name for name in fidelity if name not in scores.index]
    if missing:
        raise ValueError(f"fidelity names sets the scores lack: {missing}; rows: {list(scores.index)}")
    if not reference > floor:
        raise ValueError(f"the real pairs' Dice ({reference}) must exceed the mismatched floor's ({floor}), or the "
                         "detector cannot tell a followed label from chance and no fidelity check means anything")
    table = scores.loc[list(fidelity), ["distance", "distance_lo", "distance_hi", "over_floor"]].astype(float)
    table["dice"] = pd.Series(fidelity, dtype=float)
    table["dice_over_real_pairs"] = table["dice"] / reference
    table["follows_label"] = table["dice"] > floor
    far = table["dice"] > (1 + margin) * reference
    table["fidelity"] = np.where(~table["follows_label"], f"at or below the mismatched floor ({floor:.3f}): label ignored",
                                 np.where(far, f"flagged: above {1 + margin:g} x the real pairs' ({reference:.3f})",
                                          f"follows its label (real pairs: {reference:.3f})"))
    ranked = table.assign(unscored=table["distance"].isna()).sort_values(
        ["follows_label", "unscored", "distance"], ascending=[False, True, True], kind="stable")
    ranked.insert(0, "rank", pd.array(range(1, len(ranked) + 1), dtype="Int64"))
    floor_row = scores.loc[[FLOOR_ROW], ["distance", "distance_lo", "distance_hi", "over_floor"]].astype(float)
    return pd.concat([ranked.drop(columns="unscored"), floor_row]).rename_axis("set")


# -- why a set is far: the signed shift of each feature ------------------------------------------------------------
IMAGE_FEATURES: tuple[str, ...] = ("h_mean", "h_std", "ring_contrast")  # what an image painted under a mask decides
SHIFT_WORDS: dict[str, tuple[str, str]] = {  # (below real, above real) in words
    "area": ("smaller", "larger"), "eccentricity": ("rounder", "more elongated"),
    "solidity": ("more ragged", "more convex"), "h_mean": ("paler", "darker"),
    "h_std": ("more uniform", "more textured"), "ring_contrast": ("less contrast", "more contrast"),
}
SHIFT_READ = 0.5  # |shift| in real spreads from which a feature is named in the reading
HELDOUT_ROW = "real held-out"


def appearance_shifts(tables: Mapping[str, pd.DataFrame], real_heldout: pd.DataFrame,
                      features: Sequence[str] | None = None, *, whole_only: bool = True,
                      read_from: float = SHIFT_READ) -> pd.DataFrame:
    """Which way each set's nuclei differ from real held-out ones, the sign the distances of
    :func:`appearance_scores` leave out: one row per table (feature tables of :func:`nucleus_features`) and a last
    row ``HELDOUT_ROW``, with each feature's median over whole nuclei (``<feature>``), its shift from the held-out
    median in units of the held-out robust scale (``shift_<feature>``: positive is larger, more elongated, darker,
    more textured or more contrasted) and a ``reading`` in words of every shift of at least ``read_from`` real
    spreads (for example ``"darker (+1.2), more uniform (-0.8)"``; ``"as real"`` when none is)."""
    heldout = _whole(real_heldout, "real_heldout", whole_only)
    tables = {name: _whole(table, f"tables[{name!r}]", whole_only) for name, table in tables.items()}
    if HELDOUT_ROW in tables:
        raise ValueError(f"{HELDOUT_ROW!r} names the reference row: rename that table")
    features = _features({**tables, "real_heldout": heldout}, features)
    centre = {f: float(np.nanmedian(heldout[f])) for f in features}
    scale = {f: robust_scale(heldout[f]) for f in features}
    rows = {}
    for name, table in {**tables, HELDOUT_ROW: heldout}.items():
        medians = {f: float(np.nanmedian(table[f])) for f in features}
        shifts = {f: (medians[f] - centre[f]) / scale[f] for f in features}
        words = [f"{SHIFT_WORDS.get(f, (f'lower {f}', f'higher {f}'))[int(s > 0)]} ({s:+.1f})"
                 for f, s in shifts.items() if abs(s) >= read_from]
        rows[name] = {"whole": len(table), **medians, **{f"shift_{f}": s for f, s in shifts.items()},
                      "reading": ", ".join(words) or "as real"}
    return pd.DataFrame(rows).T.astype({"whole": int, **{f: float for f in features},
                                        **{f"shift_{f}": float for f in features}}).rename_axis("set")
