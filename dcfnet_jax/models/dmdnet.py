"""A DMDNet-like network (after Fu et al., "Deep Multiscale Detail Networks for Multiband
Spectral Image Sharpening", IEEE TNNLS 2020) — a reconstruction, not the authors' model.

No implementation of DMDNet is available (docs/baseline_definitions.md §3.5). What the paper's
abstract states is kept: high-frequency (detail) inputs from the upsampled MS and the PAN, the
upsampled MS added to the output, no pooling or batch normalisation, and residual blocks of
grouped multiscale dilated convolutions. Everything else is an assumption exposed as a
constructor argument: HP(x) = x − box5(x) as in PanNet, conv 3×3 →64 + ReLU, 10 blocks that
split the 64 channels in 4 groups of 16, convolve group g with a 3×3 kernel of dilation
`dilations[g]` (1, 2, 3, 4), concatenate, ReLU, conv 3×3 64→64 and add the block input; a final
conv 3×3 →C. PyTorch's default init: with PanNet's variance scaling the ten residual blocks
amplify the signal so much that the initial output has a std of ~4.5 on [0, 1] data (0.03 with
the default init), and training starts far off. Its numbers must not be presented as the paper's
DMDNet.
"""

from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from dcfnet_jax.models.baseline_layers import ResidualNetwork, conv, high_pass


class MultiscaleDilatedBlock(nnx.Module):
  """x + conv3×3(ReLU(concat_g dilated_conv_g(x_g))) with one dilation per channel group."""

  def __init__(self, channels: int, dilations: Sequence[int], *, rngs: nnx.Rngs, dtype=None):
    if channels % len(dilations):
      raise ValueError(f"channels={channels} must split evenly into {len(dilations)} groups")
    group = channels // len(dilations)
    self.group = group
    self.branches = nnx.List([
        conv(group, group, 3, dilation=d, rngs=rngs, dtype=dtype) for d in dilations])
    self.fuse = conv(channels, channels, 3, rngs=rngs, dtype=dtype)

  def __call__(self, x: jax.Array) -> jax.Array:
    parts = [branch(x[..., i * self.group:(i + 1) * self.group])
             for i, branch in enumerate(self.branches)]
    return x + self.fuse(jax.nn.relu(jnp.concatenate(parts, axis=-1)))


class DMDNet(ResidualNetwork):
  """Detail-domain residual network of grouped multiscale dilated blocks (reconstruction)."""

  is_reconstruction = True  # no reference code: see the module docstring

  def __init__(self, num_bands: int, *, rngs: nnx.Rngs, channels: int = 64,
               num_blocks: int = 10, dilations: Sequence[int] = (1, 2, 3, 4), dtype=None):
    self.num_bands = num_bands
    self.conv1 = conv(num_bands + 1, channels, 3, rngs=rngs, dtype=dtype)
    self.blocks = nnx.List(
        [MultiscaleDilatedBlock(channels, dilations, rngs=rngs, dtype=dtype)
         for _ in range(num_blocks)])
    self.conv3 = conv(channels, num_bands, 3, rngs=rngs, dtype=dtype)

  def __call__(self, pan, lms, mms=None, ms=None) -> jax.Array:
    del mms, ms
    x = jnp.concatenate([high_pass(lms), high_pass(pan)], axis=-1)
    x = jax.nn.relu(self.conv1(x))
    for block in self.blocks:
      x = block(x)
    return self.conv3(x)
