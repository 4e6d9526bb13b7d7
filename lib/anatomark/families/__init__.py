"""The model families shipped with anatomark (plug-ins of :mod:`anatomark.family`; the core never imports them).

- :mod:`~anatomark.families.heatmap`: the whole-image heatmap U-Net (``kind: heatmap``);
- :mod:`~anatomark.families.cascade`: the fine-resolution local refiner (``local``) and the coarse-to-fine
  cascade (``cascade``, the default model);
- :mod:`~anatomark.families.zoo`: the five literature families (``unet_seg``, ``fpn_seg``, ``appearance_context``,
  ``seg_regression``, ``farnet``).
"""
