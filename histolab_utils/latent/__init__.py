"""Latent space: VQ-GAN features of tiles (``latents``), clustering with validation indices and
expert labels (``clustering``), and the cluster explorer widget (``explorer``)."""
