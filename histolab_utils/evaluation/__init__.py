"""Evaluation: the one metrics module (``metrics``: FID, KID, precision/recall, MS-SSIM, colour,
memorisation on the standard Inception features) and the real-vs-real floors every generated
score sits beside (``floors``)."""
