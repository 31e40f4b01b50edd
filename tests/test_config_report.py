from __future__ import annotations

import dataclasses
import json
import math
import os

import numpy as np
import pytest
import torch

from histolab_utils import config, report


def test_profile_comes_from_the_environment(monkeypatch):
    monkeypatch.delenv("HISTO_PROFILE", raising=False)
    assert config.load_config().name == "smoke"
    monkeypatch.setenv("HISTO_PROFILE", "full")
    assert config.load_config().name == "full"
    monkeypatch.setenv("HISTO_PROFILE", "fast")
    with pytest.raises(ValueError, match="HISTO_PROFILE='fast'"):
        config.load_config()


def test_profiles_differ_only_in_sizes_and_are_frozen():
    smoke, full = config.load_config("smoke"), config.load_config("full")
    assert type(smoke.data_tour) is type(full.data_tour)
    assert full.data_tour.n_crops > smoke.data_tour.n_crops
    with pytest.raises(dataclasses.FrozenInstanceError):
        smoke.seed = 1  # type: ignore[misc]
    with pytest.raises(ValueError, match="unknown profile"):
        config.load_config("medium")


def test_seed_everything_reproduces_random_streams():
    config.seed_everything(7)
    first = (torch.rand(3), np.random.rand(3))
    config.seed_everything(7)
    second = (torch.rand(3), np.random.rand(3))
    assert torch.equal(first[0], second[0]) and np.array_equal(first[1], second[1])


def test_deterministic_mode_really_takes_effect():
    try:
        config.seed_everything(0, deterministic=True)
        assert torch.are_deterministic_algorithms_enabled()
    finally:
        torch.use_deterministic_algorithms(False)


def test_setup_notebook_prints_the_config(capsys, isolated_dirs):
    ctx = config.setup_notebook("00_data_tour", profile="smoke")
    out = capsys.readouterr().out
    assert "profile smoke" in out and "data_tour.crop_size = 64" in out
    assert ctx.device.type in {"cpu", "cuda"} and ctx.elapsed() >= 0


def test_save_metrics_writes_stamped_json_atomically(isolated_dirs):
    path = report.save_metrics(
        "00_demo", {"n": np.int64(3), "score": np.float32(0.5), "bad": math.nan, "arr": np.arange(3)},
        profile="smoke", wall_time_s=1.234, headline=["n", "score"],
    )
    assert path == isolated_dirs / "reports" / "smoke" / "metrics" / "00_demo.json"
    record = json.loads(path.read_text())
    assert record["metrics"] == {"n": 3, "score": 0.5, "bad": None, "arr": [0, 1, 2]}
    assert record["profile"] == "smoke" and record["wall_time_s"] == 1.23
    assert record["hardware"]["cpu_count"] >= 1 and "torch" in record["packages"]
    assert "git_commit" in record and record["headline"] == ["n", "score"]
    assert [p.name for p in path.parent.iterdir()] == ["00_demo.json"], "no temporary file left"


def test_save_metrics_rejects_bad_input(isolated_dirs):
    with pytest.raises(KeyError, match="missing"):
        report.save_metrics("00_demo", {"a": 1}, headline=["missing"])
    with pytest.raises(ValueError, match="bare name"):
        report.save_metrics("notebooks/00_demo.ipynb", {"a": 1})
    with pytest.raises(TypeError, match="object"):
        report.save_metrics("00_demo", {"a": object()})
    assert not (isolated_dirs / "reports" / "smoke" / "metrics" / "00_demo.json").exists()


def test_summary_lists_each_notebook_with_its_headline(isolated_dirs):
    report.save_metrics("00_a", {"n_images": 8, "other": 1}, profile="smoke", headline=["n_images"])
    text = report.build_summary(
        [{"notebook": "00_a", "status": "ok", "wall_time_s": 3.21},
         {"notebook": "01_b", "status": "failed", "wall_time_s": 1.0}], "smoke")
    assert "| 00_a | ok | 3.2 | n_images=8 |" in text
    assert "| 01_b | failed | 1.0 | (no metrics written) |" in text
    assert "not quality results" in text


def test_every_profile_compares_prediction_types_and_schedules_with_the_default():
    from histolab_utils.diffusion.prediction import DEFAULT_PREDICTION_TYPE, PREDICTION_TYPES
    from histolab_utils.diffusion.schedules import SCHEDULES

    for profile in config.PROFILES:
        cfg = config.load_config(profile)
        assert cfg.ddpm.prediction_type == cfg.ldm.prediction_type == DEFAULT_PREDICTION_TYPE
        models = set(cfg.ddpm.models)
        assert all(s in SCHEDULES and p in PREDICTION_TYPES for s, p in models) and len(models) == len(cfg.ddpm.models)
        assert {(s, DEFAULT_PREDICTION_TYPE) for s in SCHEDULES} <= models, "the schedule comparison needs every schedule"
        assert any((s, "epsilon") in models for s in SCHEDULES), "ε against v on at least one schedule"
    assert set(config.load_config("full").ddpm.models) == {(s, p) for s in SCHEDULES for p in ("epsilon", "v_prediction")}


def test_the_cli_names_an_impossible_parameterisation(tmp_path, capsys):
    from histolab_utils import train

    with pytest.raises(SystemExit):
        train.main(["ddpm", "--schedule", "cosine", "--prediction-type", "epsilon", "--zero-terminal-snr",
                    "--profile", "smoke", "--out", str(tmp_path / "run")])
    assert "--zero-terminal-snr needs --prediction-type v_prediction or sample" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
    with pytest.raises(SystemExit):
        train.main(["ddpm", "--schedule", "cosine", "--prediction-type", "x0", "--out", str(tmp_path / "run")])
    assert "invalid choice: 'x0'" in capsys.readouterr().err

def test_overrides_replace_fields_keep_types_and_name_bad_input(monkeypatch):
    from histolab_utils.config import apply_overrides, load_config

    base = load_config("full")
    changed = apply_overrides(base, "masks.train_steps=6000, masks.block_out_channels=(32, 64),masks.learning_rate=1")
    assert changed.masks.train_steps == 6000 and changed.masks.block_out_channels == (32, 64)
    assert changed.masks.learning_rate == 1.0 and base.masks.train_steps == 20000  # the frozen original is untouched
    monkeypatch.setenv("HISTO_OVERRIDES", "ddpm.n_eval=12")
    assert load_config("smoke").ddpm.n_eval == 12
    for bad, named in [("masks.train_step=5", "train_step"), ("mask.train_steps=5", "mask"),
                       ("masks.train_steps='5'", "train_steps"), ("masks.train_steps", "section.field=value"),
                       ("masks.train_steps=five", "not a Python literal")]:
        with pytest.raises(ValueError, match=named):
            apply_overrides(base, bad)


def test_the_notebook_context_names_its_hardware():
    from histolab_utils.config import NotebookContext, load_config

    ctx = NotebookContext("00_data_tour", load_config("smoke"), torch.device("cpu"), 0.0)
    assert f"{os.cpu_count()} cores" in ctx.hardware and "bf16" in ctx.hardware  # in words: model, cores, bf16 kind


def test_chosen_setting_reads_this_machines_run_then_the_published_one_and_skips_earlier_splits(
        tmp_path, monkeypatch):
    monkeypatch.setattr(report, "metrics_dir", lambda profile=None: tmp_path / "reports")
    monkeypatch.setattr(report, "results_dir", lambda profile=None: tmp_path / "results")
    assert report.chosen_setting("06_x", "guidance_scale", "cpu", 2.0) == 2.0  # nothing recorded: the profile's value
    (tmp_path / "results").mkdir()
    published, local = tmp_path / "results" / "06_x.json", tmp_path / "reports" / "06_x.json"
    published.write_text(json.dumps({"split_version": 2, "metrics": {"guidance_scale": 1.5}}))
    assert report.chosen_setting("06_x", "guidance_scale", "cpu", 2.0) == 2.0  # chosen on split 2: passed over
    # unless the model's data is the same since split 2 (its stage's split_unchanged_since): then that choice holds
    assert report.chosen_setting("06_x", "guidance_scale", "cpu", 2.0, valid_since=2) == 1.5
    assert report.chosen_setting("06_x", "guidance_scale", "cpu", 2.0, valid_since=3) == 2.0
    published.write_text(json.dumps({"split_version": 3, "metrics": {"guidance_scale": 1.0}}))
    assert report.chosen_setting("06_x", "guidance_scale", "cpu", 2.0) == 1.0
    (tmp_path / "reports").mkdir()
    local.write_text(json.dumps({"metrics": {"guidance_scale": 3.0}}))  # before the strip
    assert report.chosen_setting("06_x", "guidance_scale", "cpu", 2.0) == 1.0
    local.write_text(json.dumps({"split_version": 3, "metrics": {"guidance_scale": 4.0}}))
    assert report.chosen_setting("06_x", "guidance_scale", "cpu", 2.0) == 4.0
    # the released model's setting is the published record's, whatever this machine's run chose
    assert report.chosen_setting("06_x", "guidance_scale", "cpu", 2.0, published_only=True) == 1.0
    # a record from before the rename holds the old key: it says which key to rename, never falls back silently
    local.write_text(json.dumps({"split_version": 3, "metrics": {"guidance": 4.0}}))
    with pytest.raises(ValueError, match=r"06_x.json: .*'guidance', the old name of 'guidance_scale': rename the key"):
        report.chosen_setting("06_x", "guidance_scale", "cpu", 2.0)


def test_published_metrics_of_an_earlier_split_are_absent_for_a_section_that_recomputes_them(tmp_path, monkeypatch):
    monkeypatch.setattr(report, "results_dir", lambda profile=None: tmp_path)
    (tmp_path / "04_x.json").write_text(json.dumps({"split_version": 2, "metrics": {"n_tiles": 3}}))
    assert report.published_metrics("04_x", "cpu")["metrics"] == {"n_tiles": 3}  # still shown as a record
    assert report.published_metrics("04_x", "cpu", this_split=True) is None
    (tmp_path / "04_x.json").write_text(json.dumps({"split_version": 3, "metrics": {"n_tiles": 3}}))
    assert report.published_metrics("04_x", "cpu", this_split=True)["metrics"] == {"n_tiles": 3}
