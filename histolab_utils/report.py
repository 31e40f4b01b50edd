"""Metrics JSON per notebook, and the run summary built from them.

``reports/<profile>/metrics/<notebook>.json`` holds the notebook's own metrics plus a stamp:
profile, hardware, package versions, git commit and wall time, so every number can be traced
to the run that made it.
"""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from .profiles import current_profile
from .paths import atomic_path, atomic_write_text, project_root, reports_dir, results_dir

STAMPED_PACKAGES = ("histolab_utils", "torch", "diffusers", "accelerate", "torchmetrics", "numpy", "openslide-python")


def metrics_dir(profile: str | None = None) -> Path:
    return reports_dir() / (profile or current_profile()) / "metrics"


def package_versions(names: Iterable[str] = STAMPED_PACKAGES) -> dict[str, str | None]:
    versions = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def hardware() -> dict[str, Any]:
    """CPU and accelerator description for the stamp."""
    info: dict[str, Any] = {
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "processor": platform.processor() or None,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "gpu": None,
    }
    try:
        import torch

        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
            info["gpu_count"] = torch.cuda.device_count()
        info["torch_threads"] = torch.get_num_threads()
        from .engine.precision import cpu_in_words

        info["cpu"] = cpu_in_words()  # the processor in words: model, cores, bf16 kind (cards and README quote it)
    except ImportError:
        pass
    return info


def git_commit() -> str | None:
    """The checkout's commit, with ``-dirty`` when it has uncommitted changes (None outside git)."""
    try:
        root = project_root()
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return commit.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def to_jsonable(value: Any) -> Any:
    """Convert numpy / pandas / torch scalars and arrays into JSON types; NaN becomes None."""
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if hasattr(value, "to_dict") and callable(value.to_dict):  # pandas objects
        return to_jsonable(value.to_dict())
    if hasattr(value, "detach"):  # torch tensors
        value = value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        return to_jsonable(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"metric value of type {type(value).__name__} is not JSON-serialisable: {value!r}")


def save_metrics(
    notebook: str,
    metrics: Mapping[str, Any],
    *,
    profile: str | None = None,
    wall_time_s: float | None = None,
    headline: Iterable[str] = (),
) -> Path:
    """Write ``reports/<profile>/metrics/<notebook>.json`` (:func:`metrics_record`) atomically and return its path.

    ``headline`` names the metrics shown in the run summary; each must be a key of ``metrics``.
    """
    record = metrics_record(notebook, metrics, profile=profile, wall_time_s=wall_time_s, headline=headline)
    path = metrics_dir(record["profile"]) / f"{notebook}.json"
    atomic_write_text(path, json.dumps(record, indent=2, sort_keys=False) + "\n")
    return path


def metrics_record(notebook: str, metrics: Mapping[str, Any], *, profile: str | None = None,
                   wall_time_s: float | None = None, headline: Iterable[str] = ()) -> dict[str, Any]:
    """A metrics file's record: ``metrics`` stamped with the notebook, profile, time, commit, this machine's hardware,
    the data split's version, any config overrides and the package versions."""
    if not notebook or "/" in notebook or notebook.endswith(".ipynb"):
        raise ValueError(f"notebook must be a bare name like '00_data_tour', got {notebook!r}")
    headline = list(headline)
    missing = [k for k in headline if k not in metrics]
    if missing:
        raise KeyError(f"headline metrics {missing} are not in the metrics of {notebook}")
    from .data.datasets import SPLIT_VERSION

    profile = profile or current_profile()
    record = {
        "notebook": notebook,
        "profile": profile,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "wall_time_s": None if wall_time_s is None else round(float(wall_time_s), 2),
        "git_commit": git_commit(),
        "hardware": hardware(),
        "split_version": SPLIT_VERSION,
        "config_overrides": os.environ.get("HISTO_OVERRIDES") or None,
        "packages": package_versions(),
        "headline": headline,
        "metrics": to_jsonable(dict(metrics)),
    }
    return record


def figures_dir(profile: str | None = None) -> Path:
    return reports_dir() / (profile or current_profile()) / "figures"


def save_figure(notebook: str, name: str, image: np.ndarray, profile: str | None = None) -> Path:
    """Save a uint8 image (a sample grid) as ``reports/<profile>/figures/<notebook>-<name>.png``;
    ``make results`` publishes these beside the metrics."""
    from PIL import Image

    return _write_figure(notebook, name, profile,
                         lambda tmp: Image.fromarray(np.asarray(image, dtype=np.uint8)).save(tmp, optimize=True))


def save_plot(notebook: str, name: str, figure: Any, profile: str | None = None, dpi: int = 80) -> Path:
    """Save a matplotlib figure as ``reports/<profile>/figures/<notebook>-<name>.png``, the name ``make results``
    publishes beside the metrics (a figure saved under another name stays in ``reports/``). The file holds what the
    notebook shows: labels and legends outside the axes are kept (a tight bounding box, as the inline backend draws)."""
    return _write_figure(notebook, name, profile,
                         lambda tmp: figure.savefig(tmp, dpi=dpi, format="png", bbox_inches="tight"))


def _write_figure(notebook: str, name: str, profile: str | None, write) -> Path:
    """``write(tmp)`` a PNG aside, then rename it to ``reports/<profile>/figures/<notebook>-<name>.png``: the one
    name ``make results`` publishes, and never a half-written file."""
    path = figures_dir(profile) / f"{notebook}-{name}.png"
    with atomic_path(path, suffix=".png") as tmp:
        write(tmp)
    return path


def published_metrics(notebook: str, profile: str, *, this_split: bool = False) -> dict | None:
    """The committed metrics record of ``notebook`` in ``profile`` (``results/<profile>/<notebook>.json``),
    or None when that profile's results are not published. ``this_split``: None also when the record was made
    on an earlier split than today's, for a section that recomputes with today's regions (its tiles, its
    held-out crops) what that record measured."""
    from .data.datasets import SPLIT_VERSION

    path = results_dir(profile) / f"{notebook}.json"
    record = json.loads(path.read_text()) if path.is_file() else None
    if this_split and record is not None and record.get("split_version", 1) < SPLIT_VERSION:
        return None
    return record


# Metric keys that were renamed (old -> new): a record that still holds an old key is told to rename it.
RENAMED_METRICS = {"guidance": "guidance_scale", "profile_guidance": "profile_guidance_scale",
                   "mask_guidance": "mask_guidance_scale", "spade_guidance": "spade_guidance_scale"}


def old_metric_name(metrics: Mapping[str, Any], key: str) -> str | None:
    """The old name of metric ``key`` (:data:`RENAMED_METRICS`) when ``metrics`` holds that instead of ``key``."""
    if key in metrics:
        return None
    return next((old for old, new in RENAMED_METRICS.items() if new == key and old in metrics), None)


def chosen_setting(notebook: str, key: str, profile: str, default: Any, *, valid_since: int | None = None,
                   published_only: bool = False) -> Any:
    """A setting ``notebook`` chose on the validation region in ``profile`` (say, notebook 06's ``guidance_scale``),
    as its latest metrics record holds it: this machine's run (``reports/<profile>/metrics/``), else the published
    one (``results/<profile>/``), else ``default`` (the profile's value). A record made on an earlier split than
    today's is passed over (split 1 had no validation strip, and split 2's validation strip of ``hgsc_nest`` lies
    partly in split 3's held-out blocks); one that holds the setting under its old name (:data:`RENAMED_METRICS`)
    is an error saying which key to rename. ``valid_since``: the earliest split whose choice still holds, for a model
    whose data that split left unchanged (a stage's ``split_unchanged_since``; default today's). ``published_only``:
    the published record alone, for settings of the released model (this machine's run may be another model)."""
    from .data.datasets import SPLIT_VERSION

    local = () if published_only else (metrics_dir(profile) / f"{notebook}.json",)
    for path in (*local, results_dir(profile) / f"{notebook}.json"):
        if path.is_file():
            record = json.loads(path.read_text())
            old = old_metric_name(record["metrics"], key)
            if old is not None:
                raise ValueError(f"{path}: the metrics hold {old!r}, the old name of {key!r}: rename the key to "
                                 f"{key!r} (the value stays)")
            value = record["metrics"].get(key)
            if value is not None and record.get("split_version", 1) >= (valid_since or SPLIT_VERSION):
                return value
    return default


def _format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def headline_text(record: Mapping[str, Any]) -> str:
    metrics = record.get("metrics", {})
    return ", ".join(f"{k}={_format_value(metrics[k])}" for k in record.get("headline", []) if k in metrics)


def build_summary(results: Iterable[Mapping[str, Any]], profile: str) -> str:
    """Markdown summary of a run: one row per notebook (status, wall time, headline metrics).

    Each result has ``notebook``, ``status`` and ``wall_time_s`` (the runner's clock); headline
    metrics come from the notebook's metrics JSON when it wrote one.
    """
    from .engine.precision import cpu_in_words

    lines = [
        f"# Run summary ({profile} profile)",
        "",
        f"Generated {datetime.now(timezone.utc).isoformat(timespec='seconds')} at commit "
        f"`{git_commit() or 'unknown'}` on {hardware()['gpu'] or cpu_in_words()}.",
        "",
    ]
    if profile == "smoke":
        lines += ["Smoke-profile numbers check that the pipeline runs; they are not quality results.", ""]
    lines += ["| notebook | status | wall time (s) | headline metrics |", "|---|---|---|---|"]
    for result in results:
        path = metrics_dir(profile) / f"{result['notebook']}.json"
        headline = headline_text(json.loads(path.read_text())) if path.is_file() else "(no metrics written)"
        wall = result.get("wall_time_s")
        wall_text = "-" if wall is None else f"{wall:.1f}"
        lines.append(f"| {result['notebook']} | {result['status']} | {wall_text} | {headline} |")
    return "\n".join(lines) + "\n"


# -- score tables in a metrics record ----------------------------------------------------------------------------
def table_records(frame) -> dict[str, dict[str, float | None]]:
    """A score table (a DataFrame of numbers) as a metrics record keeps it: ``{str(row): {column: float}}``, with
    None where a cell is NaN (a score that is not defined for that set)."""
    import pandas as pd

    return {str(name): {str(k): (None if pd.isna(v) else float(v)) for k, v in row.items()}
            for name, row in frame.iterrows()}


def row_values(frame, name: str) -> dict[str, float]:
    """Row ``name`` of a score table as ``{column: float}``, its NaN cells left out; a row the table lacks is a
    KeyError that lists the rows it has."""
    import pandas as pd

    if name not in frame.index:
        raise KeyError(f"the score table has no row {name!r}; its rows are {[str(i) for i in frame.index]}")
    return {str(k): float(v) for k, v in frame.loc[name].items() if pd.notna(v)}
