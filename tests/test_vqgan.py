"""The VQ-GAN pieces, its trainer, and the EfficientNet-Lite0 perceptual loss."""

import numpy as np
import pytest
import torch

from histolab_utils.models.vqgan import (
    VQGANConfig, VQGANTrainer, adaptive_weight, check_tiles, codebook_stats, decode, encode, hinge_d_loss,
    load_vqmodel, reconstruct, reconstruction_metrics,
)

TINY = dict(image_size=16, block_out_channels=(8, 16), num_vq_embeddings=32, batch_size=4, warmup_steps=1,
            disc_start=2, disc_layers=1, disc_channels=8, perceptual_weight=0.0, learning_rate=1e-3)


@pytest.fixture
def crops():
    return np.random.default_rng(0).integers(0, 256, size=(12, 16, 16, 3), dtype=np.uint8)


def test_perceptual_backbone_recognises_photographs(real_data):
    """The hand-written EfficientNet-Lite0 loads the shipped weights strictly and classifies skimage's
    cat and coffee photographs as ImageNet cats (281-285) and espresso/cup (967, 968)."""
    from skimage import data

    from histolab_utils.models.perceptual import load_efficientnet_lite0

    network = load_efficientnet_lite0()
    for image, classes in ((data.chelsea(), range(281, 286)), (data.coffee(), (967, 968))):
        x = torch.from_numpy(image).permute(2, 0, 1)[None].float()
        x = torch.nn.functional.interpolate(x, size=(224, 224), mode="bilinear", antialias=True) / 127.5 - 1
        with torch.no_grad():
            top = network(x).argmax().item()
        assert top in classes


def test_perceptual_distance_is_zero_for_equal_images_and_grows_with_damage(real_data):
    from histolab_utils.models.perceptual import PerceptualLoss

    loss = PerceptualLoss()
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    slightly, badly = x + 0.05 * torch.randn_like(x), x + 0.5 * torch.randn_like(x)
    assert torch.allclose(loss(x, x), torch.zeros(2))
    assert (loss(x, slightly) < loss(x, badly)).all()
    with pytest.raises(ValueError, match=r"\[N, 3, H, W\]"):
        loss(x, x[:, :2])


def test_hinge_loss_and_adaptive_weight_by_hand():
    assert hinge_d_loss(torch.tensor([2.0, 0.5]), torch.tensor([-2.0, 0.0])).item() == pytest.approx(0.25 + 0.5)
    w = torch.tensor([1.0, 2.0], requires_grad=True)
    rec, g = (3 * w).sum(), (w ** 2).sum()  # gradients (3, 3) and (2, 4): norms sqrt(18), sqrt(20)
    assert adaptive_weight(rec, g, w).item() == pytest.approx(np.sqrt(18) / (np.sqrt(20) + 1e-4))


def test_codebook_stats_by_hand():
    stats = codebook_stats(np.array([[0, 0], [1, 1]]), codebook_size=4)
    assert stats["codebook_usage"] == 0.5 and stats["perplexity"] == pytest.approx(2.0)
    assert codebook_stats(np.zeros(10, int), 8)["perplexity"] == pytest.approx(1.0)


def test_reconstruction_metrics_of_a_perfect_and_a_noisy_copy():
    a = np.random.default_rng(1).integers(0, 256, size=(3, 16, 16, 3), dtype=np.uint8)
    noisy = np.clip(a.astype(int) + 10, 0, 255).astype(np.uint8)
    perfect, damaged = reconstruction_metrics(a, a), reconstruction_metrics(a, noisy)
    assert perfect["ssim"] == pytest.approx(1.0) and perfect["psnr"] > 60
    assert 25 < damaged["psnr"] < 30 and damaged["ssim"] < 1


def test_bad_tiles_are_named():
    with pytest.raises(ValueError, match="4 channels"):
        check_tiles(np.zeros((2, 16, 16, 4), np.uint8))
    with pytest.raises(ValueError, match="must be 16x16 px for this model; got 32x32"):
        check_tiles(np.zeros((2, 32, 32, 3), np.uint8), 16)
    with pytest.raises(ValueError, match="uint8"):
        check_tiles(np.zeros((2, 16, 16, 3), np.float32))


def test_training_resumes_exactly_and_saves_a_loadable_vqmodel(tmp_path, crops):
    # a code restart at step 3 falls between the checkpoints, so resume needs step 1-2's code counts
    config = VQGANConfig(steps=4, checkpoint_every=2, code_restart_every=3, **TINY)
    straight = VQGANTrainer(config, crops, tmp_path / "straight", progress=False)
    log = straight.train()
    assert {"l1", "vq", "g_loss", "d_loss", "d_weight", "codes_restarted"} <= set(log.columns) and len(log) == 4
    assert (log["d_weight"][:2] == 0).all() and (log["d_weight"][2:] > 0).all()  # the critic starts at step 2
    assert log["codes_restarted"][2] > 0 and (log["codes_restarted"].drop(2) == 0).all()

    first = VQGANTrainer(config, crops, tmp_path / "resumed", progress=False)
    first.train(steps=2)
    second = VQGANTrainer(config, crops, tmp_path / "resumed", progress=False)
    second.train(resume=True)
    assert second.log == straight.log
    for a, b in zip(straight.model.parameters(), second.model.parameters()):
        assert torch.equal(a, b)
    for a, b in zip(straight.critic.parameters(), second.critic.parameters()):
        assert torch.equal(a, b)

    folder = straight.save_model(scaling_crops=crops)
    vqmodel = load_vqmodel(folder)
    latents = encode(vqmodel, crops)
    assert latents.shape == (12, 4, 8, 8)
    assert vqmodel.config.scaling_factor == pytest.approx(1 / latents.std(), rel=1e-4)
    images, codes = reconstruct(vqmodel, crops)
    assert images.shape == crops.shape and images.dtype == np.uint8 and codes.shape == (12, 8, 8)
    assert np.array_equal(decode(vqmodel, latents), images)  # decode quantises, as the forward pass does
    with pytest.raises(FileNotFoundError, match="02_vqgan"):
        load_vqmodel(tmp_path / "nowhere")


def _exact_matches(codes: torch.Tensor, vectors: torch.Tensor) -> torch.Tensor:
    """[len(codes), len(vectors)]: whether code i equals vector j exactly."""
    return (codes.detach()[:, None] == vectors[None]).all(dim=-1)


def test_dead_codes_move_onto_encoder_outputs_and_live_codes_stay(tmp_path, crops):
    trainer = VQGANTrainer(VQGANConfig(steps=1, code_restart_every=100, **TINY), crops, tmp_path, progress=False)
    trainer.train()  # one step, so Adam has moments for the codebook
    codebook, before = trainer.codebook, trainer.codebook.detach().clone()
    trainer.code_counts.zero_()
    trainer.code_counts[:4] = 1  # codes 0-3 were chosen since the last restart; 4-31 were not
    latents = torch.randn(2, 4, 4, 8) * 5  # 64 candidate vectors of 4 channels
    candidates = latents.permute(0, 2, 3, 1).reshape(-1, 4)

    assert trainer.restart_dead_codes(latents) == 28
    assert torch.equal(codebook[:4], before[:4])
    matches = _exact_matches(codebook[4:], candidates)
    assert matches.any(dim=1).all()  # each restarted code is an encoder output
    assert len(set(matches.int().argmax(dim=1).tolist())) == 28  # and no two are the same one
    moments = trainer.opt_ae.optimizer.state[codebook]
    assert (moments["exp_avg"][4:] == 0).all() and (moments["exp_avg_sq"][4:] == 0).all()
    assert (trainer.code_counts == 0).all()
    # with no code chosen since, all 32 are dead; more dead codes than candidates draws with replacement
    assert trainer.restart_dead_codes(latents[:1, :, :2, :2]) == 32
    assert _exact_matches(codebook, candidates).any(dim=1).all()


def test_restarts_keep_more_of_the_codebook_in_use(tmp_path, crops):
    used = {}
    for every in (0, 5):
        config = VQGANConfig(steps=30, checkpoint_every=100, code_restart_every=every, **TINY)
        trainer = VQGANTrainer(config, crops, tmp_path / str(every), progress=False)
        trainer.train()
        used[every] = codebook_stats(reconstruct(trainer.vqmodel(), crops)[1], 32)["codes_used"]
    assert used[5] > 2 * used[0], used


def test_trainer_rejects_wrong_tiles(tmp_path, crops):
    with pytest.raises(ValueError, match="must be 32x32 px"):
        VQGANTrainer(VQGANConfig(steps=1, **{**TINY, "image_size": 32}), crops, tmp_path)


def test_cli_trains_saves_and_the_scorer_reads_its_eval_file(tmp_path, real_data, monkeypatch):
    """`python -m histolab_utils.train vqgan ... --eval N` then `python -m histolab_utils.score vqgans`."""
    import json

    from histolab_utils import train
    from histolab_utils.evaluation import metrics
    from histolab_utils import score

    out = tmp_path / "vqgan-4ch"
    assert train.main(["vqgan", "--profile", "smoke", "--out", str(out), "--steps", "2", "--eval", "6"]) == 0
    saved = np.load(out / "heldout_reconstructions.npz")
    assert saved["reconstructions"].shape == (6, 32, 32, 3) and saved["codes"].shape == (6, 8, 8)
    assert load_vqmodel(out / "vqmodel").config.latent_channels == 4
    log = (out / "loss.csv").read_text().splitlines()
    assert len(log) == 3  # header + 2 steps; the critic's start moved inside the shortened run
    monkeypatch.setattr(metrics, "inception_features",
                        lambda images: np.asarray(images).reshape(len(images), -1)[:, :32].astype(np.float64))
    monkeypatch.setattr(metrics, "cached_features", lambda key, compute: compute())  # keep fakes out of the cache
    result_path = tmp_path / "result.json"
    assert score.main(["vqgans", str(out / "heldout_reconstructions.npz"), "--out", str(result_path)]) == 0
    result = json.loads(result_path.read_text())
    assert set(result["runs"]["vqgan-4ch"]) >= {"psnr", "ssim", "rfid", "perplexity", "n", "config"}
    assert result["real_vs_real"]["n"] == 6 and len(result["baselines"]) == 2
    assert result["jpeg_reference"]["quality"] == 75 and result["jpeg_reference"]["n"] == 6
    tampered = dict(np.load(out / "heldout_reconstructions.npz"))
    tampered["seed"] = np.array(5)
    np.savez(tmp_path / "vqgan-4ch" / "tampered.npz", **tampered)
    with pytest.raises(ValueError, match="do not pair"):
        score.main(["vqgans", str(out / "tampered.npz"), "--out", str(result_path)])


def test_the_scorer_accepts_redrawn_crops_only_when_asked_and_only_if_they_pair(tmp_path, real_data, monkeypatch):
    """A file from another machine whose crops hash differently (no originals saved, as before they were) is refused;
    --accept-redrawn scores it against the redrawn crops if its reconstructions pair with them, and says so."""
    import hashlib
    import json

    from histolab_utils import train
    from histolab_utils.data import heldout_eval_crops
    from histolab_utils.evaluation import metrics
    from histolab_utils import score

    monkeypatch.setattr(metrics, "inception_features",
                        lambda images: np.asarray(images).reshape(len(images), -1)[:, :32].astype(np.float64))
    monkeypatch.setattr(metrics, "cached_features", lambda key, compute: compute())
    train.main(["vqgan", "--profile", "smoke", "--out", str(tmp_path / "run"), "--steps", "1", "--eval", "2"])
    crops = heldout_eval_crops(32, 8, 0)
    noise = np.random.default_rng(0).integers(-6, 7, crops.shape)
    good = np.clip(crops.astype(int) + noise, 0, 255).astype(np.uint8)  # a good model's reconstructions
    fields = {"codes": np.zeros((8, 8, 8), np.int32), "image_size": 32, "n": 8, "seed": 0, "downsample": 1,
              "originals_sha256": hashlib.sha256(b"decoded elsewhere").hexdigest()}
    for name, reconstructions in (("drifted", good), ("unpaired", np.roll(good, 1, axis=0))):
        (tmp_path / name).mkdir()
        (tmp_path / name / "vqmodel").symlink_to(tmp_path / "run" / "vqmodel")
        np.savez(tmp_path / name / "heldout_reconstructions.npz", reconstructions=reconstructions, **fields)
    drifted = str(tmp_path / "drifted" / "heldout_reconstructions.npz")
    with pytest.raises(ValueError, match="redrawn here differ.*--accept-redrawn"):
        score.main(["vqgans", drifted, "--out", str(tmp_path / "r.json")])
    assert score.main(["vqgans", drifted, "--out", str(tmp_path / "r.json"), "--accept-redrawn"]) == 0
    result = json.loads((tmp_path / "r.json").read_text())
    assert "drifted" in result["originals_redrawn"] and result["runs"]["drifted"]["psnr"] > 30
    with pytest.raises(ValueError, match="do not pair"):
        score.main(["vqgans", str(tmp_path / "unpaired" / "heldout_reconstructions.npz"), "--out",
                    str(tmp_path / "r.json"), "--accept-redrawn"])


def test_a_nan_loss_stops_vqgan_training_and_keeps_the_last_good_checkpoint(tmp_path, crops):
    from histolab_utils.engine.trainer import TrainingDiverged

    class Poisoned(torch.nn.Module):  # a perceptual term that turns NaN from the third step on
        calls = 0

        def forward(self, x, y):
            Poisoned.calls += 1
            return (x - y).abs().mean(dim=(1, 2, 3)) * (float("nan") if Poisoned.calls >= 3 else 1.0)

    config = VQGANConfig(steps=6, checkpoint_every=2, **{**TINY, "perceptual_weight": 1.0})
    trainer = VQGANTrainer(config, crops, tmp_path, progress=False, perceptual=Poisoned())
    with pytest.raises(TrainingDiverged, match=r"loss became nan at step 3 .*step-2"):
        trainer.train()
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-2"]


RANKED_RESTARTS = """
import sys, numpy as np, torch
from histolab_utils.models.vqgan import VQGANConfig, VQGANTrainer
config = VQGANConfig(steps=4, checkpoint_every=100, code_restart_every=2, image_size=16, block_out_channels=(8, 16),
                     num_vq_embeddings=32, batch_size=4, warmup_steps=1, disc_start=2, disc_layers=1, disc_channels=8,
                     perceptual_weight=0.0)
crops = np.random.default_rng(0).integers(0, 256, size=(12, 16, 16, 3), dtype=np.uint8)
trainer = VQGANTrainer(config, crops, sys.argv[1], progress=False)
log = trainer.train()
codebook = trainer.codebook.detach()
torch.save({"codebook": codebook, "restarted": log["codes_restarted"].tolist()},
           f"{sys.argv[1]}/rank{trainer.accelerator.process_index}.pt")
"""


def test_two_processes_restart_the_same_codes_with_the_same_vectors(tmp_path):
    """Each rank chooses different codes from different batches; a restart must still leave
    every rank with the same codebook (counts summed over ranks, new codes sent from rank 0)."""
    import subprocess
    import sys

    script = tmp_path / "ranked.py"
    script.write_text(RANKED_RESTARTS)
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", str(script),
                             str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    ranks = [torch.load(tmp_path / f"rank{rank}.pt") for rank in (0, 1)]
    assert ranks[0]["restarted"] == ranks[1]["restarted"] and sum(ranks[0]["restarted"]) > 0
    assert torch.equal(ranks[0]["codebook"], ranks[1]["codebook"])


def test_jpeg_reference_is_near_perfect_at_quality_100_and_far_worse_at_10(real_data):
    """The JPEG reference of notebook 02, scored as reconstructions are: quality 100 without chroma subsampling is
    almost the crop itself (PSNR above 45 dB, an rFID of a few units at n = 24, where FID's bias is large), quality 10 is
    far worse on every score."""
    from histolab_utils.data import heldout_eval_crops
    from histolab_utils.models.vqgan import jpeg_recompress, jpeg_reference

    crops = heldout_eval_crops(32, 24, seed=0, downsample=2)
    best, worst = jpeg_reference(crops, 100, "4:4:4"), jpeg_reference(crops, 10)
    assert best["psnr"] > 45 and best["ssim"] > 0.99 and best["rfid"] < 5.0
    assert worst["psnr"] < best["psnr"] - 15 and worst["ssim"] < 0.9 and worst["rfid"] > 20 * max(best["rfid"], 1.0)
    assert best["quality"] == 100 and worst["chroma_subsampling"] == "4:2:0" and best["n"] == 24
    assert jpeg_recompress(crops[:2], 75).shape == (2, 32, 32, 3)


@pytest.mark.parametrize("quality", [0, 101, 75.0, "75", True])
def test_a_bad_jpeg_quality_is_named(quality):
    from histolab_utils.models.vqgan import jpeg_recompress

    with pytest.raises(ValueError, match=r"quality must be an int from 1 to 100 \(JPEG quality\), got"):
        jpeg_recompress(np.zeros((1, 8, 8, 3), np.uint8), quality)


def test_a_bad_chroma_subsampling_is_named():
    from histolab_utils.models.vqgan import jpeg_recompress

    with pytest.raises(ValueError, match=r"chroma_subsampling must be one of \['4:2:0', '4:2:2', '4:4:4'\], got '4:1:1'"):
        jpeg_recompress(np.zeros((1, 8, 8, 3), np.uint8), 75, "4:1:1")
