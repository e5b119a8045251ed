"""Functional ops of DCFNet with torch semantics, NHWC: plain and CPU-fast formulations.

Every op has two implementations of the same mathematics:

* plain: the textbook JAX formulation (`lax.conv_general_dilated`, BatchNorm as written,
  gather-based bilinear resize). This is what XLA handles best on GPU/TPU.
* fast: formulations whose *gradients* XLA:CPU runs better (docs/model.md, "CPU speed"): a
  hand-written BatchNorm backward, the input gradient of stride-2 3x3 convolutions as four phase
  convolutions, the kernel gradient of wide-to-narrow 3x3 convolutions by output channel, and
  materialised block outputs so that XLA:CPU does not recompute cheap elementwise chains inside
  every consumer. Two more formulations (1x1 convolutions as matrix products, align-corners
  resize by interpolation matrices) are implemented and tested but off by default, because they
  measured slower.

Which formulations run is a static property of each layer: its `fast` attribute, a frozenset of
trick names (`resolve_fast`), so changing it re-traces and no global state is read at trace
time. Both paths agree to float64 round-off (tests/test_model.py checks outputs and gradients).
"""

import functools
from collections.abc import Collection
from typing import Literal, Sequence

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
FastFlag = bool | Literal["auto"] | Collection[str]

# The individual CPU formulations (tricks). All compute the same mathematics; only those
# measured to help on XLA:CPU are on by default (docs/bench_model_cpu.md); pass a set of names
# as `fast` for ablations (benchmarks/bench_cpu_train_step.py --tricks).
#   bn       train-mode BatchNorm(+ReLU) with a hand-written backward pass
#   conv_s2  input gradient of stride-2 3x3 convolutions as four phase convolutions
#   conv_wgrad  kernel gradient of 3x3 convolutions with more input than output channels as an
#            output-channel-major convolution (2x faster in Eigen for the 256->32/64 convs)
#   conv_wgrad_square  the same for 3x3 convolutions with as many input as output channels
#            (measured: no gain in the training step, off; docs/bench_cpu_speed.md)
#   barrier  materialise block outputs once (no recomputation inside every consumer)
#   conv1x1  1x1 convolutions as dot_general (measured slower with jaxlib 0.10.2: off)
#   resize   align-corners resize by interpolation matrices (measured slower: off)
ALL_FAST_TRICKS = frozenset({"bn", "conv_s2", "conv_wgrad", "conv_wgrad_square", "barrier",
                             "conv1x1", "resize"})
DEFAULT_FAST_TRICKS = frozenset({"bn", "conv_s2", "conv_wgrad", "barrier"})


def resolve_fast(fast: FastFlag) -> frozenset[str]:
  """The tricks a `fast` setting turns on.

  True: the default tricks; False: none; "auto": the default tricks exactly when JAX's backend
  is the CPU (they were measured on XLA:CPU only; GPU/TPU compilers fuse and lay out the plain
  formulation well, and the tricks add copies and barriers); a collection of names: those.
  """
  if fast is True:
    return DEFAULT_FAST_TRICKS
  if fast is False or fast is None:
    return frozenset()
  if fast == "auto":
    return DEFAULT_FAST_TRICKS if jax.default_backend() == "cpu" else frozenset()
  if isinstance(fast, str) or not isinstance(fast, Collection):
    raise ValueError(f"fast must be True, False, 'auto' or a set of trick names, got {fast!r}")
  tricks = frozenset(fast)
  unknown = sorted(tricks - ALL_FAST_TRICKS)
  if unknown:
    raise ValueError(f"unknown fast tricks {unknown}; known: {sorted(ALL_FAST_TRICKS)}")
  return tricks


def uses(trick: str, fast: FastFlag) -> bool:
  """Whether the `fast` setting turns `trick` on."""
  return trick in (fast if isinstance(fast, frozenset) else resolve_fast(fast))


# ---------------------------------------------------------------------------------------------
# Materialisation.

def barrier(x: Array, fast: FastFlag) -> Array:
  """On the fast path, makes XLA:CPU compute `x` once (see `materialize`)."""
  return materialize(x, uses("barrier", fast))


def materialize(x: Array, enabled: bool = True) -> Array:
  """Makes XLA:CPU compute `x` once instead of re-fusing it into every consumer.

  XLA duplicates cheap elementwise producers (BN affine + residual add + ReLU chains) into every
  fusion that reads them, e.g. into each transposing copy that feeds a weight-gradient
  convolution, so whole residual chains get recomputed many times. `lax.optimization_barrier`
  does not help: XLA:CPU removes barriers before fusion. A division is an "expensive" op that
  fusion will not duplicate, so `x / one` with a runtime `one` that XLA cannot constant-fold
  (1 + 0 * x[0,...,0], exactly 1.0 for finite values) pins `x` into one materialised buffer.
  The result is bit-identical to `x`; its gradient is exactly the incoming cotangent.
  """
  if not enabled:
    return x
  one = 1 + 0 * jax.lax.stop_gradient(x[(0,) * x.ndim])
  return x / one



_CONV_DIMS = ("NHWC", "HWIO", "NHWC")


def _conv_plain(x: Array, kernel: Array, stride: int, precision) -> Array:
  pad = (kernel.shape[0] - 1) // 2
  return jax.lax.conv_general_dilated(
      x, kernel, window_strides=(stride, stride), padding=((pad, pad), (pad, pad)),
      dimension_numbers=_CONV_DIMS, precision=precision)


def _conv1x1_dot(x: Array, kernel: Array, precision) -> Array:
  """1x1 convolution as a matrix product over N*H*W: its weight gradient is a plain GEMM."""
  return jax.lax.dot_general(x, kernel[0, 0], (((3,), (0,)), ((), ())), precision=precision)


# Parity of the input row -> kernel taps applied to dy[p] (and dy[p+1]), and the padding of dy
# (the odd parity reads one row past the end, which is zero).
_PHASE_TAPS = {0: (1,), 1: (2, 0)}
_PHASE_PADS = {0: (0, 0), 1: (0, 1)}


def _stride2_input_grad(dy: Array, kernel: Array, in_hw: tuple[int, int], precision) -> Array:
  """Input gradient of a 3x3, stride-2, pad-1 convolution on an even-sized input.

  With x[i] feeding y[o] through tap k when i = 2o + k - 1 (per axis): even rows i = 2p only get
  tap 1 from y[p]; odd rows i = 2p+1 get tap 2 from y[p] and tap 0 from y[p+1]. Each of the four
  (row, column) parities is therefore a small stride-1 correlation of dy with taps of the
  channel-transposed kernel, a quarter of the work of XLA's lhs-dilated transposed convolution.
  """
  h, w = in_hw
  kt = jnp.swapaxes(kernel, 2, 3)  # (3, 3, O, I): correlates dy (.., O) into dx (.., I)
  phases = []
  for a in (0, 1):
    row = []
    for b in (0, 1):
      k = jnp.stack([jnp.stack([kt[i, j] for j in _PHASE_TAPS[b]]) for i in _PHASE_TAPS[a]])
      row.append(jax.lax.conv_general_dilated(
          dy, k, window_strides=(1, 1), padding=(_PHASE_PADS[a], _PHASE_PADS[b]),
          dimension_numbers=_CONV_DIMS, precision=precision))
    phases.append(jnp.stack(row, axis=3))  # (N, h/2, w/2, 2[b], I)
  dx = jnp.stack(phases, axis=2)  # (N, h/2, 2[a], w/2, 2[b], I)
  return dx.reshape(dy.shape[0], h, w, kernel.shape[2])


def _kernel_grad_by_output_channel(x: Array, dy: Array, ksize: tuple[int, int],
                                   pad: tuple[int, int], precision) -> Array:
  """dW[u,v,i,o] = sum_{n,p,q} x[n, p+u-pad_h, q+v-pad_w, i] * dy[n,p,q,o] (x zero outside).

  The kernel gradient of a stride-1 convolution, computed as a convolution whose "batch" is the
  output channel o and whose features are the input channels i (dy slides over x). XLA's own
  formulation makes i the batch; Eigen runs this one about 2x faster when i > o (e.g. the
  256 -> 32 transition convolution) and slower when i < o.
  """
  (kh, kw), (ph, pw) = ksize, pad
  lo_h, lo_w = kh - 1 - ph, kw - 1 - pw
  hi_h = kh - 1 - lo_h + x.shape[1] - dy.shape[1]
  hi_w = kw - 1 - lo_w + x.shape[2] - dy.shape[2]
  out = jax.lax.conv_general_dilated(
      dy, x, window_strides=(1, 1), padding=((lo_h, hi_h), (lo_w, hi_w)),
      dimension_numbers=("CHWN", "IHWO", "NHWC"), precision=precision)  # (O, kh, kw, I), flipped
  return jnp.transpose(out[:, ::-1, ::-1, :], (1, 2, 3, 0))


def _stride2_kernel_grad(x: Array, dy: Array, precision) -> Array:
  """Kernel gradient of a 3x3, stride-2, pad-1 convolution via the four parities of x.

  Tap k of output row o reads x[2o + k - 1]: the even rows x[2p] (tap 1, same p) or the odd rows
  x[2p + 1] (tap 0 from p - 1, tap 2 from p). Each parity pair is a stride-1 kernel gradient of a
  1- or 2-tap kernel at the output resolution.
  """
  taps = {0: ((1, 0),), 1: ((0, 0), (2, 1))}  # parity -> ((kernel tap, index in the small kernel))
  grads = {}
  for a in (0, 1):
    for b in (0, 1):
      g = _kernel_grad_by_output_channel(x[:, a::2, b::2, :], dy, (len(taps[a]), len(taps[b])),
                                         (a, b), precision)
      for k_h, u in taps[a]:
        for k_w, v in taps[b]:
          grads[k_h, k_w] = g[u, v]
  return jnp.stack([jnp.stack([grads[i, j] for j in range(3)]) for i in range(3)])


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def _conv3x3_fast(x: Array, kernel: Array, stride: int, precision, phase_dx: bool,
                  swapped_dk: bool) -> Array:
  return _conv_plain(x, kernel, stride, precision)


def _conv3x3_fast_fwd(x, kernel, stride, precision, phase_dx, swapped_dk):
  del phase_dx, swapped_dk
  return _conv_plain(x, kernel, stride, precision), (x, kernel)


def _conv3x3_fast_bwd(stride, precision, phase_dx, swapped_dk, res, dy):
  """Input gradient by phases (stride 2) and/or the output-channel-major kernel gradient."""
  x, kernel = res
  if phase_dx:
    dx = _stride2_input_grad(dy, kernel, x.shape[1:3], precision).astype(x.dtype)
  else:
    _, x_vjp = jax.vjp(lambda a: _conv_plain(a, kernel, stride, precision), x)
    (dx,) = x_vjp(dy)
  if swapped_dk and stride == 1:
    dk = _kernel_grad_by_output_channel(x, dy, (3, 3), (1, 1), precision)
  elif swapped_dk:
    dk = _stride2_kernel_grad(x, dy, precision)
  else:
    _, kernel_vjp = jax.vjp(lambda k: _conv_plain(x, k, stride, precision), kernel)
    (dk,) = kernel_vjp(dy)
  return dx, dk.astype(kernel.dtype)


_conv3x3_fast.defvjp(_conv3x3_fast_fwd, _conv3x3_fast_bwd)


def conv2d(x: Array, kernel: Array, stride: int, *, fast: FastFlag,
           precision=None) -> Array:
  """Torch-style convolution (padding (k-1)/2 each side), NHWC input, HWIO kernel."""
  ksize = kernel.shape[0]
  if uses("conv1x1", fast) and ksize == 1 and stride == 1:
    return _conv1x1_dot(x, kernel, precision)
  even = x.shape[1] % 2 == 0 and x.shape[2] % 2 == 0
  if ksize == 3 and (stride == 1 or (stride == 2 and even)):
    phase_dx = stride == 2 and uses("conv_s2", fast)
    cin, cout = kernel.shape[2], kernel.shape[3]
    swapped_dk = ((uses("conv_wgrad", fast) and cin > cout)
                  or (uses("conv_wgrad_square", fast) and cin == cout))
    if phase_dx or swapped_dk:
      return _conv3x3_fast(x, kernel, stride, precision, phase_dx, swapped_dk)
  return _conv_plain(x, kernel, stride, precision)


def _bn_stats(x32: Array) -> tuple[Array, Array]:
  """Batch mean and biased variance over N, H, W (two-pass, like torch)."""
  mean = jnp.mean(x32, axis=(0, 1, 2))
  var = jnp.mean(jnp.square(x32 - mean), axis=(0, 1, 2))
  return mean, var


def batch_norm_train_plain(x: Array, scale: Array, bias: Array, epsilon: float,
                           relu: bool) -> tuple[Array, Array, Array]:
  """Train-mode BatchNorm (+ optional ReLU) by the textbook formula; autodiff does the rest.

  Returns (y, batch mean, biased batch variance); statistics are float32 (or float64).
  """
  x32 = x.astype(jnp.promote_types(x.dtype, jnp.float32))
  mean, var = _bn_stats(x32)
  y = (x32 - mean) * jax.lax.rsqrt(var + epsilon) * scale + bias
  if relu:
    y = jax.nn.relu(y)
  return y.astype(x.dtype), jax.lax.stop_gradient(mean), jax.lax.stop_gradient(var)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _bn_train_fast(x, scale, bias, epsilon, relu):
  y, mean, var, _ = _bn_train_fast_fwd_impl(x, scale, bias, epsilon, relu)
  return y, mean, var


def _bn_train_fast_fwd_impl(x, scale, bias, epsilon, relu):
  x32 = x.astype(jnp.promote_types(x.dtype, jnp.float32))
  mean, var = _bn_stats(x32)
  inv = jax.lax.rsqrt(var + epsilon)
  y = (x32 - mean) * inv * scale + bias
  if relu:
    y = jax.nn.relu(y)
  return y.astype(x.dtype), mean, var, inv


def _bn_train_fast_fwd(x, scale, bias, epsilon, relu):
  y, mean, var, inv = _bn_train_fast_fwd_impl(x, scale, bias, epsilon, relu)
  return (y, mean, var), (x, mean, inv, scale, bias)


def _bn_train_fast_bwd(epsilon, relu, res, cts):
  """dx = scale*inv*(g - mean(g) - xhat*mean(g*xhat)): two reductions and one elementwise pass.

  Cotangents of the returned statistics are ignored: callers only use them under stop_gradient.
  """
  del epsilon
  x, mean, inv, scale, bias = res
  g = cts[0]
  x32 = x.astype(mean.dtype)
  xhat = (x32 - mean) * inv
  g = g.astype(mean.dtype)
  if relu:
    g = jnp.where(xhat * scale + bias > 0, g, 0)
  n = x.shape[0] * x.shape[1] * x.shape[2]
  sum_g = jnp.sum(g, axis=(0, 1, 2))
  sum_gx = jnp.sum(g * xhat, axis=(0, 1, 2))
  dx = (scale * inv) * (g - sum_g / n - xhat * (sum_gx / n))
  return dx.astype(x.dtype), sum_gx.astype(scale.dtype), sum_g.astype(bias.dtype)


_bn_train_fast.defvjp(_bn_train_fast_fwd, _bn_train_fast_bwd)


def batch_norm_train_fast(x: Array, scale: Array, bias: Array, epsilon: float,
                          relu: bool) -> tuple[Array, Array, Array]:
  """Same maths as `batch_norm_train_plain`, with a hand-written backward pass."""
  y, mean, var = _bn_train_fast(x, scale, bias, epsilon, relu)
  return y, jax.lax.stop_gradient(mean), jax.lax.stop_gradient(var)


def _align_corners_taps(n_in: int, n_out: int, dtype) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Source indices i0, i1 and weight t of i1 for align-corners resizing, computed like torch.

  torch (CPU and CUDA) computes scale = (in-1)/(out-1) and src = scale*dst in the input's
  arithmetic precision (float for float32, double for float64), truncates to i0 and uses
  i1 = min(i0+1, in-1), t = src - i0.
  """
  ftype = np.float64 if np.dtype(dtype) == np.float64 else np.float32
  if n_out > 1:
    scale = ftype(n_in - 1) / ftype(n_out - 1)
  else:
    scale = ftype(0)
  src = (scale * np.arange(n_out, dtype=ftype)).astype(ftype)
  i0 = np.minimum(src.astype(np.int64), n_in - 1)
  i1 = np.minimum(i0 + 1, n_in - 1)
  t = (src - i0.astype(ftype)).astype(ftype)
  return i0, i1, t


def _resize_axis_gather(x: Array, axis: int, n_out: int) -> Array:
  n_in = x.shape[axis]
  i0, i1, t = _align_corners_taps(n_in, n_out, x.dtype)
  shape = [1] * x.ndim
  shape[axis] = n_out
  t = jnp.asarray(t, x.dtype).reshape(shape)
  x0 = jnp.take(x, jnp.asarray(i0), axis=axis)
  x1 = jnp.take(x, jnp.asarray(i1), axis=axis)
  return (1 - t) * x0 + t * x1


def _interp_matrix(n_in: int, n_out: int, dtype) -> np.ndarray:
  """(n_out, n_in) matrix of the align-corners bilinear weights along one axis."""
  i0, i1, t = _align_corners_taps(n_in, n_out, dtype)
  ftype = t.dtype.type
  m = np.zeros((n_out, n_in), ftype)
  rows = np.arange(n_out)
  np.add.at(m, (rows, i0), (ftype(1) - t).astype(ftype))
  np.add.at(m, (rows, i1), t)
  return m


def resize_align_corners(x: Array, size: Sequence[int], *, fast: FastFlag = False,
                         precision=None) -> Array:
  """Bilinear resize of NHWC `x` to `size` = (h, w) with align_corners=True (torch semantics).

  `jax.image.resize` is half-pixel (align_corners=False), hence this function. The plain path
  gathers two rows/columns per output; the fast path multiplies by two small interpolation
  matrices (whose gradient is a matrix product instead of a scatter-add).
  """
  h_out, w_out = int(size[0]), int(size[1])
  _, h_in, w_in, _ = x.shape
  if (h_in, w_in) == (h_out, w_out):
    return x
  if not uses("resize", fast):
    # Width first, then height, as torch's kernel nests the two interpolations.
    return _resize_axis_gather(_resize_axis_gather(x, 2, w_out), 1, h_out)
  mw = jnp.asarray(_interp_matrix(w_in, w_out, x.dtype), x.dtype)
  mh = jnp.asarray(_interp_matrix(h_in, h_out, x.dtype), x.dtype)
  x = jnp.einsum("pw,nhwc->nhpc", mw, x, precision=precision)
  return jnp.einsum("oh,nhpc->nopc", mh, x, precision=precision)
