"""A profile section's translation into a trainer's config, the same for every trainer."""

from __future__ import annotations

import dataclasses
from typing import Any

SECTION_FIELD_NAMES = {"train_steps": "steps"}  # a profile section's fields that every trainer knows by another name


def config_from_section(config_class: type, section: Any, seed: int = 0, own: dict | None = None,
                        **overrides: Any) -> Any:
    """A trainer's config (``config_class``, a dataclass) from a profile section (any dataclass).

    Every section field the trainer's config has by name (``train_steps`` as ``steps``), then ``own`` (what the model
    fixes: its channels, condition, image size), then ``overrides`` (the caller's: CLI flags, a notebook's exercise),
    whose ``None`` values are ignored, as an unset flag should be. A name the config does not have is a TypeError
    naming it, never a silent no-op."""
    known = {f.name for f in dataclasses.fields(config_class)}
    values: dict[str, Any] = {"seed": seed} if "seed" in known else {}
    for f in dataclasses.fields(section):
        name = SECTION_FIELD_NAMES.get(f.name, f.name)
        if name in known:
            values[name] = getattr(section, f.name)
    values.update(own or {})
    values.update({k: v for k, v in overrides.items() if v is not None})
    unknown = sorted(set(values) - known)
    if unknown:
        raise TypeError(f"{config_class.__name__} has no field {unknown[0]!r}")
    return config_class(**values)
