"""Cluster-conditioned latent diffusion: training data, guidance, saving and loading."""

import numpy as np
import pytest
import torch

from histolab_utils.diffusion.schedules import make_scheduler
from histolab_utils.diffusion.training import DiffusionTrainer, TrainConfig
from histolab_utils.models.ldm import (
    ClassConditionalLDMPipeline, latent_training_set, load_class_names, per_class_scores, sample_classes,
    save_ldm_pipeline,
)
from histolab_utils.models.vqgan import VQGANConfig, build_vqmodel


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    torch.manual_seed(0)
    vqmodel = build_vqmodel(VQGANConfig(image_size=16, block_out_channels=(8, 16), num_vq_embeddings=16)).eval()
    tiles = np.random.default_rng(0).integers(0, 256, size=(6, 16, 16, 3), dtype=np.uint8)
    latents, labels = latent_training_set(vqmodel, tiles, np.array([0, 0, 1, 1, 2, 2]), copies=2)
    config = TrainConfig(image_size=8, in_channels=4, num_classes=3, label_dropout=0.2, steps=2, checkpoint_every=2,
                         batch_size=4, block_out_channels=(8, 16), warmup_steps=1)
    out = tmp_path_factory.mktemp("ldm")
    trainer = DiffusionTrainer(config, latents, out, progress=False, labels=labels)
    trainer.train()
    folder = save_ldm_pipeline(trainer.ema_unet(), vqmodel, make_scheduler("ddim", "cosine"), out / "pipeline",
                               ["a", "b", "c"])
    return folder, latents, labels


def test_latent_training_set_encodes_dihedral_copies(trained):
    _, latents, labels = trained
    assert latents.shape == (12, 4, 8, 8) and latents.dtype == np.float32
    assert list(labels) == [0, 0, 1, 1, 2, 2] * 2
    assert not np.allclose(latents[:6], latents[6:])  # the second copy is rotated


def test_bad_latent_training_input_is_named():
    vqmodel = build_vqmodel(VQGANConfig(image_size=16, block_out_channels=(8, 16)))
    tiles = np.zeros((2, 16, 16, 3), np.uint8)
    with pytest.raises(ValueError, match="copies must be 1..8"):
        latent_training_set(vqmodel, tiles, np.zeros(2), copies=9)
    with pytest.raises(ValueError, match="one label per tile"):
        latent_training_set(vqmodel, tiles, np.zeros(3))
    with pytest.raises(ValueError, match="must be 16x16 px"):
        latent_training_set(vqmodel, np.zeros((2, 32, 32, 3), np.uint8), np.zeros(2))


def test_saved_pipeline_loads_and_guidance_mixes_the_two_predictions(trained):
    from diffusers import UNet2DModel, VQModel

    folder = trained[0]
    pipeline = ClassConditionalLDMPipeline.from_pretrained(folder)
    assert load_class_names(folder) == ["a", "b", "c"] and pipeline.null_class == 3
    assert UNet2DModel.from_pretrained(folder, subfolder="unet").config.num_class_embeds == 4
    assert VQModel.from_pretrained(folder, subfolder="vqvae").config.latent_channels == 4

    def run(label, scale):
        return pipeline([label], guidance_scale=scale, num_inference_steps=3,
                        generator=torch.Generator().manual_seed(1)).images

    assert run(0, 1.0).shape == (1, 16, 16, 3) and run(0, 1.0).dtype == np.uint8
    assert np.array_equal(run(0, 0.0), run(2, 0.0))  # s = 0: the unconditional prediction alone
    assert not np.array_equal(run(0, 1.0), run(2, 1.0))
    assert not np.array_equal(run(0, 1.0), run(0, 3.0))
    with pytest.raises(ValueError, match=r"class labels must lie in 0..2"):
        pipeline([3])
    samples = sample_classes(pipeline, {0: 3, 2: 1}, guidance_scale=2.0, steps=2, batch_size=2)
    assert samples[0].shape == (3, 16, 16, 3) and samples[2].shape == (1, 16, 16, 3)


def test_per_class_scores_skip_classes_without_enough_real_tiles(monkeypatch):
    from histolab_utils.evaluation import metrics

    monkeypatch.setattr(metrics, "inception_features",
                        lambda images: images.reshape(len(images), -1)[:, :16].astype(np.float64))
    rng = np.random.default_rng(0)
    real = {0: rng.integers(0, 255, (5, 4, 4, 3)), 1: rng.integers(0, 255, (1, 4, 4, 3))}
    fake = {0: rng.integers(0, 255, (5, 4, 4, 3)), 1: rng.integers(0, 255, (5, 4, 4, 3))}
    table = per_class_scores(fake, real, ["x", "y"], min_tiles=2)
    assert list(table["name"]) == ["x", "y", "all scored classes"]
    assert np.isfinite(table["fid"][0]) and np.isnan(table["fid"][1]) and table["n"][2] == 5
    same = per_class_scores(real, real, ["x", "y"])
    assert abs(same["fid"][0]) < 1e-6


def test_per_class_scores_accept_precomputed_real_features(monkeypatch):
    from histolab_utils.evaluation import metrics

    monkeypatch.setattr(metrics, "inception_features",
                        lambda images: images.reshape(len(images), -1)[:, :16].astype(np.float64))
    rng = np.random.default_rng(1)
    real, fake = rng.integers(0, 255, (6, 4, 4, 3)), rng.integers(0, 255, (6, 4, 4, 3))
    from_images = per_class_scores({0: fake}, {0: real}, ["x"])
    from_features = per_class_scores({0: fake}, {0: metrics.inception_features(real)}, ["x"])
    assert from_images["fid"][0] == pytest.approx(from_features["fid"][0])


# A released LDM, in a fresh interpreter with only diffusers: its parts load by subfolder, and one denoising step runs.
LOAD_LDM_PARTS = """
import json, sys, torch
from pathlib import Path
from diffusers import DDIMScheduler, UNet2DModel, VQModel
folder = Path(sys.argv[1])
unet = UNet2DModel.from_pretrained(folder, subfolder="unet")
vqvae = VQModel.from_pretrained(folder, subfolder="vqvae")
scheduler = DDIMScheduler.from_pretrained(folder, subfolder="scheduler")
classes = json.loads((folder / "class_names.json").read_text())["class_names"]
size = unet.config.sample_size
x = torch.randn(2, unet.config.in_channels, size, size, generator=torch.Generator().manual_seed(0))
with torch.no_grad():
    out = unet(x, torch.tensor([500, 500]), class_labels=torch.tensor([0, len(classes)])).sample  # a class, "no class"
    images = vqvae.decode(x / vqvae.config.scaling_factor).sample
assert out.shape == x.shape and torch.isfinite(out).all() and torch.isfinite(images).all()
print(unet.dtype, len(classes), images.shape[-1])
"""


def test_a_released_ldm_is_fp16_and_its_parts_load_with_plain_diffusers(trained, tmp_path):
    import subprocess
    import sys

    from safetensors import safe_open

    from histolab_utils.data.releases import read_manifest, release_pipeline

    folder, _, _ = trained
    released = release_pipeline(folder, "ldm-tiny", "# card\n", root=tmp_path)
    files = read_manifest(tmp_path)["ldm-tiny"]["files"]
    assert {"model_index.json", "class_names.json", "unet/diffusion_pytorch_model.safetensors",
            "vqvae/diffusion_pytorch_model.safetensors", "scheduler/scheduler_config.json"} <= set(files)
    for part in ("unet", "vqvae"):
        with safe_open(released / part / "diffusion_pytorch_model.safetensors", "pt") as weights:
            assert {str(weights.get_tensor(k).dtype) for k in weights.keys()} == {"torch.float16"}, part
    assert ClassConditionalLDMPipeline.from_pretrained(released) is not None  # and ours loads it whole
    result = subprocess.run([sys.executable, "-c", LOAD_LDM_PARTS, str(released)], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["torch.float32", "3", "16"]


def test_the_shipped_ldm_verifies_and_its_parts_load_with_plain_diffusers(shipped):
    """The LDM committed under data/pretrained/ (the cpu profile's notebook 05), once released: intact, carded, its
    classes those of the committed cpu labels file, and loadable part by part in a fresh process."""
    import subprocess
    import sys

    from histolab_utils.data.releases import pretrained
    from histolab_utils.latent.clustering import ExpertLabels, expert_labels_path

    ldms, published = shipped("ldm-", "05_conditional_ldm")
    for name in ldms:
        card = (pretrained(name) / "README.md").read_text()
        assert all(text in card for text in ("not for diagnosis", "Licence", "Controllability", "floor")), name
        result = subprocess.run([sys.executable, "-c", LOAD_LDM_PARTS, str(pretrained(name))], capture_output=True,
                                text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-2000:]
    classes = load_class_names(pretrained(published["metrics"]["released_model"]))
    assert classes == published["metrics"]["classes"]
    from histolab_utils.data.datasets import SPLIT_VERSION

    if published.get("split_version") == SPLIT_VERSION:  # an earlier split's release had its own labels, since replaced
        assert len(ExpertLabels.load(expert_labels_path("cpu")).clusters) == len(classes)
