"""Layers of DCFNet with torch semantics (NHWC), and the torch default initialisers.

`Conv`, `BatchNorm`, `Sequential` and `conv_bn` mirror torch.nn modules so that state paths map
to state_dict keys; their `fast` attribute picks the formulation of `ops` (a frozenset of trick
names, static: changing it re-traces). The initialisers here are the one home of torch's
defaults, also used by the comparison networks (`baseline_layers`).
"""

import math
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dcfnet_jax.models.ops import (FastFlag, batch_norm_train_fast, batch_norm_train_plain,
                                   conv2d, resolve_fast, uses)

Array = jax.Array
Dtype = Any

BN_EPSILON = 1e-5
# Flax convention: running = momentum * running + (1 - momentum) * batch; torch's momentum 0.01.
BN_MOMENTUM = 0.99
FUSION_EPSILON = 1e-4


# ---------------------------------------------------------------------------------------------
# Initialisers (torch defaults, docs/dcfnet_architecture.md §7).

def _uniform(key: Array, shape: Sequence[int], dtype, bound: float, bucketed: bool) -> Array:
  """U(-bound, bound) i.i.d. of `shape`.

  `bucketed` draws a power-of-two long vector and slices it: eager initialisation compiles one
  random-number kernel per distinct shape, which dominated DCFNet's construction time on CPU
  (~45 kernel shapes; buckets need ~10). Same distribution, other draws: DCFNet uses it (its
  documented demo numbers come from these draws), the comparison networks draw directly.
  """
  if not bucketed:
    return jax.random.uniform(key, shape, dtype, -bound, bound)
  size = int(np.prod(shape))
  bucket = 1 << max(size - 1, 1).bit_length()
  u = jax.random.uniform(key, (bucket,), dtype, -1.0, 1.0)
  return (u[:size] * jnp.asarray(bound, dtype)).reshape(shape)


def torch_kernel_init(bucketed: bool = True) -> Callable[..., Array]:
  """torch's default conv weight init, U(±1/sqrt(fan_in)), fan_in = prod(shape[:-1]).

  That is C_in·k·k for a Flax Conv kernel (kh, kw, in, out) and C_out·k·k for a ConvTranspose
  kernel with `transpose_kernel=True` (kh, kw, out, in), as torch computes for Conv2d and
  ConvTranspose2d. Same distribution as `variance_scaling(1/3, "fan_in", "uniform")`.
  """

  def init(key, shape, dtype=jnp.float32):
    return _uniform(key, shape, dtype, 1.0 / math.sqrt(int(np.prod(shape[:-1]))), bucketed)

  return init


def torch_bias_init(fan_in: int, bucketed: bool = True) -> Callable[..., Array]:
  """torch's default conv bias: U(±1/sqrt(fan_in)), fan_in = C_in * k * k of the kernel."""
  bound = 1.0 / math.sqrt(fan_in)

  def init(key, shape, dtype=jnp.float32):
    return _uniform(key, shape, dtype, bound, bucketed)

  return init


def normalize_fusion_weights(w: Array) -> Array:
  """DCFNet's fusion-weight normalisation over axis 0: relu(w) / (sum_0 relu(w) + 1e-4)."""
  w = jax.nn.relu(w.astype(jnp.promote_types(w.dtype, jnp.float32)))
  return w / (jnp.sum(w, axis=0, keepdims=True) + FUSION_EPSILON)


# ---------------------------------------------------------------------------------------------
# Modules. Attribute names follow the torch modules so that state paths map to state_dict keys.

class Conv(nnx.Module):
  """torch.nn.Conv2d (square kernel 1 or 3, padding (k-1)/2, optional bias) on NHWC inputs.

  `kernel` is HWIO (torch `weight` is OIHW); `bias` exists only with `use_bias=True`.
  """

  def __init__(self, in_features: int, out_features: int, kernel_size: int, *, stride: int = 1,
               use_bias: bool = False, fast: FastFlag = "auto", dtype: Dtype = jnp.float32,
               param_dtype: Dtype = jnp.float32, precision=None, rngs: nnx.Rngs):
    if kernel_size not in (1, 3):
      raise ValueError(f"kernel_size must be 1 or 3, got {kernel_size}")
    self.in_features, self.out_features = in_features, out_features
    self.kernel_size, self.stride, self.precision = kernel_size, stride, precision
    self.fast, self.dtype = resolve_fast(fast), dtype
    shape = (kernel_size, kernel_size, in_features, out_features)
    self.kernel = nnx.Param(torch_kernel_init()(rngs.params(), shape, param_dtype))
    if use_bias:
      fan_in = in_features * kernel_size * kernel_size
      self.bias = nnx.Param(torch_bias_init(fan_in)(rngs.params(), (out_features,), param_dtype))
    else:
      self.bias = None

  def __call__(self, x: Array) -> Array:
    if x.shape[-1] != self.in_features:
      raise ValueError(f"Conv expects {self.in_features} input channels, got shape {x.shape}")
    x = x.astype(self.dtype)
    y = conv2d(x, self.kernel[...].astype(self.dtype), self.stride, fast=self.fast,
               precision=self.precision)
    if self.bias is not None:
      y = y + self.bias[...].astype(self.dtype)
    return y


class BatchNorm(nnx.Module):
  """torch.nn.BatchNorm2d semantics on NHWC inputs (docs/dcfnet_architecture.md §2).

  Train mode normalises with the biased batch variance and updates
  `running = momentum * running + (1 - momentum) * batch`, with the *unbiased* variance
  (n / (n - 1)) for `var`, as torch does. Statistics are float32 (or the wider input dtype);
  the output has the compute `dtype`. `model.train()` / `model.eval()` switch
  `use_running_average`.
  """

  def __init__(self, num_features: int, *, momentum: float = BN_MOMENTUM,
               epsilon: float = BN_EPSILON, use_running_average: bool = False,
               fast: FastFlag = "auto", dtype: Dtype = jnp.float32,
               param_dtype: Dtype = jnp.float32, rngs: nnx.Rngs | None = None):
    del rngs  # deterministic init; accepted for a uniform constructor signature
    self.num_features = num_features
    self.momentum = momentum
    self.epsilon = epsilon
    self.use_running_average = use_running_average
    self.fast = resolve_fast(fast)
    self.dtype = dtype
    # True once `models.folding.fold_batchnorm` has merged this layer into the convolution
    # before it: then the layer is the identity (+ the fused ReLU), for inference only.
    self.folded = False
    stat_dtype = jnp.promote_types(param_dtype, jnp.float32)
    self.scale = nnx.Param(jnp.ones((num_features,), param_dtype))
    self.bias = nnx.Param(jnp.zeros((num_features,), param_dtype))
    self.mean = nnx.BatchStat(jnp.zeros((num_features,), stat_dtype))
    self.var = nnx.BatchStat(jnp.ones((num_features,), stat_dtype))

  def set_view(self, use_running_average: bool | None = None):
    """Used by `nnx.view(model, use_running_average=...)`."""
    if use_running_average is not None:
      self.use_running_average = use_running_average

  def __call__(self, x: Array, *, relu: bool = False) -> Array:
    """Normalises `x`; `relu=True` fuses the ReLU that follows (same result as applying it)."""
    if x.shape[-1] != self.num_features:
      raise ValueError(f"BatchNorm expects {self.num_features} channels, got shape {x.shape}")
    x = x.astype(self.dtype)
    if self.folded:
      if not self.use_running_average:
        raise ValueError("this BatchNorm was folded into its convolution (inference only); "
                         "train mode needs the unfolded model")
      return jax.nn.relu(x) if relu else x
    stat_dtype = self.mean.get_value().dtype
    scale = self.scale[...].astype(stat_dtype)
    bias = self.bias[...].astype(stat_dtype)
    if self.use_running_average:
      y = (x.astype(stat_dtype) - self.mean[...]) * jax.lax.rsqrt(self.var[...] + self.epsilon)
      y = y * scale + bias
      if relu:
        y = jax.nn.relu(y)
      return y.astype(self.dtype)
    fn = batch_norm_train_fast if uses("bn", self.fast) else batch_norm_train_plain
    y, mean, var = fn(x, scale, bias, self.epsilon, relu)
    n = x.shape[0] * x.shape[1] * x.shape[2]
    if n < 2:
      raise ValueError(f"train-mode BatchNorm needs more than 1 value per channel (N*H*W), got "
                       f"input shape {x.shape}; use eval mode (model.eval()) for single pixels")
    unbiased = var * (n / (n - 1))
    m = self.momentum
    self.mean[...] = m * self.mean[...] + (1.0 - m) * mean.astype(stat_dtype)
    self.var[...] = m * self.var[...] + (1.0 - m) * unbiased.astype(stat_dtype)
    return y


class Sequential(nnx.List):
  """torch.nn.Sequential: elements are modules or parameter-free callables (e.g. `jax.nn.relu`).

  Indices match torch's, so a ReLU at position 2 leaves a gap in the state paths exactly as it
  does in the state_dict. A BatchNorm directly followed by `jax.nn.relu` runs as one fused op.
  """

  def __call__(self, x: Array) -> Array:
    layers = list(self)
    i = 0
    while i < len(layers):
      layer = layers[i]
      if (isinstance(layer, BatchNorm) and i + 1 < len(layers)
          and layers[i + 1] is jax.nn.relu):
        x = layer(x, relu=True)
        i += 2
        continue
      x = layer(x)
      i += 1
    return x


def conv_bn(in_features: int, out_features: int, kernel_size: int = 3, *, stride: int = 1,
            relu: bool, fast: FastFlag = "auto", dtype: Dtype = jnp.float32,
            param_dtype: Dtype = jnp.float32, precision=None, bn_momentum: float = BN_MOMENTUM,
            rngs: nnx.Rngs) -> Sequential:
  """Sequential(conv (no bias), BN[, ReLU]): torch keys `.0.weight`, `.1.*`."""
  layers = [
      Conv(in_features, out_features, kernel_size, stride=stride, fast=fast, dtype=dtype,
           param_dtype=param_dtype, precision=precision, rngs=rngs),
      BatchNorm(out_features, momentum=bn_momentum, fast=fast, dtype=dtype,
                param_dtype=param_dtype),
  ]
  if relu:
    layers.append(jax.nn.relu)
  return Sequential(layers)
