"""Profiles as TOML files: the shipped ones, a researcher's own, inheritance and the errors that name key and file."""

from __future__ import annotations

import ast
import dataclasses
import tomllib
import typing
from pathlib import Path

import pytest

from histolab_utils import config
from histolab_utils.profiles import PROFILE_DIR, PROFILES, ProfileError


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_every_shipped_profile_is_a_file_and_loads():
    assert sorted(p.stem for p in PROFILE_DIR.glob("*.toml")) == sorted(PROFILES)
    for name in PROFILES:
        loaded = config.read_config(name)
        assert loaded.name == name and dataclasses.is_dataclass(loaded)


def test_cpu_extends_smoke_and_changes_what_it_makes_real():
    smoke, cpu = config.read_config("smoke"), config.read_config("cpu")
    assert cpu.ddpm != smoke.ddpm and cpu.ddpm.downsample == 2 and cpu.ddpm.n_eval == 500
    assert cpu.ddpm.ancestral_steps >= 250, "the issue asks for ancestral DDPM with at least 250 steps"
    assert cpu.vqgan.downsample == cpu.ddpm.downsample and cpu.vqgan.n_eval == 500  # notebook 02 at 03's scale
    assert cpu.ldm.max_eval_per_class >= 500 and 0.0 in cpu.ldm.guidance_scales  # 05: largest n, chance included
    # 06-08 at the smoke geometry (the scale of 09's segmenter), with real models and n = 500
    assert (cpu.masks.tile_size, cpu.masks.downsample) == (smoke.masks.tile_size, smoke.masks.downsample)
    assert (cpu.spade.tile_size, cpu.spade.downsample) == (smoke.spade.tile_size, smoke.spade.downsample)
    assert cpu.masks.n_eval == cpu.spade.n_eval == 500 and 0.0 in cpu.masks.guidance_scales
    assert cpu.masks.train_steps > smoke.masks.train_steps and cpu.joint.train_steps > smoke.joint.train_steps
    # 09: every tile of split 3's grids at the generators' scale, 5 seeds (issue 25), the arms the issues name
    # (issue 35: each add_<source>_75 also on top of classical augmentation)
    assert (cpu.segmentation.tile_size, cpu.segmentation.downsample) == (cpu.spade.tile_size, cpu.spade.downsample)
    assert cpu.segmentation.n_real == 489 and cpu.segmentation.n_test == 215 and len(cpu.segmentation.seeds) >= 5
    assert {"real_25", "classic_25", "duplicated_25", "real_100", "add_spade_real_75", "add_spade_generated_75",
            "add_joint_75", "classic_plus_spade_real_75", "classic_plus_spade_generated_75", "classic_plus_joint_75",
            "rare_spade_generated"} <= set(cpu.segmentation.arms)
    # 10: canvases of at least 1,024 x 1,024 slide px, at the generators' scale (issue 38)
    assert cpu.large_regions.canvas_size * cpu.spade.downsample >= 1024
    assert cpu.large_regions.canvas_size % cpu.spade.tile_size == 0 and cpu.large_regions.real_size == 0
    real = ("ddpm", "vqgan", "clusters", "ldm", "masks", "spade", "joint", "segmentation", "large_regions")  # 02-10
    for field in dataclasses.fields(smoke):
        if field.name not in ("name", *real):
            assert getattr(cpu, field.name) == getattr(smoke, field.name), field.name


def test_histo_profile_takes_a_name_or_a_researchers_file(tmp_path, monkeypatch):
    monkeypatch.delenv("HISTO_OVERRIDES", raising=False)
    monkeypatch.setenv("HISTO_PROFILE", "cpu")
    assert config.load_config().name == "cpu"
    mine = write(tmp_path / "my_gpu.toml", 'extends = "cpu"\n\n[ddpm]\ntrain_steps = 10\nlearning_rate = 1\n')
    monkeypatch.setenv("HISTO_PROFILE", str(mine))
    loaded = config.load_config()
    assert loaded.name == "my_gpu" and loaded.ddpm.train_steps == 10
    assert loaded.ddpm.learning_rate == 1.0 and isinstance(loaded.ddpm.learning_rate, float)
    assert loaded.ddpm.downsample == 2, "the rest comes from cpu"
    monkeypatch.setenv("HISTO_OVERRIDES", "ddpm.n_eval=12")
    assert config.load_config().ddpm.n_eval == 12, "HISTO_OVERRIDES applies on top of a file too"
    # a relative extends is read beside the file that names it
    child = write(tmp_path / "child.toml", 'extends = "my_gpu.toml"\n\n[ddpm]\nn_eval = 7\n')
    assert config.read_config(str(child)).ddpm.train_steps == 10


def test_training_defaults_fill_every_trained_section_that_does_not_set_them(tmp_path):
    path = write(tmp_path / "p.toml", 'extends = "smoke"\n\n[training]\nema_decay = 0.5\nmixed_precision = "no"\n\n'
                                      '[masks]\nema_decay = 0.25\n')
    loaded = config.read_config(str(path))
    assert loaded.ddpm.ema_decay == loaded.ldm.ema_decay == loaded.spade.ema_decay == loaded.joint.ema_decay == 0.5
    assert loaded.masks.ema_decay == 0.25, "a section's own key wins"
    assert {loaded.ddpm.mixed_precision, loaded.masks.mixed_precision, loaded.joint.mixed_precision} == {"no"}
    assert loaded.vqgan.mixed_precision == loaded.segmentation.mixed_precision == "no", "every trained model's section"
    smoke = config.read_config("smoke")
    assert loaded.vqgan == dataclasses.replace(smoke.vqgan, mixed_precision="no"), "only the fields a section has"
    assert loaded.segmentation == dataclasses.replace(smoke.segmentation, mixed_precision="no")
    assert loaded.clusters == smoke.clusters, "sections of no trained model inherit nothing"


@pytest.mark.parametrize("text, named", [
    ('[ddpm]\ntrain_stepz = 5\n', "train_stepz"),
    ('[ddpm]\ntrain_steps = "5"\n', "[ddpm] train_steps must be int"),
    ('[ddpm]\ntrain_steps = 5.5\n', "train_steps"),
    ('[ddpm]\nattention = 1\n', "[ddpm] attention must be bool"),
    ('[ddpm]\nblock_out_channels = [16, "x"]\n', "block_out_channels[1]"),
    ('[ddpm]\nsampler_steps = [["ddim", 50, 1]]\n', "sampler_steps[0]"),
    ('[training]\nema_decai = 0.5\n', "[training] has no key 'ema_decai'"),
    ('[trainig]\nema_decay = 0.5\n', "'trainig'"),
    ('seed = "zero"\n', "seed must be int"),
])
def test_a_bad_key_or_type_names_the_key_and_the_file(tmp_path, text, named):
    path = write(tmp_path / "bad.toml", 'extends = "smoke"\n' + text)
    with pytest.raises(ProfileError, match="bad.toml") as error:
        config.read_config(str(path))
    assert named in str(error.value)


def test_the_guidance_scale_has_one_name_in_every_profile_and_section():
    """diffusers' ``guidance_scale``: no section declares, and no shipped profile sets, ``guidance``."""
    hints = typing.get_type_hints(config.ProfileConfig)
    sections = {name: hints[name] for name in hints if name not in ("name", "seed")}
    assert [n for n, cls in sections.items() if issubclass(cls, config.GuidedDiffusion)] == ["ldm", "masks", "spade",
                                                                                            "joint"]
    for name, cls in sections.items():
        fields = {f.name for f in dataclasses.fields(cls)}
        assert not fields & set(config.RENAMED_KEYS), f"[{name}] declares an old key name"
        assert ("guidance_scale" in fields) == issubclass(cls, config.GuidedDiffusion), name
    for name in PROFILES:
        tables = tomllib.loads((PROFILE_DIR / f"{name}.toml").read_text())
        old = [f"[{section}] {key}" for section, table in tables.items() if isinstance(table, dict)
               for key in table if key in config.RENAMED_KEYS]
        assert old == [], f"{name}.toml uses old key names: {old}"


@pytest.mark.parametrize("section", ["ldm", "masks", "spade", "joint", "training"])
def test_an_old_guidance_key_says_to_rename_it_to_guidance_scale(tmp_path, section):
    path = write(tmp_path / "old.toml", f'extends = "smoke"\n[{section}]\nguidance = 2.0\n')
    with pytest.raises(ProfileError, match=rf"old.toml: \[{section}\] has no key 'guidance'; it was renamed: rename "
                                           rf"it to 'guidance_scale'"):
        config.read_config(str(path))
    if section != "training":
        with pytest.raises(ValueError, match="has no field 'guidance'; it was renamed: rename it to 'guidance_scale'"):
            config.apply_overrides(config.read_config("smoke"), f"{section}.guidance=2.0")


def test_a_training_default_of_the_wrong_type_names_the_training_table(tmp_path):
    path = write(tmp_path / "bad.toml", 'extends = "smoke"\n[training]\nema_decay = "high"\n')
    with pytest.raises(ProfileError, match=r"bad.toml: \[training\] ema_decay must be float"):
        config.read_config(str(path))


def test_missing_files_sections_keys_and_loops_are_errors_that_say_where(tmp_path, monkeypatch):
    with pytest.raises(ProfileError, match="nowhere.toml does not exist"):
        config.read_config(str(tmp_path / "nowhere.toml"))
    monkeypatch.setenv("HISTO_PROFILE", str(tmp_path / "nowhere.toml"))
    with pytest.raises(ProfileError, match="HISTO_PROFILE=.*nowhere.toml"):
        config.load_config()
    with pytest.raises(ProfileError, match="unknown profile 'medium'"):
        config.read_config("medium")
    alone = write(tmp_path / "alone.toml", "seed = 0\n[data_tour]\ncrop_size = 8\nn_crops = 1\ngallery_size = 1\n")
    with pytest.raises(ProfileError, match=r"alone.toml: the profile has no \[tiling\] table"):
        config.read_config(str(alone))
    short = write(tmp_path / "short.toml", 'extends = "smoke"\n')
    text = (PROFILE_DIR / "smoke.toml").read_text().replace("crop_size = 64\n", "")
    write(short, text)
    with pytest.raises(ProfileError, match=r"short.toml: \[data_tour\] lacks 'crop_size'"):
        config.read_config(str(short))
    write(tmp_path / "a.toml", 'extends = "b.toml"\n')
    write(tmp_path / "b.toml", 'extends = "a.toml"\n')
    with pytest.raises(ProfileError, match="loop"):
        config.read_config(str(tmp_path / "a.toml"))
    broken = write(tmp_path / "broken.toml", "[ddpm\n")
    with pytest.raises(ProfileError, match="broken.toml: not valid TOML"):
        config.read_config(str(broken))


def test_config_py_holds_no_profile_literal():
    """The profiles live in their files: config.py never calls a section's constructor with values."""
    tree = ast.parse(Path(config.__file__).read_text())
    sections = {f.type for f in dataclasses.fields(config.ProfileConfig)} | {"ProfileConfig"}
    literals = [node.lineno for node in ast.walk(tree) if isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name) and node.func.id in sections and node.keywords
                and any(isinstance(k.value, ast.Constant) for k in node.keywords)]
    assert literals == [], f"config.py builds a profile from literals at lines {literals}"


def test_the_profile_files_ship_with_the_package():
    pyproject = tomllib.loads((Path(config.__file__).parents[1] / "pyproject.toml").read_text())
    assert "*.toml" in pyproject["tool"]["setuptools"]["package-data"]["histolab_utils.profiles"]
    assert pyproject["project"]["requires-python"] == ">=3.11", "tomllib is in the standard library from 3.11"


def test_the_cli_and_the_runner_take_a_profile_file(tmp_path, capsys):
    from histolab_utils import runner, train

    with pytest.raises(SystemExit):
        train.main(["ddpm", "--schedule", "cosine", "--profile", str(tmp_path / "missing.toml"),
                    "--out", str(tmp_path / "run")])
    assert "missing.toml does not exist" in capsys.readouterr().err
    assert runner.main(["--profile", str(tmp_path / "missing.toml"), "--only", "03"]) == 2
    assert "missing.toml does not exist" in capsys.readouterr().err


def test_the_generators_and_the_segmenter_must_share_one_scale(tmp_path):
    path = write(tmp_path / "p.toml", 'extends = "smoke"\n\n[spade]\ndownsample = 1\n')
    with pytest.raises(config.ProfileError, match=r"share one scale.*\[spade\] downsample = 1 \(.*p.toml\)"):
        config.read_config(str(path))
    both = write(tmp_path / "q.toml", 'extends = "smoke"\n\n[masks]\ndownsample = 1.0\n\n[spade]\ndownsample = 1\n\n'
                                      '[segmentation]\ndownsample = 1\n')
    assert config.read_config(str(both)).segmentation.downsample == 1
