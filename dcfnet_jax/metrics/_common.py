"""Helpers shared by the quality indices: dtype, batching, crop, threshold, rounding, blocks."""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from dcfnet_jax import imaging

Array = jax.Array
EPS = float(np.finfo(np.float64).eps)  # MATLAB eps = 2^-52 = 2.220446e-16
UINT16_MAX = 65535.0


def as_float(x) -> Array:
  """float64 under ``jax_enable_x64``, float32 otherwise."""
  return imaging.as_float(x)


def map_images(fn: Callable, *images):
  """``fn`` applied to each image of (N, ...) arrays, one image after the other.

  ``jax.lax.map`` rather than ``jax.vmap``: the indices are memory-bound chains of
  whole-image passes (window sums, block moments, FFTs); one image's intermediates
  stay in the CPU caches, a whole batch's do not (measured ~1.5x less CPU time for
  20 x 256x256x8, docs/bench_metrics.md). Same arithmetic per image as vmap.
  """
  return jax.lax.map(lambda im: fn(*im), images)


def batched(num_image_args: int) -> Callable:
  """Makes an (H, W, C) index accept (N, H, W, C) inputs too (result (N,)).

  The first ``num_image_args`` positional arguments are images; the batch case is
  chosen by the first one's rank. Images are processed one by one (``map_images``).
  """
  def decorator(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
      images, rest = args[:num_image_args], args[num_image_args:]
      if jnp.ndim(images[0]) == 4:
        return map_images(lambda *im: fn(*im, *rest, **kwargs), *images)
      if jnp.ndim(images[0]) != 3:
        raise ValueError(f"{fn.__name__}: expected (H, W, C) or (N, H, W, C) images, "
                         f"got shape {jnp.shape(images[0])}")
      return fn(*images, *rest, **kwargs)
    return wrapper
  return decorator


def check_same_shape(name: str, a, b, a_name: str = "fused", b_name: str = "reference") -> None:
  if jnp.shape(a) != jnp.shape(b):
    raise ValueError(f"{name}: {a_name} has shape {jnp.shape(a)} but {b_name} has "
                     f"{jnp.shape(b)}; they must match")


def cut_size(size: int, dim_cut: int) -> int:
  """Length of one image side after the toolbox's border crop (256 -> 215 for dim_cut 21)."""
  return size - 2 * dim_cut + 1


def cut_bounds(x: Array, dim_cut: int) -> Array:
  """The toolbox's asymmetric crop ``X[dim_cut-1 : H-dim_cut, dim_cut-1 : W-dim_cut]``.

  Drops dim_cut-1 rows/cols at the top/left and dim_cut at the bottom/right
  (256 -> 215 for dim_cut 21). Works on (H, W, C) and (N, H, W, C).
  """
  h_axis = x.ndim - 3
  h, w = x.shape[h_axis], x.shape[h_axis + 1]
  if dim_cut < 1 or cut_size(h, dim_cut) < 1 or cut_size(w, dim_cut) < 1:
    raise ValueError(f"dim_cut {dim_cut} does not fit images of {h}x{w}")
  x = jax.lax.slice_in_dim(x, dim_cut - 1, h - dim_cut, axis=h_axis)
  return jax.lax.slice_in_dim(x, dim_cut - 1, w - dim_cut, axis=h_axis + 1)


def threshold_values(fused: Array, bits, enabled=True) -> Array:
  """thvalues = 1: ``F > 2^L -> 2^L`` (2048 for L = 11, not 2047) and ``F < 0 -> 0``.

  ``bits`` and ``enabled`` may be traced (one compilation serves both settings).
  """
  top = jnp.asarray(2.0, fused.dtype) ** jnp.asarray(bits, fused.dtype)
  clipped = jnp.where(fused > top, top, fused)
  clipped = jnp.where(clipped < 0, jnp.zeros((), fused.dtype), clipped)
  return jnp.where(jnp.asarray(enabled), clipped, fused).astype(fused.dtype)


def round_uint16(x: Array) -> Array:
  """MATLAB ``double(uint16(x))``: round half away from zero, clamp to [0, 65535], NaN -> 0.

  ``jnp.round`` rounds half to even, which changes Q2n. ``x - trunc(x)`` is exact in
  floating point, so ties are detected exactly.
  """
  t = jnp.trunc(x)
  r = jnp.where(jnp.abs(x - t) >= 0.5, t + jnp.sign(x), t)
  r = jnp.clip(r, 0.0, UINT16_MAX)
  return jnp.where(jnp.isnan(x), 0.0, r)


def to_blocks(x: Array, block: int) -> Array:
  """(H, W, C), H and W multiples of ``block`` -> (num_blocks, block*block, C), row-major."""
  h, w, c = x.shape
  x = x.reshape(h // block, block, w // block, block, c)
  return x.transpose(0, 2, 1, 3, 4).reshape((h // block) * (w // block), block * block, c)


def box_reduce_valid(x: Array, size: int, axis: int, op: Callable = jnp.add) -> Array:
  """``op``-reduction of ``size`` consecutive samples along ``axis`` ('valid': n - size + 1).

  Built from reductions over power-of-2 lengths by doubling: for sums this is
  pairwise summation (rounding error grows like log2(size), not like a running
  cumsum's); ``op`` = jnp.maximum / jnp.minimum give sliding max / min.
  """
  n = x.shape[axis]
  out_len = n - size + 1
  parts = {1: x}
  length = 1
  while 2 * length <= size:
    s = parts[length]
    m = s.shape[axis] - length
    parts[2 * length] = op(jax.lax.slice_in_dim(s, 0, m, axis=axis),
                           jax.lax.slice_in_dim(s, length, length + m, axis=axis))
    length *= 2
  total, offset = None, 0
  for p in sorted(parts, reverse=True):
    if size - offset >= p:
      part = jax.lax.slice_in_dim(parts[p], offset, offset + out_len, axis=axis)
      total = part if total is None else op(total, part)
      offset += p
  return total


def box_sum_valid(x: Array, size: int, axis: int) -> Array:
  """Sums of ``size`` consecutive samples along ``axis`` (pairwise, see box_reduce_valid)."""
  return box_reduce_valid(x, size, axis, jnp.add)


def windows_both_constant(x: Array, y: Array, size: int) -> Array:
  """(H-size+1, W-size+1, C) bool: are x and y both constant in each size x size window?

  Exact-zero tests on computed variances depend on rounding (and on XLA's FMA
  contraction under jit); the toolbox's zero tests are meant for constant windows,
  so they are decided from the data directly: a window is constant in both images
  iff no vertical and no horizontal neighbour pair inside it differs in either.
  """
  changes_v = (x[1:] != x[:-1]) | (y[1:] != y[:-1])  # between rows r and r+1
  changes_h = (x[:, 1:] != x[:, :-1]) | (y[:, 1:] != y[:, :-1])
  any_ = jnp.logical_or
  if size == 1:
    return jnp.ones(x.shape, bool)
  inside_v = box_reduce_valid(box_reduce_valid(changes_v, size - 1, 0, any_), size, 1, any_)
  inside_h = box_reduce_valid(box_reduce_valid(changes_h, size, 0, any_), size - 1, 1, any_)
  return ~(inside_v | inside_h)
