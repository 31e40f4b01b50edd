"""Models built on the diffusion stage: the VQ-GAN (``vqgan``), its perceptual loss
(``perceptual``) and the cluster-conditional latent diffusion model (``ldm``)."""
