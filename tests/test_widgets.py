from __future__ import annotations

import ipywidgets
import pytest

from histolab_utils.widgets import explore, is_headless


@pytest.mark.parametrize("value, expected", [("1", True), ("true", True), ("0", False), ("", False)])
def test_headless_flag(monkeypatch, value, expected):
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.setenv("HISTO_HEADLESS", value)
    assert is_headless() is expected


def test_headless_explore_calls_update_once_with_defaults_and_builds_no_widget(monkeypatch):
    monkeypatch.setenv("HISTO_HEADLESS", "1")
    monkeypatch.setattr(ipywidgets, "interactive", lambda *a, **k: pytest.fail("built a widget headless"))
    calls = []

    def update(size=7, name="a"):
        calls.append((size, name))
        return size * 2

    assert explore(update, size=(1, 10, 1), name=["a", "b"]) == 14
    assert calls == [(7, "a")]


def test_controls_need_defaults(monkeypatch):
    monkeypatch.setenv("HISTO_HEADLESS", "1")
    with pytest.raises(TypeError, match=r"default value for each control; none for \['size'\]"):
        explore(lambda size, name="a": None, size=(1, 10, 1), name=["a"])


def test_interactive_explore_builds_the_widgets(monkeypatch):
    monkeypatch.delenv("HISTO_HEADLESS", raising=False)
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.setattr("IPython.display.display", lambda *a, **k: None)

    def update(size=3):
        return size + 1

    assert explore(update, size=(0, 10, 1)) == 4


# ipywidgets (the kernel side) major version -> the JupyterLab front end that renders its models
# (@jupyter-widgets/jupyterlab-manager, shipped by jupyterlab_widgets) major version
FRONT_END_FOR_KERNEL = {8: 5}


def test_the_kernel_and_front_end_sides_of_the_widgets_match():
    """A mismatch shows in JupyterLab as "Error displaying widget: model not found"; tests/ui sees it in a browser,
    this sees its cause: the installed pair, and the widget-model versions both sides speak."""
    import json
    from pathlib import Path

    import ipywidgets._version as kernel_side
    import jupyterlab_widgets

    from jupyter_core.paths import jupyter_path

    found = [Path(folder) / "@jupyter-widgets/jupyterlab-manager/package.json" for folder in jupyter_path("labextensions")]
    found = [path for path in found if path.is_file()]
    assert found, "JupyterLab's widget manager is not installed: pip install jupyterlab_widgets"
    manager = found[0]  # the first on JupyterLab's own search path is the one it loads
    front_end = json.loads(manager.read_text())
    kernel_major = int(ipywidgets.__version__.split(".")[0])
    assert int(front_end["version"].split(".")[0]) == FRONT_END_FOR_KERNEL[kernel_major], (
        ipywidgets.__version__, front_end["version"])
    assert int(jupyterlab_widgets.__version__.split(".")[0]) == 3, jupyterlab_widgets.__version__
    # the model versions the kernel announces are those that the front end's npm packages register:
    # @jupyter-widgets/base 6 and controls 5 speak widget models 2.0.0
    for package, kernel_version, npm_major in (("base", kernel_side.__jupyter_widgets_base_version__, "6."),
                                               ("controls", kernel_side.__jupyter_widgets_controls_version__, "5.")):
        assert kernel_version == "2.0.0", (package, kernel_version)
        assert front_end["dependencies"][f"@jupyter-widgets/{package}"].lstrip("^").startswith(npm_major), package


def test_progress_bars_come_from_tqdm_auto():
    """tqdm.auto draws a widget progress bar in JupyterLab and plain text under nbval and in a terminal; a plain
    ``tqdm`` import would print a text bar into every notebook output."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    sources = [*(root / "histolab_utils").rglob("*.py"), *(root / "benchmarks").glob("*.py"),
               *(root / "notebooks").glob("*.ipynb")]
    plain = [f"{path.relative_to(root)}:{number}" for path in sources
             for number, line in enumerate(path.read_text().splitlines(), 1)
             if re.search(r"\bfrom tqdm import\b|^\s*import tqdm\b|from tqdm\.(std|notebook) import", line)]
    assert plain == [], f"use tqdm.auto: {plain}"


def test_every_widget_cell_the_browser_test_drives_is_in_its_notebook():
    """The browser test (``make ui-test``, not in every run) finds its cells by a line of their code; the line must
    be run by exactly one code cell, so renaming or splitting a widget cell fails here, without a browser."""
    import json
    import runpy
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    cells = runpy.run_path(str(root / "tests" / "ui" / "widget_cells.py"))["WIDGET_CELLS"]
    for name, code in cells.items():
        notebook = json.loads((root / "notebooks" / f"{name}.ipynb").read_text())
        running = [i for i, cell in enumerate(notebook["cells"])
                   if cell["cell_type"] == "code" and code in "".join(cell["source"])]
        assert len(running) == 1, f"{name}.ipynb: {len(running)} code cells run {code!r}, the browser test needs one"
