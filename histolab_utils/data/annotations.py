"""Polygon annotations: QuPath GeoJSON or GeoParquet in, label and instance rasters out (used by
the tiler and by the nuclei-mask tiles, so it lives with the data).

Coordinates are level-0 pixels of the slide (QuPath's export convention). Classes get label
ids 1..K in the order given (or sorted by name); 0 is unannotated.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd


class AnnotationError(ValueError):
    """Unreadable, invalid or inconsistent annotations; the message names the file."""


@dataclass(frozen=True)
class Annotations:
    """Validated polygons (``geometry`` as shapely objects, ``class_name``) and their classes."""

    table: pd.DataFrame
    classes: tuple[str, ...]
    source: str = ""
    repaired: int = 0  # polygons fixed by ``shapely.make_valid`` (``repair=True``)

    def label_of(self, class_name: str) -> int:
        """Label id (1-based) of a class, with a clear error for an unknown one."""
        if class_name not in self.classes:
            raise AnnotationError(f"class {class_name!r} is not in the annotations of {self.source}; "
                                  f"classes there: {list(self.classes)}")
        return self.classes.index(class_name) + 1

    def intersecting(self, box: tuple[float, float, float, float]) -> pd.DataFrame:
        """The polygons that intersect a level-0 box (x0, y0, x1, y1)."""
        import shapely

        hits = self._tree.query(shapely.box(*box), predicate="intersects")
        return self.table.iloc[np.sort(hits)]

    @property
    def _tree(self):
        import shapely

        tree = self.__dict__.get("_cached_tree")
        if tree is None:
            tree = shapely.STRtree(self.table["geometry"].to_numpy())
            object.__setattr__(self, "_cached_tree", tree)
        return tree


def _class_of(properties: dict | None, where: str) -> str:
    properties = properties or {}
    classification = properties.get("classification")
    if isinstance(classification, dict) and classification.get("name"):
        return str(classification["name"])
    if isinstance(classification, str) and classification:
        return classification
    if properties.get("class_name"):
        return str(properties["class_name"])
    raise AnnotationError(f"{where} has no class (expected properties.classification.name as QuPath exports)")


def _read_geojson(path: Path) -> pd.DataFrame:
    import shapely.geometry

    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise AnnotationError(f"{path} is not readable GeoJSON: {error}") from None
    if isinstance(data, dict) and data.get("type") == "FeatureCollection":
        features = data.get("features", [])
    elif isinstance(data, dict) and data.get("type") == "Feature":
        features = [data]
    elif isinstance(data, list):
        features = data
    else:
        raise AnnotationError(f"{path}: expected a GeoJSON FeatureCollection, Feature or list of Features")
    rows = []
    for index, feature in enumerate(features):
        where = f"{path} feature {index}"
        geometry = (feature or {}).get("geometry")
        if not geometry or geometry.get("type") not in ("Polygon", "MultiPolygon"):
            kind = geometry.get("type") if isinstance(geometry, dict) else None
            raise AnnotationError(f"{where}: geometry type {kind!r} is not a Polygon or MultiPolygon")
        try:
            shape = shapely.geometry.shape(geometry)
        except (ValueError, TypeError, AttributeError, IndexError) as error:
            raise AnnotationError(f"{where}: malformed geometry: {error}") from None
        rows.append({"geometry": shape, "class_name": _class_of(feature.get("properties"), where)})
    return pd.DataFrame(rows, columns=["geometry", "class_name"])


def _read_geoparquet(path: Path) -> pd.DataFrame:
    import pyarrow.parquet as pq
    import shapely

    try:
        table = pq.read_table(path).to_pandas()
    except Exception as error:  # pyarrow raises several unrelated types for a bad file
        raise AnnotationError(f"{path} is not a readable Parquet file: {error}") from None
    for column in ("geometry", "class_name"):
        if column not in table:
            raise AnnotationError(f"{path} has no {column!r} column (columns: {list(table.columns)})")
    try:
        geometry = shapely.from_wkb(table["geometry"].to_numpy())
    except Exception as error:
        raise AnnotationError(f"{path}: geometry column is not WKB: {error}") from None
    return pd.DataFrame({"geometry": geometry, "class_name": table["class_name"].astype(str).to_numpy()})


def read_annotations(path: str | Path, classes: Sequence[str] | None = None, *, repair: bool = False) -> Annotations:
    """Read QuPath GeoJSON (``.geojson``/``.json``) or GeoParquet (``.parquet``) polygons.

    ``classes`` fixes the label order and rejects any other class; by default the classes
    found are sorted by name. Invalid geometry (self-intersections) is an error naming the file
    and the row, unless ``repair``: then ``shapely.make_valid`` fixes it (keeping the polygonal
    parts), ``Annotations.repaired`` counts the polygons it changed and a warning says how many.
    Empty geometry is always an error.
    """
    import shapely

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"annotation file does not exist: {path}")
    suffix = path.suffix.lower()
    if suffix in (".geojson", ".json"):
        table = _read_geojson(path)
    elif suffix in (".parquet", ".geoparquet"):
        table = _read_geoparquet(path)
    else:
        raise AnnotationError(f"{path}: unsupported annotation format {suffix!r} (use .geojson or .parquet)")
    geometry = table["geometry"].to_numpy()
    kinds = shapely.get_type_id(geometry)
    not_polygon = np.flatnonzero(~np.isin(kinds, (3, 6)))  # Polygon, MultiPolygon
    if len(not_polygon):
        raise AnnotationError(f"{path}: row {not_polygon[0]} is not a Polygon or MultiPolygon")
    repaired = 0
    if repair:
        geometry, repaired = _repaired(geometry)
        table = table.assign(geometry=geometry)
        if repaired:
            warnings.warn(f"{path}: repaired {repaired} invalid polygon(s) with shapely.make_valid", stacklevel=2)
    invalid = np.flatnonzero(~shapely.is_valid(geometry) | shapely.is_empty(geometry))
    if len(invalid):
        i = int(invalid[0])
        reason = "empty" if shapely.is_empty(geometry[i]) else shapely.is_valid_reason(geometry[i])
        hint = "" if repair else "; read_annotations(..., repair=True) repairs it with shapely.make_valid"
        raise AnnotationError(f"{path}: row {i} ({table['class_name'].iloc[i]}) has invalid geometry: "
                              f"{reason} ({len(invalid)} invalid in all){hint}")
    found = sorted(set(table["class_name"]))
    if classes is None:
        classes = found
    else:
        unknown = sorted(set(found) - set(classes))
        if unknown:
            raise AnnotationError(f"{path}: unknown classes {unknown}; allowed: {list(classes)}")
    return Annotations(table=table.reset_index(drop=True), classes=tuple(classes), source=str(path), repaired=repaired)


def _repaired(geometry: np.ndarray) -> tuple[np.ndarray, int]:
    """``make_valid`` on the invalid, non-empty polygons, keeping only their polygonal parts."""
    import shapely

    broken = np.flatnonzero(~shapely.is_valid(geometry) & ~shapely.is_empty(geometry))
    if not len(broken):
        return geometry, 0
    geometry = geometry.copy()
    for i in broken:
        fixed = shapely.make_valid(geometry[i])
        parts = [g for g in getattr(fixed, "geoms", [fixed]) if shapely.get_type_id(g) in (3, 6)]
        polygons = [p for g in parts for p in getattr(g, "geoms", [g])]
        geometry[i] = shapely.multipolygons(polygons) if len(polygons) > 1 else (
            polygons[0] if polygons else shapely.Polygon())
    return geometry, len(broken)


def rasterize(
    annotations: Annotations, box: tuple[float, float, float, float], shape: tuple[int, int]
) -> dict[str, np.ndarray]:
    """Label, instance and type rasters of a level-0 ``box`` (x0, y0, x1, y1) at ``shape`` (h, w).

    ``label`` holds class ids (0 = none), ``instance`` holds 1 + the polygon's row number, and
    ``type`` is the class id of each instance: for nuclei polygons it equals ``label``. Later
    rows are drawn over earlier ones; holes are cut out.
    """
    from PIL import Image, ImageDraw

    x0, y0, x1, y1 = box
    height, width = shape
    sx, sy = width / (x1 - x0), height / (y1 - y0)
    label = Image.new("I", (width, height), 0)
    instance = Image.new("I", (width, height), 0)
    draw_label, draw_instance = ImageDraw.Draw(label), ImageDraw.Draw(instance)
    for row, geometry, name in zip(*_rows(annotations.intersecting(box))):
        class_id = annotations.label_of(name)
        for polygon in getattr(geometry, "geoms", [geometry]):
            exterior = [((px - x0) * sx, (py - y0) * sy) for px, py in polygon.exterior.coords]
            draw_label.polygon(exterior, fill=class_id)
            draw_instance.polygon(exterior, fill=int(row) + 1)
            for ring in polygon.interiors:
                hole = [((px - x0) * sx, (py - y0) * sy) for px, py in ring.coords]
                draw_label.polygon(hole, fill=0)
                draw_instance.polygon(hole, fill=0)
    label_array = np.asarray(label, dtype=np.int32)
    return {"label": label_array, "instance": np.asarray(instance, dtype=np.int32), "type": label_array.copy()}


def _rows(table: pd.DataFrame):
    return table.index.to_numpy(), table["geometry"].to_numpy(), table["class_name"].to_numpy()
