"""Training images/s of histolab_utils.diffusion.training against a plain diffusers loop, side by side.

    python benchmarks/train_throughput.py [--image-size 32] [--batch-size 16] [--steps 30] [--channels 16 32 32]
    python benchmarks/train_throughput.py --cpu-profile     # the cpu profile's DDPM: fp32, bf16, channels_last
    python benchmarks/train_throughput.py --cpu-profile --recipes baseline plain_loop   # a step of each, both precisions

``--precision`` lists the settings our trainer is timed with ("auto" picks bf16 where the CPU has native
bf16, AVX-512 BF16 or AMX, else fp32); each row's ratio is against the plain fp32 loop.

Measured on CPUs (``--cpu-profile``: 32 px, batch 32, UNet 32/64/64, 30 timed steps):
- AVX-512 BF16 (the issue's 2-core AMD EPYC): fp32 86 images/s, bf16 autocast 126 (1.47x); torch.compile
  added under 5 % (87 and 132 images/s) after 70-90 s of compiling, so the profiles leave it off on a CPU.
- AVX2 only (this project's 2-core AMD EPYC of 2026-11-25, no AVX-512): see README.md, "Precision on the CPU".
  There bf16 is emulated and far slower than fp32, so "auto" picks fp32.
``--recipes`` times a step of our trainer under each named training recipe (``diffusion/recipes.py``: its UNet
shape, loss, schedule and EMA) in each precision, with its ratio to the first recipe's: what a profile must scale
``train_steps`` by to keep the minutes when it adopts another recipe.

channels_last helps GPU convolutions (the trainer uses it on CUDA only); ``--channels-last`` times it on a CPU.

The plain loop is written as diffusers' unconditional training example does it: a DataLoader
over a CPU float dataset, batches moved to the device each step, fp32 (the example's default
mixed precision is "no"), torch.optim.AdamW with default settings, Accelerate for backward,
gradient clipping, a cosine LR schedule and EMA. Our trainer uses the same UNet config, batch,
resolution and optimiser (AdamW), plus what it adds on a GPU: bf16 autocast, channels_last,
fused AdamW, data resident on the device and optional torch.compile (--compile).
On a 2-core CPU the defaults finish in well under two minutes; the gains are a GPU's.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time

import numpy as np
import torch


def plain_diffusers_loop(crops: np.ndarray, args, steps: int) -> float:
    """Seconds for ``steps`` optimiser steps of the diffusers-example style loop."""
    from accelerate import Accelerator
    from diffusers import DDPMScheduler
    from diffusers.optimization import get_cosine_schedule_with_warmup
    from diffusers.training_utils import EMAModel

    from histolab_utils.diffusion.training import TrainConfig
    from histolab_utils.diffusion.unets import build_unet

    config = TrainConfig(image_size=args.image_size, block_out_channels=tuple(args.channels))
    accelerator = Accelerator(mixed_precision="no")
    model = build_unet(config)
    ema = EMAModel(model.parameters(), decay=0.999)
    noise_scheduler = DDPMScheduler(num_train_timesteps=1000)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    lr_scheduler = get_cosine_schedule_with_warmup(optimizer, 10, steps + 5)
    data = torch.from_numpy(crops).permute(0, 3, 1, 2).float() / 127.5 - 1
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(data), batch_size=args.batch_size,
                                         shuffle=True, drop_last=True)
    model, optimizer, loader, lr_scheduler = accelerator.prepare(model, optimizer, loader, lr_scheduler)
    ema.to(accelerator.device)

    def run(n: int) -> None:
        done = 0
        while done < n:
            for (clean,) in loader:
                noise = torch.randn_like(clean)
                t = torch.randint(0, 1000, (clean.shape[0],), device=clean.device)
                noisy = noise_scheduler.add_noise(clean, noise, t)
                loss = torch.nn.functional.mse_loss(model(noisy, t).sample, noise)
                accelerator.backward(loss)
                accelerator.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad()
                ema.step(model.parameters())
                done += 1
                if done == n:
                    return

    run(5)  # warm-up
    _sync()
    started = time.perf_counter()
    run(steps)
    _sync()
    return time.perf_counter() - started


def our_trainer(crops: np.ndarray, args, steps: int, precision: str = "auto", channels_last: bool = False,
                **settings) -> float:
    """Seconds for ``steps`` optimiser steps of our trainer (``settings``: more TrainConfig fields, a recipe's)."""
    from histolab_utils.diffusion.training import DiffusionTrainer, TrainConfig

    config = TrainConfig(image_size=args.image_size, batch_size=args.batch_size, steps=steps + 5,
                         block_out_channels=tuple(args.channels), learning_rate=1e-4, warmup_steps=10,
                         checkpoint_every=10 ** 9, compile=args.compile, mixed_precision=precision, **settings)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = DiffusionTrainer(config, crops, tmp, progress=False)
        if channels_last:
            trainer.model.to(memory_format=torch.channels_last)
        trainer.save_checkpoint = lambda: None  # time the step loop only: the plain loop saves nothing either
        trainer.train(steps=5)  # warm-up (and compilation)
        _sync()
        started = time.perf_counter()
        trainer.train(steps=steps + 5)
        _sync()
        return time.perf_counter() - started


def recipe_step_seconds(crops: np.ndarray, args, recipe: str, precision: str) -> float:
    """Seconds per optimiser step of our trainer under training recipe ``recipe`` (its settings over the
    benchmark's UNet widths, batch and resolution)."""
    from histolab_utils.diffusion.recipes import recipe_settings

    return our_trainer(crops, args, args.steps, precision, **recipe_settings(recipe)) / args.steps


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--channels", type=int, nargs="+", default=[16, 32, 32])
    parser.add_argument("--compile", action="store_true", help="torch.compile our trainer's model")
    parser.add_argument("--precision", nargs="+", default=["auto"], choices=("auto", "no", "bf16"),
                        help="our trainer's mixed_precision settings to time")
    parser.add_argument("--channels-last", action="store_true", help="also time our trainer with channels_last")
    parser.add_argument("--cpu-profile", action="store_true",
                        help="the cpu profile's DDPM (32 px, batch 32, UNet 32/64/64), with --precision no bf16")
    parser.add_argument("--recipes", nargs="+", default=None, metavar="NAME",
                        help="time a step of each named training recipe instead, ratio to the first")
    args = parser.parse_args()
    if args.cpu_profile:
        args.image_size, args.batch_size, args.channels, args.precision = 32, 32, [32, 64, 64], ["no", "bf16"]
        args.channels_last = True
    from histolab_utils.data import training_crops
    from histolab_utils.engine.precision import resolve_mixed_precision

    crops = training_crops(args.image_size, max(512, args.batch_size * 8))
    if args.recipes:
        print_recipe_steps(crops, args)
        return
    plain = plain_diffusers_loop(crops, args, args.steps)
    rows = [("plain diffusers loop (fp32)", plain)]
    for precision in args.precision:
        label = f"ours, {precision}" + (f" (= {resolve_mixed_precision(precision)})" if precision == "auto" else "")
        rows.append((label, our_trainer(crops, args, args.steps, precision)))
    if args.channels_last:
        rows.append(("ours, fp32, channels_last", our_trainer(crops, args, args.steps, "no", channels_last=True)))
    device = device_in_words()
    images = args.batch_size * args.steps
    print(f"{args.image_size} px, batch {args.batch_size}, UNet channels {args.channels}, {args.steps} timed steps "
          f"on {device}; torch {torch.__version__}, {platform.python_version()}")
    print(f"{'trainer':<36}{'seconds':>10}{'images/s':>12}{'ratio':>8}")
    for label, seconds in rows:
        print(f"{label:<36}{seconds:>10.2f}{images / seconds:>12.1f}{plain / seconds:>7.2f}x")


def device_in_words() -> str:
    from histolab_utils.engine.precision import cpu_has_native_bf16

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return (f"CPU ({os.cpu_count()} cores, {torch.backends.cpu.get_cpu_capability()}, native bf16: "
            f"{'yes' if cpu_has_native_bf16() else 'no'})")


def print_recipe_steps(crops: np.ndarray, args) -> None:
    """Each recipe's seconds per step in each precision, and its ratio to the first recipe's at that precision."""
    print(f"{args.image_size} px, batch {args.batch_size}, UNet channels {args.channels}, {args.steps} timed steps "
          f"on {device_in_words()}; torch {torch.__version__}")
    print(f"{'recipe':<22}{'precision':>10}{'s / step':>10}{'ratio':>8}")
    for precision in args.precision:
        first = None
        for recipe in args.recipes:
            seconds = recipe_step_seconds(crops, args, recipe, precision)
            first = first or seconds
            print(f"{recipe:<22}{precision:>10}{seconds:>10.3f}{seconds / first:>7.2f}x", flush=True)


if __name__ == "__main__":
    main()
