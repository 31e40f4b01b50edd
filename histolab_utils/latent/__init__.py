"""Latent space, one module each:

* ``latents``: grid tiles of the embedded images, their VQ-GAN latent features, a 2-D UMAP and reference labels;
* ``stain_features``: model-free stain and colour features, the baseline the latents must beat;
* ``clustering``: clustering with validation indices, and expert relabelling;
* ``explorer``: the cluster explorer widget with its expert panel.
"""
