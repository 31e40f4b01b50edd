"""One home per stage: a model's config translation, CLI subcommand, run folder, record, card and release live in its
module under histolab_utils/stages/, and nothing else spells them."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import nbformat
import numpy as np
import pytest

from histolab_utils.stages import registered, stage
from histolab_utils.stages.base import Stage, StageRecord, guarded, register, unregister

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "histolab_utils"


# -- a toy stage, registered in the test: it gets everything without any other file changing -------------------
@dataclass(frozen=True, kw_only=True)
class ToyRecord(StageRecord):
    """A toy notebook's metrics: one score and the model it released."""

    score: float
    released_model: str | None = None


@dataclass
class ToyConfig:
    steps: int = 1
    batch_size: int = 1
    learning_rate: float = 0.1
    mixed_precision: str = "auto"
    seed: int = 0
    extra: dict = field(default_factory=dict)


class ToyStage(Stage):
    name = "toy"
    notebook = "99_toy"
    section = "ddpm"  # borrows a section: a toy needs no profile change
    summary = "a toy model (tests/test_stages.py)"
    record_type = ToyRecord

    def train_config(self, config, seed=0, variant="", **overrides):
        from histolab_utils.engine.configs import config_from_section

        return config_from_section(ToyConfig, config.ddpm, seed, **overrides)

    def add_arguments(self, parser):
        parser.add_argument("--colour", default="pink")

    def train(self, args, config):
        def train():
            from diffusers import UNet2DModel

            folder = args.out / self.model_subfolder
            train_config = self.train_config(config, args.seed, steps=args.steps)
            UNet2DModel(sample_size=8, block_out_channels=(8,), layers_per_block=1, norm_num_groups=4,
                        down_block_types=("DownBlock2D",), up_block_types=("UpBlock2D",)).save_pretrained(folder)
            (folder / "toy.json").write_text(json.dumps({"steps": train_config.steps, "colour": args.colour}))
            return train_config

        return guarded(train, lambda c: f"toy trained {c.steps} steps")

    def card(self, record, variant, name):
        return f"# {name}\n\nscore {record.score:.2f} in the {record.profile} profile. Not for diagnosis.\n"


@pytest.fixture
def toy(isolated_dirs, monkeypatch):
    monkeypatch.setenv("HISTO_ROOT", str(isolated_dirs))
    monkeypatch.setenv("HISTO_RUNS_DIR", str(isolated_dirs / "runs"))
    register(ToyStage())
    yield registered()["toy"]
    unregister("toy")


def test_a_registered_stage_gets_a_cli_command_a_run_folder_a_record_and_a_release(toy, isolated_dirs, capsys):
    from histolab_utils import results, train
    from histolab_utils.data.releases import pretrained, read_manifest

    assert toy.run_folder("cpu") == isolated_dirs / "runs" / "cpu" / "toy"
    assert toy.release_name("cpu") == "toy-cpu"
    commands = results.training_commands("99_toy", "cpu")
    assert [c[3:5] for c in commands] == [["toy", "--profile"]] and commands[0][-1] == str(toy.run_folder("cpu"))
    assert train.main(["toy", "--profile", "smoke", "--out", str(toy.run_folder("cpu")), "--steps", "3",
                       "--colour", "blue"]) == 0
    assert "toy trained 3 steps" in capsys.readouterr().out
    assert json.loads((toy.model_folder("cpu") / "toy.json").read_text()) == {"steps": 3, "colour": "blue"}
    published = {"notebook": "99_toy", "profile": "cpu", "metrics": {"score": 0.25, "released_model": "toy-cpu"}}
    toy.record_path("cpu").parent.mkdir(parents=True, exist_ok=True)
    toy.record_path("cpu").write_text(json.dumps(published))
    record = toy.read_record("cpu")
    assert isinstance(record, ToyRecord) and record.score == 0.25 and record.to_json() == published
    (folder,) = results.release("99_toy", "cpu")
    assert folder == pretrained("toy-cpu") and "toy-cpu" in read_manifest()
    assert "score 0.25 in the cpu profile" in (folder / "README.md").read_text()


def test_a_stage_name_is_taken_once_and_an_unknown_one_is_named():
    class Impostor(ToyStage):
        pass

    register(ToyStage())
    try:
        with pytest.raises(ValueError, match="'toy' is already registered"):
            register(Impostor())
    finally:
        unregister("toy")
    with pytest.raises(KeyError, match="no stage 'nope'; stages are vqgan, ddpm"):
        stage("nope")


# -- typed records -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", [n for n, s in registered().items() if s.record_type is not None])
def test_every_published_record_loads_typed_and_writes_back_untouched(name):
    s = stage(name)
    path = s.record_path("cpu")
    record = s.read_record("cpu")
    assert record.to_json() == json.loads(path.read_text())
    assert record.profile == "cpu" and record.stamp.notebook == s.notebook
    added = type(record).ADDED_SINCE_PUBLISHED
    assert added <= set(s.record_type.metric_names()), f"{name}: ADDED_SINCE_PUBLISHED names undeclared fields"
    explained = record.explained_absences()  # renamed or added since the record was made, as its type declares
    assert not record.absent - explained, f"{path} lacks {sorted(record.absent - explained)}"


def test_records_scored_elsewhere_load_typed_too():
    from histolab_utils.paths import results_dir

    path = results_dir("full") / "09_arms.json"  # `python -m histolab_utils.score segmenters` wrote it
    record = stage("segmenter").record_type.from_json(path)
    assert record.profile == "full" and record.to_json() == json.loads(path.read_text())
    assert record.training_seconds is None and "training_seconds" in record.absent and "note" in record.extra


def test_a_record_without_a_metric_is_refused_naming_the_file_and_key(tmp_path):
    s = stage("masks")
    published = json.loads(s.record_path("cpu").read_text())
    del published["metrics"]["heldout_scores"]
    path = tmp_path / "06_nuclei_masks.json"
    path.write_text(json.dumps(published))
    with pytest.raises(ValueError, match=rf"{re.escape(str(path))}: metrics lack 'heldout_scores'"):
        s.record_type.from_json(path)
    with pytest.raises(ValueError, match="not a metrics record"):
        s.record_type.from_json({"profile": "cpu", "notebook": "06_nuclei_masks", "metric": {}})


def _keys(value, where=""):
    """Every key of a JSON value, nested ones too, and the names its ``headline`` lists, with where each sits."""
    if isinstance(value, dict):
        for key, inner in value.items():
            yield key, where
            if key == "headline":
                yield from ((name, f"{where}headline.") for name in inner)
            else:
                yield from _keys(inner, f"{where}{key}.")
    elif isinstance(value, list):
        for inner in value:
            yield from _keys(inner, where)


def test_the_guidance_scale_has_one_name_in_every_record_and_generator_setting():
    """diffusers' ``guidance_scale``: no record declares or publishes ``guidance`` (or ``mask_guidance``, ...), and
    notebook 09's generator settings are ``<model>_guidance_scale``."""
    from histolab_utils.report import RENAMED_METRICS

    for name, s in registered().items():
        if s.record_type is not None:
            assert not set(s.record_type.metric_names()) & set(RENAMED_METRICS), name
        for argument, key in s.chosen_settings.items():
            assert key in s.record_type.metric_names() and key not in RENAMED_METRICS, (name, key)
            assert "guidance" not in argument or argument.endswith("_guidance_scale"), (name, argument)
    published = sorted((ROOT / "results").rglob("*.json")) + sorted((ROOT / "data").rglob("*.json"))
    old = [(str(p.relative_to(ROOT)), where + key) for p in published
           for key, where in _keys(json.loads(p.read_text())) if key in RENAMED_METRICS]
    assert len(published) > 10 and old == [], f"records with old key names: {old}"


def test_a_record_with_the_old_guidance_key_says_to_rename_it(tmp_path):
    s = stage("masks")
    published = json.loads(s.record_path("cpu").read_text())
    published["metrics"]["guidance"] = published["metrics"].pop("guidance_scale")
    path = tmp_path / "06_nuclei_masks.json"
    path.write_text(json.dumps(published))
    with pytest.raises(ValueError, match=rf"{re.escape(str(path))}: metrics lack 'guidance_scale', which a MasksRecord "
                                         rf"needs \(they hold 'guidance', its old name: rename the key"):
        s.record_type.from_json(path)


# -- nothing else spells a stage's places -------------------------------------------------------------------------
def _code_outside_stages() -> dict[str, str]:
    """Every package module outside stages/, and the code cells of every notebook, by name."""
    sources = {str(p.relative_to(ROOT)): p.read_text() for p in PACKAGE.rglob("*.py")
               if "stages" not in p.relative_to(PACKAGE).parts}
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        cells = nbformat.read(path, as_version=4).cells
        sources[str(path.relative_to(ROOT))] = "\n".join(c.source for c in cells if c.cell_type == "code")
    return sources


def _spellings() -> dict[str, re.Pattern]:
    """What a stage's run folder or release name looks like when typed out: a string literal that starts with its
    folder name (``"masks"``, ``"spade-..."``, ``f"vqgan-{c}ch..."``) next to a path join, or ending in a profile."""
    patterns = {}
    for name, s in registered().items():
        stems = {s.folder_name(v).split("-")[0] for v in ("", "x")} | {Path(s.run_folder("p", "x")).parts[-2]}
        for stem in stems - {"p"}:
            joined = rf"\brun\w*(\([^()]*\))?\s*/\s*f?[\"']{re.escape(stem)}(-[^\"']*)?[\"']"  # runs_dir(p) / "masks"
            released = rf"f?[\"']{re.escape(stem)}-[^\"']*(cpu|smoke|full|\{{profile\}})[\"']"  # "masks-cpu"
            patterns[f"{name}: {stem}"] = re.compile(f"{joined}|{released}")
    return patterns


def test_no_run_folder_or_release_name_is_spelt_outside_its_stage_module():
    found = [(where, label, m.group(0)) for where, text in _code_outside_stages().items()
             for label, pattern in _spellings().items() for m in pattern.finditer(text)]
    assert found == []


def test_the_spelling_check_sees_a_spelt_out_folder_and_release():
    patterns = _spellings().values()
    for spelt in ('runs_dir(profile) / "masks" / "pipeline"', 'runs / f"spade-{space}"', '"joint-cpu"',
                  'f"vqgan-{channels}ch-{profile}"', 'runs_dir(p) / "03_ddpm_schedulers"'):
        assert any(p.search(spelt) for p in patterns), spelt
    assert not any(p.search('MASKS.run_folder(ctx.profile)') for p in patterns)


NOTEBOOK_PREFIX = re.compile(r"""startswith\(\s*f?["']\d\d|\b(stem|notebook|name)\w*\s*\[\s*:\s*2\s*\]|["']0\d["']\s*:""")


def test_nothing_dispatches_on_a_notebook_prefix():
    offenders = [(str(p.relative_to(ROOT)), m.group(0)) for p in PACKAGE.rglob("*.py")
                 for m in NOTEBOOK_PREFIX.finditer(p.read_text())]
    assert offenders == []
    for dispatch in ('if notebook.startswith("03"):', 'RELEASES.get(path.stem[:2])', '{"02": release_vqgans}'):
        assert NOTEBOOK_PREFIX.search(dispatch), dispatch


def test_the_registry_lists_the_stages_in_pipeline_order_whatever_was_imported_first():
    import subprocess
    import sys

    code = ("import histolab_utils.stages.joint, histolab_utils.stages.segmenter; "
            "from histolab_utils.stages import registered; print(','.join(registered()))")
    listed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert listed == "vqgan,ddpm,ldm,masks,spade,joint,segmenter"


def test_every_stage_module_is_registered_and_owns_its_names():
    modules = sorted(p.stem for p in (PACKAGE / "stages").glob("*.py") if p.stem not in ("__init__", "base", "cards"))
    # found by listing the package, not a hand-kept list: a new module needs no other file
    assert sorted(s.__module__.rsplit(".", 1)[1] for s in map(type, registered().values())) == modules
    names = [s.name for s in registered().values()]
    assert len(set(names)) == len(names)
    notebooks = {p.stem for p in (ROOT / "notebooks").glob("*.ipynb")}
    assert {s.notebook for s in registered().values()} <= notebooks


# -- every profile key reaches its model ---------------------------------------------------------------------------
def _fp32_profile(tmp_path) -> Path:
    path = tmp_path / "fp32.toml"
    path.write_text('extends = "smoke"\n[training]\nmixed_precision = "no"\n')
    return path


def test_a_profile_file_sets_the_precision_of_the_vqgan_and_the_segmenter(tmp_path, monkeypatch, real_data):
    """On a CPU that "auto" would train in bf16, a profile's [training] mixed_precision = "no" is what the VQ-GAN's
    and the segmenter's Accelerators use."""
    from histolab_utils.config import read_config
    from histolab_utils.models.vqgan import VQGANTrainer
    from histolab_utils.segmentation.hovernet import SegmenterTrainer

    monkeypatch.setenv("HISTO_CPU_BF16", "1")
    profile = read_config(str(_fp32_profile(tmp_path)))
    assert profile.vqgan.mixed_precision == profile.segmentation.mixed_precision == "no"
    vq_config = stage("vqgan").train_config(profile, steps=1, batch_size=2)
    crops = np.random.default_rng(0).integers(0, 256, (4, vq_config.image_size, vq_config.image_size, 3), np.uint8)
    assert VQGANTrainer(vq_config, crops, tmp_path / "vq", progress=False).accelerator.mixed_precision == "no"
    seg_config = stage("segmenter").train_config(profile, steps=1, batch_size=2)
    size = seg_config.tile_size
    images = np.random.default_rng(0).integers(0, 256, (4, size, size, 3), np.uint8)
    masks = np.zeros((4, size, size), np.int32)
    trainer = SegmenterTrainer(seg_config, images, masks, masks, tmp_path / "seg", progress=False)
    assert trainer.accelerator.mixed_precision == "no"
    auto = read_config("smoke")
    assert stage("vqgan").train_config(auto).mixed_precision == stage("segmenter").train_config(auto).mixed_precision == "auto"


def test_every_field_of_a_trained_section_reaches_a_trainer_or_its_notebook():
    """A section field that no trainer config takes by name must be read somewhere else in the package or a notebook
    (sizes of evaluation sets, samplers, arms...), or it is a key that reaches nothing."""
    import dataclasses

    from histolab_utils.config import TRAINED_SECTIONS, read_config

    profile = read_config("cpu")
    sources = "\n".join(_code_outside_stages().values()) + "\n".join(
        p.read_text() for p in (PACKAGE / "stages").glob("*.py"))
    unread = []
    for section_name in TRAINED_SECTIONS:
        section = getattr(profile, section_name)
        for f in dataclasses.fields(section):
            if not re.search(rf"\.{f.name}\b", sources):
                unread.append(f"{section_name}.{f.name}")
    assert unread == []


def test_the_vqgan_warm_up_is_the_profile_s_not_derived():
    from histolab_utils.config import read_config

    for name in ("smoke", "cpu", "full"):
        profile = read_config(name)
        config = stage("vqgan").train_config(profile)
        assert config.warmup_steps == profile.vqgan.warmup_steps == profile.vqgan.train_steps // 20  # as released
        assert config.steps == profile.vqgan.train_steps and config.data_downsample == profile.vqgan.downsample


def test_the_segmenter_config_is_the_section_s_for_every_arm():
    from histolab_utils.config import read_config

    profile = read_config("cpu")
    section = profile.segmentation
    configs = {arm: stage("segmenter").train_config(profile, 1, arm) for arm in ("real_25", "classic_25")}
    for config in configs.values():
        assert (config.steps, config.batch_size, config.learning_rate, config.features, config.seed) == (
            section.train_steps, section.batch_size, section.learning_rate, section.features, 1)
    assert not configs["real_25"].augment and configs["classic_25"].augment


def test_a_missing_generator_names_the_notebook_and_the_command_that_make_it(tmp_path, monkeypatch):
    from histolab_utils.config import read_config
    from histolab_utils.stages.segmenter import load_generators

    monkeypatch.setenv("HISTO_RUNS_DIR", str(tmp_path / "runs"))
    with pytest.raises(FileNotFoundError, match=r"masks/pipeline does not exist: run notebook 06_nuclei_masks in the "
                                                r"smoke profile \(or `python -m histolab_utils.train masks`\)"):
        load_generators(read_config("smoke"))
    with pytest.raises(FileNotFoundError, match=r"spade-pixel/pipeline does not exist: run notebook 07_mask_to_image .*"
                                                r"train spade --space pixel`"):
        load_generators(read_config("smoke"), only=iter(["spade"]))


def test_a_release_made_on_an_earlier_split_is_refused_with_what_to_do(tmp_path, monkeypatch):
    """Split 3 moved hgsc_nest's held-out pixels into blocks that split 2 trained on: a split-2 release may neither
    be scored on today's held-out region nor feed later models, and the error says how to retrain it. The slide's
    masks model (its regions unchanged) stays usable; a machine's own run is used instead of a refused release."""
    import json

    from histolab_utils.data.datasets import SPLIT_VERSION
    from histolab_utils.stages.base import EarlierSplitError

    vqgan, masks = stage("vqgan"), stage("masks")
    for which, made_on in ((vqgan, 2), (masks, 2)):
        record = tmp_path / f"{which.notebook}.json"
        record.write_text(json.dumps({"split_version": made_on, "metrics": {}}))
        monkeypatch.setattr(type(which), "record_path", lambda self, profile, r=record: r)
    monkeypatch.setattr(type(vqgan), "model_folder", lambda self, profile, variant="": tmp_path / "no-run")
    monkeypatch.setattr(type(masks), "model_folder", lambda self, profile, variant="": tmp_path / "no-run")
    with pytest.raises(EarlierSplitError, match=r"vqgan-4ch-cpu was trained on split 2.*make results PROFILE=cpu ONLY=02_vqgan"):
        vqgan.model_or_release("cpu", "4ch")
    assert masks.model_or_release("cpu").name == "masks-cpu"
    (tmp_path / "no-run").mkdir()
    assert vqgan.model_or_release("cpu", "4ch") == tmp_path / "no-run"
    assert SPLIT_VERSION == 3


def test_loading_a_model_that_is_not_there_names_the_folder_and_the_notebook(tmp_path):
    from histolab_utils.stages.masks import MASKS

    with pytest.raises(FileNotFoundError, match=r"no masks model in .*nothing: run notebook 06_nuclei_masks"):
        MASKS.load(tmp_path / "nothing")
