"""The training recipes of benchmarks/recipes.py: min-SNR weights, EDM's preconditioning and samplers, the power
EMA, the constant learning rate and set norm groups; each trains, saves and resumes; a bad setting is named."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from histolab_utils.diffusion.edm import edm_loss, edm_scheduler, preconditioning
from histolab_utils.diffusion.prediction import min_snr_weight
from histolab_utils.diffusion.sampling import sample, unet_denoiser
from histolab_utils.diffusion.schedules import make_scheduler
from histolab_utils.diffusion.training import DiffusionTrainer, TrainConfig
from histolab_utils.diffusion.unets import build_unet

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(image_size=16, batch_size=4, block_out_channels=(8, 16), layers_per_block=1, warmup_steps=2,
            learning_rate=1e-3, ema_decay=0.9, mixed_precision="no", checkpoint_every=2)


@pytest.fixture(scope="module")
def crops():
    return np.random.default_rng(0).integers(0, 256, (32, 16, 16, 3), dtype=np.uint8)


def load_benchmark():
    spec = importlib.util.spec_from_file_location("recipes_benchmark", ROOT / "benchmarks" / "recipes.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_min_snr_weights_cap_the_x0_weight_at_gamma(prediction_type):
    """Written in x0 space, every prediction type's min-SNR weight is min(SNR, γ): ε-MSE weighs x0 errors by
    SNR, v-MSE by SNR + 1 and x0-MSE by 1 (Hang et al. 2023, section 3.4)."""
    scheduler = make_scheduler("ddpm", "cosine", prediction_type=prediction_type)
    t = torch.arange(0, 1000, 37)
    alpha_bar = scheduler.alphas_cumprod[t].double()
    snr = alpha_bar / (1 - alpha_bar)
    x0_weight_of_plain_mse = {"epsilon": snr, "v_prediction": snr + 1, "sample": torch.ones_like(snr)}[prediction_type]
    weight = min_snr_weight(scheduler, t, gamma=5.0).double()
    torch.testing.assert_close(weight * x0_weight_of_plain_mse, snr.clamp(max=5.0), rtol=1e-4, atol=1e-6)
    if prediction_type != "sample":  # ε- and v-MSE over-weigh nearly clean steps: min-SNR weighs them down
        assert weight[0] < weight[-5]


def test_edm_preconditioning_gives_unit_variance_inputs_and_targets():
    """EDM's Table 1: with data of std σ_d, c_in·(x + σn) and the effective target have unit variance at every σ."""
    generator = torch.Generator().manual_seed(0)
    x0 = 0.5 * torch.randn(4000, 1, 1, 1, generator=generator)
    for sigma in (0.01, 0.5, 5.0, 80.0):
        c = preconditioning(torch.full((4000,), sigma))
        noisy = x0 + sigma * torch.randn(x0.shape, generator=generator)
        target = (x0 - c["c_skip"] * noisy) / c["c_out"]
        assert abs(float((c["c_in"] * noisy).std()) - 1) < 0.05, sigma
        assert abs(float(target.std()) - 1) < 0.05, sigma


def test_a_perfect_denoiser_has_zero_edm_loss():
    """F that outputs exactly the effective target (it knows x0) scores 0; a zero F does not."""
    x0 = torch.rand(6, 3, 4, 4) * 2 - 1
    noise, normal = torch.randn_like(x0), torch.randn(6)

    class Oracle(torch.nn.Module):
        def forward(self, scaled, c_noise):
            sigma = (4 * c_noise).exp()
            c = preconditioning(sigma)
            noisy = scaled / c["c_in"]
            return type("Out", (), {"sample": (x0 - c["c_skip"] * noisy) / c["c_out"]})

    assert float(edm_loss(Oracle(), x0, noise, normal)) < 1e-8
    zero = lambda scaled, c_noise: type("Out", (), {"sample": torch.zeros_like(scaled)})  # noqa: E731
    assert float(edm_loss(zero, x0, noise, normal)) > 0.1


def test_power_ema_follows_karras_2024(tmp_path, crops):
    config = TrainConfig(steps=3, ema="power", ema_gamma=6.94, **TINY)
    trainer = DiffusionTrainer(config, crops, tmp_path, progress=False)
    assert [trainer.ema.get_decay(t) for t in (1, 2, 100)] == pytest.approx([0.0, 0.5 ** 7.94, 0.99 ** 7.94])


def test_constant_learning_rate_stays_after_warm_up(tmp_path, crops):
    trainer = DiffusionTrainer(TrainConfig(steps=6, lr_schedule="constant", **TINY), crops, tmp_path, progress=False)
    log = trainer.train()
    assert log["lr"].iloc[-3:].tolist() == [1e-3] * 3
    cosine = DiffusionTrainer(TrainConfig(steps=6, **TINY), crops, tmp_path / "cosine", progress=False).train()
    assert cosine["lr"].iloc[-1] < 1e-3 / 2, "the default decays"


def test_norm_groups_can_be_set():
    unet = build_unet(TrainConfig(norm_num_groups=8, **TINY))
    assert {m.num_groups for m in unet.modules() if isinstance(m, torch.nn.GroupNorm)} == {8}


@pytest.mark.parametrize("field, value", [("loss_weighting", "snr"), ("preconditioning", "vp"),
                                          ("lr_schedule", "linear"), ("ema", "karras")])
def test_an_unknown_recipe_setting_is_named(tmp_path, crops, field, value):
    with pytest.raises(ValueError, match=f"{field}.*{value!r}"):
        DiffusionTrainer(TrainConfig(**{field: value}, **TINY), crops, tmp_path, progress=False)


def test_edm_refuses_settings_it_has_no_meaning_for(tmp_path, crops):
    with pytest.raises(ValueError, match="loss_weighting='uniform'"):
        DiffusionTrainer(TrainConfig(preconditioning="edm", loss_weighting="min_snr", **TINY), crops, tmp_path,
                         progress=False)


@pytest.mark.parametrize("recipe", ["today", "min_snr", "plain_loop", "edm", "power_ema", "attention"])
def test_each_pixel_recipe_trains_saves_and_resumes_exactly(tmp_path, crops, recipe):
    """A recipe of the study, on tiny data: 2 + 2 steps resumed give the weights of 4 straight, and the saved EMA
    UNet samples with the recipe's own sampler."""
    benchmark = load_benchmark()
    changes = benchmark.RECIPES[recipe].changes  # at the cpu profile's widths: 32 norm groups need 32 channels
    config = TrainConfig(steps=4, schedule="cosine", prediction_type="v_prediction",
                         **{**TINY, "block_out_channels": (32, 32), **changes})
    straight = DiffusionTrainer(config, crops, tmp_path / "straight", progress=False)
    straight.train()
    resumed = DiffusionTrainer(config, crops, tmp_path / "resumed", progress=False)
    resumed.train(steps=2)
    again = DiffusionTrainer(config, crops, tmp_path / "resumed", progress=False)
    again.train(resume=True)
    for a, b in zip(straight.ema_unet().parameters(), again.ema_unet().parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    scheduler, steps = next(iter(benchmark.samplers(recipe).values()))
    images = sample(unet_denoiser(straight.ema_unet()), scheduler, 2, 16, steps=3)
    assert images.shape == (2, 16, 16, 3) and images.dtype == np.uint8


def test_a_checkpoint_from_before_the_recipe_fields_resumes(tmp_path, crops):
    """Runs in progress were saved before TrainConfig learnt its recipe fields: absent, they held the defaults."""
    config = TrainConfig(steps=4, **TINY)
    DiffusionTrainer(config, crops, tmp_path, progress=False).train(steps=2)
    state = tmp_path / "checkpoints" / "step-2" / "trainer.json"
    saved = json.loads(state.read_text())
    for name in ("loss_weighting", "snr_gamma", "preconditioning", "lr_schedule", "ema", "ema_gamma",
                 "norm_num_groups"):
        del saved["config"][name]
    state.write_text(json.dumps(saved))
    trainer = DiffusionTrainer(config, crops, tmp_path, progress=False)
    trainer.train(resume=True)
    assert trainer.step == 4
    with pytest.raises(ValueError, match="loss_weighting"):
        DiffusionTrainer(dataclasses.replace(config, loss_weighting="min_snr", steps=6), crops, tmp_path,
                         progress=False).train(resume=True)


def test_the_edm_sampler_is_karras_rho_7_from_sigma_max():
    scheduler = edm_scheduler("dpm")
    scheduler.set_timesteps(10)
    assert float(scheduler.sigmas[0]) == pytest.approx(80.0) and float(scheduler.sigmas[-1]) == 0.0
    with pytest.raises(ValueError, match="'heun'"):
        edm_scheduler("heun")


def test_the_benchmark_reads_finished_runs_back_from_its_table(tmp_path):
    benchmark = load_benchmark()
    table = tmp_path / "recipes.json"
    table.write_text(json.dumps({"split_version": benchmark.SPLIT_VERSION,
                                 "runs": [{"recipe": "today", "seed": 0, "steps": 10, "rows": []}]}))
    assert benchmark.published_run("today", 0, 10, table)["steps"] == 10
    assert benchmark.published_run("today", 0, 11, table) is None, "another step count is another run"
    assert benchmark.published_run("today", 1, 10, table) is None


def test_a_table_of_another_split_is_not_reused(tmp_path):
    """The study of split 2 stays in its own table: a run under split 3 reuses none of its rows."""
    benchmark = load_benchmark()
    table = tmp_path / "recipes.json"
    table.write_text(json.dumps({"split_version": benchmark.SPLIT_VERSION - 1,
                                 "runs": [{"recipe": "today", "seed": 0, "steps": 10, "rows": []}]}))
    assert benchmark.published_run("today", 0, 10, table) is None


# -- recipes by name (diffusion/recipes.py), as profiles name them ----------------------------------------------
@pytest.mark.parametrize("name", sorted(__import__("histolab_utils.diffusion.recipes", fromlist=["x"]).TRAINING_RECIPES))
def test_each_named_recipe_trains_and_saves(tmp_path, crops, name):
    from histolab_utils.diffusion.recipes import recipe_settings
    from histolab_utils.diffusion.training import check_recipe

    config = TrainConfig(steps=2, schedule="cosine", prediction_type="v_prediction",
                         **{**TINY, "block_out_channels": (32, 32), **recipe_settings(name)})
    check_recipe(config)
    trainer = DiffusionTrainer(config, crops, tmp_path / name, progress=False)
    trainer.train()
    assert trainer.step == 2 and np.isfinite(trainer.log[-1]["loss"])
    saved = trainer.save_pipeline()
    assert (Path(saved) / "unet" / "config.json").is_file()


def test_an_unknown_recipe_is_named_with_the_known_ones():
    from histolab_utils.diffusion.recipes import recipe_settings

    with pytest.raises(ValueError, match="unknown training recipe 'min-snr'.*baseline, min_snr"):
        recipe_settings("min-snr")


def test_a_profile_names_a_recipe_once_and_explicit_settings_win(tmp_path):
    from histolab_utils import config
    from histolab_utils.profiles import ProfileError
    from histolab_utils.stages import stage

    path = tmp_path / "p.toml"
    path.write_text('extends = "cpu"\n\n[training]\nrecipe = "min_snr"\n\n[masks]\nloss_weighting = "uniform"\n\n'
                    '[joint]\nrecipe = "power_ema"\n')
    loaded = config.read_config(str(path))
    for section in ("ddpm", "ldm", "spade"):
        assert getattr(loaded, section).recipe == "min_snr" and getattr(loaded, section).loss_weighting == "min_snr"
    assert loaded.masks.loss_weighting == "uniform", "a section's own setting beats the recipe"
    assert loaded.joint.ema == "power" and loaded.joint.loss_weighting == "uniform", "a section names its own recipe"
    for name in ("ddpm", "spade"):  # the trainer gets what the profile says (the LDM's config also needs its data)
        assert stage(name).train_config(loaded).loss_weighting == "min_snr", name
    assert stage("joint").train_config(loaded).ema == "power" and stage("masks").train_config(loaded).ema == "diffusers"
    path.write_text('extends = "cpu"\n\n[training]\nrecipe = "min_snr"\nloss_weighting = "uniform"\n')
    assert config.read_config(str(path)).ddpm.loss_weighting == "uniform", "[training]'s own setting beats its recipe"
    path.write_text('extends = "cpu"\n\n[training]\nrecipe = "min-snr"\n')
    with pytest.raises(ProfileError, match=r"p.toml: \[training\] recipe: unknown training recipe 'min-snr'"):
        config.read_config(str(path))


def test_a_recipe_whose_validation_score_is_not_independent_is_never_chosen_for_a_second_seed():
    benchmark = load_benchmark()
    records = [{"recipe": name, "seed": 0, "rows": [{"fid_vs_validation": fid}]}
               for name, fid in [("today", 120.0), ("min_snr", 110.0), ("latent", 90.0), ("edm", 130.0)]]
    assert benchmark.best_by_validation(records) == ["latent", "min_snr"]
    assert benchmark.best_by_validation(records, exclude=["latent"]) == ["min_snr", "today"]


@pytest.mark.parametrize("profile", ["cpu", "full"])
def test_every_diffusion_model_of_a_real_profile_trains_with_the_whole_adopted_recipe(profile):
    """A recipe never overrides a shape a profile sets, and cpu inherits smoke's layers_per_block = 1: the adopted
    recipe's every setting must still reach each diffusion model's trainer, or the study's winner is not what trains."""
    from histolab_utils.config import load_config
    from histolab_utils.diffusion.recipes import recipe_settings
    from histolab_utils.stages import stage

    loaded = load_config(profile)
    adopted = loaded.ddpm.recipe
    assert adopted != "baseline", f"the {profile} profile adopts the study's recipe"
    # the study measured the image DDPM; cpu's mask generator keeps the baseline, whose split-2 release passed
    # notebook 06's sanity check where the plain loop at equal minutes did not (cpu.toml says why)
    own_recipe = {"cpu": {"masks": "baseline"}, "full": {}}[profile]
    for name in ("ddpm", "masks", "spade", "joint"):
        named = own_recipe.get(name, adopted)
        assert getattr(loaded, name).recipe == named, (profile, name)
        trained = stage(name).train_config(loaded)
        for key, value in recipe_settings(named).items():
            assert getattr(trained, key) == value, (profile, name, key)
        if named == "baseline":  # and its shape is the baseline's, not the plain loop's that [training] sets
            assert (trained.layers_per_block, trained.norm_num_groups) == (1, 8), (profile, name)
    for key, value in recipe_settings(adopted).items():  # the LDM's trainer config also needs its latents
        assert getattr(loaded.ldm, key) == value, (profile, "ldm", key)


def test_the_study_rows_keep_the_shape_they_were_measured_at_whatever_the_profile_adopts():
    """The cpu profile adopted the plain loop (2 layers per block, 32 norm groups) after the study: its "today" row
    must still train the baseline at 1 layer and the narrow-UNet groups, and each ablation row change one thing."""
    benchmark = load_benchmark()
    today = benchmark.recipe_config("today", 0)
    assert (today.layers_per_block, today.norm_num_groups, today.lr_schedule) == (1, 0, "cosine")
    plain = benchmark.recipe_config("plain_loop", 0)
    assert (plain.layers_per_block, plain.norm_num_groups, plain.lr_schedule) == (2, 32, "constant")
    for row, (field, value) in {"depth_2": ("layers_per_block", 2), "norm_groups_32": ("norm_num_groups", 32),
                                "constant_lr": ("lr_schedule", "constant")}.items():
        config = benchmark.recipe_config(row, 0)
        changed = {f.name for f in dataclasses.fields(config)
                   if getattr(config, f.name) != getattr(today, f.name) and f.name not in ("extra",)}
        assert changed == {field} and getattr(config, field) == value, row
