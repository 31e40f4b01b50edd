"""The :class:`Stage` every trained model fills in, the registry, and the typed metrics records.

A stage names its model once (``name``: the CLI subcommand, the run folder's stem and the release's prefix) and says
which notebook trains it and which profile section configures it. Everything else about where a model lives is
derived here, so no other module spells a run folder or a release name.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar

from ..engine.configs import config_from_section  # noqa: F401  (every stage translates its section with it)
from ..paths import results_dir, runs_dir

NOT_STAGES = ("base", "cards")  # the modules of this package that define no stage; every other one does
RELEASED_PROFILES = ("cpu",)  # profiles whose models are small enough to commit (data/pretrained: 25 MB each)

_REGISTRY: dict[str, "Stage"] = {}
_MODULES_LOADED = False


# -- typed metrics records ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Stamp:
    """What ``report.metrics_record`` stamps on every notebook's metrics: where and when the numbers were made."""

    notebook: str
    profile: str
    created: str | None = None
    wall_time_s: float | None = None
    git_commit: str | None = None
    hardware: Any = None  # the runner's dict (machine, cpu_count, gpu, ...) or, in older records, words
    split_version: int = 1  # 1: made before the validation strip existed
    config_overrides: str | None = None
    packages: dict = field(default_factory=dict)
    headline: list = field(default_factory=list)
    absent: frozenset = frozenset()  # keys the file did not hold (older records): written back without them


@dataclass(frozen=True, kw_only=True)
class StageRecord:
    """A stage's metrics record: the stamp, and one typed field per metric (subclasses declare them).

    ``from_json`` reads a published ``results/<profile>/<notebook>.json`` (or a dict of one) and refuses one that lacks
    a required metric, naming the file and key. Keys it does not declare stay in ``extra``, and declared ones the file
    lacks in ``absent``, so that ``to_json(from_json(d)) == d``: the numbers are never touched on the way through."""

    stamp: Stamp
    extra: dict = field(default_factory=dict)
    absent: frozenset = frozenset()
    training_recipe: str | None = None  # a diffusion model's recipe (diffusion/recipes.py); None: not one, or older

    HEADLINE: ClassVar[tuple[str, ...]] = ()  # the metrics the run summary shows first
    # metrics declared after the published cpu record was made (that record lacks them, and is written back without
    # them until the cpu run is made again, when the set is emptied), and metrics renamed since (new -> old name: an
    # older record holds the old name in ``extra``, see VQGANRecord)
    ADDED_SINCE_PUBLISHED: ClassVar[frozenset[str]] = frozenset({"training_recipe"})  # subclasses add to it
    OLD_NAMES: ClassVar[dict[str, str]] = {}

    def explained_absences(self) -> frozenset[str]:
        """The metrics this record lacks because it was made before they were renamed (:attr:`OLD_NAMES`, the old
        name present) or added (:attr:`ADDED_SINCE_PUBLISHED`)."""
        renamed = {new for new, old in self.OLD_NAMES.items() if old in self.extra}
        return frozenset(self.absent & (renamed | self.ADDED_SINCE_PUBLISHED))

    def renamed(self, name: str) -> Any:
        """The metric ``name`` of :attr:`OLD_NAMES`, under its new name or, in an older record, its old one."""
        value = getattr(self, name)
        return self.extra[self.OLD_NAMES[name]] if value is None else value

    def headline_values(self) -> dict[str, Any]:
        """The headline scores of this run, by name."""
        return {name: getattr(self, name) for name in self.HEADLINE}

    @classmethod
    def metric_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls) if f.name not in ("stamp", "extra", "absent"))

    @classmethod
    def from_json(cls, source: "dict | str | Path") -> "StageRecord":
        where = "a metrics record"
        if not isinstance(source, dict):
            where = str(source)
            source = json.loads(Path(source).read_text())
        stamp_keys = {f.name for f in dataclasses.fields(Stamp)} - {"absent"}
        odd = sorted(set(source) - stamp_keys - {"metrics"})
        if "metrics" not in source or odd:
            raise ValueError(f"{where}: not a metrics record (" + ("no 'metrics'" if "metrics" not in source
                                                                   else f"unknown key {odd[0]!r}") + ")")
        for key in ("notebook", "profile"):
            if key not in source:
                raise ValueError(f"{where}: the record has no {key!r}")
        metrics = dict(source["metrics"])
        declared = {f.name: f for f in dataclasses.fields(cls) if f.name in cls.metric_names()}
        missing = [name for name, f in declared.items() if name not in metrics
                   and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        if missing:
            from ..report import old_metric_name

            old = old_metric_name(metrics, missing[0])
            renamed = f" (they hold {old!r}, its old name: rename the key to {missing[0]!r})" if old else ""
            raise ValueError(f"{where}: metrics lack {missing[0]!r}, which a {cls.__name__} needs{renamed}")
        values = {name: metrics.pop(name) for name in declared if name in metrics}
        stamp = Stamp(**{k: v for k, v in source.items() if k != "metrics"},
                      absent=frozenset(stamp_keys - set(source)))
        for new, old in cls.OLD_NAMES.items():  # a renamed metric must be there under one of its names
            if new not in values and old not in metrics:
                raise ValueError(f"{where}: metrics lack {new!r} (called {old!r} in older records), which a "
                                 f"{cls.__name__} needs")
        return cls(stamp=stamp, extra=metrics, absent=frozenset(set(declared) - set(values)), **values)

    def to_json(self) -> dict:
        """The record as its JSON file holds it: the stamp's keys, then ``metrics``."""
        stamp = {k: v for k, v in dataclasses.asdict(self.stamp).items() if k != "absent" and k not in self.stamp.absent}
        metrics = {name: getattr(self, name) for name in self.metric_names() if name not in self.absent}
        return {**stamp, "metrics": {**metrics, **self.extra}}

    @property
    def profile(self) -> str:
        return self.stamp.profile


class EarlierSplitError(RuntimeError):
    """A released model made on an earlier split than today's was asked to score or feed today's data."""


# -- the stage ---------------------------------------------------------------------------------------------------
class Stage:
    """One trained model's home. Subclasses set the class attributes and implement :meth:`train_config`,
    :meth:`train` and (when released) :meth:`card`; the rest has defaults that most models keep."""

    name: ClassVar[str]  # CLI subcommand, run folder and release prefix, e.g. "masks"
    notebook: ClassVar[str]  # the notebook that trains and scores it, e.g. "06_nuclei_masks"
    section: ClassVar[str]  # its profile section, e.g. "masks"
    summary: ClassVar[str]  # one line for the CLI's help
    record_type: ClassVar[type[StageRecord] | None] = None
    model_subfolder: ClassVar[str] = "pipeline"  # where a run keeps the saved model
    released: ClassVar[bool] = True  # whether `make results` releases it (cpu profile)
    # a generator of notebook 09's synthetic tiles: its key in ``segmentation.experiments.load_generators``, the
    # variant used, and which of ``load_generators``' arguments its notebook's record chose (argument -> record key)
    generator_key: ClassVar[str | None] = None
    generator_variant: ClassVar[str] = ""
    chosen_settings: ClassVar[dict[str, str]] = {}
    # the oldest split whose regions of this model's training images are those of today's split: a release made on
    # an older one saw pixels that are now held out (split 3 moved hgsc_nest's; the slide of notebook 06 kept its)
    split_unchanged_since: ClassVar[int] = 3

    # -- where it lives ------------------------------------------------------------------------------------------
    def variants(self, config: Any) -> tuple[str, ...]:
        """The models of this stage a profile trains ("" when one: variants are e.g. a VQ-GAN's channels)."""
        return ("",)

    def folder_name(self, variant: str = "") -> str:
        return f"{self.name}-{variant}" if variant else self.name

    def run_folder(self, profile: str, variant: str = "") -> Path:
        """Where the notebook and the CLI keep this model's run (``runs/<profile>/...``; both resume from it)."""
        return runs_dir(profile) / self.folder_name(variant)

    def model_folder(self, profile: str, variant: str = "") -> Path:
        """The saved model inside the run folder."""
        return self.run_folder(profile, variant) / self.model_subfolder

    def release_name(self, profile: str, variant: str = "") -> str:
        """The folder under ``data/pretrained/`` this model is released as, e.g. ``masks-cpu``."""
        return f"{self.folder_name(variant)}-{profile}"

    def model_or_release(self, profile: str, variant: str = "") -> Path:
        """The released model when ``profile`` is a released one (cpu) and it is released, so that later notebooks
        run without retraining it; otherwise this machine's run. A release made on an earlier split than today's
        is refused (:meth:`release_split_error`) unless this machine has its own run."""
        from ..data.releases import pretrained, read_manifest

        name = self.release_name(profile, variant)
        local = self.model_folder(profile, variant)
        if self.released and profile in RELEASED_PROFILES and name in read_manifest():
            error = self.release_split_error(profile, variant)
            if error is None:
                return pretrained(name)
            if not local.exists():
                raise EarlierSplitError(error)
        return local

    def chosen(self, profile: str, key: str, default: Any, variant: str = "") -> Any:
        """A setting this stage's notebook chose on validation for the model :meth:`model_or_release` gives
        (``report.chosen_setting``): the published record's where that is the release, else this machine's record,
        else the published one; made on a split that still holds this model's data (``split_unchanged_since``),
        else ``default``. (A local run that failed its checks leaves a record, but its model is not the release.)"""
        from ..report import chosen_setting

        try:
            released = self.model_or_release(profile, variant) != self.model_folder(profile, variant)
        except EarlierSplitError:  # a release made on an earlier split, and no run here: no model to match
            released = False
        return chosen_setting(self.notebook, key, profile, default, valid_since=self.split_unchanged_since,
                              published_only=released)

    def release_split(self, profile: str = RELEASED_PROFILES[0]) -> int:
        """The split version the released model of ``profile`` was trained on (its notebook's published record)."""
        import json

        path = self.record_path(profile)
        return int(json.loads(path.read_text()).get("split_version", 1)) if path.is_file() else 1

    def release_split_error(self, profile: str = RELEASED_PROFILES[0], variant: str = "") -> str | None:
        """Why the release of ``profile`` cannot be used with today's split (None: it can)."""
        from ..data.datasets import SPLIT_VERSION

        made_on = self.release_split(profile)
        if made_on >= self.split_unchanged_since:
            return None
        return (f"{self.release_name(profile, variant)} was trained on split {made_on}, whose train region holds "
                f"pixels that split {SPLIT_VERSION} holds out (data/README.md, 'The split'): it cannot be scored on "
                f"today's held-out region, nor train later models. Train it again: "
                f"make results PROFILE={profile} ONLY={self.notebook}")

    def pipeline_class(self) -> Any:
        """The diffusers class its saved model loads with (``from_pretrained``)."""
        raise NotImplementedError(f"stage {self.name!r} saves no diffusers pipeline")

    def load(self, folder: str | Path, device: Any = "cpu", scheduler: Any = None) -> Any:
        """Its pipeline from ``folder`` (a run's :meth:`model_folder` or a release), ready to sample
        (``diffusion.pipelines.load_pipeline``)."""
        from ..diffusion.pipelines import load_pipeline

        if not Path(folder).is_dir():
            raise FileNotFoundError(f"no {self.name} model in {folder}: run notebook {self.notebook} first (or "
                                    f"`python -m histolab_utils.train {self.name} --profile <profile> --resume`), or "
                                    f"pass a released one (data/pretrained/)")
        return load_pipeline(self.pipeline_class(), folder, device, scheduler)

    def load_released(self, variant: str = "", device: Any = "cpu", scheduler: Any = None,
                      profile: str = RELEASED_PROFILES[0]) -> Any:
        """The released model of ``profile`` (what each notebook's section 0 shows), ready to sample."""
        from ..data.releases import pretrained

        return self.load(pretrained(self.release_name(profile, variant)), device, scheduler)

    # -- config and training -------------------------------------------------------------------------------------
    def profile_section(self, config: Any) -> Any:
        return getattr(config, self.section)

    def train_config(self, config: Any, seed: int = 0, variant: str = "", **overrides: Any) -> Any:
        """The trainer's config from a profile (``config``: a ``ProfileConfig``); ``None`` overrides are ignored."""
        raise NotImplementedError

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """The subcommand's own arguments (``--profile``, ``--out``, ``--steps``, ``--batch-size``, ``--seed``,
        ``--resume`` and ``--no-compile`` are every stage's)."""

    def check_arguments(self, args: argparse.Namespace, config: Any) -> str | None:
        """An error message for arguments that cannot go together (None: fine)."""
        return None

    def variant_arguments(self, variant: str, config: Any) -> list[str]:
        """The CLI arguments that select ``variant``."""
        return []

    def train(self, args: argparse.Namespace, config: Any) -> int:
        """Train from the CLI's ``args`` in profile ``config``; the exit status (see ``train.guarded``)."""
        raise NotImplementedError

    def training_commands(self, spec: str, config: Any) -> list[list[str]]:
        """The CLI commands that train every variant of a profile, resumable (``make results``)."""
        return [[sys.executable, "-m", "histolab_utils.train", self.name, *self.variant_arguments(variant, config),
                 "--profile", spec, "--seed", str(config.seed), "--resume",
                 "--out", str(self.run_folder(config.name, variant))] for variant in self.variants(config)]

    # -- record, card, release -----------------------------------------------------------------------------------
    def record_path(self, profile: str) -> Path:
        return results_dir(profile) / f"{self.notebook}.json"

    def read_record(self, profile: str) -> StageRecord:
        """The published metrics record of this stage's notebook in ``profile``, typed."""
        if self.record_type is None:
            raise NotImplementedError(f"stage {self.name!r} has no typed record")
        path = self.record_path(profile)
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: publish notebook {self.notebook} in the {profile} profile first")
        return self.record_type.from_json(path)

    build_metrics: ClassVar[Any] = None  # (profile config, device, **what the notebook computed) -> its metrics dict
    headline_extras: ClassVar[tuple[str, ...]] = ()  # shown in the run summary after the record's HEADLINE

    def save_metrics(self, ctx: Any, **computed: Any) -> StageRecord:
        """Write the notebook's metrics record (``build_metrics`` of ``computed``) with ``ctx.save_metrics``, its
        headline first, print where, and return it typed as the file holds it: the notebook's one call."""
        if self.build_metrics is None:
            raise NotImplementedError(f"stage {self.name!r} builds no metrics record")
        metrics = self.build_metrics(ctx.config, ctx.device, **computed)
        section = self.profile_section(ctx.config)
        if getattr(section, "recipe", None):  # a diffusion model: the recipe it trained with, for its card
            metrics = {**metrics, "training_recipe": section.recipe}
        path = ctx.save_metrics(metrics, headline=[*self.record_type.HEADLINE, *self.headline_extras])
        print("wrote", path)
        return self.record_type.from_json(path)

    def released_variants(self, record: StageRecord) -> tuple[str, ...]:
        """Which variants a published record covers (and so are released)."""
        return ("",)

    def card(self, record: StageRecord, variant: str, name: str) -> str:
        """The model card (diffusers style) of one variant, from the published record."""
        raise NotImplementedError

    def release(self, profile: str) -> list[Path]:
        """Release every variant the published record covers, each with its card, under ``data/pretrained/``."""
        from ..data.releases import release_pipeline

        record = self.read_record(profile)
        return [release_pipeline(self.model_folder(profile, variant), self.release_name(profile, variant),
                                 self.card(record, variant, self.release_name(profile, variant)))
                for variant in self.released_variants(record)]

    def rewrite_cards(self, profile: str) -> list[Path]:
        """Regenerate the card of every released variant from the published record (weights untouched)."""
        from ..data.releases import rewrite_card

        record = self.read_record(profile)
        return [rewrite_card(self.release_name(profile, variant),
                             self.card(record, variant, self.release_name(profile, variant)))
                for variant in self.released_variants(record)]


def guarded(train: Callable[[], Any], summary: Callable[[Any], str]) -> int:
    """Run ``train``; if the loss diverged, print why (the error names the kept checkpoint) and return 1; if the run
    folder holds a run of another config, say which fields differ and return 2; else print ``summary`` of what
    ``train`` returned (on the main process) and return 0."""
    from ..engine.trainer import ResumeMismatch, TrainingDiverged

    try:
        result = train()
    except TrainingDiverged as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except ResumeMismatch as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    accelerator = getattr(result, "accelerator", None)
    if accelerator is None or accelerator.is_main_process:
        print(summary(result))
    return 0


def trainer_summary(what: str, folder: Path) -> Callable[[Any], str]:
    """The CLI's last line for a diffusion trainer: steps, seconds, ``what`` it trained on, the final loss, where."""
    return lambda trainer: (f"{trainer.step} steps in {trainer.train_seconds:.1f} s{what}; final loss "
                            f"{trainer.log[-1]['loss']:.4f}; saved to {folder}")


def register(stage: Stage) -> Stage:
    """Add ``stage`` to the registry (a module registers its stage when imported); a taken name is an error."""
    for attribute in ("name", "notebook", "section", "summary"):
        if not isinstance(getattr(stage, attribute, None), str):
            raise TypeError(f"a stage needs a str {attribute!r}; {type(stage).__name__} has none")
    if stage.name in _REGISTRY and type(_REGISTRY[stage.name]) is not type(stage):
        raise ValueError(f"a stage named {stage.name!r} is already registered ({type(_REGISTRY[stage.name]).__name__})")
    _REGISTRY[stage.name] = stage
    return stage


def unregister(name: str) -> None:
    """Remove a stage (tests register toy ones)."""
    _REGISTRY.pop(name, None)


def registered() -> dict[str, Stage]:
    """Every stage, in pipeline order (by its notebook): each module of this package registers one when imported,
    so a new module is found without being listed anywhere."""
    global _MODULES_LOADED
    if not _MODULES_LOADED:
        import pkgutil

        for module in pkgutil.iter_modules(importlib.import_module(__package__).__path__):
            if module.name not in NOT_STAGES:
                importlib.import_module(f"{__package__}.{module.name}")
        _MODULES_LOADED = True
    order = sorted(_REGISTRY, key=lambda name: (_REGISTRY[name].notebook, list(_REGISTRY).index(name)))
    return {name: _REGISTRY[name] for name in order}


def stage(name: str) -> Stage:
    """The registered stage called ``name``; an unknown one is a KeyError listing the known."""
    stages = registered()
    if name not in stages:
        raise KeyError(f"no stage {name!r}; stages are {', '.join(stages)}")
    return stages[name]


def stage_of_notebook(notebook: str) -> list[Stage]:
    """The stages notebook ``notebook`` (its stem, e.g. ``06_nuclei_masks``) trains, in registry order."""
    return [s for s in registered().values() if s.notebook == notebook]


def typed_fields(record_type: type) -> dict[str, Any]:
    """A record class's metric fields and their types (for documentation and tests)."""
    hints = typing.get_type_hints(record_type)
    return {name: hints[name] for name in record_type.metric_names()}
