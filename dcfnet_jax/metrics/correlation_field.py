"""The local correlation field of the full-resolution protocol (Scarpa & Ciotola, 2022).

Used by D_rho, by the co-registration search of the reprojection indexes and by the
spatial term of the full-resolution losses. For a half width h, w = ceil(h) and the
window is **2w x 2w** (even): output pixel (i, j) sees rows i-w+1 .. i+w and columns
j-w+1 .. j+w (one more below/right than above/left), with zeros outside the image.

The steps and their precisions are the authors' (their MATLAB code):
1. both images rounded to single precision;
2. window means mu = window sum / 4w^2, the sums in double precision;
3. centred images X - mu (each pixel minus *its own* window's mean), rounded back
   to single and zero padded again;
4. window sums of Xc^2, Yc^2 and Xc*Yc (products in single, sums in double); the
   variances (sum / 4w^2) rounded to single and floored at 1e-20; then, in single,
   rho = cov / (sqrt(var_x * var_y) + 1e-20).
Under ``jax_enable_x64`` the double steps are double and the single steps single
(the authors' arithmetic). In float32 mode the double steps run in float32 with
direct pairwise sliding-window sums (never prefix sums, which cancel badly); the
window means, where rounding matters most (the centred values can be far smaller
than the data), are summed exactly in two parts (see ``centred``), as accurate as
the authors' doubles.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from dcfnet_jax.metrics import _common

Array = jax.Array

CORRELATION_EPS = 1e-20  # the authors' floor of the variances and of the denominator


def window_half(half_width: float) -> int:
  """w = ceil(half width) >= 1: the window is 2w x 2w."""
  w = int(math.ceil(half_width))
  if w < 1:
    raise ValueError(f"local correlation half width must be > 0, got {half_width}")
  return w


def window_sums(z: Array, w: int) -> Array:
  """Sums over the 2w x 2w windows (rows i-w+1 .. i+w) of z, zero outside; axes 0 and 1.

  Direct pairwise sliding sums (``_common.box_sum_valid``); any trailing axes.
  """
  pads = ((w - 1, w), (w - 1, w)) + ((0, 0),) * (z.ndim - 2)
  zp = jnp.pad(z, pads)
  return _common.box_sum_valid(_common.box_sum_valid(zp, 2 * w, 0), 2 * w, 1)


def centred(z: Array, w: int) -> Array:
  """single(Z - window mean of Z) with the zero-padded 2w x 2w window; axes 0, 1.

  ``z`` is in the working dtype (float32 or float64); the result is float32.
  """
  work = z.dtype
  z32 = z.astype(jnp.float32)
  n = float(4 * w * w)
  if work == jnp.float64:
    zw = z32.astype(work)
    return (zw - window_sums(zw, w) / n).astype(jnp.float32)
  # float32: split z = coarse + fine, coarse on a power-of-2 grid q so coarse enough that
  # its window sums are exact (|sum| < 2^24 q); fine = z - coarse is exact and small, so
  # its sums are accurate too. The centred value then rounds about once, like the
  # authors' double subtraction rounded to single (exact division by n = 4w^2 when w is
  # a power of 2: ratios 2, 4, 8 and the half width 8). Plain float32 sums would lose
  # up to ~1e-5 of D_rho on 16-bit data; an image-mean shift would erase values tiny
  # next to the mean (filter tails beside fill areas).
  peak = jax.lax.stop_gradient(jnp.max(jnp.abs(z32)))
  _, exponent = jnp.frexp(peak * n)  # peak * n < 2^exponent, exactly
  grid = jnp.ldexp(jnp.float32(1.0), jnp.maximum(exponent - 23, -126))  # exact power of 2
  coarse = jax.lax.stop_gradient(jnp.round(z32 / grid) * grid)
  return (z32 - window_sums(coarse, w) / n) - window_sums(z32 - coarse, w) / n


def window_variance(zc: Array, w: int, work) -> Array:
  """single(max(window mean of Zc^2, 1e-20)) for a centred (float32) image."""
  n = float(4 * w * w)
  var = (window_sums((zc * zc).astype(work), w) / n).astype(jnp.float32)
  return jnp.maximum(var, jnp.float32(CORRELATION_EPS))


def correlation_from_centred(xc: Array, yc: Array, var_x: Array, var_y: Array, w: int,
                             work) -> Array:
  """rho = cov / (sqrt(var_x var_y) + 1e-20) in single; xc, yc broadcast (e.g. PAN vs bands)."""
  n = float(4 * w * w)
  cov = (window_sums((xc * yc).astype(work), w) / n).astype(jnp.float32)
  eps = jnp.float32(CORRELATION_EPS)
  return (cov / (jnp.sqrt(var_x * var_y) + eps)).astype(work)


def _field(x: Array, y: Array, w: int) -> Array:
  """Correlation field of (H, W, Cx) and (H, W, Cy) images (Cx, Cy broadcast)."""
  work = x.dtype
  xc, yc = centred(x, w), centred(y, w)
  return correlation_from_centred(xc, yc, window_variance(xc, w, work),
                                  window_variance(yc, w, work), w, work)


@functools.partial(jax.jit, static_argnames=("half_width",))
def local_correlation(x, y, half_width: float) -> Array:
  """The authors' local correlation field between x and y (values in [-1, 1] up to rounding).

  Args:
    x: (H, W), (H, W, C) or a batch (N, H, W, C).
    y: the same shape as x, or one band fewer dimension (a PAN (H, W) against
      (H, W, C) bands, (N, H, W) against (N, H, W, C)), broadcast over bands.
    half_width: the window half width h; the window is 2*ceil(h) square (even).

  Returns:
    The field, x's shape, in the working dtype (its values are single precision).
  """
  x = _common.as_float(x)
  y = _common.as_float(y)
  w = window_half(half_width)
  if x.ndim == 2 and y.ndim == 2:
    return _field(x[..., None], y[..., None], w)[..., 0]
  if y.ndim == x.ndim - 1:
    y = y[..., None]
  if x.ndim not in (3, 4) or y.ndim != x.ndim or y.shape[:-1] != x.shape[:-1] or (
      y.shape[-1] not in (1, x.shape[-1])):
    raise ValueError(f"local correlation: y of shape {y.shape} does not fit x of shape "
                     f"{x.shape}; expected the same (H, W[, C]) or a single band")
  if x.ndim == 4:
    return _common.map_images(lambda a, b: _field(a, b, w), x, y)
  return _field(x, y, w)
