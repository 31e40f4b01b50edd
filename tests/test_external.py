"""The bring-your-own loaders, on tiny fixtures written in each data set's exact file layout."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from scipy.io import savemat

from histolab_utils.data import CropSampler
from histolab_utils.data.external import (
    load_lizard,
    load_nct_crc_image,
    load_pannuke,
    load_patch_folder,
    nct_crc_table,
)


def rgb(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_patch_folder_with_and_without_masks(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    Image.fromarray(rgb(32, 40)).save(tmp_path / "images" / "a.png")
    Image.fromarray(rgb(32, 40, 1)).save(tmp_path / "images" / "b.jpg")
    inst = np.zeros((32, 40), np.int32)
    inst[5:10, 5:10] = 1
    inst[20:25, 20:30] = 2
    np.save(tmp_path / "masks" / "a.npy", inst)
    images = list(load_patch_folder(tmp_path))
    assert [im.name for im in images] == ["a", "b"]
    assert np.array_equal(images[0].inst_mask, inst) and images[1].inst_mask is None
    assert CropSampler(images, 16, seed=0).sample(4).shape == (4, 16, 16, 3)
    np.save(tmp_path / "masks" / "b.npy", np.zeros((8, 8), np.int32))
    with pytest.raises(ValueError, match="b.npy has shape"):
        list(load_patch_folder(tmp_path))
    with pytest.raises(FileNotFoundError, match="image folder not found"):
        list(load_patch_folder(tmp_path / "nope"))


def write_lizard(root, name="consep_1", h=24, w=32):
    (root / "Lizard_Images1").mkdir(parents=True)
    (root / "Lizard_Labels" / "Labels").mkdir(parents=True)
    Image.fromarray(rgb(h, w)).save(root / "Lizard_Images1" / f"{name}.png")
    inst = np.zeros((h, w), np.int32)
    inst[2:6, 2:6], inst[10:14, 10:20], inst[18:22, 25:30] = 1, 2, 3
    savemat(root / "Lizard_Labels" / "Labels" / f"{name}.mat", {
        "inst_map": inst, "id": np.array([[1], [2], [3]]), "class": np.array([[3], [2], [6]]),
        "bbox": np.array([[2, 6, 2, 6], [10, 14, 10, 20], [18, 22, 25, 30]]),
        "centroid": np.array([[4.0, 4.0], [15.0, 12.0], [27.5, 20.0]]),
    })
    return inst


def test_lizard_layout(tmp_path):
    inst = write_lizard(tmp_path)
    [image] = list(load_lizard(tmp_path))
    assert image.name == "consep_1" and np.array_equal(image.inst_mask, inst)
    assert image.type_mask[3, 3] == 3 and image.type_mask[12, 15] == 2 and image.type_mask[20, 27] == 6
    assert image.type_names[3] == "lymphocyte" and image.type_names[6] == "connective"
    (tmp_path / "Lizard_Labels" / "Labels" / "consep_1.mat").unlink()
    with pytest.raises(FileNotFoundError, match="label missing for consep_1.png"):
        list(load_lizard(tmp_path))


def test_pannuke_fold_layout(tmp_path):
    fold = tmp_path / "Fold 1"
    (fold / "images" / "fold1").mkdir(parents=True)
    (fold / "masks" / "fold1").mkdir(parents=True)
    images = np.stack([rgb(16, 16, i).astype(np.float64) for i in range(2)])  # PanNuke stores float64
    masks = np.zeros((2, 16, 16, 6), np.float64)
    masks[0, 2:6, 2:6, 0] = 7    # a neoplastic nucleus, instance id 7
    masks[0, 8:12, 8:12, 2] = 9  # a connective nucleus, instance id 9
    masks[1, 1:4, 1:4, 4] = 3    # an epithelial nucleus
    masks[..., 5] = (masks[..., :5].sum(-1) == 0)
    np.save(fold / "images" / "fold1" / "images.npy", images)
    np.save(fold / "images" / "fold1" / "types.npy", np.array(["Breast", "Colon"]))
    np.save(fold / "masks" / "fold1" / "masks.npy", masks)
    first, second = list(load_pannuke(fold))
    assert first.image.dtype == np.uint8 and np.array_equal(first.image, images[0].astype(np.uint8))
    assert set(np.unique(first.inst_mask)) == {0, 7, 9}
    assert first.type_mask[3, 3] == 1 and first.type_mask[9, 9] == 3 and second.type_mask[2, 2] == 5
    assert first.name.endswith("Breast") and len(list(load_pannuke(fold, limit=1))) == 1
    with pytest.raises(FileNotFoundError, match="not a PanNuke fold"):
        list(load_pannuke(tmp_path))


def test_nct_crc_layout(tmp_path):
    for cls, n in (("ADI", 2), ("TUM", 1)):
        (tmp_path / cls).mkdir()
        for i in range(n):
            Image.fromarray(rgb(224, 224, i)).save(tmp_path / cls / f"{cls}-{i:04d}.tif")
    table = nct_crc_table(tmp_path)
    assert list(table["label"]) == ["ADI", "ADI", "TUM"]
    assert load_nct_crc_image(table["path"][2]).shape == (224, 224, 3)
    (tmp_path / "CATS").mkdir()
    with pytest.raises(ValueError, match="unknown class folders \\['CATS'\\]"):
        nct_crc_table(tmp_path)
