"""The training engine every trainer of the project runs on (the diffusion trainer, the VQ-GAN's, the
segmenter's), one module each:

* ``trainer``: the Accelerate step loop with checkpoints, exact resume, the non-finite-loss guard and the loss log;
  seeded, checkpointable batches from a resident training set; atomic model saving;
* ``precision``: what ``mixed_precision="auto"`` means on this machine, and the Accelerator built with it;
* ``configs``: a profile section's translation into any trainer's config.

It imports no other stage (of the package, only ``paths``).
"""
