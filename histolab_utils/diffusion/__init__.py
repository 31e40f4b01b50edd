"""Diffusion: noise schedules (``schedules``), what the network predicts and the x0 diagnostic
(``prediction``), sampling (``sampling``), vector conditioning (``conditioning``) and the project's one Accelerate trainer (``training``),
which every model of the project trains with."""
