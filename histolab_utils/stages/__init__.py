"""One home per trained model: a *stage* module owns everything about one model that is not its network.

    histolab_utils/stages/
        base.py        the Stage class every model fills in, the registry, and StageRecord (typed metrics records)
        cards.py       the paragraphs every model card shares (data split, licences, "not for diagnosis")
        vqgan.py       notebook 02: the VQ-GAN                  runs/<profile>/vqgan-<c>ch      vqgan-<c>ch-<profile>
        ddpm.py        notebook 03: a DDPM per schedule         runs/<profile>/03_ddpm_schedulers/<schedule>-<prediction>
        ldm.py         notebook 05: the cluster-conditioned LDM runs/<profile>/ldm             ldm-<profile>
        masks.py       notebook 06: nuclei masks (NASDM 1)      runs/<profile>/masks           masks-<profile>
        spade.py       notebook 07: mask-to-image (NASDM 2)     runs/<profile>/spade-<space>   spade-<space>-<profile>
        joint.py       notebook 08: joint image-label (CoSyn)   runs/<profile>/joint           joint-<profile>
        segmenter.py   notebook 09: one arm's segmenter         runs/<profile>/segmentation/<arm>/seed-<n>

Each module defines one :class:`~histolab_utils.stages.base.Stage` and registers it. The stage owns its profile
section's translation into its trainer's config (every shared ``[training]`` key included), its subcommand of
``python -m histolab_utils.train``, its run folder and release name, its typed metrics record, its model card and
its release. ``train.py``, ``results.py`` and notebook 09's generators loop over the registry, so adding a model means
a new module here, its profile sections, its notebook and its tests: nothing else. Like a MONAI bundle, one unit per
model; like diffusers' ``pipelines/<name>/``, one folder a newcomer can find by the model's name.

    >>> from histolab_utils.stages import stage
    >>> stage("masks").run_folder("cpu")          # runs/cpu/masks
    >>> stage("masks").release_name("cpu")        # "masks-cpu"
"""

from .base import (Stage, StageRecord, register, registered, stage, stage_of_notebook,  # noqa: F401
                   unregister)
