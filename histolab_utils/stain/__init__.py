"""Stain, one module each:

* ``deconvolution``: colour deconvolution of H&E into per-stain images (Ruifrok & Johnston);
* ``normalisation``: stain normalisation, Reinhard and Macenko, batched in torch;
* ``jitter``: HED stain and colour jitter of a training batch (the segmenter's classic augmentation).
"""
