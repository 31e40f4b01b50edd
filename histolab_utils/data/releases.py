"""Released checkpoints: models the ``cpu`` profile trained, committed so that anyone can sample them.

Each lives in ``data/pretrained/<name>/`` as a diffusers folder (fp16 safetensors) with a model card
(``README.md``), and ``data/pretrained/manifest.json`` pins the sha256 of every file, so
``python -m histolab_utils.data verify`` catches a changed byte. Plain diffusers loads one in a line::

    from diffusers import DDPMPipeline
    from histolab_utils.data import pretrained
    pipeline = DDPMPipeline.from_pretrained(pretrained(name))  # a DDPM of notebook 03: see pretrained_table()

Nothing here downloads anything: the folders ship with the repository.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Iterable

from ..paths import atomic_write_text, data_dir
from .store import DataError, Problem, sha256_of

MANIFEST = "manifest.json"
MAX_FOLDER_BYTES = 25 * 2**20  # one released model
MAX_TOTAL_BYTES = 150 * 2**20  # all of them together


def pretrained_dir(root: Path | None = None) -> Path:
    """``data/pretrained`` (under ``HISTO_DATA_DIR`` when set)."""
    return (Path(root) if root else data_dir()) / "pretrained"


def read_manifest(root: Path | None = None) -> dict[str, dict]:
    """``{name: {"files": {relative path: sha256}, "bytes": total}}``; empty when nothing is released."""
    path = pretrained_dir(root) / MANIFEST
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise DataError(f"{path} is not valid JSON ({error}); restore it with git checkout") from None


def pretrained(name: str, root: Path | None = None) -> Path:
    """The folder of the released model ``name``, for ``from_pretrained``. Unknown names list the released ones."""
    manifest = read_manifest(root)
    if name not in manifest:
        released = ", ".join(sorted(manifest)) or "none"
        raise DataError(f"no released model {name!r} in {pretrained_dir(root) / MANIFEST} (released: {released})")
    folder = pretrained_dir(root) / name
    if not folder.is_dir():
        raise DataError(f"released model {name!r} is in the manifest but {folder} is missing; "
                        "restore it with git checkout")
    return folder


def _folder_files(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): sha256_of(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def verify_pretrained(names: Iterable[str] | None = None, root: Path | None = None) -> list[Problem]:
    """Re-hash every file of the released models (default: all) against the manifest: changed, missing
    and unlisted files are problems."""
    manifest = read_manifest(root)
    problems = []
    for name in sorted(manifest if names is None else names):
        if name not in manifest:
            problems.append(Problem(pretrained_dir(root) / name,
                                    f"not a released model (released: {', '.join(sorted(manifest)) or 'none'})"))
            continue
        folder = pretrained_dir(root) / name
        found = _folder_files(folder) if folder.is_dir() else {}
        for file, digest in manifest[name]["files"].items():
            if file not in found:
                problems.append(Problem(folder / file, f"missing file of released model {name!r}"))
            elif found[file] != digest:
                problems.append(Problem(folder / file, f"changed: sha256 {found[file]} != pinned {digest}"))
        for file in sorted(set(found) - set(manifest[name]["files"])):
            problems.append(Problem(folder / file, f"not in {MANIFEST} (released model {name!r})"))
    return problems


def pretrained_table(root: Path | None = None):
    """A pandas table of the released models: name, files, size, and the first line of each card."""
    import pandas as pd

    rows = []
    for name, entry in sorted(read_manifest(root).items()):
        card = pretrained_dir(root) / name / "README.md"
        summary = next((line.lstrip("# ").strip() for line in card.read_text().splitlines() if line.strip()), "") \
            if card.is_file() else ""
        rows.append({"model": name, "files": len(entry["files"]), "MB": round(entry["bytes"] / 2**20, 2),
                     "card": summary})
    return pd.DataFrame(rows, columns=["model", "files", "MB", "card"])


def _diffusers_model_class(config: Path):
    """The diffusers model class a ``config.json`` names, or None (a scheduler, or not diffusers). A class of ours
    (``VectorConditionedUNet2DModel``, ``SPADEUNet``) is found through the pipeline's ``model_index.json``, which
    names the module of each component."""
    import importlib

    import diffusers

    class_name = json.loads(config.read_text()).get("_class_name") or ""
    model_class = getattr(diffusers, class_name, None)
    index = config.parent.parent / "model_index.json"
    if model_class is None and index.is_file():
        library, name = (json.loads(index.read_text()).get(config.parent.name) or [None, None])[:2]
        if name == class_name and library:
            try:
                model_class = getattr(importlib.import_module(library), name, None)
            except ImportError:
                model_class = None
    return model_class if isinstance(model_class, type) and issubclass(model_class, diffusers.ModelMixin) else None


def _copy_fp16(source: Path, target: Path) -> None:
    """Copy a saved diffusers pipeline (``model_index.json``, any pipeline class, ours included) or single model
    (``config.json``) to ``target`` with every model's weights re-saved as fp16 safetensors; schedulers and our
    JSON records are copied as they are."""
    import torch

    source = Path(source)
    if (source / "model_index.json").is_file():
        folders = [p for p in sorted(source.iterdir()) if (p / "config.json").is_file()]
    elif (source / "config.json").is_file():
        if _diffusers_model_class(source / "config.json") is None:
            class_name = json.loads((source / "config.json").read_text()).get("_class_name")
            raise DataError(f"{source / 'config.json'}: _class_name {class_name!r} is not a diffusers model class")
        folders = [source]
    else:
        raise DataError(f"{source} is neither a diffusers pipeline (model_index.json) nor a model (config.json)")
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("*.safetensors", "*.bin"))
    for folder in folders:
        model_class = _diffusers_model_class(folder / "config.json")
        if model_class is None and (any(folder.glob("*.safetensors")) or any(folder.glob("*.bin"))):
            shutil.rmtree(target)  # never release a model without its weights
            raise DataError(f"{folder}: holds weights, but its _class_name names no diffusers model class, nor one "
                            f"that model_index.json's module provides")
        if model_class is not None:
            model = model_class.from_pretrained(folder, torch_dtype=torch.float16)
            model.save_pretrained(target / folder.relative_to(source), safe_serialization=True)


def _write_manifest(manifest: dict, root: Path | None) -> None:
    atomic_write_text(pretrained_dir(root) / MANIFEST, json.dumps(dict(sorted(manifest.items())), indent=2) + "\n")


def release_pipeline(source: Path, name: str, card: str, root: Path | None = None) -> Path:
    """Copy a saved diffusers pipeline (ours too, such as the class-conditional LDM) or a single diffusers model
    (a ``VQModel``) into ``data/pretrained/<name>`` with fp16 safetensors and the model ``card`` as README.md, and
    pin its files in the manifest. Written aside and renamed, so a failure leaves the last release intact; refused
    when over the size limits."""
    target = pretrained_dir(root) / name
    staging = target.with_name(f".{name}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    _copy_fp16(source, staging)
    (staging / "README.md").write_text(card)
    files = _folder_files(staging)
    size = sum((staging / f).stat().st_size for f in files)
    others = sum(entry["bytes"] for other, entry in read_manifest(root).items() if other != name)
    if size > MAX_FOLDER_BYTES or size + others > MAX_TOTAL_BYTES:
        shutil.rmtree(staging)
        raise DataError(f"release {name!r} is {size / 2**20:.1f} MB ({(size + others) / 2**20:.1f} MB with the "
                        f"others): the limits are {MAX_FOLDER_BYTES / 2**20:.0f} MB each and "
                        f"{MAX_TOTAL_BYTES / 2**20:.0f} MB together")
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    manifest = read_manifest(root)
    manifest[name] = {"files": files, "bytes": size}
    _write_manifest(manifest, root)
    return target


def rewrite_card(name: str, card: str, root: Path | None = None) -> Path:
    """Replace the model card (README.md) of the release ``name`` and re-pin it in the manifest, leaving its weights
    untouched: a card regenerated from its published record."""
    folder = pretrained_dir(root) / name
    manifest = read_manifest(root)
    if name not in manifest or not folder.is_dir():
        raise DataError(f"{folder}: no release {name!r} to rewrite the card of (released: {sorted(manifest)})")
    readme = folder / "README.md"
    atomic_write_text(readme, card)
    files = {**manifest[name]["files"], "README.md": sha256_of(readme)}
    manifest[name] = {"files": files, "bytes": sum((folder / f).stat().st_size for f in files)}
    _write_manifest(manifest, root)
    return readme
