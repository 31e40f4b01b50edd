"""Small matplotlib helpers shared by the notebooks."""

from __future__ import annotations

from typing import TYPE_CHECKING, Mapping, Sequence

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

TYPE_COLOURS = {  # RGB in [0, 1]; 0 is background
    1: (0.10, 0.75, 0.25),
    2: (0.95, 0.75, 0.10),
    3: (0.90, 0.15, 0.15),
    4: (0.20, 0.45, 0.95),
    5: (0.70, 0.30, 0.90),
    6: (0.10, 0.80, 0.85),
}


# Colours of the project's nucleus vocabulary (data.nuclei.NUCLEUS_CLASSES: ids 1..3).
NUCLEUS_COLOURS = {1: (0.90, 0.15, 0.15), 2: (0.20, 0.45, 0.95), 3: (0.10, 0.75, 0.25)}  # neoplastic, inflammatory, connective


def mask_image(types: np.ndarray, instances: np.ndarray, colours: dict = NUCLEUS_COLOURS) -> np.ndarray:
    """A nuclei mask as uint8 RGB: nuclei filled by type on black, instance boundaries in white."""
    from skimage.segmentation import find_boundaries

    out = np.zeros((*types.shape, 3), dtype=np.float32)
    for type_id, colour in colours.items():
        out[types == type_id] = colour
    out[find_boundaries(instances, mode="inner") & (instances > 0)] = 1.0
    return (out * 255).round().astype(np.uint8)


def mask_images(types: np.ndarray, instances: np.ndarray) -> np.ndarray:
    """:func:`mask_image` of every tile of a stack [N, H, W] -> uint8 [N, H, W, 3]."""
    return np.stack([mask_image(t, i) for t, i in zip(types, instances)]) if len(types) else np.zeros((0, 1, 1, 3), np.uint8)


def type_overlay(image: np.ndarray, inst_mask: np.ndarray, type_mask: np.ndarray, alpha: float = 0.45,
                 colours: dict = TYPE_COLOURS) -> np.ndarray:
    """Blend nuclei coloured by type into the image, with instance outlines drawn solid."""
    from skimage.segmentation import find_boundaries

    out = image.astype(np.float32) / 255.0
    for type_id, colour in colours.items():
        inside = type_mask == type_id
        out[inside] = (1 - alpha) * out[inside] + alpha * np.asarray(colour)
    edges = find_boundaries(inst_mask, mode="inner") & (type_mask > 0)
    out[edges] = np.asarray([colours.get(int(t), (1, 1, 1)) for t in type_mask[edges]]).reshape(-1, 3)
    return (out * 255).round().astype(np.uint8)


def type_legend_handles(*, colours: Mapping[int, tuple], names: Sequence[str] | Mapping[int, str] | None = None) -> list:
    """Legend handles (matplotlib patches) naming each nucleus type in the colour ``colours`` paints it, so that a
    legend is read off the palette a picture used and cannot name other colours. ``colours`` (required: two palettes
    exist) is what the picture was drawn with: ``TYPE_COLOURS`` for :func:`type_overlay`'s default, ``NUCLEUS_COLOURS``
    for :func:`mask_image`'s (or whatever was passed to either). ``names``: the type names in id order from 1 (default
    the project's vocabulary, ``data.nuclei.NUCLEUS_CLASSES``), or a dict type id -> name (a dataset's
    ``type_names``). A type the palette has no colour for is an error naming it. Use: ``fig.legend(handles=...)``."""
    from matplotlib.patches import Patch

    if names is None:
        from .data.nuclei import NUCLEUS_CLASSES as names
    named = dict(names) if isinstance(names, Mapping) else dict(enumerate(names, start=1))
    missing = {type_id: name for type_id, name in named.items() if int(type_id) not in colours}
    if missing:
        raise ValueError(f"the palette has no colour for types {missing}; its type ids are {sorted(colours)}")
    return [Patch(facecolor=colours[int(type_id)], edgecolor="black", label=str(name))
            for type_id, name in sorted(named.items())]


def layout_image(points: np.ndarray, size: int, colours: dict = NUCLEUS_COLOURS) -> np.ndarray:
    """A nucleus layout (int [M, 3] rows of y, x, type id) as uint8 RGB: a dot per centroid in its
    type's colour on light grey."""
    out = np.full((size, size, 3), 0.9, dtype=np.float32)
    for y, x, kind in np.asarray(points).reshape(-1, 3):
        out[max(y - 1, 0):y + 2, x, :] = colours[int(kind)]
        out[y, max(x - 1, 0):x + 2, :] = colours[int(kind)]
    return (out * 255).round().astype(np.uint8)


def grey_image(values: np.ndarray) -> np.ndarray:
    """A map with values in [0, 1] as uint8 RGB (0 black, 1 white)."""
    grey = (np.clip(values, 0, 1) * 255).round().astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=-1)


def draw_split(ax, image, *, colour_train: str = "tab:blue", colour_validation: str = "tab:green",
               colour_heldout: str = "tab:red") -> None:
    """Show an ``HEImage`` with its train, validation and held-out regions outlined and labelled."""
    from matplotlib.patches import Rectangle

    ax.imshow(image.image)
    for region, colour in (("train", colour_train), ("validation", colour_validation), ("heldout", colour_heldout)):
        for x0, y0, x1, y1 in image.region_boxes(region):
            ax.add_patch(Rectangle((x0, y0), x1 - x0 - 1, y1 - y0 - 1, fill=False, lw=2, ec=colour))
            ax.text(x0 + 5, y0 + 5, region, color="white", va="top", fontsize=8,
                    bbox=dict(facecolor=colour, alpha=0.8, pad=1, lw=0))
    ax.set_title(image.name, fontsize=9)
    ax.axis("off")


def random_reference(matches: Sequence[bool] | np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """Indices of at most ``k`` items where ``matches`` (bool [N]: a tile of the condition shown, say) is True, a
    seeded random draw in the order drawn: the real tiles a gallery shows beside generated ones. Not the first
    matching tiles: a grid's first tiles are its top-left corner, one spot of the region. Fewer when fewer match; a
    ``matches`` that is not a 1-D boolean array, or a negative ``k``, is an error that names it."""
    matches = np.asarray(matches)
    if matches.ndim != 1 or matches.dtype != bool:
        raise ValueError(f"matches must be a 1-D boolean array (True: a tile that may be shown); got "
                         f"{matches.dtype} {matches.shape}")
    if int(k) != k or k < 0:
        raise ValueError(f"k must be a whole number >= 0; got k={k!r}")
    candidates = np.flatnonzero(matches)
    return np.random.default_rng(seed).permutation(candidates)[:int(k)]


def image_grid(images: Sequence[np.ndarray] | np.ndarray, ncols: int = 8, titles: Sequence[str] | None = None,
               size: float = 1.6):
    """A figure showing uint8 images in a grid (``None`` leaves a cell empty); returns the figure."""
    import matplotlib.pyplot as plt

    n = len(images)
    nrows = max(1, -(-n // ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, size * nrows), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < n and images[i] is not None:  # None leaves a cell empty
            ax.imshow(images[i])
            if titles is not None:
                ax.set_title(titles[i], fontsize=8)
    fig.tight_layout()
    return fig


def draw_tile_grid(ax, plan, *, kept_colour: str = "lime", rejected_colour: str = "red", show_rejected: bool = True,
                   label_map_alpha: float = 0.0) -> None:
    """Draw a ``TilePlan`` on its thumbnail: kept tiles in one colour, rejected tiles (that touch
    tissue) in another. With ``label_map_alpha`` > 0 the annotation label map is blended in."""
    from matplotlib.collections import PatchCollection
    from matplotlib.patches import Rectangle

    ax.imshow(plan.thumbnail)
    if label_map_alpha and plan.label_map is not None:
        ax.imshow(np.ma.masked_equal(plan.label_map, 0), cmap="tab10", alpha=label_map_alpha, interpolation="nearest")
    side = plan.footprint * plan.thumb_scale
    grid = plan.grid
    for keep, colour, width in ((False, rejected_colour, 0.6), (True, kept_colour, 1.0)):
        if not keep and not show_rejected:
            continue
        rows = grid[(grid["keep"] == keep) & ((grid["tissue_fraction"] > 0) | keep)]
        boxes = [Rectangle((x * plan.thumb_scale, y * plan.thumb_scale), side, side) for x, y in zip(rows["x"], rows["y"])]
        ax.add_collection(PatchCollection(boxes, facecolor="none", edgecolor=colour, linewidth=width, alpha=0.8))
    ax.set_title(f"{plan.slide}: {int(grid['keep'].sum())} kept / {len(grid)} grid tiles", fontsize=9)
    ax.axis("off")


DETECTION_COLOURS = {"TP": (0.1, 0.85, 0.2), "FP": (0.95, 0.1, 0.1), "FN": (1.0, 0.9, 0.0)}


def detection_overlay(image: np.ndarray, true_inst: np.ndarray, pred_inst: np.ndarray) -> np.ndarray:
    """The image with predicted nuclei outlined green where they match a true nucleus at IoU > 0.5
    (TP) and red where they match none (FP), and the true nuclei no prediction matched in yellow (FN)
    (``DETECTION_COLOURS``; :func:`detection_legend_handles` names them)."""
    from skimage.segmentation import find_boundaries

    from .evaluation.segmentation import match_instances

    tp, fp, fn = match_instances(true_inst, pred_inst)
    out = image.astype(np.float32) / 255
    for ids, labels, kind in ((fn, true_inst, "FN"), (tp, pred_inst, "TP"), (fp, pred_inst, "FP")):
        edges = find_boundaries(np.where(np.isin(labels, ids), labels, 0), mode="inner")
        out[edges] = DETECTION_COLOURS[kind]
    return (out * 255).round().astype(np.uint8)


def detection_legend_handles() -> list:
    """Legend handles (outlined patches) for :func:`detection_overlay`'s TP, FP and FN colours."""
    from matplotlib.patches import Patch

    words = {"TP": "TP: predicted, matched", "FP": "FP: predicted, unmatched", "FN": "FN: true, missed"}
    return [Patch(facecolor="none", edgecolor=colour, linewidth=2, label=words[kind])
            for kind, colour in DETECTION_COLOURS.items()]


def plot_arm_differences(results, score: str, ax=None, order: Sequence[str] | None = None):
    """Each arm's difference from its real-only reference in ``score`` with its interval at the test's Holm level
    (``results``: segmentation.experiments.arm_results), coloured by the Holm-adjusted verdict; a dashed line at no
    difference."""
    import matplotlib.pyplot as plt

    ax = ax or plt.gca()
    rows = results.dropna(subset=[f"{score}_diff"])
    rows = rows.loc[[a for a in (order or rows.index) if a in rows.index]]
    y = np.arange(len(rows))
    diff = rows[f"{score}_diff"].to_numpy(float)
    err = np.stack([diff - rows[f"{score}_ci_holm_low"].to_numpy(float), rows[f"{score}_ci_holm_high"].to_numpy(float) - diff])
    colours = ["tab:green" if v == "gain" else "tab:red" if v == "loss" else "tab:grey" for v in rows[f"{score}_verdict"]]
    for yi, d, e0, e1, c in zip(y, diff, err[0], err[1], colours):
        ax.errorbar(d, yi, xerr=[[e0], [e1]], fmt="o", color=c, capsize=3)
    ax.axvline(0, ls="--", color="black", lw=1)
    ax.set_yticks(y, [f"{a} (vs {r})" for a, r in zip(rows.index, rows["reference"])])
    ax.invert_yaxis()
    ax.set_xlabel(f"{score}: arm - reference\n(seeds-and-tiles bootstrap, interval at its Holm level)")
    return ax


def plot_losses(logs: dict[str, pd.DataFrame], ax=None, smooth: int = 20):
    """Loss curves (rolling mean over ``smooth`` steps) of several runs on one axis: ``logs`` maps a run's
    name to its loss log (a trainer's ``loss_frame()``, with columns ``step`` and ``loss``)."""
    import matplotlib.pyplot as plt

    ax = ax or plt.gca()
    for name, log in logs.items():
        ax.plot(log["step"], log["loss"].rolling(smooth, min_periods=1).mean(), label=name)
    ax.set_xlabel("step")
    ax.set_ylabel(f"loss (rolling mean of {smooth})")
    ax.set_yscale("log")
    ax.legend()
    return ax


def cluster_gallery(tiles: np.ndarray, cluster_ids: np.ndarray, names: Sequence[str], per_cluster: int = 16,
                    seed: int = 0):
    """One row per cluster (``names[c]`` for id ``c``): up to ``per_cluster`` of its uint8 NHWC ``tiles``, drawn at
    random without replacement (one seeded generator, clusters in order), titled with the name and the cluster's
    size (:func:`~histolab_utils.latent.clustering.draw_per_cluster`). Returns the figure."""
    import matplotlib.pyplot as plt

    from .diffusion.sampling import sample_grid
    from .latent.clustering import draw_per_cluster

    drawn = draw_per_cluster(cluster_ids, range(len(names)), per_cluster, seed)
    fig, axes = plt.subplots(len(names), 1, figsize=(12, 0.95 * len(names)), squeeze=False)
    for ax, (c, name) in zip(axes[:, 0], enumerate(names)):
        ax.imshow(sample_grid(tiles[drawn[c]], ncols=per_cluster)); ax.axis("off")
        ax.set_title(f"{name}: {int((np.asarray(cluster_ids) == c).sum())} tiles", fontsize=8, loc="left")
    plt.tight_layout()
    return fig


def density_thumbnail(counts: np.ndarray, colours: dict = NUCLEUS_COLOURS) -> np.ndarray:
    """uint8 RGB [rows, bins, 3] overview of a slide from its nuclei per bin and type (``data.nuclei.wsi_density``):
    white glass, each type's colour mixed in by its density (each type scaled to its own 99th percentile)."""
    counts = np.asarray(counts, dtype=float)
    rgb = np.ones((*counts.shape[1:], 3))
    for k, layer in enumerate(counts):
        scale = max(np.percentile(layer[layer > 0], 99), 1.0) if (layer > 0).any() else 1.0
        share = np.clip(layer / scale, 0, 1)[..., None]
        rgb -= share * (1 - np.asarray(colours[k + 1])) / len(counts) * 2
    return (np.clip(rgb, 0, 1) * 255).round().astype(np.uint8)
