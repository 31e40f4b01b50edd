"""Evaluation: the one metrics module (``metrics``: FID, KID, precision/recall, MS-SSIM, colour,
memorisation on the standard Inception features), the real-vs-real floors every generated
score sits beside (``floors``), nuclei-mask morphology (``morphology``) and conditioning accuracy
(``mask_conditioning``)."""
