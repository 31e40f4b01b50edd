"""Mixed precision: "auto" picks bf16 where the hardware does it natively, fp32 elsewhere, can be overridden,
and bf16 training learns what fp32 training learns."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from histolab_utils.diffusion.training import DiffusionTrainer, TrainConfig
from histolab_utils.engine.precision import cpu_has_native_bf16, cpu_in_words, make_accelerator, resolve_mixed_precision


@pytest.mark.parametrize("capabilities, native", [
    ({"avx512_bf16": True, "amx_bf16": False}, True),  # e.g. Zen 4, Cooper Lake
    ({"avx512_bf16": False, "amx_bf16": True}, True),  # Sapphire Rapids AMX
    ({"avx512_bf16": False, "amx_bf16": False, "avx2": True}, False),
    ({}, False),
])
def test_native_bf16_is_read_from_the_cpu_capabilities(capabilities, native):
    assert cpu_has_native_bf16(capabilities) is native


def test_this_cpu_is_probed_not_assumed(monkeypatch):
    monkeypatch.delenv("HISTO_CPU_BF16", raising=False)
    capabilities = torch.cpu.get_capabilities()
    assert cpu_has_native_bf16() is bool(capabilities.get("avx512_bf16") or capabilities.get("amx_bf16"))


@pytest.mark.parametrize("value, native", [("1", True), ("0", False), ("true", True), ("no", False)])
def test_the_environment_can_simulate_either_kind_of_cpu(monkeypatch, value, native):
    """How the suite is run as the other kind of CPU would run it (README, "Tests and CI")."""
    monkeypatch.setenv("HISTO_CPU_BF16", value)
    assert cpu_has_native_bf16() is native
    assert resolve_mixed_precision("auto", cuda=False) == ("bf16" if native else "no")
    assert cpu_has_native_bf16({"avx512_bf16": not native}) is (not native), "given capabilities are read as given"


def test_a_bad_simulation_setting_is_named(monkeypatch):
    monkeypatch.setenv("HISTO_CPU_BF16", "maybe")
    with pytest.raises(ValueError, match="HISTO_CPU_BF16.*'maybe'"):
        cpu_has_native_bf16()


def test_the_cpu_is_stated_in_words_with_its_bf16_kind():
    words = cpu_in_words()
    assert "cores" in words and ("native bf16" in words or "bf16 emulated" in words), words


@pytest.mark.parametrize("cuda, cpu_bf16, expected", [
    (True, False, "bf16"), (False, True, "bf16"), (False, False, "no"), (True, True, "bf16")])
def test_auto_picks_bf16_where_supported_and_fp32_elsewhere(cuda, cpu_bf16, expected):
    assert resolve_mixed_precision("auto", cuda=cuda, cpu_bf16=cpu_bf16) == expected


def test_an_explicit_precision_overrides_auto_and_a_bad_one_is_named():
    assert resolve_mixed_precision("no", cuda=True, cpu_bf16=True) == "no"
    assert resolve_mixed_precision("bf16", cuda=False, cpu_bf16=False) == "bf16"
    with pytest.raises(ValueError, match="'fp8'"):
        resolve_mixed_precision("fp8")
    assert make_accelerator("auto").mixed_precision == resolve_mixed_precision("auto")
    assert make_accelerator("no").mixed_precision == "no"


def test_the_profile_carries_the_precision_into_every_trainer(tmp_path):
    """[training]'s mixed_precision reaches every stage's trainer config, the VQ-GAN and the segmenter included."""
    from types import SimpleNamespace

    from histolab_utils.config import read_config
    from histolab_utils.stages import registered

    path = tmp_path / "fp32.toml"
    path.write_text('extends = "cpu"\n[training]\nmixed_precision = "no"\n')
    profile = read_config(str(path))
    vqmodel = SimpleNamespace(config=SimpleNamespace(latent_channels=4, block_out_channels=(32, 64, 64)))
    latents = SimpleNamespace(latents=np.zeros((1, 4, 8, 8)), class_names=["a", "b"], fingerprint="x")
    extra = {"spade": {"variant": "latent", "vqmodel": vqmodel}, "ldm": {"data": latents}}
    for name, stage in registered().items():
        assert stage.train_config(profile, **extra.get(name, {})).mixed_precision == "no", name
        assert stage.train_config(read_config("cpu"), **extra.get(name, {})).mixed_precision == "auto", name


def test_bf16_training_learns_what_fp32_learns(tmp_path, real_data):
    """Same data, seed and steps: the loss curves agree within noise, and so does the x0 diagnostic.
    Tiny, because on a CPU without native bf16 (AVX2 only) bf16 is emulated and about 20x slower than fp32;
    benchmarks/train_throughput.py --quality repeats the comparison at the cpu profile's size."""
    from histolab_utils.data import CropSampler, load_images, training_crops
    from histolab_utils.diffusion.prediction import channel_mean, x0_error_by_t
    from histolab_utils.diffusion.sampling import unet_denoiser

    crops = training_crops(8, 512, seed=0, downsample=4)
    heldout = CropSampler(load_images(), 8, "heldout", augment=False, seed=5, downsample=4).sample(64)
    runs = {}
    for precision in ("no", "bf16"):
        config = TrainConfig(schedule="cosine", prediction_type="v_prediction", image_size=8, batch_size=8,
                             steps=120, warmup_steps=10, learning_rate=3e-3, ema_decay=0.9,
                             block_out_channels=(8, 16), checkpoint_every=10**6, mixed_precision=precision)
        trainer = DiffusionTrainer(config, crops, tmp_path / precision, progress=False)
        assert trainer.accelerator.mixed_precision == precision
        log = trainer.train()
        diagnostic = x0_error_by_t(unet_denoiser(trainer.ema_unet()), trainer.noise_scheduler, heldout,
                                   timesteps=(100, 500, 900, 999), reference_mean=channel_mean(crops))
        runs[precision] = (log["loss"].to_numpy(), diagnostic["x0_mse"].to_numpy())
    (loss32, x0_32), (loss16, x0_16) = runs["no"], runs["bf16"]
    late32, late16 = loss32[-40:].mean(), loss16[-40:].mean()
    assert late32 < 0.7 * loss32[:10].mean(), "the fp32 run must learn for the comparison to mean anything"
    assert abs(late16 - late32) / late32 < 0.15, f"final loss fp32 {late32:.4f} vs bf16 {late16:.4f}"
    np.testing.assert_allclose(x0_16, x0_32, rtol=0.2, atol=0.01)
