"""Nuclei segmentation (notebook 09):

* ``hovernet``: a HoVer-Net-style segmenter built from MONAI's parts, its trainer and its post-processing;
* ``experiments``: the augmentation experiments: real pools, synthetic sources, arms and their scores.
"""
