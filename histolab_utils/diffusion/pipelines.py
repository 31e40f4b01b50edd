"""Loading a saved or released diffusers pipeline the way every notebook samples it."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def load_pipeline(pipeline_class: Any, folder: str | Path, device: Any = "cpu", scheduler: Any = None) -> Any:
    """``pipeline_class.from_pretrained(folder)`` on ``device``, sampling with ``scheduler`` when one is given (else
    the saved one), with diffusers' own progress bar hidden: the notebooks show their own (tqdm), and a headless run's
    log stays readable."""
    pipeline = pipeline_class.from_pretrained(folder).to(device)
    if scheduler is not None:
        pipeline.scheduler = scheduler
    if hasattr(pipeline, "set_progress_bar_config"):  # pipelines have one; a bare model (a VQModel) does not
        pipeline.set_progress_bar_config(disable=True)
    return pipeline
