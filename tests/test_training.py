from __future__ import annotations

import contextlib
import dataclasses

import numpy as np
import pytest
import torch

from histolab_utils.diffusion.sampling import sample, unet_denoiser
from histolab_utils.diffusion.schedules import make_scheduler
from histolab_utils.diffusion.training import DiffusionTrainer, TrainConfig
from histolab_utils.engine.precision import resolve_mixed_precision
from histolab_utils.engine.trainer import TrainingDiverged

TINY = dict(image_size=16, batch_size=4, block_out_channels=(8, 16), layers_per_block=1, warmup_steps=2,
            learning_rate=1e-3, ema_decay=0.9)


@pytest.fixture(scope="module")
def crops():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (32, 16, 16, 3), dtype=np.uint8)


def weights(trainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in trainer.accelerator.unwrap_model(trainer.model).state_dict().items()}


def test_resume_is_bitwise_identical_to_training_straight_through(tmp_path, crops):
    config = TrainConfig(schedule="cosine", steps=8, checkpoint_every=4, **TINY)
    straight = DiffusionTrainer(config, crops, tmp_path / "straight", progress=False)
    straight.train()

    first = DiffusionTrainer(config, crops, tmp_path / "resumed", progress=False)
    first.train(steps=4)
    second = DiffusionTrainer(config, crops, tmp_path / "resumed", progress=False)
    second.train(resume=True)
    assert second.step == 8
    a, b = weights(straight), weights(second)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ema_a = dict(straight.ema_unet().state_dict())
    ema_b = dict(second.ema_unet().state_dict())
    assert all(torch.equal(ema_a[k], ema_b[k]) for k in ema_a)
    assert list(second.loss_frame()["loss"]) == list(straight.loss_frame()["loss"])


def test_a_nan_loss_stops_training_and_keeps_the_last_good_checkpoint(tmp_path, crops, monkeypatch):
    config = TrainConfig(schedule="linear", steps=10, checkpoint_every=3, **TINY)
    trainer = DiffusionTrainer(config, crops, tmp_path, progress=False)
    original = trainer._loss
    monkeypatch.setattr(trainer, "_loss", lambda *args: original(*args) * (float("nan") if trainer.step == 4 else 1.0))
    with pytest.raises(TrainingDiverged, match=r"loss became nan at step 5 .*step-3"):
        trainer.train()
    kept = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert kept == ["step-3"]
    resumed = DiffusionTrainer(config, crops, tmp_path, progress=False)
    assert resumed.resume() and resumed.step == 3


def test_sigmoid_model_is_saved_as_a_loadable_pipeline_and_samples_with_every_sampler(tmp_path, crops):
    from diffusers import DDPMPipeline

    config = TrainConfig(schedule="sigmoid", steps=3, checkpoint_every=3, **TINY)
    trainer = DiffusionTrainer(config, crops, tmp_path, progress=False)
    log = trainer.train()
    assert list(log.columns) == ["step", "loss", "lr"] and len(log) == 3 and (tmp_path / "loss.csv").is_file()
    folder = trainer.save_pipeline()
    pipeline = DDPMPipeline.from_pretrained(folder)
    assert np.allclose(pipeline.scheduler.betas.numpy(), make_scheduler("ddpm", "sigmoid").betas.numpy())
    denoiser = unet_denoiser(pipeline.unet)
    for sampler, steps in (("ddim", 5), ("dpm", 5), ("ddpm", 5)):
        images = sample(denoiser, make_scheduler(sampler, "sigmoid"), n=2, image_size=16, steps=steps)
        assert images.shape == (2, 16, 16, 3) and images.dtype == np.uint8
    out = pipeline(batch_size=1, num_inference_steps=2, output_type="np")
    assert out.images.shape == (1, 16, 16, 3)


def test_bad_crops_are_rejected(tmp_path):
    config = TrainConfig(steps=1, **TINY)
    with pytest.raises(ValueError, match=r"are 8x8 px but config.image_size is 16"):
        DiffusionTrainer(config, np.zeros((4, 8, 8, 3), np.uint8), tmp_path)
    with pytest.raises(ValueError, match=r"float latents \[N, C, H, W\], shape \(4, 16, 16, 3\)"):
        DiffusionTrainer(config, np.zeros((4, 16, 16, 3), np.float32), tmp_path)
    with pytest.raises(ValueError, match="have 4 channels but config.in_channels is 3"):
        DiffusionTrainer(config, np.zeros((4, 4, 16, 16), np.float32), tmp_path)
    with pytest.raises(ValueError, match="give labels exactly when the config is conditional"):
        DiffusionTrainer(config, np.zeros((4, 16, 16, 3), np.uint8), tmp_path, labels=np.zeros(4, int))


def test_class_conditional_latent_training_drops_labels_to_the_null_class(tmp_path):
    latents = np.random.default_rng(0).normal(size=(6, 4, 8, 8)).astype(np.float32)
    labels = np.array([0, 1, 2, 0, 1, 2])
    config = TrainConfig(steps=2, checkpoint_every=2, in_channels=4, num_classes=3, label_dropout=0.5,
                         **{**TINY, "image_size": 8})
    trainer = DiffusionTrainer(config, latents, tmp_path, progress=False, labels=labels)
    x, y = trainer.batches.draw(400)
    assert x.shape == (400, 4, 8, 8) and set(y.tolist()) == {0, 1, 2, 3}
    assert 0.4 < (y == 3).float().mean() < 0.6  # the null class, at the dropout rate
    assert trainer.model.class_embedding.num_embeddings == 4
    assert len(trainer.train()) == 2
    with pytest.raises(ValueError, match=r"labels must lie in 0..2"):
        DiffusionTrainer(config, latents, tmp_path, labels=labels + 1)


def test_two_processes_train_as_one_group_and_resume(tmp_path, real_data):
    """The multi-process path (what `accelerate launch` / torchrun gives on several GPUs), on CPU."""
    import subprocess
    import sys

    out = tmp_path / "run"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "histolab_utils.train",
               "ddpm", "--schedule", "cosine", "--profile", "smoke", "--out", str(out)]
    for extra in (["--steps", "4"], ["--steps", "6", "--resume"]):
        result = subprocess.run(command + extra, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-2000:]
        assert result.stdout.count("steps in") == 1, "only the main process reports"
    checkpoint = out / "checkpoints" / "step-6"
    states = [torch.load(checkpoint / f"batches_{rank}.pt")["generator"] for rank in (0, 1)]
    assert not torch.equal(*states), "each rank draws its own batches"
    assert (out / "pipeline" / "model_index.json").is_file()


@pytest.mark.parametrize("first, then", [("no", "bf16"), ("bf16", "no"), ("auto", "no"), ("auto", "bf16")])
def test_trainers_of_different_precision_can_follow_each_other_in_one_process(tmp_path, crops, first, then):
    config = TrainConfig(steps=1, checkpoint_every=1, mixed_precision=first, **TINY)
    earlier = DiffusionTrainer(config, crops, tmp_path / "first", progress=False)
    later = DiffusionTrainer(dataclasses.replace(config, mixed_precision=then), crops, tmp_path / "then", progress=False)
    assert later.accelerator.mixed_precision == then
    later.train()
    seen = []  # the dtype the earlier trainer's convolutions compute in, after the process-wide state moved on
    earlier.accelerator.unwrap_model(earlier.model).conv_in.register_forward_hook(
        lambda module, inputs, output: seen.append(output.dtype))
    earlier.train()
    expected = torch.bfloat16 if resolve_mixed_precision(first) == "bf16" else torch.float32
    assert seen and set(seen) == {expected}


def test_a_change_to_or_from_fp16_is_refused_with_what_to_do():
    """Accelerate unscales fp16 gradients by the process-wide setting: swapping it under an fp16 trainer would
    clip scaled gradients silently, so that one change keeps an error, ours, that says what to do."""
    from accelerate import Accelerator

    from histolab_utils.engine.precision import allow_precision_change

    allow_precision_change()
    Accelerator(mixed_precision="no", cpu=True)
    with pytest.raises(ValueError, match="restart the kernel, or use 'no'"):
        Accelerator(mixed_precision="fp16", cpu=True)


@pytest.mark.parametrize("ours, theirs", [("bf16", "no"), ("no", "bf16"), ("auto", "no"), ("auto", "bf16")])
def test_a_plain_accelerator_after_our_trainer_gets_a_working_loop(tmp_path, crops, ours, theirs):
    """A notebook cell that builds its own Accelerator after one of our trainers ran (in bf16 on a bf16-native CPU,
    where "auto" means bf16) must train, not meet Accelerate's "cannot be changed" error."""
    from accelerate import Accelerator

    trainer = DiffusionTrainer(TrainConfig(steps=1, checkpoint_every=1, mixed_precision=ours, **TINY), crops,
                               tmp_path, progress=False)
    trainer.train()
    changes = resolve_mixed_precision(ours) != theirs
    with pytest.warns(UserWarning, match="reset to") if changes else contextlib.nullcontext():
        accelerator = Accelerator(mixed_precision=theirs)
    assert accelerator.mixed_precision == theirs
    model, optimizer = accelerator.prepare(torch.nn.Linear(3, 1), torch.optim.SGD([torch.nn.Parameter(
        torch.zeros(1))], lr=0.1))
    loss = model(torch.ones(2, 3)).float().pow(2).mean()
    accelerator.backward(loss)
    assert Accelerator().mixed_precision == theirs  # a bare Accelerator() joins whatever is in force


@pytest.mark.parametrize("prediction_type,zero_terminal_snr", [("epsilon", False), ("sample", False),
                                                               ("v_prediction", True)])
def test_every_prediction_type_trains_and_is_saved_with_its_pipeline(tmp_path, crops, prediction_type,
                                                                      zero_terminal_snr):
    from diffusers import DDIMScheduler, DDPMPipeline

    config = TrainConfig(schedule="cosine", steps=2, checkpoint_every=2, prediction_type=prediction_type,
                         zero_terminal_snr=zero_terminal_snr, **TINY)
    trainer = DiffusionTrainer(config, crops, tmp_path, progress=False)
    assert np.isfinite(trainer.train()["loss"]).all()
    pipeline = DDPMPipeline.from_pretrained(trainer.save_pipeline())
    assert pipeline.scheduler.config.prediction_type == prediction_type
    ddim = DDIMScheduler.from_config(pipeline.scheduler.config)
    assert ddim.config.prediction_type == prediction_type and ddim.config.rescale_betas_zero_snr == zero_terminal_snr
    assert float(pipeline.scheduler.alphas_cumprod[-1]) == 0.0 if zero_terminal_snr else \
        float(pipeline.scheduler.alphas_cumprod[-1]) > 0


def test_an_impossible_parameterisation_is_refused_before_anything_is_written(tmp_path, crops):
    with pytest.raises(ValueError, match="unknown prediction type 'noise'"):
        DiffusionTrainer(TrainConfig(prediction_type="noise", **TINY), crops, tmp_path / "a")
    with pytest.raises(ValueError, match="zero_terminal_snr needs prediction_type"):
        DiffusionTrainer(TrainConfig(prediction_type="epsilon", zero_terminal_snr=True, **TINY), crops, tmp_path / "b")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_norm_groups_keep_several_channels_per_group():
    from histolab_utils.diffusion.unets import norm_groups

    assert norm_groups((128, 256, 256, 512)) == 32  # diffusers' default where the UNet is wide enough
    assert norm_groups((16, 32, 32)) == 4 and norm_groups((32, 64)) == 8 and norm_groups((8, 16)) == 2
    assert norm_groups((24, 48, 48)) == 6 and norm_groups((4,)) == 1 and norm_groups((12, 20)) == 2


def test_the_cli_trains_the_prediction_type_it_is_given(tmp_path, real_data):
    import json

    from histolab_utils import train

    out = tmp_path / "run"
    assert train.main(["ddpm", "--schedule", "sigmoid", "--prediction-type", "sample", "--zero-terminal-snr",
                       "--profile", "smoke", "--steps", "2", "--out", str(out)]) == 0
    scheduler = json.loads((out / "pipeline" / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler["prediction_type"] == "sample" and scheduler["rescale_betas_zero_snr"] is True


def test_resuming_a_folder_of_another_config_is_refused_naming_the_fields(tmp_path, crops, capsys):
    from histolab_utils.engine.trainer import ResumeMismatch

    config = TrainConfig(schedule="cosine", steps=2, checkpoint_every=2, **TINY)
    first = DiffusionTrainer(config, crops, tmp_path, progress=False)
    first.train()
    assert first.train_seconds > 0
    longer = DiffusionTrainer(TrainConfig(**{**config.__dict__, "steps": 3}), crops, tmp_path, progress=False)
    longer.train(resume=True)  # more steps of the same run: allowed
    assert longer.step == 3 and longer.train_seconds > first.train_seconds, "wall time adds up across resumes"
    other = TrainConfig(**{**config.__dict__, "schedule": "linear", "learning_rate": 5e-4})
    with pytest.raises(ResumeMismatch, match=r"learning_rate: 0.001 there, 0.0005 now, schedule: 'cosine' there"):
        DiffusionTrainer(other, crops, tmp_path, progress=False).train(resume=True)
