"""Nuclei segmentation: a HoVer-Net-style segmenter and the augmentation experiments (notebook 09)."""
