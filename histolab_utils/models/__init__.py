"""Models built on the diffusion stage: the VQ-GAN (``vqgan``), its perceptual loss
(``perceptual``), the cluster-conditional latent diffusion model (``ldm``) and the nuclei-mask generator
(``mask_generator``, NASDM stage 1)."""
