"""Stain: colour deconvolution of H&E (``deconvolution``) and stain normalisation (``normalisation``:
Reinhard and Macenko, batched torch)."""
