"""``python -m histolab_utils.tiling``: cut slides into tiles and write manifest.csv."""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

from ..data.annotations import AnnotationError
from .slide import SlideError
from .tiler import TilingParams, tile_slides


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m histolab_utils.tiling",
        description="Cut whole-slide images (any OpenSlide format) or plain images into tiles, keep the "
        "tiles with enough tissue (and label), and write PNG tiles plus manifest.csv.",
    )
    parser.add_argument("slides", nargs="+", type=Path, help="slide or image files")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--tile-size", type=int, default=256, help="tile side in output pixels (default 256)")
    parser.add_argument("--overlap", type=float, default=0.5, help="fraction of a tile shared with the next (default 0.5)")
    parser.add_argument("--min-tissue", type=float, default=0.5, help="keep tiles with at least this tissue fraction")
    resolution = parser.add_mutually_exclusive_group()
    resolution.add_argument("--level", type=int, default=None, help="pyramid level to tile (default 0)")
    resolution.add_argument("--mpp", type=float, default=None, help="target microns per pixel of the tiles")
    parser.add_argument("--annotations", nargs="+", type=Path, default=None,
                        help="QuPath GeoJSON or GeoParquet polygons, one file per slide")
    parser.add_argument("--target-label", default=None, help="class that a kept tile must contain")
    parser.add_argument("--min-label", type=float, default=0.1, help="minimum fraction of --target-label")
    parser.add_argument("--tissue-method", choices=("saturation", "od"), default="saturation")
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1), help="slides in parallel")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        params = TilingParams(
            tile_size=args.tile_size, overlap=args.overlap, min_tissue=args.min_tissue, level=args.level,
            mpp=args.mpp, target_label=args.target_label, min_label=args.min_label, tissue_method=args.tissue_method,
        )
        started = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.formatwarning = lambda message, *_: f"warning: {message}\n"
            manifest = tile_slides(args.slides, args.out, params, args.annotations, workers=args.workers,
                                   progress=not args.no_progress)
        seconds = time.perf_counter() - started
    except (FileNotFoundError, SlideError, AnnotationError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"{len(manifest)} tiles from {len(args.slides)} slide(s) in {seconds:.1f} s -> {args.out / 'manifest.csv'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
