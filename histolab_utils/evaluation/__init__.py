"""Evaluation, one module per question:

* ``metrics``: the one sample-quality module (FID, KID, precision/recall, MS-SSIM, colour, memorisation on the
  standard Inception features);
* ``floors``: generated samples scored against real crops, with the real-vs-real floors beside them;
* ``choices``: settings (a guidance scale, say) chosen on the validation strip only;
* ``controllability``: whether a class-conditional generator makes the class it was asked for, filed by the rule that
  made the classes (in the generator's own space when it made them: near-circular);
* ``cluster_judge``: the same question asked by an independent judge (a classifier on features the generator
  never saw, chosen on validation), beside chance and its ceiling on real held-out tiles;
* ``morphology``: nuclei-mask morphology features, distances between two sets of masks, validity of decoded
  instances, and a random-ellipse baseline;
* ``mask_conditioning``: whether a generated mask holds the nucleus types it was asked for, and only those;
* ``mask_generation``: the nuclei-mask generator's scoring table, checks and goals (notebook 06);
* ``mask_fidelity``: whether a synthetic image puts nuclei where its mask says (a haematoxylin detector);
* ``nucleus_appearance``: whether a synthetic image's nuclei (or a generated mask's) look real: size, shape,
  haematoxylin density, texture and contrast of whole nuclei, as distances from real held-out nuclei beside the
  real train-vs-held-out floor at equal n;
* ``seams``: the seam score of an inpainted region;
* ``layout_adherence``: whether a generated label puts the requested nuclei where the layout asked;
* ``segmentation``: a segmenter's scores against real labels (Dice, AJI+, PQ, mPQ+) and contrasts of training arms;
* ``hierarchical_bootstrap``: seed-and-tile bootstrap intervals for comparing training arms, and Holm's correction.
"""
