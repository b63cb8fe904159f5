"""Deep-learning layer: U-Net, targets and losses, pre-processing, patch sampling, training,
blockwise inference and experiment declarations.

Modules are imported explicitly (``from fib_assets.core.ml.unet import UNet``); this package
imports nothing itself, so importing it is cheap. Arrays are
(z, y, x) in voxels; tensors are (batch, channel, z, y, x); physical sizes are nanometres.
"""
