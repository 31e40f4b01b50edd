"""Diffusion, one module each:

* ``schedules``: noise schedules (linear, cosine, sigmoid; zero terminal SNR) and diffusers schedulers on them;
* ``prediction``: what the network predicts (ε, v or x₀), its loss target, min-SNR weights and the x₀ diagnostic;
* ``unets``: the project's UNets built from a training config, with GroupNorm groups for narrow UNets;
* ``conditioning``: a UNet conditioned on a vector through its time embedding, and the null condition;
* ``spade``: a UNet conditioned on a spatial map through SPADE, as a diffusers model;
* ``hybrid_loss``: the learned-variance hybrid loss (Improved DDPM);
* ``edm``: EDM's preconditioned denoiser, loss and samplers;
* ``sampling``: DDPM, DDIM and DPM-Solver++ sampling with guidance, to uint8 images;
* ``inpainting``: RePaint inpainting and its DDIM variant;
* ``pipelines``: loading a saved or released diffusers pipeline the way the notebooks sample it;
* ``training``: the diffusion trainer, its config and recipe settings, on the engine (``histolab_utils.engine``);
* ``recipes``: training recipes by name (a loss weighting, preconditioning, schedule, EMA), as profiles name them.
"""
