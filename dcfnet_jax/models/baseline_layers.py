"""Layers shared by the comparison networks (docs/baseline_definitions.md §3), with their two
initialisations.

The reference PyTorch code uses PyTorch's default (weights and biases uniform in ±1/sqrt(fan_in),
`layers.torch_kernel_init`, drawn directly) and the "variance scaling" of DiCNN/PanNet (a
standard normal truncated to (-2, 2), times sqrt(2.6/fan_in), zero bias). `fan_in` is the
product of all kernel dimensions but the last.
"""

import math
from typing import Literal

import jax
import jax.numpy as jnp
from flax import nnx

from dcfnet_jax.models import layers

InitName = Literal["torch", "variance_scaling"]


class ResidualNetwork(nnx.Module):
  """What the residual comparison networks share: lms is added to the output, MSE loss."""

  default_residual = True
  output_layer = ("conv3",)  # the last convolution (params path): zero it and output = lms
  loss = "mse"
  loss_border = 0


def variance_scaling_kernel_init(key, shape, dtype=jnp.float32):
  """DiCNN/PanNet's init: truncated N(0,1) on (-2, 2) times sqrt(2.6/fan_in)."""
  scale = math.sqrt(2.6 / math.prod(shape[:-1]))
  return scale * jax.random.truncated_normal(key, -2.0, 2.0, shape, dtype)


def conv(in_features: int, out_features: int, kernel_size: int, *, rngs: nnx.Rngs,
         init: InitName = "torch", padding="same_torch", dilation: int = 1,
         feature_group_count: int = 1, dtype=None) -> nnx.Conv:
  """A stride-1 2-D conv with bias, PyTorch-style explicit padding and a named initialiser.

  padding "same_torch" means symmetric zero padding dilation·(k−1)/2 on each side (PyTorch's
  `padding=k//2`), "VALID" means none. `dtype` is the compute dtype (None: that of the
  inputs); parameters are always float32.
  """
  if padding == "same_torch":
    p = dilation * (kernel_size - 1) // 2
    padding = ((p, p), (p, p))
  fan_in = (in_features // feature_group_count) * kernel_size * kernel_size
  if init == "torch":
    kernel_init = layers.torch_kernel_init(bucketed=False)
    bias_init = layers.torch_bias_init(fan_in, bucketed=False)
  elif init == "variance_scaling":
    kernel_init, bias_init = variance_scaling_kernel_init, nnx.initializers.zeros_init()
  else:
    raise ValueError(f"unknown init {init!r}; expected 'torch' or 'variance_scaling'")
  return nnx.Conv(in_features, out_features, (kernel_size, kernel_size), padding=padding,
                  kernel_dilation=(dilation, dilation), feature_group_count=feature_group_count,
                  kernel_init=kernel_init, bias_init=bias_init, dtype=dtype, rngs=rngs)


class ResBlock(nnx.Module):
  """y = x + conv(relu(conv(x))), 3×3, pad 1 (PanNet, FusionNet: baseline_definitions §3.3)."""

  def __init__(self, channels: int, *, rngs: nnx.Rngs, init: InitName = "torch", dtype=None):
    self.conv20 = conv(channels, channels, 3, rngs=rngs, init=init, dtype=dtype)
    self.conv21 = conv(channels, channels, 3, rngs=rngs, init=init, dtype=dtype)

  def __call__(self, x: jax.Array) -> jax.Array:
    return x + self.conv21(jax.nn.relu(self.conv20(x)))


def box_filter5(x: jax.Array) -> jax.Array:
  """5×5 mean per channel (NHWC), border reflect-101 (OpenCV boxFilter's default border)."""
  padded = jnp.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0)), mode="reflect")
  summed = jax.lax.reduce_window(padded, jnp.zeros((), x.dtype), jax.lax.add, (1, 5, 5, 1),
                                 (1, 1, 1, 1), "VALID")
  return summed / 25.0


def high_pass(x: jax.Array) -> jax.Array:
  """PanNet's high-pass detail: x − box5(x) (baseline_definitions.md §3.3). Needs H, W ≥ 3."""
  if x.shape[1] < 3 or x.shape[2] < 3:
    raise ValueError(f"high_pass needs images of at least 3×3 pixels (NHWC), got shape {x.shape}")
  return x - box_filter5(x)
