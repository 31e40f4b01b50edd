"""JupyterLab in headless Chromium: a lab server on 127.0.0.1 with a token, over copies of the notebooks, and a
Selenium-driven Chromium (Debian's ``chromium`` and ``chromium-driver``). Run by ``make ui-test`` (``.ci/ui-test``),
which installs the browser and stops every process it started whatever happens; ``pytest tests`` skips these tests
unless ``HISTO_UI_TEST=1``.

The kernel runs the smoke profile with ``HISTO_HEADLESS`` and ``CI`` unset, so the notebooks build their real
widgets. The notebooks read back the smoke runs that ``make test`` left in ``runs/smoke`` (their ``RESUME = True``).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
REPORTS = Path(os.environ.get("HISTO_UI_REPORTS", ROOT / "reports" / "ui"))


def pytest_collection_modifyitems(config, items):
    if os.environ.get("HISTO_UI_TEST") == "1":
        return
    skip = pytest.mark.skip(reason="browser test: run `make ui-test` (sets HISTO_UI_TEST=1)")
    for item in items:
        if "tests/ui/" in str(item.fspath).replace(os.sep, "/"):
            item.add_marker(skip)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_for(url: str, seconds: float, process: subprocess.Popen) -> None:
    import urllib.request

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"jupyter lab exited with {process.returncode} before serving {url}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"jupyter lab did not answer {url} within {seconds} s")


class Lab(tuple):
    """(base_url, token, root) of the running server, and what the tests ask of its REST API."""

    def stop_kernels(self) -> None:
        """Stop every kernel (a notebook's kernel would otherwise go on computing beside the next notebook's)."""
        import urllib.request

        base, token, _ = self
        with urllib.request.urlopen(f"{base}/api/kernels?token={token}", timeout=10) as response:
            kernels = json.loads(response.read())
        for kernel in kernels:
            request = urllib.request.Request(f"{base}/api/kernels/{kernel['id']}?token={token}", method="DELETE")
            urllib.request.urlopen(request, timeout=30).close()


@pytest.fixture(scope="session")
def lab(tmp_path_factory):
    """A JupyterLab server over a copy of notebooks/ (the committed notebooks are never saved over): a
    :class:`Lab`."""
    scratch = os.environ.get("HISTO_UI_TMP")  # .ci/ui-test's folder: its trap stops what runs under it
    root = Path(scratch) / "lab" if scratch else tmp_path_factory.mktemp("lab")
    root.mkdir(parents=True, exist_ok=True)
    for notebook in (ROOT / "notebooks").glob("*.ipynb"):
        shutil.copy(notebook, root / notebook.name)
    settings = root / ".settings"
    (settings / "@jupyterlab" / "docmanager-extension").mkdir(parents=True)
    (settings / "@jupyterlab" / "docmanager-extension" / "plugin.jupyterlab-settings").write_text(
        json.dumps({"autosave": False}))
    # every cell in the DOM, whatever the JupyterLab 4.x default for windowing, so cells can be found by index
    (settings / "@jupyterlab" / "notebook-extension").mkdir(parents=True)
    (settings / "@jupyterlab" / "notebook-extension" / "tracker.jupyterlab-settings").write_text(
        json.dumps({"windowingMode": "none"}))
    (settings / "@jupyterlab" / "apputils-extension").mkdir(parents=True)
    (settings / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings").write_text(
        json.dumps({"fetchNews": "false", "checkForUpdates": False}))  # offline: no news pop-up over the cells
    port, token = _free_port(), secrets.token_hex(16)
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "HISTO_HEADLESS")}
    env.update(HISTO_PROFILE="smoke", HISTO_ROOT=str(ROOT), JUPYTER_PLATFORM_DIRS="1")
    REPORTS.mkdir(parents=True, exist_ok=True)
    log = (REPORTS / "jupyterlab.log").open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ServerApp.ip=127.0.0.1",
         f"--ServerApp.port={port}", "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}",
         f"--ServerApp.root_dir={root}", f"--LabApp.user_settings_dir={settings}",
         f"--LabApp.workspaces_dir={root / '.workspaces'}", "--LabApp.expose_app_in_browser=True",
         *(["--allow-root"] if os.geteuid() == 0 else [])],  # CI runs as root
        cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        base = f"http://127.0.0.1:{port}"
        _wait_for(f"{base}/api/status?token={token}", 60, process)
        yield Lab((base, token, root))
    finally:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, 9)
        log.close()


def chromium_binary() -> str:
    for name in ("chromium", "chromium-browser"):
        if path := shutil.which(name):
            return path
    raise RuntimeError("Debian's chromium is not installed: `apt-get install chromium chromium-driver` "
                       "(make ui-test does it)")


@pytest.fixture(scope="session")
def browser():
    """Headless Chromium through Debian's chromedriver, with the browser console kept."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium_binary()
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 "--window-size=1400,1800", "--no-first-run", "--disable-extensions"):
        options.add_argument(flag)
    if scratch := os.environ.get("HISTO_UI_TMP"):
        options.add_argument(f"--user-data-dir={Path(scratch) / 'chromium'}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver_path = shutil.which("chromedriver") or "/usr/bin/chromedriver"
    scratch = os.environ.get("HISTO_UI_TMP")  # its log there puts the folder on chromedriver's command line (trap)
    service = Service(driver_path, log_output=str(Path(scratch) / "chromedriver.log") if scratch else None)
    driver = webdriver.Chrome(service=service, options=options)
    driver.set_script_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="class")
def smoke_expert_labels():
    """The smoke profile's expert-label CSV, copied before notebook 04 runs and restored after its tests' class (the
    explorer writes it; notebook 05 would otherwise meet labels its smoke LDM was not trained on, and rightly refuse
    to read that run back). ``.ci/ui-test``'s trap restores it too, should the run be killed."""
    path = ROOT / "data" / "expert_labels.smoke.csv"
    saved = path.read_bytes() if path.is_file() else None
    yield path
    if saved is None:
        path.unlink(missing_ok=True)
    else:
        path.write_bytes(saved)
