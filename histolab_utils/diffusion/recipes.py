"""Training recipes by name: how a diffusion model spends its steps, as data.

A recipe is a set of :class:`~histolab_utils.diffusion.training.TrainConfig` settings that go together (a loss
weighting, a preconditioning, a learning-rate schedule, an EMA, a UNet shape). A profile names one for every
diffusion model at once (``[training] recipe = "..."``) or per section; a field the section sets itself still wins,
so a recipe is a default, never a hidden override. ``benchmarks/recipes.py`` compares them at equal minutes on notebook
03's cpu DDPM (README, "Quality per CPU-hour"), and every record made since names the recipe it trained with.

The settings a recipe does not name keep the trainer's defaults: v-prediction MSE at uniform t (Ho, Jain & Abbeel
2020; Salimans & Ho 2022), a linear warm-up then cosine decay of the learning rate, diffusers' EMA.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class TrainingRecipe:
    """A named set of trainer settings, what it is in words, and whom it comes from (real authors)."""

    description: str
    source: str
    settings: dict = field(default_factory=dict)


TRAINING_RECIPES: dict[str, TrainingRecipe] = {
    "baseline": TrainingRecipe(
        "v-prediction MSE at uniform t, cosine learning-rate decay after warm-up, diffusers' EMA: the recipe of every "
        "release made on splits 1 and 2",
        "Ho, Jain & Abbeel 2020 (DDPM); Nichol & Dhariwal 2021 (cosine schedule); Salimans & Ho 2022 (v-prediction)",
        {"loss_weighting": "uniform", "preconditioning": "none", "lr_schedule": "cosine", "ema": "diffusers"}),
    "min_snr": TrainingRecipe(
        "the baseline with min-SNR-5 loss weights, written for the prediction type (v: min(SNR, 5) / (SNR + 1))",
        "Hang, Gu, Li, Bao, Chen, Hu, Geng & Guo 2023 (Min-SNR weighting, ICCV)",
        {"loss_weighting": "min_snr", "snr_gamma": 5.0, "preconditioning": "none", "lr_schedule": "cosine",
         "ema": "diffusers"}),
    "plain_loop": TrainingRecipe(
        "the plain diffusers loop of the recipe issue's pilot: 2 layers per block and 32 norm groups (UNet2DModel's "
        "defaults, as diffusers' train_unconditional example uses them), a constant learning rate after warm-up",
        "diffusers' UNet2DModel defaults and train_unconditional example (von Platen et al., diffusers); the pilot's "
        "loop",
        {"loss_weighting": "uniform", "preconditioning": "none", "lr_schedule": "constant", "ema": "diffusers",
         "layers_per_block": 2, "norm_num_groups": 32}),
    "edm": TrainingRecipe(
        "EDM preconditioning (c_skip, c_out, c_in, c_noise) with log-normal sigma (P_mean -1.2, P_std 1.2), sampled "
        "with its Karras-rho-7 samplers",
        "Karras, Aittala, Aila & Laine 2022 (EDM, NeurIPS)",
        {"loss_weighting": "uniform", "preconditioning": "edm", "lr_schedule": "cosine", "ema": "diffusers"}),
    "power_ema": TrainingRecipe(
        "the baseline with a power-function EMA (1 - 1/t)^(gamma + 1), gamma = 6.94 (sigma_rel = 0.10)",
        "Karras, Aittala, Lehtinen, Hellsten, Aila & Laine 2024 (EDM2, CVPR)",
        {"loss_weighting": "uniform", "preconditioning": "none", "lr_schedule": "cosine", "ema": "power",
         "ema_gamma": 6.94}),
}


def recipe_settings(name: str) -> dict:
    """The trainer settings of recipe ``name``; an unknown name is an error that lists the known ones."""
    if name not in TRAINING_RECIPES:
        raise ValueError(f"unknown training recipe {name!r}; the recipes are {', '.join(TRAINING_RECIPES)} "
                         f"(histolab_utils/diffusion/recipes.py)")
    return dict(TRAINING_RECIPES[name].settings)
