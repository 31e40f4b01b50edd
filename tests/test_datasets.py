from __future__ import annotations

import numpy as np
import pytest
import shapely

from histolab_utils.data import (
    ANNOTATED_SET,
    DEFAULT_SET,
    IMAGES,
    CropSampler,
    HEImage,
    dihedral,
    load_image,
    load_images,
    load_polygons,
    polygon_class_counts,
    provenance_table,
)
from histolab_utils.stain.deconvolution import separate_stains, stain_concentrations


def striped_image(height: int = 40, width: int = 100) -> HEImage:
    """A synthetic image whose every pixel records its own (x, y), with masks equal to x."""
    ys, xs = np.mgrid[0:height, 0:width]
    rgb = np.stack([xs, ys, np.zeros_like(xs)], axis=-1).astype(np.uint8)
    return HEImage(name="stripes", image=rgb, inst_mask=xs.astype(np.int32), type_mask=ys.astype(np.int32))


def test_region_boxes_partition_the_image():
    image = striped_image()
    boxes = [image.region_boxes(region) for region in ("train", "validation", "heldout")]
    assert boxes == [[(0, 0, 75, 30)], [(0, 30, 75, 40)], [(75, 0, 100, 40)]]
    with pytest.raises(ValueError, match="region"):
        image.region_boxes("test")


def test_a_block_design_partitions_the_image_with_one_block_per_row_and_column():
    from histolab_utils.data.datasets import BlockDesign

    design = BlockDesign(grid=4, heldout=(3, 0, 1, 2), validation=(1, 2, 3, 0))
    image = HEImage(name="blocks", image=np.zeros((100, 100, 3), np.uint8), design=design)
    masks = {region: image.region_mask(region) for region in ("train", "validation", "heldout")}
    assert (sum(m.astype(int) for m in masks.values()) == 1).all()  # disjoint, and together the whole image
    assert masks["heldout"].sum() == masks["validation"].sum() == 4 * 25 * 25
    for region in ("validation", "heldout"):
        blocks = masks[region].reshape(4, 25, 4, 25).all(axis=(1, 3))
        assert (blocks.sum(0) == 1).all() and (blocks.sum(1) == 1).all(), region
    assert image.region_boxes("train")[0] == (0, 0, 25, 25)  # row 0: train, validation, train, held out
    assert image.region_of((0, 0, 25, 25)) == "train" and image.region_of((20, 0, 30, 10)) is None
    with pytest.raises(ValueError, match="share a block"):
        BlockDesign(grid=4, heldout=(3, 0, 1, 2), validation=(3, 2, 0, 1))
    with pytest.raises(ValueError, match="permutation"):
        BlockDesign(grid=4, heldout=(0, 0, 1, 2), validation=(1, 2, 3, 0))


def test_split_description_names_each_image_once_under_its_own_design():
    from histolab_utils.data.datasets import BLOCK_DESIGNS, SPLIT_VERSION, split_description

    words = split_description(DEFAULT_SET)
    assert words.startswith(f"split {SPLIT_VERSION}; ")
    groups = dict(part.split(": ", 1) for part in words.removeprefix(f"split {SPLIT_VERSION}; ").split("; "))
    names = [name for group in groups for name in group.split(", ")]
    assert sorted(names) == sorted(DEFAULT_SET)  # every image, once
    for group, design in groups.items():
        blocked = {name in BLOCK_DESIGNS for name in group.split(", ")}
        assert blocked == {"blocks" in design}, (group, design)  # a block image never under the strips, nor one under it
    assert len(groups) == 2  # the strip images share one entry
    assert split_description(["hgsc_nest", "hgsc_stroma"]) == (
        f"split {SPLIT_VERSION}; hgsc_nest: 4 x 4 blocks, one held-out and one validation block per row and column; "
        "hgsc_stroma: right 25 % held out, bottom 25 % of the rest validation")
    with pytest.raises(ValueError, match="no_such_image"):
        split_description(["hgsc_nest", "no_such_image"])


@pytest.mark.parametrize("region", ["train", "validation", "heldout"])
def test_crops_of_a_block_design_stay_in_their_blocks(region):
    from histolab_utils.data.datasets import BlockDesign

    design = BlockDesign(grid=4, heldout=(3, 0, 1, 2), validation=(1, 2, 3, 0))
    image = HEImage(name="blocks", image=striped_image(200, 200).image, design=design)
    mask = image.region_mask(region)
    crops = CropSampler([image], size=16, region=region, seed=2, augment=False).sample(300)
    xs, ys = crops[..., 0].astype(int), crops[..., 1].astype(int)
    assert mask[ys, xs].all()
    blocks_seen = {(int(y) // 50, int(x) // 50) for x, y in zip(xs[:, 0, 0], ys[:, 0, 0])}
    assert len(blocks_seen) == (8 if region == "train" else 4)  # every block of the region is drawn from


@pytest.mark.parametrize("region", ["train", "validation", "heldout"])
def test_crops_stay_inside_their_region_and_masks_follow_augmentation(region):
    image = striped_image(height=80)
    sampler = CropSampler([image], size=16, region=region, seed=1)
    crops = sampler.sample_with_masks(200)
    xs, ys = crops.images[..., 0].astype(int), crops.images[..., 1].astype(int)
    if region == "train":
        assert xs.max() < image.split_x and ys.max() < image.validation_y
    elif region == "validation":
        assert xs.max() < image.split_x and ys.min() >= image.validation_y
    else:
        assert xs.min() >= image.split_x
    # The same rotation/flip was applied to image and masks.
    assert np.array_equal(crops.inst_masks, xs)
    assert np.array_equal(crops.type_masks, crops.images[..., 1].astype(int))
    # Augmentation really happens: some crops have x increasing down the rows.
    assert any(np.all(np.diff(c[:, 0]) == 1) for c in xs)


def test_crop_sampler_is_reproducible_and_validates_input():
    image = striped_image()
    a = CropSampler([image], 8, seed=3).sample(10)
    b = CropSampler([image], 8, seed=3).sample(10)
    assert a.dtype == np.uint8 and a.shape == (10, 8, 8, 3) and np.array_equal(a, b)
    with pytest.raises(ValueError, match="large enough"):
        CropSampler([image], size=30, region="heldout")  # the held-out strip is 25 px wide
    with pytest.raises(ValueError, match="size"):
        CropSampler([image], size=0)


def test_crop_positions_are_uniform_over_images():
    big = HEImage(name="big", image=np.zeros((200, 400, 3), np.uint8))
    small = HEImage(name="small", image=np.full((100, 100, 3), 255, np.uint8))
    sampler = CropSampler([big, small], size=10, seed=0)
    share_small = (sampler.sample(4000)[:, 0, 0, 0] == 255).mean()
    expected = (66 * 91) / (66 * 91 + 291 * 191)
    assert abs(share_small - expected) < 0.02


def test_dihedral_gives_eight_distinct_transforms():
    a = np.arange(12).reshape(3, 4)
    outs = {dihedral(a, k, f).tobytes() + bytes(dihedral(a, k, f).shape) for k in range(4) for f in (False, True)}
    assert len(outs) == 8


def test_embedded_images_load_as_rgb_uint8(real_data):
    for image in load_images(IMAGES):
        assert image.image.dtype == np.uint8 and image.image.ndim == 3 and image.image.shape[2] == 3
        assert not image.image.flags.writeable, "cached arrays are shared, so read-only"
    assert set(ANNOTATED_SET) <= set(IMAGES) and set(DEFAULT_SET) <= set(IMAGES)
    with pytest.raises(KeyError, match="known images"):
        load_image("no_such_image")


def test_hgsc_nest_masks_agree_with_its_polygons(real_data):
    nest = load_image("hgsc_nest")
    assert nest.shape == (1500, 1500)
    assert len(np.unique(nest.inst_mask)) - 1 == 1294
    assert set(np.unique(nest.type_mask)) == {0, 1, 2, 3}
    polygons = load_polygons("hgsc_nest")
    points = shapely.get_coordinates(shapely.point_on_surface(polygons["geometry"].to_numpy())).astype(int)
    raster_types = nest.type_mask[points[:, 1].clip(0, 1499), points[:, 0].clip(0, 1499)]
    names = np.array([nest.type_names.get(int(t), "?") for t in raster_types])
    assert (names == polygons["class_name"].to_numpy()).mean() == 1.0


def test_annotated_patches_have_instance_and_type_masks(real_data):
    for name in ANNOTATED_SET:
        image = load_image(name)
        assert image.inst_mask.shape == image.shape and image.type_mask.shape == image.shape
        assert image.inst_mask.max() > 0 and image.type_mask.max() > 0
        # Every nucleus pixel has a type; hgsc_nest's type raster has 43 typed pixels outside
        # any instance (rasterisation differences in the source), hence the tolerance.
        assert np.all(image.type_mask[image.inst_mask > 0] > 0)
        assert ((image.inst_mask > 0) == (image.type_mask > 0)).mean() > 0.9999


def test_polygon_class_counts_of_the_whole_slide(real_data):
    counts = polygon_class_counts("hgsc_tissue_wsi.parquet")
    assert counts.sum() == 3712 and counts["stroma"] == 1170
    with pytest.raises(ValueError, match="no polygon"):
        load_polygons("tiatoolbox_target")


def test_provenance_table_lists_every_image(real_data):
    table = provenance_table()
    assert list(table["image"]) == list(IMAGES)
    assert table["height"].notna().all() and set(table["licence"]) <= {"BSD-3-Clause", "MIT", "Apache-2.0"}


def test_real_crops_of_both_regions(real_data):
    images = load_images()
    train = CropSampler(images, 64, "train", seed=0).sample(32)
    held = CropSampler(images, 64, "heldout", seed=0).sample(32)
    assert train.shape == held.shape == (32, 64, 64, 3)
    assert 100 < train.mean() < 230, "H&E crops are neither black nor blank"


def test_haematoxylin_concentrates_in_nuclei(real_data):
    nest = load_image("hgsc_nest")
    hed = stain_concentrations(nest.image)
    nuclei = nest.type_mask > 0
    assert hed[..., 0][nuclei].mean() > hed[..., 0][~nuclei].mean() * 1.3
    stains = separate_stains(nest.image[:64, :64])
    assert set(stains) == {"haematoxylin", "eosin", "dab"}
    assert all(s.dtype == np.uint8 and s.shape == (64, 64, 3) for s in stains.values())
    with pytest.raises(ValueError, match="uint8"):
        stain_concentrations(nest.image.astype(float))


def test_box_downsample_averages_blocks_and_names_a_bad_size():
    from histolab_utils.data.crops import box_downsample

    image = np.arange(4 * 4 * 3, dtype=np.uint8).reshape(4, 4, 3)
    small = box_downsample(image[None], 2)[0]
    assert small.shape == (2, 2, 3)
    assert small[0, 0, 0] == np.rint(image[:2, :2, 0].mean()) and small[1, 1, 2] == np.rint(image[2:, 2:, 2].mean())
    assert box_downsample(image, 1) is image
    with pytest.raises(ValueError, match="not a multiple of factor=3"):
        box_downsample(image, 3)


def test_downsampled_crops_cover_larger_fields_inside_their_region(real_data):
    from histolab_utils.data.crops import box_downsample

    images = load_images()
    sampler = CropSampler(images, 16, "heldout", augment=False, seed=3, downsample=2)
    crops = sampler.sample_with_masks(20)
    assert crops.images.shape == (20, 16, 16, 3)
    for crop, (i, x, y) in zip(crops.images, crops.origins):
        source = sampler.images[i]
        assert source.region_of((x, y, x + 32, y + 32)) == "heldout", "the 32 px field stays in its region"
        np.testing.assert_array_equal(crop, box_downsample(source.image[y:y + 32, x:x + 32], 2))
    with pytest.raises(ValueError, match="downsample must be a whole number"):
        CropSampler(images, 16, "train", downsample=1.5)
