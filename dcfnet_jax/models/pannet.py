"""PanNet (Yang et al., 2017) as in the DLPan-Toolbox (docs/baseline_definitions.md §3.3).

Works on high-pass details: HP(x) = x − box5(x) of the LR MS (`ms`) and of the PAN, computed
here from the arrays it is given (per patch in training, on the whole image at test, as the
reference does). The MS details are upsampled ×4 by a learned transposed convolution, joined to
the PAN details, and passed through conv →32, four ResBlocks and conv →C. The output is added
to lms (the 23-tap interpolation, not the learned upsampling) by the train/eval step.
Variance-scaling init on the convolutions, PyTorch default init on the transposed one.
"""

import jax
import jax.numpy as jnp
from flax import nnx

from dcfnet_jax.models import layers
from dcfnet_jax.models.baseline_layers import ResBlock, ResidualNetwork, conv, high_pass


class PanNet(ResidualNetwork):
  """ConvT(8, stride 4) on HP(ms), concat HP(pan), conv →32, 4 ResBlocks, conv →C."""

  def __init__(self, num_bands: int, *, rngs: nnx.Rngs, channels: int = 32,
               num_res_blocks: int = 4, dtype=None):
    self.num_bands = num_bands
    # PyTorch ConvTranspose2d(C, C, 8, stride=4, padding=2) == Flax padding k−1−p = 5 on the
    # stride-dilated input, kernel (kh, kw, out, in) with transpose_kernel=True (§3.8).
    self.deconv = nnx.ConvTranspose(
        num_bands, num_bands, (8, 8), strides=(4, 4), padding=((5, 5), (5, 5)),
        transpose_kernel=True, kernel_init=layers.torch_kernel_init(bucketed=False),
        bias_init=layers.torch_bias_init(num_bands * 8 * 8, bucketed=False), dtype=dtype,
        rngs=rngs)
    init = "variance_scaling"
    self.conv1 = conv(num_bands + 1, channels, 3, rngs=rngs, dtype=dtype, init=init)
    self.backbone = nnx.List(
        [ResBlock(channels, rngs=rngs, dtype=dtype, init=init) for _ in range(num_res_blocks)])
    self.conv3 = conv(channels, num_bands, 3, rngs=rngs, dtype=dtype, init=init)

  def __call__(self, pan, lms, mms=None, ms=None) -> jax.Array:
    del mms
    if ms is None:
      raise ValueError("PanNet needs the low-resolution MS `ms` (it upsamples its details)")
    if ms.shape[1] * 4 != pan.shape[1] or ms.shape[2] * 4 != pan.shape[2]:
      raise ValueError(f"PanNet expects ms at 1/4 of the PAN size; got ms {ms.shape}, "
                       f"pan {pan.shape}")
    up = self.deconv(high_pass(ms))
    x = jnp.concatenate([up, high_pass(pan)], axis=-1)
    x = jax.nn.relu(self.conv1(x))
    for block in self.backbone:
      x = block(x)
    return self.conv3(x)
