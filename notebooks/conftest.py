"""nbval runs the notebooks as two chains side by side (``.ci/nbval``): 00-05 in one process, 06-09 in the other.
Within a chain, files run in order; across chains only notebook 07 needs something, notebook 02's VQ-GAN, so
its first cell waits here until that model is saved (atomically: the folder appears whole)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

# notebook -> what another chain writes before it can start (relative to runs/<profile>/)
NEEDS_FROM_OTHER_CHAIN = {"07_mask_to_image": ["vqgan-4ch/vqmodel/config.json"]}
WAIT_SECONDS = 1200


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    notebook = Path(str(item.fspath)).stem
    needs = NEEDS_FROM_OTHER_CHAIN.get(notebook)
    if not needs or not item.name.endswith("Cell 0"):
        return
    from histolab_utils.paths import runs_dir

    paths = [runs_dir(os.environ.get("HISTO_PROFILE", "smoke")) / need for need in needs]
    deadline = time.monotonic() + WAIT_SECONDS
    while not all(p.exists() for p in paths):
        if time.monotonic() > deadline:
            pytest.fail(f"{notebook} waited {WAIT_SECONDS} s for {[str(p) for p in paths if not p.exists()]}: "
                        "run the notebook that writes it first")
        time.sleep(5)
