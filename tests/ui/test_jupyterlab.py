"""The researcher's widgets where they live: notebooks opened in JupyterLab in headless Chromium, run through the
real front end, their controls moved by the browser. Screenshots go to reports/ui/ (CI keeps them)."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest

from widget_cells import WIDGET_CELLS  # tests/ui/ is on sys.path (rootdir-relative imports)

REPORTS = Path(os.environ.get("HISTO_UI_REPORTS", Path(__file__).resolve().parents[2] / "reports" / "ui"))

WIDGET_ERROR = re.compile(r"widget|jupyter-widgets|ipywidgets|model not found|\bcomm\b", re.IGNORECASE)


class Notebook:
    """One notebook open in JupyterLab, driven through ``window.jupyterapp`` (``expose_app_in_browser``) and the DOM."""

    def __init__(self, driver, lab, name: str) -> None:
        base, token, _ = lab
        lab.stop_kernels()  # an earlier notebook's kernel, even one whose test failed, must not compute beside this
        self.driver, self.name = driver, name
        driver.get(f"{base}/lab/tree/{name}.ipynb?token={token}&reset")
        self.wait_js("const p = window.jupyterapp && window.jupyterapp.shell.currentWidget;"
                     "return !!(p && p.sessionContext && p.sessionContext.session && p.sessionContext.session.kernel"
                     " && p.content && p.content.widgets.length > 0)", 90, "the notebook and its kernel to open")
        self.wait_idle(90)

    def cell_running(self, code: str) -> int:
        """The index of the one code cell whose source holds ``code``: tests name a widget's cell by what it runs,
        never by a position that an added markdown cell shifts."""
        found = self.js("return window.jupyterapp.shell.currentWidget.content.widgets.map((c, i) => [c, i])"
                        ".filter(([c, i]) => c.model.type === 'code' && c.model.sharedModel.getSource()"
                        ".includes(arguments[0])).map(([c, i]) => i)", code)
        assert len(found) == 1, f"{self.name}: {len(found)} code cells run {code!r}, not one: {found}"
        return found[0]

    def js(self, script: str, *args):
        return self.driver.execute_script(script, *args)

    def wait_js(self, condition: str, seconds: float, what: str) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.js(condition):
                return
            time.sleep(0.5)
        self.screenshot("timeout")
        raise TimeoutError(f"{self.name}: waited {seconds} s for {what}")

    def wait_idle(self, seconds: float) -> None:
        self.wait_js("const p = window.jupyterapp.shell.currentWidget;"
                     "return p.sessionContext.session.kernel.status === 'idle' && "
                     "![...document.querySelectorAll('.jp-InputPrompt')].some(e => e.textContent.includes('[*]'))",
                     seconds, "the kernel to finish")

    def run_through(self, cell: int, seconds: float = 420) -> None:
        """Run every cell above ``cell``, then ``cell`` itself, as a researcher would, and wait for the kernel."""
        # not returned: Selenium would wait for the promise; a flag says when it settles, and how
        self.js("window.__histoRun = null; const p = window.jupyterapp.shell.currentWidget;"
                "p.content.activeCellIndex = arguments[0];"
                "window.jupyterapp.commands.execute('notebook:run-all-above')"
                ".then(() => window.jupyterapp.commands.execute('notebook:run-cell'))"
                ".then(() => { window.__histoRun = 'done'; }, e => { window.__histoRun = 'failed: ' + e; });", cell)
        self.wait_js("return window.__histoRun !== null", seconds, f"cells up to {cell} to run")
        outcome = self.js("return window.__histoRun")
        assert outcome == "done", f"{self.name}: running up to cell {cell} {outcome}"
        self.wait_idle(seconds)

    def kernel_value(self, expression: str) -> str:
        """``repr`` of ``expression`` evaluated in the kernel (a user expression: nothing shows in the notebook)."""
        return self.driver.execute_script(
            "const kernel = window.jupyterapp.shell.currentWidget.sessionContext.session.kernel;"
            "const future = kernel.requestExecute({code: '', silent: true, user_expressions: {v: arguments[0]}});"
            "return future.done.then(reply => { const v = reply.content.user_expressions.v;"
            "  return v.status === 'ok' ? v.data['text/plain'] : 'error: ' + v.ename; });", expression)

    def errors(self) -> list[str]:
        """Error outputs of any cell, a traceback shown anywhere on the page (a widget callback that raised inside
        an Output widget shows one there, not in the cell's outputs), and "Error displaying widget"."""
        found = self.js("return window.jupyterapp.shell.currentWidget.content.widgets"
                        ".filter(c => c.model.type === 'code')"
                        ".flatMap(c => c.model.outputs.toJSON().filter(o => o.output_type === 'error')"
                        ".map(o => o.ename + ': ' + o.evalue))")
        found += self.js("return [...document.querySelectorAll('.widget-output .jp-OutputArea-output')]"
                         ".map(e => e.innerText).filter(t => /Traceback|\\w+Error\\b/.test(t))"
                         ".map(t => 'in a widget: ' + t.trim().split('\\n').slice(-1)[0])")
        if "Error displaying widget" in self.js("return document.body.innerText"):
            found.append("Error displaying widget")
        return found

    def output(self, cell: int):
        from selenium.webdriver.common.by import By

        node = self.js("return window.jupyterapp.shell.currentWidget.content.widgets[arguments[0]].node", cell)
        return node.find_element(By.CSS_SELECTOR, ".jp-OutputArea")

    def control(self, cell: int, kind: str, label: str):
        """The input element of the ipywidgets control of ``kind`` (dropdown, text, checkbox...) labelled ``label``."""
        from selenium.webdriver.common.by import By

        tag = {"dropdown": "select", "text": "input", "checkbox": "input"}[kind]
        xpath = (f".//div[contains(@class, 'widget-{kind}')][.//label[normalize-space() = '{label}']]//{tag}")
        return self.output(cell).find_element(By.XPATH, xpath)

    def button(self, cell: int, label: str):
        from selenium.webdriver.common.by import By

        return self.output(cell).find_element(By.XPATH, f".//button[normalize-space() = '{label}']")

    def _plot(self, cell: int, index: int = 0):
        from selenium.webdriver.common.by import By

        images = self.output(cell).find_elements(By.CSS_SELECTOR, ".widget-output img")  # not a gallery's tiles
        assert images, f"{self.name}: cell {cell}'s widget output shows no image"
        return images[index]

    def plot_source(self, cell: int) -> str:
        """The data URL of the figure in the cell's Output widget: a new figure is a new PNG."""
        return self._plot(cell).get_attribute("src")

    def plot_png(self, cell: int) -> bytes:
        """A screenshot of the figure in the cell's Output widget."""
        image = self._plot(cell)
        self.driver.execute_script("arguments[0].scrollIntoView()", image)
        return image.screenshot_as_png

    def wait_for_new_plot(self, cell: int, before: str, seconds: float = 60) -> bytes:
        """Wait until the Output widget shows a figure other than ``before`` (a :meth:`plot_source`); its
        screenshot."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.wait_idle(seconds)
            try:
                if self.plot_source(cell) != before:
                    return self.plot_png(cell)
            except Exception:  # the output is being redrawn, or shows no figure
                pass
            time.sleep(0.5)
        self.screenshot("unchanged")
        raise AssertionError(f"{self.name}: cell {cell}'s plot did not change within {seconds} s")

    def save_output(self, cell: int, what: str) -> None:
        """A screenshot of the cell's whole output (the widget panel), for reports/ui/ and the README."""
        area = self.output(cell)
        self.driver.execute_script("arguments[0].scrollIntoView()", area)
        self.save(what, area.screenshot_as_png)

    def screenshot(self, what: str) -> None:
        REPORTS.mkdir(parents=True, exist_ok=True)
        self.driver.save_screenshot(str(REPORTS / f"{self.name}-{what}.png"))

    def save(self, what: str, png: bytes) -> None:
        REPORTS.mkdir(parents=True, exist_ok=True)
        (REPORTS / f"{self.name}-{what}.png").write_bytes(png)


def widget_console_errors(driver) -> list[str]:
    """SEVERE browser-console entries that concern widgets (the widget manager, a model, a comm)."""
    entries = driver.get_log("browser")
    (REPORTS / "browser-console.log").open("a").write("".join(f"{e['level']} {e['message']}\n" for e in entries))
    return [e["message"] for e in entries if e["level"] == "SEVERE" and WIDGET_ERROR.search(e["message"])]


def select_other(element) -> str:
    """Pick a different option of a <select> (ipywidgets syncs on the change event); return its text."""
    from selenium.webdriver.support.ui import Select

    select = Select(element)
    current = select.first_selected_option.text
    other = next(o.text for o in select.options if o.text != current)
    select.select_by_visible_text(other)
    return other


EXPLORER_CELL = WIDGET_CELLS["04_latent_clusters"]


@pytest.fixture(scope="class")
def explorer(browser, lab, smoke_expert_labels):
    """Notebook 04 run through its explorer cell, shared by the explorer's tests (the smoke labels copied before)."""
    notebook = Notebook(browser, lab, "04_latent_clusters")
    notebook.explorer_cell = notebook.cell_running(EXPLORER_CELL)
    notebook.run_through(notebook.explorer_cell)
    return notebook


class TestTheClusterExplorer:
    """Notebook 04's explorer and expert panel; the smoke labels are put back after the class, before notebook 05
    reads them."""

    def test_redraws_and_the_expert_panel_saves(self, browser, explorer, smoke_expert_labels):
        notebook = explorer
        assert notebook.errors() == []
        before = notebook.plot_source(notebook.explorer_cell)
        notebook.save("explorer-before", notebook.plot_png(notebook.explorer_cell))
        notebook.save_output(notebook.explorer_cell, "explorer-panel")

        new_name = "nest edge (ui test)"
        name_box = notebook.control(notebook.explorer_cell, "text", "new name")
        name_box.clear()
        name_box.send_keys(new_name)
        # ipywidgets holds keystrokes back while an update is pending: click only once the kernel has the whole name
        deadline = time.monotonic() + 30
        while notebook.kernel_value('explorer.controls["name"].value') != repr(new_name):
            assert time.monotonic() < deadline, "the typed name never reached the kernel"
            time.sleep(0.3)
        notebook.button(notebook.explorer_cell, "rename").click()
        notebook.wait_js("return document.body.innerText.includes('saved to')", 60, "the rename to be saved")
        assert new_name in smoke_expert_labels.read_text(), "the rename did not reach the smoke label CSV"

        colouring = select_other(notebook.control(notebook.explorer_cell, "dropdown", "colour by"))
        after = notebook.wait_for_new_plot(notebook.explorer_cell, before)
        notebook.save("explorer-after", after)
        notebook.screenshot(f"explorer-coloured-by-{colouring.replace(' ', '_')}")

        notebook.run_through(notebook.explorer_cell)  # the cell loads the saved file again: the new name is in the explorer
        options = [o.text for o in _options(notebook.control(notebook.explorer_cell, "dropdown", "cluster"))]
        assert any(new_name in option for option in options), options
        assert notebook.errors() == []
        assert widget_console_errors(browser) == []

    def test_a_broken_callback_is_seen(self, explorer):
        """The checks above must fail when the explorer's callback breaks: the kernel's explorer is made to raise
        on redraw (as a bug in ClusterExplorer.draw would), a control is moved, and the error must be reported."""
        notebook = explorer
        notebook.js("window.jupyterapp.shell.currentWidget.sessionContext.session.kernel.requestExecute({code: "
                    "'explorer.draw = lambda *args, **kwargs: 1 / 0', silent: true})")
        notebook.wait_idle(30)
        before = notebook.plot_source(notebook.explorer_cell)
        select_other(notebook.control(notebook.explorer_cell, "dropdown", "colour by"))
        with pytest.raises(AssertionError, match="did not change"):
            notebook.wait_for_new_plot(notebook.explorer_cell, before, seconds=8)
        assert any("ZeroDivisionError" in error for error in notebook.errors()), notebook.errors()


def _options(select_element):
    from selenium.webdriver.support.ui import Select

    return Select(select_element).options


def test_the_sampling_widget_draws_new_samples_for_another_cluster(browser, lab):
    notebook = Notebook(browser, lab, "05_conditional_ldm")
    widget_cell = notebook.cell_running(WIDGET_CELLS["05_conditional_ldm"])
    notebook.run_through(widget_cell)
    assert notebook.errors() == []
    before, before_png = notebook.plot_source(widget_cell), notebook.plot_png(widget_cell)
    select_other(notebook.control(widget_cell, "dropdown", "cluster"))
    after = notebook.wait_for_new_plot(widget_cell, before)
    notebook.save("samples-before", before_png)
    notebook.save("samples-after", after)
    notebook.save_output(widget_cell, "sampling-widget")
    assert notebook.errors() == []
    assert widget_console_errors(browser) == []


@pytest.mark.parametrize("name, control", [
    ("06_nuclei_masks", ("checkbox", "inflammatory")),
    ("10_large_regions", ("dropdown", "method")),
])
def test_a_layout_widget_responds(browser, lab, name, control):
    """Notebook 06's mask widget (a nucleus type ticked) and notebook 10's canvas widget (another tiling method)."""
    notebook = Notebook(browser, lab, name)
    cell = notebook.cell_running(WIDGET_CELLS[name])
    notebook.run_through(cell)
    assert notebook.errors() == []
    before, before_png = notebook.plot_source(cell), notebook.plot_png(cell)
    kind, label = control
    if kind == "checkbox":
        notebook.control(cell, kind, label).click()
    else:
        select_other(notebook.control(cell, kind, label))
    after = notebook.wait_for_new_plot(cell, before)
    notebook.save("widget-before", before_png)
    notebook.save("widget-after", after)
    notebook.save_output(cell, "widget")
    assert notebook.errors() == []
    assert widget_console_errors(browser) == []
