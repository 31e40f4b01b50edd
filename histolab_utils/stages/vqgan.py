"""Notebook 02's VQ-GAN: its config from the ``[vqgan]`` profile section, ``train vqgan``, its run folder
(``runs/<profile>/vqgan-<c>ch``), its record, card and release (``vqgan-<c>ch-<profile>``), and the scorer of
reconstructions saved elsewhere (``python -m histolab_utils.score vqgans``)."""

from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from .base import Stage, StageRecord, config_from_section, register
from .cards import (default_set_seen, hardware_in_words, licence_section, limits_section, not_for_diagnosis,
                    split_section, training_time)


@dataclass(frozen=True, kw_only=True)
class VQGANRecord(StageRecord):
    """notebook 02's metrics: reconstructions of held-out crops per model, the references beside them, goals.

    The FID of real train against real held-out crops (``fid_real_train_vs_heldout``, in ``real_vs_real``) measures
    the shift between two regions of real tissue; it is no floor of rFID, which is 0 for a perfect reconstruction.
    ``jpeg_reference`` scores the same crops recompressed as JPEG: a reconstruction a student can judge. Records made
    before these names hold the FID as ``rfid_floor_train_vs_heldout`` and the dict as ``floor`` (``OLD_NAMES``),
    and have no JPEG reference; they are read as they are and written back unchanged."""

    psnr: float
    ssim: float
    rfid: float
    perplexity: float
    codebook_usage: float
    latent_channels: int
    n_eval: int
    image_size: int
    downsample: int
    n_train_crops: int
    split: str
    hardware: str
    released_model: str
    train_steps: int
    fid_real_train_vs_heldout: float | None = None
    real_vs_real: dict | None = None
    jpeg_reference: dict | None = None
    by_model: list
    goals: list
    train_seconds: dict
    device: str
    model_folder: str

    OLD_NAMES: ClassVar[dict[str, str]] = {"fid_real_train_vs_heldout": "rfid_floor_train_vs_heldout",
                                           "real_vs_real": "floor"}
    ADDED_SINCE_PUBLISHED: ClassVar[frozenset[str]] = StageRecord.ADDED_SINCE_PUBLISHED | frozenset({"jpeg_reference"})


def vqgan_card(record: VQGANRecord, channels: int, name: str) -> str:
    """A model card for one VQ-GAN of notebook 02, from its published metrics record."""
    from ..models.vqgan import jpeg_reference_name

    size, downsample = record.image_size, record.downsample
    def cell(value, spec: str) -> str:  # baselines have no codebook: blank, not "None"
        return "" if value is None or value != value else format(value, spec)

    rows = "\n".join(f"| {r['model']} | {r['psnr']:.2f} | {r['ssim']:.3f} | {r['rfid']:.1f} | "
                      f"{cell(r.get('codebook_usage'), '.2f')} | {cell(r.get('perplexity'), '.1f')} |"
                      for r in record.by_model)
    seconds = record.train_seconds.get(str(channels), record.train_seconds.get(channels))
    limits = [f"Its {size} px crops of {size * downsample} px fields are reconstructed to PSNR {record.psnr:.1f} dB and rFID "
              f"{record.rfid:.1f} (n = {record.n_eval} held-out crops): fine chromatin texture is lost."]
    reference = record.jpeg_reference
    jpeg = (f" The row '{jpeg_reference_name(reference['quality'], reference['chroma_subsampling'])}' is the same crops "
            "saved as JPEG and decoded: a reconstruction anyone can judge by eye." if reference else "")
    return f"""---
license: mit
library_name: diffusers
tags: [histopathology, H&E, vqgan, vq-vae, teaching]
---
# {name}: a VQ-GAN of H&E tissue crops ({channels} latent channels)

A small VQ-GAN (diffusers `VQModel` + a PatchGAN critic while training) made by the `{record.profile}` profile of
notebook 02 (`notebooks/02_vqgan.ipynb`) of histolab_utils: {size} px crops of {size * downsample} px fields of real
H&E; {training_time(record.train_steps, seconds, hardware_in_words(record))}. Notebooks 04 and 05 cluster and generate in its latent space.

{not_for_diagnosis(default_set_seen())}

## Use

```python
from diffusers import VQModel
from histolab_utils.data import pretrained

vqmodel = VQModel.from_pretrained(pretrained("{name}"))  # or the folder's path, without histolab_utils
latents = vqmodel.encode(images).latents  # images: [N, 3, {size}, {size}] in [-1, 1]
reconstructions = vqmodel.decode(latents).sample
```

`config.scaling_factor` is 1 / std of the training latents (for a diffusion model on them). Weights are fp16
safetensors (load them in fp32 on a CPU: the default).

## Training

{split_section(record.n_train_crops, downsample, size, record.stamp.split_version)}
- Training recipe: the VQ-GAN's own (the diffusion recipes of `histolab_utils/diffusion/recipes.py` do not apply
  to an autoencoder). Loss: L1 + EfficientNet-Lite0 perceptual + VQ commitment + a hinge PatchGAN term with the adaptive weight;
  dead codes restarted onto encoder outputs. {record.train_steps} optimiser steps.
- Configuration: `histolab_vqgan_config.json` beside the weights, and the `{record.profile}` profile
  (`histolab_utils/profiles/{record.profile}.toml`). Commit: `{record.stamp.git_commit}`.

## Scores

Reconstructions of n = {record.n_eval} held-out crops; rFID on Inception pool3 features against the originals
(0 for a perfect reconstruction).{jpeg} For scale, at the same n: the FID of real train vs real held-out crops is
**{record.renamed("fid_real_train_vs_heldout"):.1f}**, the shift between two regions of real tissue (not a floor).

| model | PSNR | SSIM | rFID | codes in use | perplexity |
|---|---|---|---|---|---|
{rows}

Full table and the executed notebook: `results/{record.profile}/02_vqgan.json` and `.ipynb`.

{limits_section(record, limits)}

{licence_section('van den Oord, Vinyals & Kavukcuoglu (2017), "Neural Discrete Representation Learning"; Esser, '
                  'Rombach & Ommer (2021), "Taming Transformers for High-Resolution Image Synthesis".')}"""


class VQGANStage(Stage):
    name = "vqgan"
    notebook = "02_vqgan"
    section = "vqgan"
    summary = "a VQ-GAN (notebook 02)"
    record_type = VQGANRecord
    model_subfolder = "vqmodel"

    def variants(self, config) -> tuple[str, ...]:
        return tuple(f"{channels}ch" for channels in config.vqgan.latent_channels)

    def variant_arguments(self, variant: str, config) -> list[str]:
        return ["--latent-channels", variant.removesuffix("ch")]

    def run_folder_of(self, profile: str, channels: int) -> Path:
        return self.run_folder(profile, f"{channels}ch")

    def model_or_release_of(self, profile: str, channels: int) -> Path:
        """The VQ-GAN notebooks 04, 05 and 07 use: the released one, else notebook 02's run."""
        return self.model_or_release(profile, f"{channels}ch")

    def pipeline_class(self):
        from diffusers import VQModel

        return VQModel

    def train_config(self, config, seed: int = 0, variant: str = "", **overrides: Any):
        """The trainer's config from the ``[vqgan]`` section: every field the trainer has by name (``train_steps`` as
        ``steps``, ``downsample`` as ``data_downsample``); the critic's learning rate is the generator's."""
        from ..models.vqgan import VQGANConfig

        section = config.vqgan
        channels = int(variant.removesuffix("ch")) if variant else section.latent_channels[0]
        return config_from_section(VQGANConfig, section, seed, own={
            "latent_channels": channels, "disc_learning_rate": section.learning_rate,
            "data_downsample": section.downsample}, **overrides)

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--latent-channels", type=int, default=None, help="default: the profile's first")
        parser.add_argument("--code-restart-every", type=int, default=None, metavar="N",
                            help="move codes unused for N steps onto encoder outputs; 0 turns it off (default: the "
                                 "profile's)")
        parser.add_argument("--eval", type=int, default=0, metavar="N",
                            help="also save N held-out crops, their reconstructions and codes "
                                 "(heldout_reconstructions.npz; score them with `python -m histolab_utils.score vqgans`)")

    def train(self, args: argparse.Namespace, config) -> int:
        from ..data import training_crops
        from ..models.vqgan import VQGANTrainer
        from .base import guarded

        section = config.vqgan
        variant = f"{args.latent_channels}ch" if args.latent_channels else ""
        train_config = self.train_config(config, args.seed, variant, steps=args.steps, batch_size=args.batch_size,
                                         code_restart_every=args.code_restart_every)
        if args.steps and train_config.disc_start >= args.steps:  # keep the critic's share of a shortened run
            train_config = dataclasses.replace(train_config,
                                               disc_start=args.steps * section.disc_start // section.train_steps)
        crops = training_crops(train_config.image_size, section.n_train_crops, seed=args.seed,
                               downsample=section.downsample)

        def train():
            trainer = VQGANTrainer(train_config, crops, args.out)
            trainer.train(resume=args.resume)
            trainer.save_model(scaling_crops=crops[:512])
            if args.eval and trainer.accelerator.is_main_process:
                saved = save_heldout_reconstructions(trainer.vqmodel(), train_config.image_size, args.eval, args.seed,
                                                     args.out / "heldout_reconstructions.npz", section.downsample)
                print(f"{args.eval} held-out reconstructions saved to {saved}")
            return trainer

        return guarded(train, lambda t: f"{t.step} steps in {t.seconds:.1f} s; final L1 {t.log[-1]['l1']:.4f}; "
                                        f"model saved to {args.out / self.model_subfolder}")

    def released_variants(self, record: VQGANRecord) -> tuple[str, ...]:
        return tuple(f"{int(channels)}ch" for channels in record.train_seconds)

    def card(self, record: VQGANRecord, variant: str, name: str) -> str:
        return vqgan_card(record, int(variant.removesuffix("ch")), name)


VQGAN = register(VQGANStage())


def save_heldout_reconstructions(vqmodel, image_size: int, n: int, seed: int, path: Path, downsample: int = 1) -> Path:
    """Reconstruct ``n`` held-out crops and save them with their reconstructions and codes to ``path``, so a
    machine without the Inception weights can train and another can score (the scorer redraws the crops and checks
    that they come from the same places)."""
    import hashlib

    from ..data import heldout_eval_crops
    from ..models.vqgan import reconstruct
    from ..paths import atomic_path

    originals = heldout_eval_crops(image_size, n, seed, downsample=downsample)
    reconstructions, codes = reconstruct(vqmodel, originals)
    with atomic_path(path, suffix=".npz") as tmp:
        np.savez_compressed(tmp, reconstructions=reconstructions, codes=codes.astype(np.int32), originals=originals,
                            originals_sha256=hashlib.sha256(originals.tobytes()).hexdigest(),
                            image_size=image_size, n=n, seed=seed, downsample=downsample)
    return path


def score_main(argv: list[str] | None = None) -> int:
    """``python -m histolab_utils.score vqgans RUN/heldout_reconstructions.npz ... --out results/full/02_vqgan.json``:
    score reconstructions saved by ``python -m histolab_utils.train vqgan --eval N`` (on a machine
    with the Inception weights), beside the baselines, the JPEG reference and the FID of real train vs real held-out
    crops at the same n (the shift between the regions, not a floor: a perfect reconstruction's rFID is 0)."""
    from ..evaluation.floors import floors, real_reference
    from ..models.vqgan import (bicubic_baseline, check_pairing, jpeg_reference, mean_colour_baseline,
                                score_reconstructions)
    from ..paths import atomic_write_text
    from ..report import hardware, to_jsonable

    parser = argparse.ArgumentParser(prog="python -m histolab_utils.score vqgans", description=score_main.__doc__)
    parser.add_argument("files", nargs="+", type=Path, help="heldout_reconstructions.npz of each run")
    parser.add_argument("--out", type=Path, required=True, help="JSON to write")
    parser.add_argument("--note", default="", help="where and how the runs were made (hardware, command)")
    parser.add_argument("--accept-redrawn", action="store_true",
                        help="score a file whose crops' hash differs from the crops redrawn here (JPEGs decoded by "
                        "another Pillow, say) against the redrawn crops, if each reconstruction pairs with its crop")
    args = parser.parse_args(argv)
    from ..evaluation import metrics

    import hashlib

    from ..data import heldout_eval_crops

    runs, originals, redrawn = {}, None, []
    for path in args.files:
        with np.load(path) as saved:
            data = {key: saved[key] for key in saved.files}
        downsample = int(data["downsample"]) if "downsample" in data else 1  # runs saved before it existed: 1
        crops = heldout_eval_crops(int(data["image_size"]), int(data["n"]), int(data["seed"]), downsample=downsample)
        if "originals" in data:  # the crops the run reconstructed, saved beside them: drawn from the same places?
            check_pairing(crops, data["originals"], path)
            crops = data["originals"]
        elif hashlib.sha256(crops.tobytes()).hexdigest() != str(data["originals_sha256"]):
            if not args.accept_redrawn:
                raise ValueError(f"{path}: the held-out crops redrawn here differ from those the run reconstructed "
                                 "(other data files, another numpy random stream, or images decoded by another "
                                 "Pillow/libjpeg?); --accept-redrawn scores against the redrawn crops if they pair")
            check_pairing(crops, data["reconstructions"], path)
            redrawn.append(path.parent.name)
        if originals is not None and not np.array_equal(originals, crops):
            raise ValueError(f"{path} was evaluated on other held-out crops than {args.files[0]}")
        originals = crops
        config = json.loads((path.parent / "vqmodel" / "histolab_vqgan_config.json").read_text())
        runs[path.parent.name] = (data, config)
    features = metrics.inception_features(originals)
    factor = next(iter(runs.values()))[1]["block_out_channels"]
    factor = 2 ** (len(factor) - 1)
    result = {"runs": {}, "baselines": {}}
    for name, (data, config) in runs.items():
        result["runs"][name] = {"config": config, **score_reconstructions(
            originals, data["reconstructions"], data["codes"], config["num_vq_embeddings"], features)}
    for name, baseline in (("mean colour per tile", mean_colour_baseline(originals)),
                           (f"bicubic down/up x{factor}", bicubic_baseline(originals, factor))):
        result["baselines"][name] = score_reconstructions(originals, baseline, original_features=features)
    reference = real_reference(originals.shape[1], len(originals), downsample=downsample)
    result["real_vs_real"] = floors(reference)
    result["jpeg_reference"] = jpeg_reference(originals, original_features=features)
    scale = f" (box-averaged from {originals.shape[1] * downsample} px fields)" if downsample > 1 else ""
    result["data"] = (f"{len(originals)} crops of {originals.shape[1]} px{scale} from the held-out region (right 25 %) of the "
                      "8 default images; models trained on the train region only")
    result["scored_on"] = hardware()
    result["note"] = args.note
    if redrawn:
        result["originals_redrawn"] = (f"{', '.join(redrawn)}: the held-out crops were redrawn on the scoring machine and "
                                       "their hash differs from the training machine's (same positions, checked by "
                                       "pairing; pixel values differ slightly, e.g. JPEG decoding)")
    atomic_write_text(args.out, json.dumps(to_jsonable(result), indent=2))
    for name, row in {**result["runs"], **result["baselines"]}.items():
        print(f"{name:>28}: PSNR {row['psnr']:.2f}  SSIM {row['ssim']:.3f}  rFID {row['rfid']:.1f}"
              + (f"  perplexity {row['perplexity']:.1f}  codes {row['codes_used']}" if "perplexity" in row else ""))
    jpeg = result["jpeg_reference"]
    print(f"{'JPEG quality ' + str(jpeg['quality']):>28}: PSNR {jpeg['psnr']:.2f}  SSIM {jpeg['ssim']:.3f}  rFID {jpeg['rfid']:.1f}")
    print(f"real train vs real held-out crops (the shift between regions, n = {len(originals)}): "
          f"FID {result['real_vs_real']['fid_train_vs_heldout']:.1f}")
    return 0
