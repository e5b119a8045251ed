"""BatchNorm folded into the convolution before it, for inference (exact up to float rounding).

In eval mode a BatchNorm is a per-channel affine map, y = (x - mean) * s + beta with
s = scale / sqrt(var + eps); after a convolution it can be merged into the convolution's kernel
and bias: conv(x, K) -> BN  ==  conv(x, K * s) + (beta + (b - mean) * s), with b the conv's bias
(0 when it has none). The folded model computes the same function with one per-channel pass
less per convolution; only the rounding of float arithmetic differs (tests/test_folding.py).

`fold_batchnorm(model)` returns a folded copy of an eval-mode model; the original is untouched.
It works on concrete arrays (fold once, then jit the folded model: the weights are prepared once
per model instead of once per call) and under tracing (fold inside a jitted function whose
parameters change, e.g. a validation step during training).

Which convolution feeds which BatchNorm is read from the module structure: consecutive
(Conv, BatchNorm) elements of a `Sequential`, and attribute pairs `conv<k>` / `bn<k>` of any
other module (BasicBlock, Bottleneck, the DCFNet stem). A BatchNorm with no such convolution
makes folding fail loudly rather than silently leaving it unfolded.
"""

import re

import jax
import jax.numpy as jnp
from flax import nnx

from dcfnet_jax.models.layers import BatchNorm, Conv, Sequential

_PAIR_NAME = re.compile(r"^(conv|bn)(\w*)$")


def conv_bn_pairs(model: nnx.Module) -> list[tuple[Conv, BatchNorm]]:
  """Every (convolution, the BatchNorm it feeds) pair of `model`, by the rule in the docstring."""
  pairs = []
  for _, module in nnx.iter_modules(model):
    if isinstance(module, Sequential):
      items = list(module)
      pairs += [(a, b) for a, b in zip(items, items[1:])
                if isinstance(a, Conv) and isinstance(b, BatchNorm)]
      continue
    convs, bns = {}, {}
    for name, value in vars(module).items():
      match = _PAIR_NAME.match(name)
      if match and isinstance(value, Conv):
        convs[match.group(2)] = value
      elif match and isinstance(value, BatchNorm):
        bns[match.group(2)] = value
    pairs += [(convs[k], bns[k]) for k in sorted(bns) if k in convs]
  return pairs


def fold_conv_bn(kernel: jax.Array, conv_bias: jax.Array | None, scale: jax.Array,
                 beta: jax.Array, mean: jax.Array, var: jax.Array, epsilon: float
                 ) -> tuple[jax.Array, jax.Array]:
  """(kernel, bias) of the convolution that equals conv(., kernel) + conv_bias -> eval BN.

  Computed in the statistics' dtype (float32, or float64 under x64), returned in the kernel's.
  HWIO kernel: the output channel is the last axis.
  """
  dtype = jnp.promote_types(mean.dtype, jnp.float32)
  s = scale.astype(dtype) * jax.lax.rsqrt(var.astype(dtype) + epsilon)
  b = jnp.zeros_like(mean, dtype) if conv_bias is None else conv_bias.astype(dtype)
  new_kernel = (kernel.astype(dtype) * s).astype(kernel.dtype)
  new_bias = beta.astype(dtype) + (b - mean.astype(dtype)) * s
  return new_kernel, new_bias.astype(kernel.dtype)


def fold_batchnorm(model: nnx.Module) -> nnx.Module:
  """A copy of the eval-mode `model` with every BatchNorm merged into its convolution.

  The copy is for inference only (its BatchNorms are marked folded and refuse train mode).
  Raises ValueError if a BatchNorm is in train mode, already folded, or has no convolution
  feeding it.
  """
  folded = nnx.clone(model)
  pairs = conv_bn_pairs(folded)
  paired = {id(bn) for _, bn in pairs}
  for path, module in nnx.iter_modules(folded):
    if isinstance(module, BatchNorm):
      where = ".".join(str(p) for p in path)
      if id(module) not in paired:
        raise ValueError(f"BatchNorm {where} has no convolution before it to fold into")
      if not module.use_running_average:
        raise ValueError(f"BatchNorm {where} is in train mode; call model.eval() before folding")
      if module.folded:
        raise ValueError(f"BatchNorm {where} is already folded")
  for conv, bn in pairs:
    kernel, bias = fold_conv_bn(
        conv.kernel[...], None if conv.bias is None else conv.bias[...], bn.scale[...],
        bn.bias[...], bn.mean[...], bn.var[...], bn.epsilon)
    conv.kernel = nnx.Param(kernel)
    conv.bias = nnx.data(nnx.Param(bias))
    bn.folded = True
  return folded


def inference_model(model: nnx.Module, *, fold: bool = True) -> nnx.Module:
  """An eval-mode copy of `model` prepared for inference: BatchNorm folded (if `fold`) and the
  CPU gradient formulations off.

  The CPU formulations (`fast`) only change how gradients are computed, except that they
  materialise block outputs with a division by a runtime 1.0 (`ops.materialize`); in a
  forward pass that only changes XLA's fusion decisions (measured ~2 % slower on XLA:CPU,
  docs/bench_cpu_speed.md). Switching them off changes the output only by float rounding
  (~1e-7 relative, like jit against eager); so does folding (module docstring).
  Models without these attributes (the baselines) are only copied and put in eval mode.
  """
  prepared = nnx.clone(model)
  prepared.eval()
  prepared.set_attributes(fast=frozenset(), raise_if_not_found=False)
  if fold and conv_bn_pairs(prepared):
    prepared = fold_batchnorm(prepared)
  return prepared
