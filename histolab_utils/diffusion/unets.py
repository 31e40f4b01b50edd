"""The project's diffusion UNets, built from a :class:`~histolab_utils.diffusion.training.TrainConfig`: a
diffusers ``UNet2DModel`` (unconditional, class-conditional, or with condition maps concatenated to its
input), a :class:`~histolab_utils.diffusion.conditioning.VectorConditionedUNet2DModel` (float condition
vectors) or a :class:`~histolab_utils.diffusion.spade.SPADEUNet` (spatial maps), with GroupNorm groups that
suit narrow UNets (:func:`norm_groups`). diffusers is imported on first use."""

from __future__ import annotations


def condition_kinds(config) -> dict[str, int]:
    """The config's condition settings, checked: at most one kind (class labels, vectors or maps) is set."""
    kinds = {"num_classes": config.num_classes, "condition_features": config.condition_features,
             "spatial_condition_channels": config.spatial_condition_channels}
    if sum(map(bool, kinds.values())) > 1:
        raise ValueError(f"set one of num_classes, condition_features and spatial_condition_channels; got {kinds}")
    return kinds


def norm_groups(channels: tuple[int, ...], min_channels_per_group: int = 4) -> int:
    """GroupNorm groups for a UNet with these level widths: diffusers' 32 where every group keeps at
    least ``min_channels_per_group`` channels, fewer for narrow UNets.

    One channel per group is instance norm: it removes each feature map's mean, and with it the
    crop's overall colour. Measured on the smoke DDPM (channels 16/32/32, linear, v, 300 steps):
    16 groups gave DDPM samples 18/23 levels too red/blue; 4 groups brought them within 5.
    """
    groups = max(1, min(32, min(channels) // min_channels_per_group))
    while any(c % groups for c in channels):
        groups -= 1
    return groups


def build_unet(config):
    """A diffusers UNet2DModel for ``config.in_channels`` x ``config.image_size``², with a class
    embedding of ``num_classes + 1`` entries (the last one: "no class") when class-conditional, or a
    :class:`~histolab_utils.diffusion.conditioning.VectorConditionedUNet2DModel` when
    ``config.condition_features`` > 0."""
    from diffusers import UNet2DModel

    from .conditioning import VectorConditionedUNet2DModel

    condition_kinds(config)
    levels = len(config.block_out_channels)
    out_channels = config.in_channels * (2 if config.learned_variance else 1)
    in_channels = config.in_channels + config.concat_condition_channels
    if config.concat_condition_channels and (config.spatial_condition_channels or config.condition_features):
        raise ValueError("concat_condition_channels combine with num_classes (or nothing), not with SPADE maps "
                         "or condition vectors")
    if config.spatial_condition_channels:
        from .spade import SPADEUNet

        return SPADEUNet(
            sample_size=config.image_size, in_channels=config.in_channels, out_channels=out_channels,
            label_nc=config.spatial_condition_channels, block_out_channels=tuple(config.block_out_channels),
            layers_per_block=config.layers_per_block,
            attention_levels=tuple([False] * (levels - 1) + [bool(config.attention)]),
            norm_num_groups=config.norm_num_groups or norm_groups(tuple(config.block_out_channels)),
            spade_hidden_channels=config.spade_hidden_channels)
    down = ["DownBlock2D"] * levels
    up = ["UpBlock2D"] * levels
    if config.attention and levels > 1:
        down[-2], up[1] = "AttnDownBlock2D", "AttnUpBlock2D"
    if config.condition_features:
        return VectorConditionedUNet2DModel(
            sample_size=config.image_size, in_channels=config.in_channels, out_channels=out_channels,
            down_block_types=tuple(down), up_block_types=tuple(up), block_out_channels=tuple(config.block_out_channels),
            layers_per_block=config.layers_per_block,
            norm_num_groups=config.norm_num_groups or norm_groups(tuple(config.block_out_channels)),
            condition_features=config.condition_features)
    return UNet2DModel(
        sample_size=config.image_size, in_channels=in_channels, out_channels=out_channels,
        num_class_embeds=config.num_classes + 1 if config.num_classes else None, layers_per_block=config.layers_per_block,
        block_out_channels=tuple(config.block_out_channels), down_block_types=tuple(down), up_block_types=tuple(up),
        norm_num_groups=config.norm_num_groups or norm_groups(tuple(config.block_out_channels)),
    )
