"""Released checkpoints: written whole, pinned by sha256, verified, and loadable by plain diffusers."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from histolab_utils.data import releases as released_models
from histolab_utils.data.releases import (DataError, pretrained, pretrained_dir, read_manifest, release_pipeline,
                                            verify_pretrained)

# A fresh interpreter: nothing of histolab_utils is imported, only diffusers, as a user elsewhere would.
LOAD_AND_SAMPLE = """
import sys, numpy as np, torch
from diffusers import DDIMScheduler, DDPMPipeline
pipeline = DDPMPipeline.from_pretrained(sys.argv[1])
pipeline.scheduler = DDIMScheduler.from_config(pipeline.scheduler.config)
pipeline.set_progress_bar_config(disable=True)
images = pipeline(batch_size=4, num_inference_steps=int(sys.argv[2]), generator=torch.Generator().manual_seed(0),
                  output_type="np").images
assert images.shape[0] == 4 and np.isfinite(images).all()
print(images.shape[1], pipeline.unet.dtype, pipeline.scheduler.config.prediction_type, float(images.std()))
"""


@pytest.fixture(scope="module")
def tiny_pipeline(tmp_path_factory):
    from histolab_utils.diffusion.training import DiffusionTrainer, TrainConfig

    out = tmp_path_factory.mktemp("run")
    crops = np.random.default_rng(0).integers(0, 256, (16, 16, 16, 3), dtype=np.uint8)
    config = TrainConfig(schedule="cosine", image_size=16, batch_size=4, steps=2, checkpoint_every=2,
                         block_out_channels=(8, 16), warmup_steps=1)
    trainer = DiffusionTrainer(config, crops, out, progress=False)
    trainer.train()
    return trainer.save_pipeline()


def test_a_release_is_fp16_safetensors_with_a_card_pinned_in_the_manifest(tmp_path, tiny_pipeline):
    folder = release_pipeline(tiny_pipeline, "ddpm-tiny", "# ddpm-tiny\nFor teaching and research, not for diagnosis.\n",
                              root=tmp_path)
    assert folder == pretrained("ddpm-tiny", root=tmp_path)
    files = read_manifest(tmp_path)["ddpm-tiny"]["files"]
    assert "unet/diffusion_pytorch_model.safetensors" in files and "README.md" in files
    assert "histolab_train_config.json" in files, "the training config travels with the weights"
    from safetensors import safe_open

    with safe_open(folder / "unet" / "diffusion_pytorch_model.safetensors", "pt") as weights:
        assert {str(weights.get_tensor(k).dtype) for k in weights.keys()} == {"torch.float16"}
    assert verify_pretrained(root=tmp_path) == []
    assert not list(pretrained_dir(tmp_path).glob(".*tmp")), "no staging folder is left behind"


def test_verify_catches_a_flipped_byte_a_missing_and_an_unlisted_file(tmp_path, tiny_pipeline, monkeypatch, capsys):
    from histolab_utils.data.__main__ import main

    folder = release_pipeline(tiny_pipeline, "ddpm-tiny", "# card\n", root=tmp_path)
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x01
    weights.write_bytes(bytes(data))
    problems = verify_pretrained(root=tmp_path)
    assert len(problems) == 1 and "changed: sha256" in str(problems[0]) and weights.name in str(problems[0])
    monkeypatch.setenv("HISTO_DATA_DIR", str(tmp_path))
    assert main(["verify", "ddpm-tiny"]) == 1
    assert "FAIL" in capsys.readouterr().err
    (folder / "README.md").unlink()
    (folder / "notes.txt").write_text("x")
    reasons = sorted(p.reason.split(":")[0].split(" (")[0] for p in verify_pretrained(root=tmp_path))
    assert reasons == ["changed", "missing file of released model 'ddpm-tiny'", "not in manifest.json"]


def test_unknown_names_and_oversized_releases_are_clear_errors(tmp_path, tiny_pipeline, monkeypatch):
    release_pipeline(tiny_pipeline, "ddpm-tiny", "# card\n", root=tmp_path)
    with pytest.raises(DataError, match=r"no released model 'ddpm-huge'.*released: ddpm-tiny"):
        pretrained("ddpm-huge", root=tmp_path)
    before = json.loads((pretrained_dir(tmp_path) / "manifest.json").read_text())
    monkeypatch.setattr(released_models, "MAX_FOLDER_BYTES", 1000)
    with pytest.raises(DataError, match="over|limits"):
        release_pipeline(tiny_pipeline, "ddpm-tiny", "# a new card\n", root=tmp_path)
    assert json.loads((pretrained_dir(tmp_path) / "manifest.json").read_text()) == before, "the old release stays"
    assert verify_pretrained(root=tmp_path) == []


def test_a_release_samples_with_plain_diffusers_in_a_fresh_process(tmp_path, tiny_pipeline):
    folder = release_pipeline(tiny_pipeline, "ddpm-tiny", "# card\n", root=tmp_path)
    result = subprocess.run([sys.executable, "-c", LOAD_AND_SAMPLE, str(folder), "3"], capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    size, dtype, prediction, _ = result.stdout.split()
    assert size == "16" and dtype == "torch.float32" and prediction == "v_prediction"


def test_the_shipped_releases_verify_and_sample_with_plain_diffusers():
    """The models committed under data/pretrained/ (the cpu profile's DDPMs): intact, and real samples."""
    from histolab_utils.report import published_metrics

    manifest = read_manifest()
    ddpms = sorted(name for name in manifest if name.startswith("ddpm-"))
    published = published_metrics("03_ddpm_schedulers", "cpu")
    if not ddpms:  # results and releases are made together: neither may exist without the other
        assert published is None, "results/cpu/03_ddpm_schedulers.json is published but no DDPM is released"
        pytest.skip("no DDPM released yet: make results PROFILE=cpu ONLY=03")
    assert published is not None and published["metrics"]["released_model"] in ddpms
    assert verify_pretrained() == []
    assert sum(entry["bytes"] for entry in manifest.values()) <= released_models.MAX_TOTAL_BYTES
    for name in ddpms:
        card = (pretrained(name) / "README.md").read_text()
        assert "not for diagnosis" in card and "Licence" in card and "n = 500" in card, name
    result = subprocess.run([sys.executable, "-c", LOAD_AND_SAMPLE, str(pretrained(ddpms[0])), "20"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    size, dtype, _, spread = result.stdout.split()
    assert size == "32" and dtype == "torch.float32" and float(spread) > 0.05, "tissue, not a flat colour"


# A released VQ-GAN, in a fresh interpreter with only diffusers: encode and decode random tiles.
LOAD_VQMODEL = """
import sys, torch
from diffusers import VQModel
vqmodel = VQModel.from_pretrained(sys.argv[1])
size = vqmodel.config.sample_size
x = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(0)) * 2 - 1
with torch.no_grad():
    latents = vqmodel.encode(x).latents
    out = vqmodel.decode(latents).sample
assert out.shape == x.shape and torch.isfinite(out).all()
print(size, vqmodel.dtype, latents.shape[1], vqmodel.config.scaling_factor)
"""


@pytest.fixture(scope="module")
def tiny_vqmodel(tmp_path_factory):
    from histolab_utils.models.vqgan import VQGANConfig, VQGANTrainer

    out = tmp_path_factory.mktemp("vq")
    crops = np.random.default_rng(0).integers(0, 256, (8, 16, 16, 3), dtype=np.uint8)
    config = VQGANConfig(image_size=16, block_out_channels=(8, 16), num_vq_embeddings=16, steps=1, batch_size=4,
                         checkpoint_every=1, perceptual_weight=0.0, disc_start=10)
    trainer = VQGANTrainer(config, crops, out, progress=False)
    trainer.train()
    return trainer.save_model(scaling_crops=crops)


def test_a_released_vqmodel_is_fp16_and_loads_with_plain_diffusers_in_a_fresh_process(tmp_path, tiny_vqmodel):
    folder = release_pipeline(tiny_vqmodel, "vqgan-tiny", "# card\n", root=tmp_path)
    files = read_manifest(tmp_path)["vqgan-tiny"]["files"]
    assert {"diffusion_pytorch_model.safetensors", "config.json", "histolab_vqgan_config.json", "README.md"} <= set(files)
    from safetensors import safe_open

    with safe_open(folder / "diffusion_pytorch_model.safetensors", "pt") as weights:
        assert {str(weights.get_tensor(k).dtype) for k in weights.keys()} == {"torch.float16"}
    result = subprocess.run([sys.executable, "-c", LOAD_VQMODEL, str(folder)], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    size, dtype, channels, scaling = result.stdout.split()
    assert size == "16" and dtype == "torch.float32" and channels == "4" and float(scaling) != 1.0


def test_a_folder_that_is_no_diffusers_model_is_refused_by_name(tmp_path):
    (tmp_path / "notes").mkdir()
    with pytest.raises(DataError, match="neither a diffusers pipeline"):
        release_pipeline(tmp_path / "notes", "x", "# card\n", root=tmp_path)
    (tmp_path / "notes" / "config.json").write_text('{"_class_name": "NoSuchModel"}')
    with pytest.raises(DataError, match="NoSuchModel"):
        release_pipeline(tmp_path / "notes", "x", "# card\n", root=tmp_path)


def test_the_shipped_vqgans_verify_and_load_with_plain_diffusers(shipped):
    """The VQ-GANs committed under data/pretrained/ (the cpu profile's notebook 02), once released."""
    vqgans, _ = shipped("vqgan-", "02_vqgan")
    for name in vqgans:
        card = (pretrained(name) / "README.md").read_text()
        assert "not for diagnosis" in card and "Licence" in card and "n = 500" in card, name
        result = subprocess.run([sys.executable, "-c", LOAD_VQMODEL, str(pretrained(name))], capture_output=True,
                                text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-2000:]
