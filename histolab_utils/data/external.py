"""Loaders for data sets people bring: a folder of patches, Lizard, PanNuke and NCT-CRC-HE-100K.

None of these is downloaded by the project (they are not on PyPI); ``data/README.md`` says
where to get each. Every loader reads the published file layout as it unpacks, and yields
:class:`~histolab_utils.data.datasets.HEImage` objects (or a table, for NCT-CRC-HE), so they
plug into ``CropSampler`` and the tiling code like the embedded images.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd

from .datasets import HEImage, read_rgb

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")

# Graham et al., "Lizard", ICCVW 2021: class ids in the labels' `class` array.
LIZARD_CLASSES = {1: "neutrophil", 2: "epithelial", 3: "lymphocyte", 4: "plasma", 5: "eosinophil", 6: "connective"}
# Gamper et al., "PanNuke", 2020: channels 0-4 of masks.npy are instance maps of these classes; 5 is background.
PANNUKE_CLASSES = {1: "neoplastic", 2: "inflammatory", 3: "connective", 4: "dead", 5: "epithelial"}
# Kather et al., "NCT-CRC-HE-100K", 2018: one folder per tissue class.
NCT_CRC_CLASSES = ("ADI", "BACK", "DEB", "LYM", "MUC", "MUS", "NORM", "STR", "TUM")


def _require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise FileNotFoundError(f"{what} folder not found: {path}")
    return path


def load_patch_folder(root: str | Path, images: str = "images", masks: str = "masks") -> Iterator[HEImage]:
    """A folder of patches: ``images/<name>.<ext>`` and, optionally, ``masks/<name>.png`` or
    ``masks/<name>.npy`` with an instance map (int) of the same height and width."""
    root = Path(root)
    image_dir = _require_dir(root / images, "image")
    mask_dir = root / masks
    paths = sorted(p for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {image_dir}")
    for path in paths:
        image = read_rgb(path)
        inst = None
        for candidate in (mask_dir / f"{path.stem}.npy", mask_dir / f"{path.stem}.png"):
            if candidate.is_file():
                inst = np.load(candidate) if candidate.suffix == ".npy" else np.asarray(_open_mask(candidate))
                inst = inst.astype(np.int32)
                if inst.shape != image.shape[:2]:
                    raise ValueError(f"mask {candidate} has shape {inst.shape}, image {path} has {image.shape[:2]}")
                break
        yield HEImage(name=path.stem, image=image, inst_mask=inst,
                      type_mask=None if inst is None else (inst > 0).astype(np.int32),
                      type_names={1: "nucleus"} if inst is not None else {}, source=str(root))


def _open_mask(path: Path):
    from PIL import Image

    with Image.open(path) as mask:
        return np.asarray(mask)


def load_lizard(root: str | Path) -> Iterator[HEImage]:
    """Lizard as unpacked: ``Lizard_Images*/<name>.png`` and ``Lizard_Labels/Labels/<name>.mat``
    (keys ``inst_map``, ``id``, ``class``). Type masks map each instance to its class."""
    from scipy.io import loadmat

    root = Path(root)
    label_dir = _require_dir(root / "Lizard_Labels" / "Labels", "Lizard label")
    images = sorted(p for d in sorted(root.glob("Lizard_Images*")) for p in d.glob("*.png"))
    if not images:
        raise FileNotFoundError(f"no Lizard_Images*/*.png under {root}")
    for path in images:
        label_path = label_dir / f"{path.stem}.mat"
        if not label_path.is_file():
            raise FileNotFoundError(f"Lizard label missing for {path.name}: {label_path}")
        label = loadmat(label_path)
        missing = {"inst_map", "id", "class"} - set(label)
        if missing:
            raise ValueError(f"{label_path} lacks keys {sorted(missing)}")
        inst = label["inst_map"].astype(np.int32)
        lookup = np.zeros(int(inst.max()) + 1, dtype=np.int32)
        ids, classes = label["id"].ravel().astype(int), label["class"].ravel().astype(int)
        if len(ids) != len(classes):
            raise ValueError(f"{label_path}: {len(ids)} ids but {len(classes)} classes")
        valid = ids <= inst.max()
        lookup[ids[valid]] = classes[valid]
        image = read_rgb(path)
        if inst.shape != image.shape[:2]:
            raise ValueError(f"{label_path} has shape {inst.shape}, image {path} has {image.shape[:2]}")
        yield HEImage(name=path.stem, image=image, inst_mask=inst, type_mask=lookup[inst],
                      type_names=dict(LIZARD_CLASSES), source=str(root))


def load_pannuke(fold_dir: str | Path, limit: int | None = None) -> Iterator[HEImage]:
    """One PanNuke fold as unpacked: ``images/fold<k>/images.npy`` (N, 256, 256, 3),
    ``images/fold<k>/types.npy`` (tissue names) and ``masks/fold<k>/masks.npy`` (N, 256, 256, 6).
    Arrays are memory-mapped, so a fold is not read whole."""
    fold_dir = Path(fold_dir)
    images_npy = next(iter(sorted(fold_dir.glob("images/fold*/images.npy"))), None)
    masks_npy = next(iter(sorted(fold_dir.glob("masks/fold*/masks.npy"))), None)
    if images_npy is None or masks_npy is None:
        raise FileNotFoundError(f"{fold_dir} is not a PanNuke fold (expected images/foldK/images.npy and "
                                "masks/foldK/masks.npy)")
    images = np.load(images_npy, mmap_mode="r")
    masks = np.load(masks_npy, mmap_mode="r")
    types_npy = images_npy.with_name("types.npy")
    tissue = np.load(types_npy) if types_npy.is_file() else np.array([""] * len(images))
    if images.shape[0] != masks.shape[0] or masks.shape[-1] != 6 or images.shape[1:3] != masks.shape[1:3]:
        raise ValueError(f"PanNuke arrays disagree: images {images.shape}, masks {masks.shape}")
    count = len(images) if limit is None else min(limit, len(images))
    for i in range(count):
        channels = np.asarray(masks[i, ..., :5]).astype(np.int32)
        inst = channels.max(axis=-1)
        type_mask = np.where(inst > 0, channels.argmax(axis=-1) + 1, 0).astype(np.int32)
        yield HEImage(name=f"{fold_dir.name}_{i:05d}_{tissue[i]}", image=np.asarray(images[i]).clip(0, 255).astype(np.uint8),
                      inst_mask=inst, type_mask=type_mask, type_names=dict(PANNUKE_CLASSES), source=str(fold_dir))


def nct_crc_table(root: str | Path) -> pd.DataFrame:
    """NCT-CRC-HE-100K (or CRC-VAL-HE-7K) as unpacked: ``<CLASS>/*.tif``. Returns path and label
    per patch, sorted; read an image with ``load_nct_crc_image``."""
    root = _require_dir(Path(root), "NCT-CRC-HE")
    rows = [{"path": p, "label": cls} for cls in NCT_CRC_CLASSES if (root / cls).is_dir()
            for p in sorted((root / cls).glob("*.tif"))]
    unknown = sorted(d.name for d in root.iterdir() if d.is_dir() and d.name not in NCT_CRC_CLASSES)
    if unknown:
        raise ValueError(f"{root}: unknown class folders {unknown}; expected {list(NCT_CRC_CLASSES)}")
    if not rows:
        raise FileNotFoundError(f"no <CLASS>/*.tif patches under {root}")
    return pd.DataFrame(rows)


def load_nct_crc_image(path: str | Path) -> np.ndarray:
    return read_rgb(Path(path))
