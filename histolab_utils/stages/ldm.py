"""Notebook 05's cluster-conditioned latent diffusion model: its training set (the released VQ-GAN's latents of
train-region tiles, labelled by notebook 04's expert file), its config from the ``[ldm]`` section, ``train ldm``, its
run folder (``runs/<profile>/ldm``), record, card and release (``ldm-<profile>``)."""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

import numpy as np

from .base import Stage, StageRecord, config_from_section, register
from .cards import card_footer, default_set_seen, hardware_in_words, not_for_diagnosis, training_time


@dataclass(frozen=True, kw_only=True)
class LDMRecord(StageRecord):
    """notebook 05's metrics: per-cluster FID beside its floor, controllability by an independent judge beside its
    chance and real ceiling, goals. The ``controllability*`` fields file samples in the generator's own space (the
    VQ-GAN features the clusters were made from: near-circular); the ``judged_*`` fields are the independent judge's
    (``evaluation.cluster_judge``), absent from records made before it existed."""

    per_cluster: dict
    overall_fid: float
    overall_kid: float
    overall_n: int
    guidance_scale: float
    sampler: str
    sampler_steps: int
    floor_per_cluster: dict
    sweep: list
    controllability: list
    controllability_at_guidance: float
    controllability_ceiling: float
    controllability_chance: float
    prediction_type: str
    x0_diagnostic: list
    colour: list
    classes: list
    labels_file: str
    train_steps: int
    train_seconds: float
    device: str
    pipeline: str
    hardware: str
    goals: list
    vqgan: str
    released_model: str
    judge: dict | None = None  # features, regularisation, validation_accuracy, choices
    judged_controllability: list | None = None  # one row per set, the ceiling first
    judged_per_cluster: list | None = None
    judged_at_guidance: float | None = None
    judged_ceiling: float | None = None
    judged_of_ceiling: float | None = None
    judged_chance: float | None = None
    judged_chance_majority: float | None = None
    judged_over_chance: float | None = None  # the margin over chance_majority as a share of the ceiling's margin

    # fields newer than the published cpu record (results/cpu was made on an earlier split): absent from it until the
    # cpu run is made again; tests/test_stages lets a published record lack these and no others
    ADDED_SINCE_PUBLISHED: ClassVar[frozenset[str]] = StageRecord.ADDED_SINCE_PUBLISHED | frozenset({
        "judge", "judged_controllability", "judged_per_cluster", "judged_at_guidance", "judged_ceiling",
        "judged_of_ceiling", "judged_chance", "judged_chance_majority", "judged_over_chance"})


def judge_metrics(judge, judged, guidance_scale: float) -> dict[str, Any]:
    """The ``judged_*`` fields of an :class:`LDMRecord` from a fitted ``evaluation.cluster_judge.ClusterJudge`` and
    its ``judged_controllability`` scores (whose sets are guidance scales); a scale ``judged`` lacks is a KeyError."""
    at, ceiling = judged.at(guidance_scale), judged.table.iloc[0]
    return {
        "judge": {"features": judge.features, "regularisation": judge.regularisation,
                  "validation_accuracy": judge.validation_accuracy, "choices": judge.choices.to_dict("records")},
        "judged_controllability": judged.table.astype({"set": str}).to_dict("records"),
        "judged_per_cluster": judged.per_cluster.astype({"set": str}).to_dict("records"),
        "judged_at_guidance": float(at["accuracy"]), "judged_ceiling": float(ceiling["accuracy"]),
        "judged_of_ceiling": float(at["of_ceiling"]), "judged_chance": float(ceiling["chance"]),
        "judged_chance_majority": float(ceiling["chance_majority"]), "judged_over_chance": float(at["over_chance"]),
    }


def _judged_at_guidance(record: LDMRecord) -> dict | None:
    """The independent judge's row at the record's chosen guidance, or None (a record made before the judge)."""
    return next((row for row in record.judged_controllability or []
                 if row.get("set") == str(float(record.guidance_scale))), None)


def _above_real(record: LDMRecord) -> bool:
    """Whether the judge files the samples at the chosen guidance more surely than real held-out tiles: the share of
    its ceiling has its whole 95 % interval above 1."""
    from ..evaluation.floors import above_real

    at = _judged_at_guidance(record)
    return at is not None and above_real(at.get("of_ceiling_low"))


def _goal_verdict(record: LDMRecord, goal: dict) -> str:
    """A goal row's 'met' cell. A controllability goal recorded one-sided (before ``ldm_goals`` took the interval)
    that the samples met only by exceeding real tiles is shown as failed, with why."""
    from ..evaluation.floors import ABOVE_REAL_CLAUSE

    one_sided = goal["goal"].startswith("controllability") and ABOVE_REAL_CLAUSE not in goal["target"]
    if goal["met"] and one_sided and _above_real(record):
        return "no: above real (met as recorded, one-sided; see Limits)"
    return "yes" if goal["met"] else "no"


def ldm_limits(record: LDMRecord) -> list[str]:
    """What a card says the LDM cannot do: below-floor clusters, and how its controllability was judged."""
    limits = []
    for cluster, row in record.per_cluster.items():
        floor = record.floor_per_cluster.get(cluster, {}).get("fid")
        if floor and row["fid"] < floor:
            limits.append(f"Cluster {cluster!r} scores FID {row['fid']:.1f}, below its real floor ({floor:.1f}) at n = "
                          f"{row['n']}: at that n the floor is too noisy to rank against, which is no win.")
    at = _judged_at_guidance(record)
    if _above_real(record):
        margin = (f" (and its margin over chance, {at['over_chance']:.2f} of the ceiling's)"
                  if at.get("over_chance") is not None else "")
        limits.append(f"At guidance {record.guidance_scale:g} the judge files samples more surely than real held-out "
                      f"tiles: {at['of_ceiling']:.2f}x its ceiling, 95 % interval {at['of_ceiling_low']:.2f}-"
                      f"{at['of_ceiling_high']:.2f}{margin}. Guidance exaggerates what tells the clusters apart; "
                      f"higher than real is no win, so both controllability goals fail.")
    if not any("judge" in key for key in record.to_json()["metrics"]):
        limits.append("Its controllability filed samples with the clusters' own rule, on the VQ-GAN features the model "
                      "generates in: nearly circular, so its goal row above ('controllability over its real-tile "
                      "ceiling', met at about 1.0) is retired, not a result. Notebook 05 now asks an independent judge.")
    return limits


def ldm_card(record: LDMRecord, name: str) -> str:
    """A model card for notebook 05's cluster-conditioned LDM, from its published metrics record."""
    per_cluster = "\n".join(
        f"| {cluster} | {row['n']} | {row['fid']:.1f} | {record.floor_per_cluster.get(cluster, {}).get('fid', float('nan')):.1f} |"
        for cluster, row in record.per_cluster.items())
    control = "\n".join(f"| {row['set']} | {row['n']} | {row['accuracy']:.2f} ({row['ci_low']:.2f}-{row['ci_high']:.2f}) |"
                         for row in record.controllability)
    judged = _judged_section(record)
    goals = "\n".join(["| goal | target | measured | met |", "|---|---|---|---|"] + [
        f"| {g['goal']} | {g['target']} | {g['measured']:.3f} | {_goal_verdict(record, g)} |"
        for g in record.goals]) if record.goals else "(not recorded by this run)"
    seconds = record.train_seconds
    return f"""---
license: mit
library_name: diffusers
tags: [histopathology, H&E, latent-diffusion, classifier-free-guidance, teaching]
---
# {name}: a latent diffusion model of H&E tiles, conditioned on {len(record.classes)} tissue clusters

Notebook 05 (`notebooks/05_conditional_ldm.ipynb`) of histolab_utils in the `{record.profile}` profile: a diffusers
`UNet2DModel` with a class embedding, trained on the latents of the released VQ-GAN (`vqvae/`) of train-region tiles,
conditioned on notebook 04's clusters as its labels file holds them ({", ".join(record.classes)}), with label dropout for
classifier-free guidance; {training_time(None, seconds, hardware_in_words(record))}.

{not_for_diagnosis(default_set_seen())}

## Use

```python
from diffusers import DPMSolverMultistepScheduler, UNet2DModel, VQModel
from histolab_utils.data import pretrained
from histolab_utils.models.ldm import ClassConditionalLDMPipeline

pipeline = ClassConditionalLDMPipeline.from_pretrained(pretrained("{name}"))  # guidance built in
images = pipeline([0] * 8, guidance_scale={record.guidance_scale}, num_inference_steps={record.sampler_steps}).images
# without histolab_utils, the parts: UNet2DModel / VQModel / DPMSolverMultistepScheduler.from_pretrained(folder,
# subfolder=...): the scheduler the scores were sampled with
```

Class ids follow `class_names.json`; id {len(record.classes)} is "no class" (the unconditional model).

## Scores

At guidance {record.guidance_scale}, {record.sampler} {record.sampler_steps} steps: FID per cluster against that
cluster's held-out tiles (n = held-out tiles of the cluster), beside the same measure for real train tiles.

| cluster | n | FID | floor (real train tiles) |
|---|---|---|---|
{per_cluster}

{judged}

Controllability in the generator's own space (near-circular): each sample filed by the clusters' own rule (the
VQ-GAN features the LDM generates in), accuracy against the cluster asked for (95 % bootstrap interval); chance is
{record.controllability_chance:.2f}, the ceiling (real held-out tiles) is {record.controllability_ceiling:.2f}.

| set | n | accuracy |
|---|---|---|
{control}

Goals, set before training and reported whether met or not:

{goals}

{card_footer(record, "05_conditional_ldm", 'Rumman et al. (2025), "Implementation of a Conditional Latent Diffusion-Based Generative Model to '
                                  'Synthetically Create Unlabeled Histopathological Images"; Rombach et al. (2022), "High-Resolution '
                                  'Image Synthesis with Latent Diffusion Models"; Ho & Salimans (2022), "Classifier-Free Diffusion '
                                  'Guidance".', sources=None, limits=ldm_limits(record))}"""


def _judged_section(record: LDMRecord) -> str:
    """The card's table of controllability by the independent judge, or a line saying the record predates it."""
    if not record.judged_controllability:
        return "Controllability by an independent judge: not recorded by this run (made before the judge existed)."
    judge = record.judge or {}
    rows = "\n".join(f"| {row['set']} | {row['n']} | {row['accuracy']:.2f} ({row['ci_low']:.2f}-{row['ci_high']:.2f}) | "
                     f"{row['of_ceiling']:.2f} | {row.get('over_chance', float('nan')):.2f} |"
                     for row in record.judged_controllability)
    return f"""Controllability by an independent judge: a logistic regression on {judge.get('features', '?')} features (not
the VQ-GAN's), trained on real train tiles' cluster labels and chosen on the validation region, files each sample;
accuracy against the cluster asked for (95 % bootstrap interval), and its share of the judge's ceiling (its accuracy
on real held-out tiles, {record.judged_ceiling:.2f}); chance is {record.judged_chance:.2f} (1/k) or
{record.judged_chance_majority:.2f} (always the commonest cluster, the most a generator blind to its label reaches);
"over chance" is the margin over that, as a share of the ceiling's.

| set | n | accuracy | of ceiling | over chance |
|---|---|---|---|---|
{rows}"""


class LatentTrainingSet(NamedTuple):
    """What the LDM trains on, and the fingerprint that keys its run to exactly these latents and labels."""

    latents: np.ndarray  # [N x copies, C, h, w] scaled VQ latents
    labels: np.ndarray  # class ids, one per latent
    class_names: list[str]
    fingerprint: str  # sha256 of the tiles, their labels, the class names and the VQ-GAN's weights (16 hex digits)


class LDMStage(Stage):
    name = "ldm"
    notebook = "05_conditional_ldm"
    section = "ldm"
    summary = "the cluster-conditioned latent diffusion model (notebook 05; needs notebook 02's VQ-GAN and 04's labels)"
    record_type = LDMRecord

    def training_set(self, config, tiles, vqmodel, vqgan_folder: Path, labels_file: Path) -> LatentTrainingSet:
        """The latents of ``tiles``' train-region tiles (``latent.latents.grid_tiles``) under the section's dihedral
        copies, labelled by the expert file; the fingerprint goes into the saved config, so a run is never resumed
        (or read back) on other latents or labels."""
        from ..latent.clustering import ExpertLabels
        from ..models.ldm import latent_training_set

        table = tiles.table
        class_ids, class_names = ExpertLabels.load(labels_file, tiles=table["tile_id"]).training_labels(table["tile_id"])
        train = (table["region"] == "train").to_numpy()
        latents, labels = latent_training_set(vqmodel, tiles.tiles[train], class_ids[train],
                                              copies=config.ldm.augment_copies)
        fingerprint = hashlib.sha256("|".join([*table["tile_id"][train], *map(str, class_ids[train]), *class_names]).encode()
                                     + (Path(vqgan_folder) / "diffusion_pytorch_model.safetensors").read_bytes()
                                     ).hexdigest()[:16]
        return LatentTrainingSet(latents, labels, class_names, fingerprint)

    def pipeline_class(self):
        from ..models.ldm import ClassConditionalLDMPipeline

        return ClassConditionalLDMPipeline

    def train_config(self, config, seed: int = 0, variant: str = "", *, data: LatentTrainingSet, **overrides: Any):
        """The ``[ldm]`` section (schedule, steps, widths, label dropout...) plus what the latents fix."""
        from ..diffusion.training import TrainConfig

        return config_from_section(TrainConfig, config.ldm, seed, own={
            "image_size": data.latents.shape[-1], "in_channels": data.latents.shape[1],
            "num_classes": len(data.class_names), "extra": {"data_sha256": data.fingerprint}}, **overrides)

    def train(self, args: argparse.Namespace, config) -> int:
        from ..config import pick_device
        from ..diffusion.schedules import make_scheduler
        from ..diffusion.training import DiffusionTrainer
        from ..latent.clustering import expert_labels_path
        from ..latent.latents import grid_tiles
        from ..models.ldm import save_ldm_pipeline
        from ..models.vqgan import load_vqmodel
        from .base import guarded, trainer_summary
        from .vqgan import VQGAN

        section, vq_section, clusters = config.ldm, config.vqgan, config.clusters
        vqgan_folder = VQGAN.model_or_release_of(config.name, vq_section.latent_channels[0])
        labels_file = expert_labels_path(config.name)
        for path, notebook in ((vqgan_folder, "02"), (labels_file, "04")):
            if not Path(path).exists():
                print(f"error: {path} is missing: run notebook {notebook} in the {config.name} profile first",
                      file=__import__("sys").stderr)
                return 2
        tiles = grid_tiles(size=vq_section.image_size, min_tissue=clusters.min_tissue, max_tiles=clusters.max_tiles,
                           seed=config.seed, downsample=vq_section.downsample)
        vqmodel = load_vqmodel(vqgan_folder, pick_device())
        data = self.training_set(config, tiles, vqmodel, vqgan_folder, labels_file)
        train_config = self.train_config(config, args.seed, data=data, steps=args.steps, batch_size=args.batch_size,
                                         compile=False if args.no_compile else None)

        def train():
            trainer = DiffusionTrainer(train_config, data.latents, args.out, labels=data.labels)
            trainer.train(resume=args.resume)
            if trainer.accelerator.is_main_process:  # latents have unit variance: no clipping of the x0 estimate
                scheduler = make_scheduler(section.sampler, section.schedule, prediction_type=section.prediction_type,
                                           clip_sample=False)
                save_ldm_pipeline(trainer.ema_unet(), vqmodel, scheduler, args.out / self.model_subfolder,
                                  data.class_names, dataclasses.asdict(train_config))
            return trainer

        return guarded(train, trainer_summary(f" on {len(data.latents)} latents of {len(data.class_names)} clusters",
                                              args.out / self.model_subfolder))

    def card(self, record: LDMRecord, variant: str, name: str) -> str:
        return ldm_card(record, name)


LDM = register(LDMStage())
