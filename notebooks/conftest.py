"""nbval runs the notebooks as two chains side by side (``.ci/nbval``): 00-05 and 10 in one process, 06-09 in the
other. Within a chain, files run in order; across chains notebook 07 needs notebook 02's VQ-GAN, and notebook 10
needs notebooks 06-08's models and 06-07's metrics records (the settings they chose on validation; 08's model is
saved early in notebook 08, so notebook 10 runs beside the rest of 08 and 09), so a notebook's
first cell waits here until what it needs is saved (atomically: a model folder or a record appears whole)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

# notebook -> what another chain writes before it can start: paths relative to runs/<profile>/, or "metrics:<notebook>"
# for that notebook's metrics record (reports/<profile>/metrics/<notebook>.json, written at its end)
NEEDS_FROM_OTHER_CHAIN = {
    "07_mask_to_image": ["vqgan-4ch/vqmodel/config.json"],
    "10_large_regions": ["masks/pipeline/model_index.json", "spade-pixel/pipeline/model_index.json",
                         "joint/pipeline/model_index.json", "metrics:06_nuclei_masks", "metrics:07_mask_to_image"],
}
WAIT_SECONDS = 1200


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    notebook = Path(str(item.fspath)).stem
    needs = NEEDS_FROM_OTHER_CHAIN.get(notebook)
    if not needs or not item.name.endswith("Cell 0"):
        return
    from histolab_utils.paths import runs_dir
    from histolab_utils.report import metrics_dir

    profile = os.environ.get("HISTO_PROFILE", "smoke")
    paths = [metrics_dir(profile) / f"{need.removeprefix('metrics:')}.json" if need.startswith("metrics:")
             else runs_dir(profile) / need for need in needs]
    deadline = time.monotonic() + WAIT_SECONDS
    while not all(p.exists() for p in paths):
        if time.monotonic() > deadline:
            pytest.fail(f"{notebook} waited {WAIT_SECONDS} s for {[str(p) for p in paths if not p.exists()]}: "
                        "run the notebook that writes it first")
        time.sleep(5)
