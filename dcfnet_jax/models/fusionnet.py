"""FusionNet (Deng et al., 2020) as in the DLPan-Toolbox (docs/baseline_definitions.md §3.4).

Input is the PAN repeated over the bands minus lms; conv 3×3 →32, ReLU, four ResBlocks, conv
3×3 →C; the output is added to lms (residual, done by the train/eval step). PyTorch default init
(the reference file defines variance scaling but never applies it).
"""

import jax
import jax.numpy as jnp
from flax import nnx

from dcfnet_jax.models.baseline_layers import ResBlock, ResidualNetwork, conv


class FusionNet(ResidualNetwork):
  """conv(P·1 − lms) → ReLU → 4 × ResBlock(32) → conv 32→C."""

  def __init__(self, num_bands: int, *, rngs: nnx.Rngs, channels: int = 32,
               num_res_blocks: int = 4, dtype=None):
    self.num_bands = num_bands
    self.conv1 = conv(num_bands, channels, 3, rngs=rngs, dtype=dtype)
    self.backbone = nnx.List(
        [ResBlock(channels, rngs=rngs, dtype=dtype) for _ in range(num_res_blocks)])
    self.conv3 = conv(channels, num_bands, 3, rngs=rngs, dtype=dtype)

  def __call__(self, pan, lms, mms=None, ms=None) -> jax.Array:
    del mms, ms
    x = jnp.broadcast_to(pan, lms.shape) - lms
    x = jax.nn.relu(self.conv1(x))
    for block in self.backbone:
      x = block(x)
    return self.conv3(x)
