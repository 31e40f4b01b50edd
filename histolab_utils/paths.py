"""Where the project keeps its data and reports.

Notebooks run with ``notebooks/`` as the working directory and scripts from the repo root,
so relative defaults are resolved against the project root, not the current directory.
"""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

_PACKAGE_DIR = Path(__file__).resolve().parent


def _is_project_root(path: Path) -> bool:
    return (path / "pyproject.toml").is_file() and (path / "histolab_utils").is_dir()


def project_root() -> Path:
    """The repository root: ``HISTO_ROOT``, else the first parent of the cwd that holds the
    project, else the checkout this package was installed from, else the cwd."""
    if env := os.environ.get("HISTO_ROOT"):
        return Path(env).expanduser().resolve()
    cwd = Path.cwd().resolve()
    for candidate in (cwd, *cwd.parents):
        if _is_project_root(candidate):
            return candidate
    if _is_project_root(_PACKAGE_DIR.parent):
        return _PACKAGE_DIR.parent
    return cwd


def _resolve(env_var: str, default: str) -> Path:
    value = os.environ.get(env_var)
    path = Path(value).expanduser() if value else Path(default)
    return path if path.is_absolute() else (project_root() / path).resolve()


def data_dir() -> Path:
    """Data root: ``HISTO_DATA_DIR`` (default ``data/`` in the project root)."""
    return _resolve("HISTO_DATA_DIR", "data")


def reports_dir() -> Path:
    """Reports root: ``HISTO_REPORTS_DIR`` (default ``reports/`` in the project root)."""
    return _resolve("HISTO_REPORTS_DIR", "reports")


def results_dir(profile: str | None = None) -> Path:
    """Committed results: ``results/`` in the project root, one folder per profile when given."""
    root = project_root() / "results"
    return root / profile if profile else root


def runs_dir(profile: str | None = None) -> Path:
    """Trained models: ``HISTO_RUNS_DIR`` (default ``runs/``), one folder per profile when given."""
    root = _resolve("HISTO_RUNS_DIR", "runs")
    return root / profile if profile else root


@contextmanager
def atomic_path(target: Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it onto ``target`` only on success.

    Readers never see a half-written file: either the old file or the complete new one.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix or ".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(target: Path, text: str) -> None:
    """Write ``text`` to ``target`` through a temporary file and a rename."""
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")
