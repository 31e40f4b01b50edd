"""Widgets that are harmless when a notebook runs headless (CI, nbval, the pipeline runner).

Executing a cell that creates ipywidgets without a front end can block the executing client
(nbclient issue #312, intermittent). So when ``HISTO_HEADLESS`` is set (the runner and
``make nbval`` set it) or ``CI`` is set, :func:`explore` builds no widget at all: it calls the
update function once with the default values, so the cell still draws and can be asserted on.
"""

from __future__ import annotations

import os
from typing import Any, Callable

HEADLESS_ENV = "HISTO_HEADLESS"


def is_headless() -> bool:
    """True when no person is looking: ``HISTO_HEADLESS`` or ``CI`` is set to a true value."""
    return any(os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no")
               for name in (HEADLESS_ENV, "CI"))


def explore(update: Callable[..., Any], **controls: Any) -> Any:
    """Show ``update`` with interactive ``controls``; headless, call ``update()`` once and return
    its result.

    Give controls as ipywidgets abbreviations, so that nothing is built headless: a
    ``(min, max, step)`` tuple makes a slider, a list a dropdown. The starting values are
    ``update``'s parameter defaults, so every controlled parameter needs one.
    """
    import inspect

    parameters = inspect.signature(update).parameters
    missing = [name for name in controls if parameters.get(name) is None or
               parameters[name].default is inspect.Parameter.empty]
    if missing:
        raise TypeError(f"{update.__name__}() needs a default value for each control; none for {missing}")
    if is_headless():
        return update()
    import ipywidgets
    from IPython.display import display

    panel = ipywidgets.interactive(update, **controls)  # abbreviations start at update's defaults
    display(panel)
    return panel.result
