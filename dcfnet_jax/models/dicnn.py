"""DiCNN1 (He et al., 2019) as in the DLPan-Toolbox (docs/baseline_definitions.md §3.2).

Three 3×3 convolutions (zero padding 1) on concat(lms, pan); the output is added to lms
(residual, done by the train/eval step). Variance-scaling init.
"""

import jax
import jax.numpy as jnp
from flax import nnx

from dcfnet_jax.models.baseline_layers import ResidualNetwork, conv


class DiCNN1(ResidualNetwork):
  """conv 3×3 (C+1→64), ReLU, conv 3×3 (64→64), ReLU, conv 3×3 (64→C)."""

  def __init__(self, num_bands: int, *, rngs: nnx.Rngs, dtype=None):
    self.num_bands = num_bands
    init = "variance_scaling"
    self.conv1 = conv(num_bands + 1, 64, 3, rngs=rngs, dtype=dtype, init=init)
    self.conv2 = conv(64, 64, 3, rngs=rngs, dtype=dtype, init=init)
    self.conv3 = conv(64, num_bands, 3, rngs=rngs, dtype=dtype, init=init)

  def __call__(self, pan, lms, mms=None, ms=None) -> jax.Array:
    del mms, ms
    x = jnp.concatenate([lms, pan], axis=-1)
    x = jax.nn.relu(self.conv1(x))
    x = jax.nn.relu(self.conv2(x))
    return self.conv3(x)
