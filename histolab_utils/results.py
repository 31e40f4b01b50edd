"""Real results of a profile, published: ``make results PROFILE=cpu ONLY="03"``.

    python -m histolab_utils.results --profile cpu --only 03 [--no-train] [--no-release]

For each named notebook, in order:

1. **Train** the models the notebook needs with the background-safe CLI (``python -m histolab_utils.train ...
   --resume``), one process per model, so a stopped run continues from its last checkpoint when the command is
   run again, in this session or a later one. The notebook then reads the finished runs back.
2. **Execute** the notebook in that profile (``histolab_utils.runner``).
3. **Publish** into ``results/<profile>/``: the metrics JSON (profile, hardware, n, split, steps, wall time,
   commit), the sample-grid PNGs the notebook saved (each under 1 MB) and the executed notebook (under 3 MB).
4. **Release** (``cpu`` profile): each model the notebook's stages trained (``histolab_utils/stages/``) as a diffusers
   folder with fp16 safetensors and its model card under ``data/pretrained/``, pinned in its manifest.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Sequence

from .config import load_config
from .paths import atomic_path, project_root, reports_dir, results_dir
from .profiles import PROFILES, profile_name
from .report import git_commit
from .stages import stage_of_notebook
from .stages.base import RELEASED_PROFILES

MAX_FIGURE_BYTES = 1 * 2**20
MAX_NOTEBOOK_BYTES = 3 * 2**20


def training_commands(notebook: str, spec: str) -> list[list[str]]:
    """The CLI commands that train what ``notebook`` needs in profile ``spec``: its stages' (none: it trains itself)."""
    config = load_config(spec)
    return [command for stage in stage_of_notebook(notebook) for command in stage.training_commands(spec, config)]


def release(notebook: str, profile: str) -> list:
    """Release the models of ``notebook``'s stages in ``profile``, each with its card (``data/pretrained/``)."""
    return [folder for stage in stage_of_notebook(notebook) if stage.released for folder in stage.release(profile)]


def rewrite_cards(notebook: str, profile: str) -> list[Path]:
    """Regenerate the cards of the models ``notebook``'s stages released in ``profile`` from its published record."""
    return [card for stage in stage_of_notebook(notebook) if stage.released for card in stage.rewrite_cards(profile)]


def train(notebook: str, spec: str) -> None:
    """Run the notebook's training commands one after another; the first failure stops with its command."""
    for command in training_commands(notebook, spec):
        print(">>", " ".join(command[1:]), flush=True)
        if subprocess.run(command, cwd=project_root()).returncode != 0:
            raise RuntimeError(f"training failed: {' '.join(command[1:])}")


def compact_outputs(path: Path, destination: Path, max_png_bytes: int = 120_000, quality: int = 85) -> int:
    """Write the executed notebook at ``path`` to ``destination`` with every embedded PNG larger than
    ``max_png_bytes`` re-encoded as a JPEG (sample grids and noise are photographs, not line art: PNG
    cannot compress them). Returns the number of images re-encoded."""
    import base64
    import io

    import nbformat
    from PIL import Image

    nb = nbformat.read(path, as_version=4)
    changed = 0
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            png = data.get("image/png")
            if not png or len(png) * 3 // 4 <= max_png_bytes:
                continue
            image = Image.open(io.BytesIO(base64.b64decode(png))).convert("RGB")
            buffer = io.BytesIO()
            image.save(buffer, format="JPEG", quality=quality, optimize=True)
            del data["image/png"]
            data["image/jpeg"] = base64.b64encode(buffer.getvalue()).decode("ascii")
            changed += 1
    with atomic_path(destination, suffix=".ipynb") as tmp:
        nbformat.write(nb, tmp)
    return changed


def publish(notebook: str, profile: str) -> list[Path]:
    """Copy the notebook's metrics, figures and executed copy from ``reports/`` into ``results/<profile>/``,
    refusing files over the size limits (nothing is half-copied: each file is written aside, then renamed)."""
    source = reports_dir() / profile
    metrics = source / "metrics" / f"{notebook}.json"
    executed = source / "executed" / f"{notebook}.ipynb"
    for path in (metrics, executed):
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: run the notebook in the {profile} profile first")
    figures = sorted((source / "figures").glob(f"{notebook}-*.png"))
    compact = source / "executed" / f".{notebook}.compact.ipynb"
    compact_outputs(executed, compact)
    limits = [(f, MAX_FIGURE_BYTES) for f in figures] + [(compact, MAX_NOTEBOOK_BYTES)]
    for path, limit in limits:
        if path.stat().st_size > limit:
            raise ValueError(f"{path} is {path.stat().st_size / 2**20:.1f} MB, over the {limit / 2**20:.0f} MB "
                             f"limit of results/; make the notebook's outputs smaller")
    target = results_dir(profile)
    written = []
    for path, name in ((metrics, metrics.name), (compact, executed.name), *((f, f.name) for f in figures)):
        destination = target / name
        with atomic_path(destination, suffix=path.suffix) as tmp:
            shutil.copyfile(path, tmp)
        destination.chmod(0o644)
        written.append(destination)
    compact.unlink()
    return written


def main(argv: Sequence[str] | None = None) -> int:
    from . import runner

    parser = argparse.ArgumentParser(prog="python -m histolab_utils.results", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", required=True, help=f"one of {', '.join(PROFILES)} or a profile file")
    parser.add_argument("--only", nargs="+", required=True, help="notebooks whose names start with these, e.g. 03")
    parser.add_argument("--no-train", action="store_true", help="skip the CLI training (the notebooks train)")
    parser.add_argument("--no-release", action="store_true", help="do not write data/pretrained/")
    parser.add_argument("--timeout", type=int, default=4 * 3600, help="seconds allowed per notebook cell")
    parser.add_argument("--cards-only", action="store_true",
                        help="only regenerate the released models' cards from their published records")
    parser.add_argument("--allow-dirty", action="store_true",
                        help="publish from a checkout with uncommitted changes (records and cards then say -dirty)")
    args = parser.parse_args(argv)
    profile = profile_name(args.profile)
    if profile == "smoke":
        parser.error("smoke numbers are never results: use --profile cpu or full")
    notebooks = runner.numbered_notebooks(project_root() / "notebooks", args.only)
    if args.cards_only:
        for path in notebooks:
            for card in rewrite_cards(path.stem, profile):
                print(f"rewrote {card.relative_to(project_root())}")
        return 0
    if (git_commit() or "").endswith("-dirty") and not args.allow_dirty:
        parser.error("the checkout has uncommitted changes, so the results could not be traced to a commit: commit "
                     "them (or run from a clean worktree), or pass --allow-dirty")
    for path in notebooks:
        if not args.no_train:
            train(path.stem, args.profile)
        outcome = runner.run(args.profile, path.parent, [path.stem], args.timeout)
        if not outcome or outcome[-1].status != "ok":
            return 1
        for written in publish(path.stem, profile):
            print(f"published {written.relative_to(project_root())}")
        if profile in RELEASED_PROFILES and not args.no_release:
            for folder in release(path.stem, profile):
                print(f"released {folder.relative_to(project_root())}")
    return 0



if __name__ == "__main__":
    sys.exit(main())
