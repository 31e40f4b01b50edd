"""Models built on the diffusion stage, one module each:

* ``vqgan``: the VQ-GAN (diffusers' ``VQModel`` and a PatchGAN critic) and its trainer;
* ``perceptual``: the VQ-GAN's perceptual loss on offline EfficientNet-Lite0 features;
* ``ldm``: latent diffusion conditioned on tile clusters, with classifier-free guidance;
* ``mask_generator``: nuclei masks for requested nucleus types and a tissue context (NASDM stage 1);
* ``mask_to_image``: H&E painted for a nuclei mask by a SPADE UNet, in pixel or latent space, and inpainting
  (NASDM stage 2);
* ``joint_synthesis``: image and nuclei label made together from a nucleus layout and a tissue context (CoSyn).
"""
