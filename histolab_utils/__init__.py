"""histolab_utils: the tested helper package behind the histolab notebooks, grouped by pipeline stage.

Stages, each importing only the ones listed before it:

* ``data``: real H&E from pinned PyPI wheels, loaders for brought data sets, region-split crops;
* ``tiling``: OpenSlide tiling with tissue masks and annotations;
* ``stain``: colour deconvolution and stain normalisation;
* ``evaluation``: the metrics module and the real-vs-real floors;
* ``diffusion``: schedules, prediction types, sampling and the Accelerate trainer;
* ``models``: the VQ-GAN, its perceptual loss and the latent diffusion model;
* ``latent``: latent features, clustering and the explorer.

The notebook plumbing sits at the top level (``config``, ``report``, ``runner``, ``widgets``,
``plotting``, ``paths``), with the command line ``train`` above everything: no module imports it.
Modules are imported on demand so that ``import histolab_utils`` stays cheap.
"""

__version__ = "0.1.0"
