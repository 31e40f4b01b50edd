"""Execute the numbered notebooks in order and summarise the run.

    python -m histolab_utils.runner [--profile smoke|cpu|full|FILE.toml] [--notebooks DIR] [--only 00 03] [--timeout S]

Writes ``reports/<profile>/executed/<notebook>.ipynb`` (an executed copy, also of a failing
notebook so that its error can be read), expects each notebook to write
``reports/<profile>/metrics/<notebook>.json``, and writes ``reports/<profile>/summary.md``.
The first failing notebook stops the run with its name and the failing cell; exit status 1.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from .profiles import PROFILE_ENV, PROFILES, ProfileError, profile_name, profile_path
from .paths import atomic_path, atomic_write_text, project_root, reports_dir
from .report import build_summary, metrics_dir
from .widgets import HEADLESS_ENV

NUMBERED = re.compile(r"^\d{2}_.+\.ipynb$")


@dataclass
class NotebookResult:
    notebook: str
    status: str  # "ok" or "failed"
    wall_time_s: float
    error: str | None = None


def numbered_notebooks(folder: Path, only: Sequence[str] = ()) -> list[Path]:
    """The ``NN_name.ipynb`` files of ``folder`` in order, optionally those whose name starts
    with one of ``only`` (e.g. ``["00", "03_ddpm"]``)."""
    if not folder.is_dir():
        raise FileNotFoundError(f"notebook folder {folder} does not exist")
    notebooks = sorted(p for p in folder.iterdir() if NUMBERED.match(p.name))
    if only:
        notebooks = [p for p in notebooks if any(p.stem.startswith(prefix) for prefix in only)]
        if not notebooks:
            raise ValueError(f"no notebook in {folder} starts with any of {list(only)}")
    return notebooks


def describe_failure(error: Exception) -> str:
    """Name the failing cell: nbclient's CellExecutionError carries the cell source and traceback."""
    text = str(error)
    # nbclient's message starts with the failing cell's source between dashed lines.
    return text if len(text) < 4000 else text[:2000] + "\n...\n" + text[-1500:]


def execute_notebook(path: Path, executed_path: Path, profile: str, timeout: int) -> NotebookResult:
    """Run one notebook in a fresh kernel with ``cwd`` = its folder, ``HISTO_PROFILE`` set and
    ``HISTO_HEADLESS=1`` (no widgets are built: see ``histolab_utils.widgets``)."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    from traitlets.config import Config

    nb = nbformat.read(path, as_version=4)
    started = time.perf_counter()
    error: str | None = None
    # The kernel talks to us over local Unix sockets in a private folder rather than TCP on
    # localhost, which recent ipykernels warn about ("running over TCP without encryption").
    with tempfile.TemporaryDirectory(prefix="histolab-kernel-") as sockets:
        transport = Config({"KernelManager": {"transport": "ipc", "ip": os.path.join(sockets, "kernel")}})
        client = NotebookClient(nb, timeout=timeout, kernel_name="python3", config=transport,
                                resources={"metadata": {"path": str(path.parent)}})
        try:
            client.execute(env={**os.environ, PROFILE_ENV: profile, HEADLESS_ENV: "1"})
        except CellExecutionError as exc:
            error = describe_failure(exc)
        except Exception as exc:  # a dead kernel or a timeout: still report which notebook
            error = f"{type(exc).__name__}: {exc}"
    wall = time.perf_counter() - started
    with atomic_path(executed_path, suffix=".ipynb") as tmp:
        nbformat.write(nb, tmp)
    return NotebookResult(path.stem, "failed" if error else "ok", wall, error)


def run(spec: str, notebook_dir: Path, only: Sequence[str] = (), timeout: int = 900) -> list[NotebookResult]:
    """Execute the notebooks one after another in profile ``spec`` (a name or a TOML file), stopping at
    the first failure."""
    notebooks = numbered_notebooks(notebook_dir, only)
    profile = profile_name(spec)
    # the kernels run in the notebook folder: give them a file profile as an absolute path
    kernel_spec = spec if spec in PROFILES else str(profile_path(spec))
    out = reports_dir() / profile
    results: list[NotebookResult] = []
    print(f"Running {len(notebooks)} notebook(s) in the {profile} profile; reports in {out}", flush=True)
    for index, path in enumerate(notebooks, start=1):
        print(f"[{index}/{len(notebooks)}] {path.name} ...", end=" ", flush=True)
        # A stale metrics file from an earlier run must not pass for this run's output.
        (metrics_dir(profile) / f"{path.stem}.json").unlink(missing_ok=True)
        result = execute_notebook(path, out / "executed" / path.name, kernel_spec, timeout)
        results.append(result)
        print(f"{result.status} ({result.wall_time_s:.1f} s)", flush=True)
        if result.error:
            print(f"\nNotebook {path.name} failed; executed copy: {out / 'executed' / path.name}\n"
                  f"{result.error}", file=sys.stderr, flush=True)
            break
    atomic_write_text(out / "summary.md", build_summary([r.__dict__ for r in results], profile))
    print(f"Summary: {out / 'summary.md'}", flush=True)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m histolab_utils.runner", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default=os.environ.get(PROFILE_ENV, "smoke"), metavar="NAME_OR_TOML",
                        help=f"one of {', '.join(PROFILES)} or a profile file (default: HISTO_PROFILE, else smoke)")
    parser.add_argument("--notebooks", type=Path, default=None, help="folder of notebooks (default: notebooks/)")
    parser.add_argument("--only", nargs="*", default=(), help="run only notebooks whose name starts with these")
    parser.add_argument("--timeout", type=int, default=900, help="seconds allowed per cell")
    args = parser.parse_args(argv)
    folder = args.notebooks or project_root() / "notebooks"
    try:
        results = run(args.profile, folder, args.only, args.timeout)
    except (FileNotFoundError, ValueError, ProfileError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0 if results and all(r.status == "ok" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
