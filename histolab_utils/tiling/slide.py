"""One reader for whole-slide images (via OpenSlide) and plain images (via Pillow)."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np


PLAIN_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"}


class SlideError(ValueError):
    """A file that cannot be read as a slide or image; the message names the file."""


def _mpp_from_properties(properties) -> float | None:
    """Microns per pixel from OpenSlide's property, else from TIFF resolution tags."""
    value = properties.get("openslide.mpp-x")
    if value:
        return float(value)
    resolution, unit = properties.get("tiff.XResolution"), properties.get("tiff.ResolutionUnit")
    if resolution and unit in ("centimeter", "inch") and float(resolution) > 0:
        microns = 1e4 if unit == "centimeter" else 25400.0
        return microns / float(resolution)
    return None


class Slide:
    """A slide or image opened for reading; use as a context manager.

    Coordinates given to :meth:`read_region` are level-0 pixels, sizes are pixels at ``level``
    (OpenSlide's convention). Images come back as RGB uint8, with transparent areas white.
    """

    def __init__(self, path: str | Path) -> None:
        import openslide
        from PIL import Image, UnidentifiedImageError

        self.path = Path(path)
        if not self.path.exists():
            raise FileNotFoundError(f"slide file does not exist: {self.path}")
        if not self.path.is_file():
            raise SlideError(f"{self.path} is not a file")
        try:
            if openslide.OpenSlide.detect_format(str(self.path)):
                self._handle = openslide.OpenSlide(str(self.path))
            elif self.path.suffix.lower() not in PLAIN_IMAGE_SUFFIXES:
                # A slide format that OpenSlide rejects is broken; Pillow might still decode part
                # of it (the baseline of a cut SVS) and hide the damage.
                raise SlideError(f"{self.path} is not a slide that OpenSlide can read "
                                 "(is it truncated, corrupt or mis-named?)")
            else:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    image = Image.open(self.path)
                    image.load()  # decode now, so a truncated image fails here
                self._handle = openslide.ImageSlide(image)
        except (openslide.OpenSlideError, UnidentifiedImageError, OSError, SyntaxError) as error:
            raise SlideError(
                f"{self.path} is not a slide or image that OpenSlide or Pillow can read "
                f"(is it truncated or mis-named?): {error}"
            ) from None
        self.mpp = _mpp_from_properties(self._handle.properties)
        if self.mpp is not None and not (math.isfinite(self.mpp) and self.mpp > 0):
            self.mpp = None

    def __enter__(self) -> "Slide":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._handle.close()

    @property
    def name(self) -> str:
        return self.path.stem

    @property
    def dimensions(self) -> tuple[int, int]:
        """(width, height) at level 0."""
        return self._handle.dimensions

    @property
    def level_count(self) -> int:
        return self._handle.level_count

    @property
    def level_dimensions(self) -> tuple[tuple[int, int], ...]:
        return self._handle.level_dimensions

    @property
    def level_downsamples(self) -> tuple[float, ...]:
        return self._handle.level_downsamples

    @property
    def properties(self) -> dict[str, str]:
        return dict(self._handle.properties)

    @property
    def associated_images(self) -> dict:
        return dict(self._handle.associated_images)

    def best_level_for_downsample(self, downsample: float) -> int:
        """The coarsest level whose downsample does not exceed ``downsample``."""
        levels = [i for i, d in enumerate(self.level_downsamples) if d <= downsample + 1e-6]
        return max(levels) if levels else 0

    def read_region(self, x: int, y: int, level: int, size: tuple[int, int]) -> np.ndarray:
        """RGB uint8 array of ``size`` = (width, height) pixels at ``level``, top-left at level-0 (x, y)."""
        import openslide

        try:
            rgba = np.asarray(self._handle.read_region((int(x), int(y)), level, tuple(int(s) for s in size)))
        except (openslide.OpenSlideError, OSError) as error:
            raise SlideError(f"{self.path}: reading region ({x}, {y}) at level {level} failed: {error}") from None
        return _rgba_to_rgb(rgba)

    def thumbnail(self, max_size: int) -> np.ndarray:
        """RGB uint8 thumbnail whose longest side is at most ``max_size``."""
        import openslide

        try:
            image = self._handle.get_thumbnail((max_size, max_size))
        except (openslide.OpenSlideError, OSError) as error:
            raise SlideError(f"{self.path}: reading the thumbnail failed: {error}") from None
        return _rgba_to_rgb(np.asarray(image.convert("RGBA")))


def _rgba_to_rgb(rgba: np.ndarray) -> np.ndarray:
    """OpenSlide returns pre-multiplied RGBA; composite on white so empty areas look like glass."""
    if rgba.shape[-1] == 3:
        return np.ascontiguousarray(rgba)
    rgb = rgba[..., :3].astype(np.uint16)
    alpha = rgba[..., 3:4].astype(np.uint16)
    return (rgb + (255 - alpha)).clip(0, 255).astype(np.uint8)


def open_slide(path: str | Path) -> Slide:
    """Open any OpenSlide-readable slide (svs, tiff, ndpi, mrxs, ...) or plain image (png, jpg, tif)."""
    return Slide(path)
