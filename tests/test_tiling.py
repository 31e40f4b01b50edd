from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from histolab_utils.data import load_image, require_file
from histolab_utils.tiling import (
    AnnotationError,
    SlideError,
    TilingParams,
    open_slide,
    plan_tiles,
    rasterize,
    read_annotations,
    tile_slides,
    tissue_mask,
)


@pytest.fixture(scope="module")
def cmu_svs(real_data) -> Path:
    return require_file("cmu_slide", "cmu_small_region.svs")


def write_geojson(path: Path, features: list[dict]) -> Path:
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return path


def qupath_feature(coords, name: str | None) -> dict:
    properties = {"objectType": "annotation"}
    if name is not None:
        properties["classification"] = {"name": name, "color": [255, 0, 0]}
    return {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [coords]}, "properties": properties}


def square(x0, y0, x1, y1):
    return [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]


def tissue_image(path: Path, size=(300, 200), blob=(50, 40, 250, 160)) -> Path:
    """A white image with one pink rectangle of 'tissue'."""
    image = np.full((size[1], size[0], 3), 245, np.uint8)
    x0, y0, x1, y1 = blob
    image[y0:y1, x0:x1] = (200, 110, 170)
    Image.fromarray(image).save(path)
    return path


# --- the CMU slide: the done-when checks -------------------------------------------

def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "histolab_utils.tiling", *args, "--no-progress"],
                          capture_output=True, text=True)


def test_cli_on_the_cmu_slide_writes_valid_tiles_and_is_repeatable(cmu_svs, tmp_path):
    args = ["--tile-size", "256", "--overlap", "0.5", "--min-tissue", "0.5"]
    first = run_cli(str(cmu_svs), "--out", str(tmp_path / "a"), *args)
    assert first.returncode == 0, first.stderr
    manifest = pd.read_csv(tmp_path / "a" / "manifest.csv")
    assert len(manifest) > 50
    assert list(manifest.columns[:8]) == ["slide", "level", "x", "y", "size", "mpp", "tissue_fraction", "path"]
    assert (manifest["tissue_fraction"] >= 0.5).all() and (manifest["mpp"] == 0.499).all()
    for path in manifest["path"]:
        with Image.open(tmp_path / "a" / path) as tile:
            assert tile.size == (256, 256) and tile.mode == "RGB"
    assert manifest["x"].mod(128).eq(0).all(), "50% overlap of 256 px tiles is a 128 px stride"
    second = run_cli(str(cmu_svs), "--out", str(tmp_path / "a"), *args)
    assert second.returncode == 0
    third = run_cli(str(cmu_svs), "--out", str(tmp_path / "b"), *args)
    assert (tmp_path / "a" / "manifest.csv").read_bytes() == (tmp_path / "b" / "manifest.csv").read_bytes()
    tile = manifest["path"].iloc[0]
    assert (tmp_path / "a" / tile).read_bytes() == (tmp_path / "b" / tile).read_bytes()
    assert third.returncode == 0


def test_tiles_match_a_direct_read_of_the_slide(cmu_svs, tmp_path):
    manifest = tile_slides([cmu_svs], tmp_path, TilingParams(tile_size=128, overlap=0.25), progress=False)
    with open_slide(cmu_svs) as slide:
        for _, row in manifest.sample(5, random_state=0).iterrows():
            direct = slide.read_region(row.x, row.y, 0, (128, 128))
            assert np.array_equal(np.asarray(Image.open(tmp_path / row.path)), direct)


def test_mpp_resamples_the_tiles(cmu_svs, tmp_path):
    manifest = tile_slides([cmu_svs], tmp_path, TilingParams(tile_size=128, overlap=0.0, mpp=1.0), progress=False)
    assert (manifest["mpp"] == 1.0).all()
    columns = np.sort(manifest["x"].unique())
    assert np.diff(columns).min() >= 256, "1 µm/px from 0.499 µm/px covers ~2x the level-0 pixels"
    with Image.open(tmp_path / manifest["path"].iloc[0]) as tile:
        assert tile.size == (128, 128)


def test_missing_mpp_falls_back_to_level_zero_with_a_warning(tmp_path):
    image = tissue_image(tmp_path / "plain.png")
    with pytest.warns(UserWarning, match="no mpp"):
        manifest = tile_slides([image], tmp_path / "out", TilingParams(tile_size=64, mpp=0.5), progress=False)
    assert manifest["mpp"].isna().all() and len(manifest) > 0


def test_parallel_slides_keep_a_deterministic_order(cmu_svs, tmp_path):
    other = tissue_image(tmp_path / "plain.png")
    params = TilingParams(tile_size=64, overlap=0.0)
    serial = tile_slides([cmu_svs, other], tmp_path / "serial", params, workers=1, progress=False)
    parallel = tile_slides([cmu_svs, other], tmp_path / "parallel", params, workers=2, progress=False)
    pd.testing.assert_frame_equal(serial, parallel)
    assert list(dict.fromkeys(serial["slide"])) == ["cmu_small_region", "plain"]


# --- plain images, tissue masks, annotations ------------------------------------------------

def test_tissue_mask_finds_the_blob_and_nothing_on_glass(tmp_path):
    image = np.asarray(Image.open(tissue_image(tmp_path / "t.png")))
    for method in ("saturation", "od"):
        mask = tissue_mask(image, method)
        assert mask[40:160, 50:250].mean() > 0.99 and mask.sum() == pytest.approx(200 * 120, rel=0.02)
    assert not tissue_mask(np.full((64, 64, 3), 240, np.uint8)).any()


def test_label_filter_with_the_hgsc_polygons(tmp_path, real_data):
    image = require_file("hgsc_png", "hgsc_nest.png")
    polygons = require_file("hgsc", "hgsc_nest.parquet")
    params = TilingParams(tile_size=256, overlap=0.5, min_tissue=0.5, target_label="neoplastic", min_label=0.1)
    manifest = tile_slides([image], tmp_path, params, annotations=[polygons], progress=False)
    assert len(manifest) > 0
    assert (manifest["frac_neoplastic"] >= 0.1).all()
    assert {"frac_connective", "frac_inflammatory", "mask_path", "instance_path"} <= set(manifest.columns)
    # The polygon-derived label raster agrees with the type raster shipped with the image.
    nest = load_image("hgsc_nest")
    row = manifest.iloc[0]
    label = np.asarray(Image.open(tmp_path / row.mask_path))
    shipped = nest.type_mask[row.y:row.y + 256, row.x:row.x + 256]
    assert (label == shipped).mean() > 0.97
    instance = np.asarray(Image.open(tmp_path / row.instance_path))
    assert ((instance > 0) == (label > 0)).all()


def test_geojson_from_qupath_rasterises_exactly(tmp_path):
    path = write_geojson(tmp_path / "a.geojson", [
        qupath_feature(square(10, 10, 30, 20), "tumor"),
        {"type": "Feature",
         "geometry": {"type": "Polygon", "coordinates": [square(40, 0, 60, 40), square(45, 5, 55, 15)]},
         "properties": {"classification": {"name": "stroma"}}},
    ])
    annotations = read_annotations(path)
    assert annotations.classes == ("stroma", "tumor")
    rasters = rasterize(annotations, (0, 0, 64, 64), (64, 64))
    tumour = rasters["label"] == annotations.label_of("tumor")
    assert tumour[10:21, 10:31].all() and tumour.sum() == 21 * 11
    stroma = rasters["label"] == annotations.label_of("stroma")
    assert not stroma[6:15, 46:55].any(), "holes are cut out"
    assert set(np.unique(rasters["instance"])) == {0, 1, 2}
    half = rasterize(annotations, (0, 0, 64, 64), (32, 32))
    assert (half["label"] == 2).sum() == pytest.approx(tumour.sum() / 4, rel=0.25)


# --- bad inputs -----------------------------------------------------------------------------

def test_a_non_slide_named_svs_exits_nonzero_naming_the_file(tmp_path):
    fake = tmp_path / "x.svs"
    fake.write_text("this is not a slide")
    result = run_cli(str(fake), "--out", str(tmp_path / "out"))
    assert result.returncode != 0 and "x.svs" in result.stderr
    assert not (tmp_path / "out" / "manifest.csv").exists()
    with pytest.raises(SlideError, match="x.svs"):
        open_slide(fake)


def test_a_truncated_slide_is_a_clear_error(cmu_svs, tmp_path):
    truncated = tmp_path / "cut.svs"
    truncated.write_bytes(cmu_svs.read_bytes()[: 1_500_000])
    with pytest.raises(SlideError, match="cut.svs.*truncated"):
        tile_slides([truncated], tmp_path / "out", progress=False)
    assert not (tmp_path / "out" / "manifest.csv").exists()
    assert not list((tmp_path / "out").glob(".*")), "no staging folder left behind"


def test_a_missing_path_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.svs"):
        tile_slides([tmp_path / "nope.svs"], tmp_path / "out", progress=False)
    result = run_cli(str(tmp_path / "nope.svs"), "--out", str(tmp_path / "out"))
    assert result.returncode == 1 and "nope.svs" in result.stderr


def test_invalid_geometry_is_named_with_file_and_polygon(tmp_path):
    bow_tie = [[0, 0], [10, 10], [10, 0], [0, 10], [0, 0]]
    path = write_geojson(tmp_path / "bad.geojson", [qupath_feature(square(0, 0, 5, 5), "a"),
                                                    qupath_feature(bow_tie, "a")])
    with pytest.raises(AnnotationError, match=r"bad.geojson: row 1 .*Self-intersection.*repair=True"):
        read_annotations(path)
    point = {"type": "Feature", "geometry": {"type": "Point", "coordinates": [1, 2]},
             "properties": {"classification": {"name": "a"}}}
    with pytest.raises(AnnotationError, match="feature 0.*Point"):
        read_annotations(write_geojson(tmp_path / "pt.geojson", [point]))
    with pytest.raises(AnnotationError, match="feature 0 has no class"):
        read_annotations(write_geojson(tmp_path / "nc.geojson", [qupath_feature(square(0, 0, 5, 5), None)]))
    (tmp_path / "junk.geojson").write_text("{not json")
    with pytest.raises(AnnotationError, match="junk.geojson"):
        read_annotations(tmp_path / "junk.geojson")


def test_unknown_classes_are_errors(tmp_path):
    path = write_geojson(tmp_path / "a.geojson", [qupath_feature(square(0, 0, 50, 50), "tumour")])
    with pytest.raises(AnnotationError, match=r"unknown classes \['tumour'\]"):
        read_annotations(path, classes=["stroma", "tumor"])
    image = tissue_image(tmp_path / "img.png")
    params = TilingParams(tile_size=64, target_label="necrosis")
    with pytest.raises(AnnotationError, match="'necrosis' is not in the annotations"):
        tile_slides([image], tmp_path / "out", params, annotations=[path], progress=False)


def test_a_tile_larger_than_the_slide_is_an_error(tmp_path):
    image = tissue_image(tmp_path / "small.png")
    with pytest.raises(ValueError, match="larger than the slide"):
        tile_slides([image], tmp_path / "out", TilingParams(tile_size=512), progress=False)


def test_a_slide_without_tissue_gives_an_empty_manifest_and_a_warning(tmp_path):
    blank = tmp_path / "blank.png"
    Image.fromarray(np.full((300, 300, 3), 242, np.uint8)).save(blank)
    with pytest.warns(UserWarning, match="no tile reaches min_tissue"):
        manifest = tile_slides([blank], tmp_path / "out", TilingParams(tile_size=64), progress=False)
    assert len(manifest) == 0
    written = pd.read_csv(tmp_path / "out" / "manifest.csv")
    assert len(written) == 0 and "tissue_fraction" in written.columns


def test_bad_parameters_are_named():
    with pytest.raises(ValueError, match="overlap"):
        TilingParams(overlap=1.0)
    with pytest.raises(ValueError, match="min_tissue"):
        TilingParams(min_tissue=1.5)
    with pytest.raises(ValueError, match="either level or mpp"):
        TilingParams(level=0, mpp=0.5)


def test_plan_needs_no_pixel_reads_beyond_the_thumbnail(cmu_svs):
    with open_slide(cmu_svs) as slide:
        plan = plan_tiles(slide, TilingParams(tile_size=256, overlap=0.5))
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            looser = plan_tiles(slide, TilingParams(tile_size=256, overlap=0.5, min_tissue=0.1),
                                thumbnail=plan.thumbnail)
    assert looser.grid["keep"].sum() >= plan.grid["keep"].sum() > 0
    assert len(plan.grid) == len(looser.grid)
