"""Tiles/s of histolab_utils.tiling against a per-tile read_region loop, side by side in one run.

    python benchmarks/tiling.py [--slide PATH] [--tile-size 256] [--overlap 0.5] [--repeats 3]

The baseline is written as a user would write it from OpenSlide's docs: walk the grid, read
each tile with read_region, compute its tissue fraction (saturation > 0.07, the floor our
tissue mask uses), and save the tiles that reach 50 % as PNG with Pillow's defaults.
Both write to temporary folders; the best of --repeats runs of each is reported.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np


def naive_loop(slide_path: Path, out: Path, tile: int, overlap: float, min_tissue: float) -> int:
    import openslide
    from skimage.color import rgb2hsv

    slide = openslide.OpenSlide(str(slide_path))
    width, height = slide.dimensions
    stride = int(tile * (1 - overlap))
    kept = 0
    for y in range(0, height - tile + 1, stride):
        for x in range(0, width - tile + 1, stride):
            region = slide.read_region((x, y), 0, (tile, tile)).convert("RGB")
            tissue = (rgb2hsv(np.asarray(region))[..., 1] > 0.07).mean()
            if tissue >= min_tissue:
                region.save(out / f"tile_x{x}_y{y}.png")
                kept += 1
    slide.close()
    return kept


def ours(slide_path: Path, out: Path, tile: int, overlap: float, min_tissue: float) -> int:
    from histolab_utils.tiling import TilingParams, tile_slides

    params = TilingParams(tile_size=tile, overlap=overlap, min_tissue=min_tissue)
    return len(tile_slides([slide_path], out, params, progress=False))


def best_time(fn, *args, repeats: int) -> tuple[float, int]:
    times, kept = [], 0
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as tmp:
            started = time.perf_counter()
            kept = fn(args[0], Path(tmp), *args[1:])
            times.append(time.perf_counter() - started)
    return min(times), kept


def main() -> None:
    from histolab_utils.data import require_file

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slide", type=Path, default=None, help="default: the CMU SVS from the data registry")
    parser.add_argument("--tile-size", type=int, default=256)
    parser.add_argument("--overlap", type=float, default=0.5)
    parser.add_argument("--min-tissue", type=float, default=0.5)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    slide = args.slide or require_file("cmu_slide", "cmu_small_region.svs")
    setting = (args.tile_size, args.overlap, args.min_tissue)
    naive_s, naive_kept = best_time(naive_loop, slide, *setting, repeats=args.repeats)
    ours_s, ours_kept = best_time(ours, slide, *setting, repeats=args.repeats)
    print(f"slide {slide.name}, {args.tile_size} px tiles, overlap {args.overlap}, min tissue {args.min_tissue}; "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores; best of {args.repeats}")
    print(f"{'method':<28}{'tiles kept':>12}{'seconds':>10}{'tiles/s':>10}")
    print(f"{'per-tile read_region loop':<28}{naive_kept:>12}{naive_s:>10.2f}{naive_kept / naive_s:>10.1f}")
    print(f"{'histolab_utils.tiling':<28}{ours_kept:>12}{ours_s:>10.2f}{ours_kept / ours_s:>10.1f}")
    print(f"ratio (ours / loop, tiles/s): {(ours_kept / ours_s) / (naive_kept / naive_s):.2f}x")


if __name__ == "__main__":
    main()
