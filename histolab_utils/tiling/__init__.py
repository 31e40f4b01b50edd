"""Tiling of whole-slide images and plain images, with tissue and label filtering.

* ``slide``: one reader for whole-slide images (OpenSlide) and plain images (Pillow);
* ``tissue``: tissue masks at thumbnail resolution (saturation or optical density, Otsu with a floor);
* ``tiler``: plan the tile grid on a thumbnail, then read and write only the kept tiles, with a manifest;
* ``__main__``: the command line below.

Command line (``python -m histolab_utils.tiling --help``)::

    python -m histolab_utils.tiling SLIDE [SLIDE ...] --out DIR --tile-size 256 --overlap 0.5 \\
        --min-tissue 0.5 [--annotations FILE ...] [--target-label NAME --min-label 0.1] [--mpp 0.5]
"""

from ..data.annotations import AnnotationError, Annotations, rasterize, read_annotations
from .slide import Slide, SlideError, open_slide
from .tiler import TilePlan, TilingParams, plan_tiles, tile_slide, tile_slides, write_manifest, write_tiles
from .tissue import tissue_cue, tissue_mask

__all__ = [
    "AnnotationError", "Annotations", "Slide", "SlideError", "TilePlan", "TilingParams", "open_slide",
    "plan_tiles", "rasterize", "read_annotations", "tile_slide", "tile_slides", "tissue_cue", "tissue_mask",
    "write_manifest", "write_tiles",
]
