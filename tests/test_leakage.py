"""No pixel of the test region or of the validation region is in any training set of any notebook, and the
test region holds what the questions are about.

Every training set the notebooks build (smoke profile's sizes, every seed they use) is drawn
here with the same calls, its tiles' boxes are painted onto a canvas per image, and the held-out
region and the validation region of each canvas must stay blank. Positive controls show that the
check can fail. The validation sets lie wholly inside the validation region.

Split 3 (``data/split_design.py``): each nucleus type's share among ``hgsc_nest``'s held-out (and validation)
nuclei is within ±30 % of its share in the whole image, and notebook 09's test tiles hold at least 50 nuclei of
each type, counted by centroid.
"""

from __future__ import annotations

import numpy as np
import pytest

from histolab_utils.config import load_config
from histolab_utils.data import load_image, load_images
from histolab_utils.data.crops import CropSampler
from histolab_utils.data.nuclei import mask_tiles, wsi_region_box, wsi_split_x, wsi_validation_y
from histolab_utils.data.pairs import image_mask_pairs
from histolab_utils.latent.latents import grid_tiles
from histolab_utils.segmentation.experiments import (Synthetic, arm_catalogue, arm_training_set, needed_pool_pairs,
                                                     real_pool, heldout_tiles)


class Canvas:
    """Which pixels of each image some training set covers."""

    def __init__(self) -> None:
        self.covered: dict[str, np.ndarray] = {}

    def paint(self, image: str, boxes: np.ndarray) -> None:
        canvas = self.covered.setdefault(image, np.zeros(load_image(image).shape, bool))
        for x0, y0, x1, y1 in np.asarray(boxes, dtype=np.int64):
            canvas[y0:y1, x0:x1] = True

    def leaked(self, region: str = "heldout") -> dict[str, int]:
        out = {}
        for image, canvas in self.covered.items():
            out[image] = int((canvas & load_image(image).region_mask(region)).sum())
        return {k: v for k, v in out.items() if v}


def crop_boxes(sampler: CropSampler, n: int) -> dict[str, np.ndarray]:
    origins = sampler.sample_with_masks(n).origins
    s = sampler.size * sampler.downsample  # the field a crop covers before box-averaging
    return {image.name: np.stack([origins[origins[:, 0] == i, 1], origins[origins[:, 0] == i, 2],
                                  origins[origins[:, 0] == i, 1] + s, origins[origins[:, 0] == i, 2] + s], 1)
            for i, image in enumerate(sampler.images)}


def test_no_test_pixel_is_in_any_training_set(real_data):
    config = load_config("smoke")
    canvas = Canvas()
    # 02 (VQ-GAN) and 03 (DDPMs): training_crops = CropSampler(load_images(), size, "train", seed)
    cpu = load_config("cpu")  # 02 and 03 in the cpu profile: crops of larger fields, box-averaged
    for size, n, scale in ((config.vqgan.image_size, config.vqgan.n_train_crops, config.vqgan.downsample),
                           (config.ddpm.image_size, config.ddpm.n_train_crops, config.ddpm.downsample),
                           (cpu.vqgan.image_size, cpu.vqgan.n_train_crops, cpu.vqgan.downsample),
                           (cpu.ddpm.image_size, cpu.ddpm.n_train_crops, cpu.ddpm.downsample)):
        sampler = CropSampler(load_images(), size, "train", seed=config.seed, downsample=scale)
        for image, boxes in crop_boxes(sampler, n).items():
            canvas.paint(image, boxes)
    # 04 / 05: the grid tiles notebook 05 trains its LDM on (region == "train"), in both profiles
    for profile in (config, cpu):
        tiles = grid_tiles(size=profile.vqgan.image_size, min_tissue=profile.clusters.min_tissue,
                           max_tiles=profile.clusters.max_tiles, seed=profile.seed, downsample=profile.vqgan.downsample)
        train_rows = tiles.table[tiles.table["region"] == "train"]
        for image, rows in train_rows.groupby("image"):
            canvas.paint(image, np.stack([rows.x, rows.y, rows.x + rows.window, rows.y + rows.window], 1))
    # 07 and 08: the generators' image-mask pairs
    spade = config.spade
    pairs = image_mask_pairs(spade.tile_size, "train", spade.n_train_pairs, seed=config.seed, downsample=spade.downsample)
    for image in set(pairs.sources):
        canvas.paint(image, pairs.boxes[pairs.sources == image])
    # 09: every arm's tiles, real or synthetic, through the pool pair whose pixels or masks they carry
    seg = config.segmentation
    pool = real_pool(seg.tile_size, seg.downsample, config.seed, seg.n_real)
    catalogue = arm_catalogue(seg.addition, seg.replacement)
    needed = needed_pool_pairs(list(catalogue.values()), pool)
    banks = {s: Synthetic(pool.pairs.images[i], pool.pairs.types[i], pool.pairs.instances[i], i)
             for s, i in needed.items() if s != "rare"}
    banks["rare"] = Synthetic(*(np.zeros((1, seg.tile_size, seg.tile_size, 3), np.uint8),
                                np.zeros((1, seg.tile_size, seg.tile_size), np.uint8),
                                np.zeros((1, seg.tile_size, seg.tile_size), np.int32)), np.array([-1]))
    for arm in catalogue.values():
        used = arm_training_set(arm, pool, banks).pool_index
        used = used[used >= 0]  # -1: masks generated by notebook 06, whose own training is checked next
        for image in set(pool.pairs.sources[used]):
            canvas.paint(image, pool.pairs.boxes[used][pool.pairs.sources[used] == image])
    assert canvas.leaked() == {}, f"training sets cover held-out pixels: {canvas.leaked()}"
    assert canvas.leaked("validation") == {}, f"training sets cover validation pixels: {canvas.leaked('validation')}"

    # 06: the mask generator's slide tiles lie left of the slide's split and above its validation strip
    for profile in (config, cpu):
        masks = profile.masks
        wsi = mask_tiles("wsi", masks.tile_size, "train", masks.n_train_tiles, seed=profile.seed,
                         downsample=masks.downsample)
        assert wsi.boxes[:, 2].max() <= wsi_split_x() and wsi.boxes[:, 3].max() <= wsi_validation_y()

    # the test tiles of 07-09 lie wholly in the held-out region, and the check above would catch them
    test = heldout_tiles(seg.tile_size, seg.downsample, config.seed, seg.n_test)
    control = Canvas()
    for image in set(test.sources):
        control.paint(image, test.boxes[test.sources == image])
    assert set(control.leaked()) == set(test.sources)


def _box_with_train_on_its_left(image, region: str) -> tuple[int, int, int, int]:
    return next(box for box in image.region_boxes(region)
                if box[0] > 3 and image.region_of((box[0] - 3, box[1], box[0], box[1] + 4)) == "train")


def test_a_tile_in_the_test_region_is_caught():
    canvas = Canvas()
    x0, y0, _, _ = _box_with_train_on_its_left(load_image("hgsc_nest"), "heldout")
    canvas.paint("hgsc_nest", np.array([[x0 - 3, y0, x0 + 1, y0 + 4]]))
    assert canvas.leaked() == {"hgsc_nest": 4} and canvas.leaked("validation") == {}


def test_a_tile_in_the_validation_region_is_caught():
    canvas = Canvas()
    x0, y0, _, _ = _box_with_train_on_its_left(load_image("hgsc_nest"), "validation")
    canvas.paint("hgsc_nest", np.array([[x0 - 3, y0, x0 + 2, y0 + 1]]))
    assert canvas.leaked("validation") == {"hgsc_nest": 2} and canvas.leaked() == {}


def _overlap(a: tuple, b: tuple) -> float:
    return max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))


@pytest.mark.parametrize("name", ["hgsc_nest", "cellseg_patch1", "tiatoolbox_target"])
def test_the_three_regions_of_an_image_tile_it_without_overlap(real_data, name):
    image = load_image(name)
    boxes = [(region, box) for region in ("train", "validation", "heldout") for box in image.region_boxes(region)]
    height, width = image.shape
    assert sum((b[2] - b[0]) * (b[3] - b[1]) for _, b in boxes) == height * width
    assert all(_overlap(a, b) == 0 for i, (_, a) in enumerate(boxes) for _, b in boxes[i + 1:])
    if name == "hgsc_nest":
        assert image.design is not None and len(image.region_boxes("heldout")) == 4
    else:  # the strips of split 2, unchanged
        assert image.design is None and image.region_boxes("heldout") == [(image.split_x, 0, width, height)]


def test_the_slide_regions_do_not_overlap(real_data):
    boxes = {region: wsi_region_box(region) for region in ("train", "validation", "heldout")}
    assert all(_overlap(boxes[a], boxes[b]) == 0 for a, b in (("train", "validation"), ("train", "heldout"),
                                                               ("validation", "heldout")))
    assert boxes["train"][3] == boxes["validation"][1] == wsi_validation_y()


def test_validation_sets_lie_wholly_in_the_validation_strip(real_data):
    config = load_config("smoke")
    spade, masks = config.spade, config.masks
    pairs = image_mask_pairs(spade.tile_size, "validation", 16, seed=1, downsample=spade.downsample)
    canvas = Canvas()
    for image in set(pairs.sources):
        boxes = pairs.boxes[pairs.sources == image]
        assert all(load_image(image).region_of(tuple(box)) == "validation" for box in boxes.astype(int)), image
        canvas.paint(image, boxes)
    assert canvas.leaked() == {} and set(canvas.leaked("validation")) == set(pairs.sources)
    wsi = mask_tiles("wsi", masks.tile_size, "validation", 16, seed=1, downsample=masks.downsample)
    x0, y0, x1, y1 = wsi_region_box("validation")
    assert (wsi.boxes[:, 0] >= x0).all() and (wsi.boxes[:, 1] >= y0).all() and (wsi.boxes[:, 2] <= x1).all() \
        and (wsi.boxes[:, 3] <= y1).all()
    crops = CropSampler(load_images(), 32, "validation", seed=0, downsample=2)
    for image, boxes in crop_boxes(crops, 64).items():
        assert all(load_image(image).region_of(tuple(box)) == "validation" for box in boxes), image


@pytest.mark.parametrize("region", ["train", "heldout"])
def test_pools_and_test_tiles_stay_in_their_region(real_data, region):
    config = load_config("smoke")
    seg = config.segmentation
    pairs = (real_pool(seg.tile_size, seg.downsample, config.seed, seg.n_real).pairs if region == "train"
             else heldout_tiles(seg.tile_size, seg.downsample, config.seed, seg.n_test))
    for image in set(pairs.sources):
        boxes = pairs.boxes[pairs.sources == image].astype(int)
        assert all(load_image(image).region_of(tuple(box)) == region for box in boxes), image


def _overlapping_pairs(boxes: np.ndarray, sources: np.ndarray) -> int:
    """How many pairs of tiles of one source image share at least one pixel."""
    count = 0
    for image in set(sources):
        b = boxes[sources == image]
        x_overlap = np.minimum(b[:, None, 2], b[None, :, 2]) > np.maximum(b[:, None, 0], b[None, :, 0])
        y_overlap = np.minimum(b[:, None, 3], b[None, :, 3]) > np.maximum(b[:, None, 1], b[None, :, 1])
        count += int(np.triu(x_overlap & y_overlap, 1).sum())
    return count


@pytest.mark.parametrize("profile", ["smoke", "cpu"])
def test_test_tiles_and_pools_do_not_overlap_and_r25_and_r75_share_no_pixel(real_data, profile):
    """Notebook 09's units are independent: no two test tiles share a pixel, nor two pool tiles, so R25 and R75 are
    disjoint in pixels (painted, per image). Random crops of the same count overlap: the check would see it."""
    config = load_config(profile)
    seg = config.segmentation
    pool = real_pool(seg.tile_size, seg.downsample, config.seed, seg.n_real)
    test = heldout_tiles(seg.tile_size, seg.downsample, config.seed, seg.n_test)
    assert _overlapping_pairs(pool.pairs.boxes, pool.pairs.sources) == 0
    assert _overlapping_pairs(test.boxes, test.sources) == 0
    assert len(set(pool.quarter) & set(pool.rest)) == 0 and len(pool.quarter) + len(pool.rest) == len(pool.pairs)
    for image in set(pool.pairs.sources):
        h, w = load_image(image).shape
        painted = {}
        for name, index in (("R25", pool.quarter), ("R75", pool.rest)):
            canvas = np.zeros((h, w), bool)
            for x0, y0, x1, y1 in pool.pairs.boxes[index][pool.pairs.sources[index] == image].astype(int):
                canvas[y0:y1, x0:x1] = True
            painted[name] = canvas
        assert painted["R25"].any() and painted["R75"].any() and not (painted["R25"] & painted["R75"]).any(), image
    crops = image_mask_pairs(seg.tile_size, "heldout", len(test), seed=config.seed, downsample=seg.downsample)
    assert _overlapping_pairs(crops.boxes, crops.sources) > 0  # positive control: random crops overlap


# ---- split 3: the test region holds what the questions are about ----

def test_hgsc_nest_held_out_and_validation_nuclei_have_the_images_type_shares(real_data):
    from histolab_utils.data.split_design import region_counts, share_deviation

    table = region_counts("hgsc_nest")
    types = ["connective", "inflammatory", "neoplastic"]
    assert table.loc["whole image", types].sum() == 1294
    for region in ("heldout", "validation"):
        deviation = share_deviation(table.loc[region, types], table.loc["whole image", types])
        assert (deviation.abs() <= 0.30).all(), (region, deviation.to_dict())
    assert (table.loc["heldout", types] >= 50).all()


def test_the_split_2_strip_fails_the_share_rule(real_data):
    """Positive control: the right strip that split 2 held out holds almost no tumour, and the check sees it."""
    from dataclasses import replace

    from histolab_utils.data.split_design import share_deviation, typed_nuclei

    strips = replace(load_image("hgsc_nest"), design=None)
    nuclei = typed_nuclei("hgsc_nest")
    held = nuclei.counts(nuclei.in_boxes(strips.region_boxes("heldout")))
    assert held["neoplastic"] <= 10 and share_deviation(held, nuclei.counts()).abs().max() > 0.30


@pytest.mark.parametrize("profile", ["cpu", "full"])
def test_notebook_09s_test_tiles_hold_50_nuclei_of_each_type(real_data, profile):
    from histolab_utils.data.split_design import tile_type_counts

    config = load_config(profile)
    seg = config.segmentation
    test = heldout_tiles(seg.tile_size, seg.downsample, config.seed, seg.n_test)
    counts = tile_type_counts(test.boxes, test.sources)
    assert (counts >= 50).all(), counts.to_dict()


def test_the_block_design_is_the_one_the_stated_rule_picks(real_data):
    from histolab_utils.data.datasets import BLOCK_DESIGNS
    from histolab_utils.data.split_design import candidates_table, choose_design

    assert choose_design() == BLOCK_DESIGNS["hgsc_nest"]
    table = candidates_table()
    assert len(table) == 24 and table["representative"].sum() == 12  # 12 of the 24 Latin patterns are within ±30 %
    assert not table.sort_values("max_share_deviation").iloc[0]["passes"]  # the most even one has too few in tiles


def test_the_slide_regions_keep_type_shares_within_30_percent(real_data):
    """Notebook 06's slide keeps its strips: its held-out and validation strips are already representative."""
    import shapely

    from histolab_utils.data.nuclei import NUCLEUS_NAME_MAP, wsi_nuclei

    table = wsi_nuclei().table
    centres = shapely.centroid(table["geometry"].to_numpy())
    xs, ys = shapely.get_x(centres), shapely.get_y(centres)
    kinds = table["class_name"].map(NUCLEUS_NAME_MAP)  # the project's three types; unknown lineages drop out
    typed = kinds.notna().to_numpy()
    whole = kinds[typed].value_counts(normalize=True)
    for region in ("validation", "heldout"):
        x0, y0, x1, y1 = wsi_region_box(region)
        inside = typed & (xs >= x0) & (xs < x1) & (ys >= y0) & (ys < y1)
        deviation = kinds[inside].value_counts(normalize=True) / whole - 1
        assert (deviation.abs() <= 0.30).all(), (region, deviation.round(3).to_dict())


def test_pairs_count_the_tiles_that_leave_their_region(real_data):
    pairs = image_mask_pairs(16, "heldout", 6, seed=0)
    assert pairs.outside_region() == 0
    moved = pairs.subset(slice(None))
    moved.boxes = moved.boxes.copy()
    moved.boxes[0] = [0, 0, 16, 16]  # the top-left corner is train in every image
    assert moved.outside_region() == 1
