"""Run profiles as files: which one is active, where its file is, and reading it.

A profile is a TOML file. The shipped ones sit beside this module: ``smoke`` (the default: a 2-core
CPU, minutes per notebook, used by CI), ``cpu`` (real results on a 2-core CPU, about half an hour per
model) and ``full`` (one GPU). ``HISTO_PROFILE`` takes one of those names or the path of a
researcher's own file, which may start from a shipped profile with ``extends = "cpu"`` and change a
few keys. ``histolab_utils.config`` turns what is read here into the typed, frozen dataclasses.

This module reads files only; it never imports ``config`` (which imports ``report``, which needs the
active profile's name), so there is no import loop.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

PROFILE_ENV = "HISTO_PROFILE"
PROFILE_DIR = Path(__file__).resolve().parent
PROFILES = ("smoke", "cpu", "full")  # the shipped files, smallest first


class ProfileError(ValueError):
    """A profile file is missing, unreadable or wrong; the message names the file and the key."""


def _looks_like_path(spec: str) -> bool:
    return spec.endswith(".toml") or "/" in spec or os.sep in spec


def profile_path(spec: str, relative_to: Path | None = None) -> Path:
    """The file of ``spec``: a shipped profile's name, or a path to a ``.toml`` file (relative paths
    against ``relative_to``, the folder of the file that names it, else the working directory)."""
    if spec in PROFILES:
        return PROFILE_DIR / f"{spec}.toml"
    if not _looks_like_path(spec):
        raise ProfileError(f"unknown profile {spec!r}; use one of {PROFILES} or the path of a .toml file")
    path = Path(spec).expanduser()
    if not path.is_absolute() and relative_to is not None:
        path = relative_to / path
    if not path.is_file():
        raise ProfileError(f"profile file {path} does not exist")
    return path.resolve()


def profile_name(spec: str) -> str:
    """The name runs and reports are filed under: a shipped profile's name, or its file's stem."""
    return spec if spec in PROFILES else profile_path(spec).stem


def current_spec() -> str:
    """What ``HISTO_PROFILE`` names (``smoke`` when unset), checked to be a profile or an existing file."""
    raw = os.environ.get(PROFILE_ENV, "smoke").strip()
    spec = raw.lower() if raw.lower() in PROFILES else raw or "smoke"
    try:
        profile_path(spec)
    except ProfileError as error:
        raise ProfileError(f"{PROFILE_ENV}={raw!r}: {error}") from None
    return spec


def current_profile() -> str:
    """The name of the profile ``HISTO_PROFILE`` names (``smoke`` when unset)."""
    return profile_name(current_spec())


def read_profile(spec: str, relative_to: Path | None = None,
                 _chain: tuple[Path, ...] = ()) -> tuple[dict[str, Any], dict[tuple[str, ...], Path]]:
    """The merged tables of ``spec`` and the profiles it ``extends``, and for every key the file that set it.

    A file's tables replace the keys they name in its parent's tables, key by key; everything else is
    inherited. Returns ``(data, sources)`` with ``sources[("ddpm", "train_steps")]`` = the file that set it.
    """
    path = profile_path(spec, relative_to)
    if path in _chain:
        raise ProfileError(f"profile files extend each other in a loop: {' -> '.join(map(str, (*_chain, path)))}")
    try:
        with path.open("rb") as handle:
            own = tomllib.load(handle)
    except tomllib.TOMLDecodeError as error:
        raise ProfileError(f"{path}: not valid TOML: {error}") from None
    parent = own.pop("extends", None)
    if parent is None:
        data, sources = {}, {}
    elif isinstance(parent, str):
        data, sources = read_profile(parent, path.parent, (*_chain, path))
    else:
        raise ProfileError(f"{path}: extends must be a profile name or a file path, got {parent!r}")
    for key, value in own.items():
        if isinstance(value, dict):
            table = data.setdefault(key, {})
            if not isinstance(table, dict):
                raise ProfileError(f"{path}: [{key}] is a table here but a value in {sources[(key,)]}")
            for field, item in value.items():
                table[field] = item
                sources[(key, field)] = path
        else:
            data[key] = value
        sources[(key,)] = path
    return data, sources
