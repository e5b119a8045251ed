"""PNN (Masi et al., 2016) as the DLPan-Toolbox trains and tests it (baseline_definitions §3.1).

Three valid (unpadded) convolutions on concat(lms, pan); the output *is* the fused image (no lms
skip). The reference trains on the 48×48 valid output of a 64×64 patch against gt[8:56, 8:56] and
tests by padding the input 8 px per side with edge replication. To keep the project's contract
(output the size of lms) this module always pads the input by 8 px (edge replication); the
centre of the output is then exactly the reference's valid output, and the 8-px border
(`loss_border`) is what the reference loss leaves out.
"""

import jax
import jax.numpy as jnp
from flax import nnx

from dcfnet_jax.models.baseline_layers import conv

BORDER = 8  # (9 - 1)/2 + (5 - 1)/2 + (5 - 1)/2 pixels lost per side by the valid convolutions


class PNN(nnx.Module):
  """conv 9×9 →64, ReLU, conv 5×5 →32, ReLU, conv 5×5 →C; valid padding, PyTorch init."""

  default_residual = False
  output_layer = ("conv3",)
  loss = "mse"
  loss_border = BORDER  # pixels per side the reference loss ignores

  def __init__(self, num_bands: int, *, rngs: nnx.Rngs, dtype=None):
    self.num_bands = num_bands
    self.conv1 = conv(num_bands + 1, 64, 9, padding="VALID", rngs=rngs, dtype=dtype)
    self.conv2 = conv(64, 32, 5, padding="VALID", rngs=rngs, dtype=dtype)
    self.conv3 = conv(32, num_bands, 5, padding="VALID", rngs=rngs, dtype=dtype)

  def valid_forward(self, x: jax.Array) -> jax.Array:
    """The unpadded network: (N,H,W,C+1) → (N,H−16,W−16,C)."""
    x = jax.nn.relu(self.conv1(x))
    x = jax.nn.relu(self.conv2(x))
    return self.conv3(x)

  def __call__(self, pan, lms, mms=None, ms=None) -> jax.Array:
    del mms, ms  # PNN only sees the upsampled MS and the PAN
    x = jnp.concatenate([lms, pan], axis=-1)
    x = jnp.pad(x, ((0, 0), (BORDER, BORDER), (BORDER, BORDER), (0, 0)), mode="edge")
    return self.valid_forward(x)
