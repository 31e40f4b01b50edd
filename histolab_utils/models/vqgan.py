"""A VQ-GAN (Esser, Rombach & Ommer 2021) from diffusers' ``VQModel`` and a PatchGAN critic.

The autoencoder minimises

    L = |x - x̂|₁ + w_p · perceptual(x, x̂) + w_q · L_VQ + λ · d_w · L_G    (λ = 0 before ``disc_start``)

* ``L_VQ = ||sg[z] - e||² + β ||z - sg[e]||²`` moves codebook vectors e towards encoder outputs z
  and commits z to its code (van den Oord et al. 2017; diffusers' ``VectorQuantizer``, β = 0.25).
* ``L_G = -mean D(x̂)`` and the critic minimises the hinge loss
  ``mean relu(1 - D(x)) + mean relu(1 + D(x̂))`` (a PatchGAN, Isola et al. 2017: one logit per patch).
* The adaptive weight ``λ = ||∇_last L_rec|| / (||∇_last L_G|| + 1e-4)``, taken at the decoder's
  last layer, balances the two gradients (Esser et al. 2021, eq. 7).
* Dead-code restarts (optional, ``code_restart_every``): a code no encoder output chose during the
  last ``code_restart_every`` steps is moved onto a random encoder output of the current batch
  (Dhariwal et al. 2020, Jukebox; Zeghidour et al. 2021, SoundStream). Without them few codes
  survive: the codebook starts at U(-1/K, 1/K), far inside the encoder's outputs, and only the
  codes that win early receive gradient.

The diffusion models in notebook 05 work on the pre-quantisation latents ``encode(x).latents``,
scaled by ``vqmodel.config.scaling_factor`` (set from the training latents' standard deviation).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from ..engine.precision import make_accelerator
from ..engine.trainer import AcceleratedTrainer, BatchSource, save_pretrained_atomic


@dataclass(frozen=True)
class VQGANConfig:
    """Architecture, losses and schedule of one VQ-GAN run; saved beside the model."""

    image_size: int = 32
    latent_channels: int = 4
    num_vq_embeddings: int = 256
    block_out_channels: tuple[int, ...] = (32, 64, 64)  # len - 1 halvings: (32, 64, 64) -> f = 4
    layers_per_block: int = 1
    attention: bool = False  # self-attention in the encoder/decoder mid blocks
    steps: int = 200
    batch_size: int = 16
    learning_rate: float = 2e-4
    disc_learning_rate: float = 2e-4
    warmup_steps: int = 20
    disc_start: int = 100
    disc_weight: float = 0.5
    disc_layers: int = 2
    disc_channels: int = 32
    perceptual_weight: float = 0.5
    codebook_weight: float = 1.0
    code_restart_every: int = 0  # > 0: every N steps, move codes unused in those N steps onto encoder outputs
    grad_clip: float = 1.0
    checkpoint_every: int = 100
    keep_checkpoints: int = 2
    mixed_precision: str = "auto"
    seed: int = 0
    data_downsample: int = 1  # image px per tile px of the crops it trains on (the encoder's own halving is ``downsampling``)

    @property
    def downsampling(self) -> int:
        return 2 ** (len(self.block_out_channels) - 1)

    @property
    def latent_size(self) -> int:
        return self.image_size // self.downsampling


def build_vqmodel(config: VQGANConfig):
    """The diffusers ``VQModel`` of ``config``."""
    from diffusers import VQModel

    levels = len(config.block_out_channels)
    return VQModel(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels, block_out_channels=tuple(config.block_out_channels),
        layers_per_block=config.layers_per_block, latent_channels=config.latent_channels,
        num_vq_embeddings=config.num_vq_embeddings, sample_size=config.image_size,
        norm_num_groups=min(32, min(config.block_out_channels)), mid_block_add_attention=config.attention,
    )


class PatchDiscriminator(nn.Module):
    """PatchGAN critic: strided 4x4 convolutions, one logit per overlapping patch."""

    def __init__(self, layers: int = 2, channels: int = 32) -> None:
        super().__init__()
        modules: list[nn.Module] = [nn.Conv2d(3, channels, 4, 2, 1), nn.LeakyReLU(0.2)]
        c = channels
        for i in range(1, layers + 1):
            c_out = channels * min(2 ** i, 8)
            stride = 2 if i < layers else 1
            modules += [nn.Conv2d(c, c_out, 4, stride, 1, bias=False), nn.GroupNorm(min(32, c_out), c_out),
                        nn.LeakyReLU(0.2)]
            c = c_out
        modules.append(nn.Conv2d(c, 1, 4, 1, 1))
        self.net = nn.Sequential(*modules)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class VQGAN(nn.Module):
    """The ``VQModel``'s forward pass split open, so training sees the codes and the VQ loss."""

    def __init__(self, vqmodel) -> None:
        super().__init__()
        self.vqmodel = vqmodel

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(reconstruction, VQ loss, code indices [N, h, w], pre-quantisation latents [N, C, h, w])."""
        vq = self.vqmodel
        latents = vq.encode(x).latents
        with torch.autocast(device_type=x.device.type, enabled=False):  # nearest-code search in fp32
            quantised, vq_loss, (_, _, indices) = vq.quantize(latents.float())
        reconstruction = vq.decoder(vq.post_quant_conv(quantised))
        return reconstruction, vq_loss, indices.reshape(len(x), *latents.shape[2:]), latents


def hinge_d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """The critic's hinge loss: 0 when real logits ≥ 1 and fake logits ≤ -1."""
    return torch.relu(1 - real_logits).mean() + torch.relu(1 + fake_logits).mean()


def adaptive_weight(rec_loss: torch.Tensor, g_loss: torch.Tensor, last_layer: torch.Tensor,
                    max_weight: float = 1e4) -> torch.Tensor:
    """λ = ||∇_last rec_loss|| / (||∇_last g_loss|| + 1e-4), clamped to [0, max_weight], no gradient."""
    rec_grad = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)[0]
    g_grad = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
    return (rec_grad.norm() / (g_grad.norm() + 1e-4)).clamp(0, max_weight).detach()


class VQGANTrainer(AcceleratedTrainer):
    """Train a VQ-GAN on uint8 crops with Accelerate (two optimisers, checkpoints, exact resume).

    >>> trainer = VQGANTrainer(VQGANConfig(steps=500), crops, "runs/vqgan")
    >>> log = trainer.train()          # step, loss, l1, perceptual, vq, g_loss, d_loss, d_weight, lr
    >>> trainer.save_model()           # runs/vqgan/vqmodel, loadable by diffusers.VQModel.from_pretrained
    """

    def __init__(self, config: VQGANConfig, crops: np.ndarray, out_dir: str | Path, progress: bool = True,
                 perceptual: nn.Module | None = None) -> None:
        from accelerate.utils import set_seed
        from diffusers.optimization import get_cosine_schedule_with_warmup

        check_tiles(crops, config.image_size)
        if config.image_size % config.downsampling:
            raise ValueError(f"image_size {config.image_size} is not divisible by the downsampling factor "
                             f"{config.downsampling} of block_out_channels {config.block_out_channels}")
        self.config, self.out_dir, self.progress = config, Path(out_dir), progress
        self.name = f"vqgan {config.latent_channels}ch"
        self.accelerator = make_accelerator(config.mixed_precision)
        set_seed(config.seed, device_specific=True)
        device = self.accelerator.device
        if perceptual is None and config.perceptual_weight > 0:
            from .perceptual import PerceptualLoss

            perceptual = PerceptualLoss()
        self.perceptual = perceptual.to(device) if perceptual is not None else None
        model, critic = VQGAN(build_vqmodel(config)), PatchDiscriminator(config.disc_layers, config.disc_channels)
        fused = device.type == "cuda"
        opt_ae = torch.optim.Adam(model.parameters(), lr=config.learning_rate, betas=(0.5, 0.9), fused=fused)
        opt_d = torch.optim.Adam(critic.parameters(), lr=config.disc_learning_rate, betas=(0.5, 0.9), fused=fused)
        sched_ae = get_cosine_schedule_with_warmup(opt_ae, config.warmup_steps, config.steps)
        (self.model, self.critic, self.opt_ae, self.opt_d, self.sched_ae) = self.accelerator.prepare(
            model, critic, opt_ae, opt_d, sched_ae)
        self.batches = BatchSource(crops, device, config.seed * 1000 + self.accelerator.process_index)
        # codes chosen on this process since the last restart; summed over processes at a restart
        self.code_counts = torch.zeros(config.num_vq_embeddings, device=device)
        self.step = 0
        self.log = []

    def local_state(self) -> dict:
        return {"code_counts": self.code_counts}

    def load_local_state(self, state: dict) -> None:
        if "code_counts" in state:
            self.code_counts.copy_(state["code_counts"])

    def _last_layer(self) -> torch.Tensor:
        return self.accelerator.unwrap_model(self.model).vqmodel.decoder.conv_out.weight

    def train_step(self) -> dict:
        config = self.config
        x = self.batches.batch(config.batch_size)
        use_gan = self.step >= config.disc_start
        with self.autocast():
            reconstruction, vq_loss, indices, latents = self.model(x)
            l1 = (x - reconstruction.float()).abs().mean()
            perceptual = (self.perceptual(reconstruction.float(), x).mean() if self.perceptual is not None
                          else torch.zeros((), device=x.device))
            rec_loss = l1 + config.perceptual_weight * perceptual
            g_loss = -self.critic(reconstruction).float().mean() if use_gan else torch.zeros((), device=x.device)
        weight = (adaptive_weight(rec_loss, g_loss, self._last_layer()) * config.disc_weight if use_gan
                  else torch.zeros((), device=x.device))
        loss = rec_loss + config.codebook_weight * vq_loss.mean() + weight * g_loss
        self.opt_ae.zero_grad(set_to_none=True)
        self.accelerator.backward(loss)
        self.accelerator.clip_grad_norm_(self.model.parameters(), config.grad_clip)
        self.opt_ae.step()
        self.sched_ae.step()

        d_loss = torch.zeros((), device=x.device)
        if use_gan:
            with self.autocast():
                real_logits, fake_logits = self.critic(torch.cat([x, reconstruction.detach()])).float().chunk(2)
                d_loss = hinge_d_loss(real_logits, fake_logits)
            self.opt_d.zero_grad(set_to_none=True)
            self.accelerator.backward(d_loss)
            self.accelerator.clip_grad_norm_(self.critic.parameters(), config.grad_clip)
            self.opt_d.step()
        restarted = 0
        if config.code_restart_every:
            # index_add_ rather than bincount: bincount reads the largest index on the host
            self.code_counts.index_add_(0, indices.reshape(-1), torch.ones(indices.numel(), device=x.device))
            if (self.step + 1) % config.code_restart_every == 0:
                restarted = self.restart_dead_codes(latents.detach())
        return {"loss": loss.detach(), "l1": l1.detach(), "perceptual": perceptual.detach(), "vq": vq_loss.mean().detach(),
                "g_loss": g_loss.detach(), "d_loss": d_loss.detach(), "d_weight": weight, "lr": self.sched_ae.get_last_lr()[0],
                "codes_restarted": restarted}

    @torch.no_grad()
    def restart_dead_codes(self, latents: torch.Tensor) -> int:
        """Move every code that no process chose since the last restart onto a random encoder
        output of the main process's ``latents`` [N, C, h, w]; reset the counts and those codes'
        Adam moments. Returns how many codes moved (the same on every process)."""
        from accelerate.utils import broadcast

        counts = self.accelerator.reduce(self.code_counts.clone(), reduction="sum")
        dead = (counts == 0).nonzero().flatten()
        self.code_counts.zero_()
        if len(dead) == 0:
            return 0
        candidates = latents.permute(0, 2, 3, 1).reshape(-1, latents.shape[1]).float()
        pick = torch.Generator().manual_seed(self.config.seed * 1_000_003 + self.step)
        if len(dead) <= len(candidates):
            chosen = torch.randperm(len(candidates), generator=pick)[: len(dead)]
        else:
            chosen = torch.randint(len(candidates), (len(dead),), generator=pick)
        new_codes = broadcast(candidates[chosen.to(candidates.device)].contiguous(), from_process=0)
        codebook = self.codebook
        codebook[dead] = new_codes.to(codebook.dtype)
        for moment in self.opt_ae.optimizer.state.get(codebook, {}).values():
            if torch.is_tensor(moment) and moment.shape == codebook.shape:
                moment[dead] = 0
        return len(dead)

    @property
    def codebook(self) -> torch.Tensor:
        """The codebook [num_vq_embeddings, latent_channels] being trained (a parameter)."""
        return self.accelerator.unwrap_model(self.model).vqmodel.quantize.embedding.weight

    def vqmodel(self):
        """The trained diffusers ``VQModel`` (eval mode)."""
        return self.accelerator.unwrap_model(self.model).vqmodel.eval()

    def save_model(self, folder: str | Path | None = None, scaling_crops: np.ndarray | None = None) -> Path:
        """Save the ``VQModel`` with ``save_pretrained``; with ``scaling_crops``, first set its
        ``scaling_factor`` to 1 / std of their latents, so latent diffusion sees unit variance."""
        folder = Path(folder or self.out_dir / "vqmodel")
        vqmodel = self.vqmodel()
        if scaling_crops is not None:
            std = float(encode(vqmodel, scaling_crops).std())
            vqmodel.register_to_config(scaling_factor=1.0 / max(std, 1e-6))
        if self.accelerator.is_main_process:
            save_pretrained_atomic(vqmodel, folder, {"histolab_vqgan_config.json": asdict(self.config)})
        self.accelerator.wait_for_everyone()
        return folder


def check_tiles(tiles: np.ndarray, size: int | None = None) -> None:
    """Raise a clear error unless ``tiles`` are uint8 RGB [N, size, size, 3]."""
    tiles = np.asarray(tiles)
    if tiles.ndim != 4 or tiles.shape[-1] != 3:
        channels = tiles.shape[-1] if tiles.ndim == 4 else "?"
        raise ValueError(f"tiles must be RGB [N, H, W, 3]; got shape {tiles.shape} ({channels} channels)")
    if tiles.dtype != np.uint8:
        raise ValueError(f"tiles must be uint8 (0-255); got {tiles.dtype}")
    if size is not None and tiles.shape[1:3] != (size, size):
        raise ValueError(f"tiles must be {size}x{size} px for this model; got {tiles.shape[1]}x{tiles.shape[2]}")


def _to_model_input(tiles: np.ndarray, device) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(tiles)).permute(0, 3, 1, 2).to(device).float() / 127.5 - 1


@torch.no_grad()
def encode(vqmodel, tiles: np.ndarray, batch_size: int = 128) -> np.ndarray:
    """Pre-quantisation latents [N, C, h, w] (unscaled) of uint8 tiles [N, H, W, 3]."""
    check_tiles(tiles, vqmodel.config.sample_size)
    device = next(vqmodel.parameters()).device
    out = [vqmodel.encode(_to_model_input(tiles[i:i + batch_size], device)).latents.float().cpu()
           for i in range(0, len(tiles), batch_size)]
    return torch.cat(out).numpy()


@torch.no_grad()
def decode(vqmodel, latents: np.ndarray | torch.Tensor, batch_size: int = 128) -> np.ndarray:
    """uint8 tiles from (unscaled) latents, quantised on the way, as ``VQModel.decode`` does."""
    from ..diffusion.sampling import to_uint8

    device = next(vqmodel.parameters()).device
    latents = torch.as_tensor(latents)
    out = [to_uint8(vqmodel.decode(latents[i:i + batch_size].to(device)).sample.float())
           for i in range(0, len(latents), batch_size)]
    return np.concatenate(out)


@torch.no_grad()
def reconstruct(vqmodel, tiles: np.ndarray, batch_size: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 reconstructions, code indices [N, h, w]) of uint8 tiles."""
    from ..diffusion.sampling import to_uint8

    check_tiles(tiles, vqmodel.config.sample_size)
    model = VQGAN(vqmodel).eval()
    device = next(vqmodel.parameters()).device
    images, codes = [], []
    for i in range(0, len(tiles), batch_size):
        reconstruction, _, indices, _ = model(_to_model_input(tiles[i:i + batch_size], device))
        images.append(to_uint8(reconstruction.float()))
        codes.append(indices.cpu().numpy())
    return np.concatenate(images), np.concatenate(codes)


def codebook_stats(codes: np.ndarray, codebook_size: int) -> dict:
    """Usage (fraction of codes ever chosen) and perplexity exp(H) of the code histogram.

    Perplexity is the effective number of codes in use: ``codebook_size`` when all are used
    equally, 1 when one code takes everything.
    """
    counts = np.bincount(np.asarray(codes).ravel(), minlength=codebook_size).astype(np.float64)
    p = counts / counts.sum()
    entropy = -(p[p > 0] * np.log(p[p > 0])).sum()
    return {"codebook_usage": float((counts > 0).mean()), "perplexity": float(np.exp(entropy)),
            "codes_used": int((counts > 0).sum()), "codebook_size": codebook_size}


def reconstruction_metrics(originals: np.ndarray, reconstructions: np.ndarray) -> dict:
    """Mean PSNR (dB) and SSIM (torchmetrics) over a set, images in [0, 255]."""
    from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

    a = torch.from_numpy(originals).permute(0, 3, 1, 2).float() / 255
    b = torch.from_numpy(reconstructions).permute(0, 3, 1, 2).float() / 255
    psnr = peak_signal_noise_ratio(b, a, data_range=1.0, reduction="none", dim=(1, 2, 3))
    ssim = structural_similarity_index_measure(b, a, data_range=1.0)
    return {"psnr": float(psnr.mean()), "ssim": float(ssim)}


def mean_colour_baseline(tiles: np.ndarray) -> np.ndarray:
    """Each tile replaced by its mean colour: the reconstruction that needs 3 numbers per tile."""
    return np.broadcast_to(tiles.mean(axis=(1, 2), keepdims=True).round().astype(np.uint8), tiles.shape).copy()


def bicubic_baseline(tiles: np.ndarray, factor: int) -> np.ndarray:
    """Bicubic down-sampling by ``factor`` and back: 3 full-precision numbers per latent position."""
    x = torch.from_numpy(np.ascontiguousarray(tiles)).permute(0, 3, 1, 2).float()
    small = torch.nn.functional.interpolate(x, scale_factor=1 / factor, mode="bicubic", antialias=True)
    back = torch.nn.functional.interpolate(small, size=tiles.shape[1:3], mode="bicubic")
    return back.clamp(0, 255).round().byte().permute(0, 2, 3, 1).numpy()


JPEG_REFERENCE_QUALITY = 75  # Pillow's default quality, the usual web setting
CHROMA_SUBSAMPLING = {"4:4:4": 0, "4:2:2": 1, "4:2:0": 2}  # Pillow's codes


def jpeg_reference_name(quality: int, chroma_subsampling: str = "4:2:0") -> str:
    """The score table's row name of a JPEG recompression reference."""
    return f"JPEG quality {quality}, {chroma_subsampling} (reference)"


def jpeg_recompress(tiles: np.ndarray, quality: int = JPEG_REFERENCE_QUALITY,
                    chroma_subsampling: str = "4:2:0") -> np.ndarray:
    """Each uint8 NHWC tile saved as a baseline JPEG (Pillow, ``quality`` 1-100, the given chroma subsampling;
    75 and 4:2:0 are Pillow's defaults) and decoded again: a lossy reconstruction everyone has judged by eye, the
    reference of a VQ-GAN's PSNR, SSIM and rFID."""
    import io

    from PIL import Image

    if isinstance(quality, bool) or not isinstance(quality, (int, np.integer)) or not 1 <= quality <= 100:
        raise ValueError(f"quality must be an int from 1 to 100 (JPEG quality), got {quality!r}")
    if chroma_subsampling not in CHROMA_SUBSAMPLING:
        raise ValueError(f"chroma_subsampling must be one of {sorted(CHROMA_SUBSAMPLING)}, got {chroma_subsampling!r}")
    check_tiles(tiles)
    decoded = np.empty_like(tiles)
    for i, tile in enumerate(tiles):
        buffer = io.BytesIO()
        Image.fromarray(tile).save(buffer, format="JPEG", quality=int(quality),
                                   subsampling=CHROMA_SUBSAMPLING[chroma_subsampling])
        decoded[i] = np.asarray(Image.open(buffer).convert("RGB"))
    return decoded


def jpeg_reference(originals: np.ndarray, quality: int = JPEG_REFERENCE_QUALITY, chroma_subsampling: str = "4:2:0",
                   original_features: np.ndarray | None = None) -> dict:
    """PSNR, SSIM and rFID of ``originals`` recompressed as JPEG (:func:`jpeg_recompress`), scored exactly as a
    VQ-GAN's reconstructions are (:func:`score_reconstructions`), with the quality and chroma subsampling."""
    recompressed = jpeg_recompress(originals, quality, chroma_subsampling)
    return {"quality": int(quality), "chroma_subsampling": chroma_subsampling,
            **score_reconstructions(originals, recompressed, original_features=original_features)}


def score_reconstructions(originals: np.ndarray, reconstructions: np.ndarray, codes: np.ndarray | None = None,
                          codebook_size: int | None = None, original_features: np.ndarray | None = None) -> dict:
    """PSNR, SSIM and rFID (Inception features, equal n) of a reconstruction set; with ``codes``,
    codebook usage and perplexity too."""
    from ..evaluation import metrics

    real = metrics.inception_features(originals) if original_features is None else original_features
    out = {"n": len(originals), **reconstruction_metrics(originals, reconstructions),
           "rfid": metrics.fid(real, metrics.inception_features(reconstructions))}
    if codes is not None and codebook_size:
        out.update(codebook_stats(codes, codebook_size))
    return out


def check_pairing(crops: np.ndarray, reconstructions: np.ndarray, where: object = "reconstructions",
                  margin_db: float = 3.0) -> None:
    """Raise unless each reconstruction is of its own crop: its PSNR against the crop it is paired with must beat
    its PSNR against another crop (the list shifted by one) by ``margin_db``. Scores against redrawn crops mean
    something only then."""
    from torchmetrics.functional.image import peak_signal_noise_ratio

    def psnr(a: np.ndarray, b: np.ndarray) -> float:
        return float(peak_signal_noise_ratio(torch.from_numpy(a).float(), torch.from_numpy(b).float(), data_range=255.0))

    paired, shifted = psnr(reconstructions, crops), psnr(reconstructions, np.roll(crops, 1, axis=0))
    if paired < shifted + margin_db:
        raise ValueError(f"{where}: the reconstructions do not pair with the redrawn crops (PSNR {paired:.1f} dB "
                         f"paired vs {shifted:.1f} dB shifted by one): they were made from other crops")


def load_vqmodel(folder: str | Path, device: str | torch.device = "cpu"):
    """A saved ``VQModel``, with a clear error that names the notebook to run when it is missing."""
    from diffusers import VQModel

    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"no VQ-GAN saved at {folder}; run notebooks/02_vqgan.ipynb (same profile) first")
    return VQModel.from_pretrained(folder).to(device).eval()


def plot_vqgan_losses(log: pd.DataFrame, disc_start: int, ax=None, smooth: int = 10):
    """Reconstruction terms and the GAN terms of one run, with the critic's start marked."""
    import matplotlib.pyplot as plt

    ax = ax or plt.gca()
    for column in ("l1", "perceptual", "vq", "d_loss"):
        if column in log:
            ax.plot(log["step"], log[column].rolling(smooth, min_periods=1).mean(), label=column)
    ax.axvline(disc_start, color="grey", linestyle=":", label="critic starts")
    ax.set_xlabel("step")
    ax.set_yscale("log")
    ax.legend()
    return ax
