"""MATLAB's `imresize`, nearest decimation, the Wald degradation and the D_s PAN degradation."""

from __future__ import annotations

import functools
import math
from typing import Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np

from dcfnet_jax.imaging.common import Array, apply_separable, as_float, spatial_axes
from dcfnet_jax.imaging.interp import interp23tap
from dcfnet_jax.imaging.mtf import mtf_filter
from dcfnet_jax.imaging.sensors import Sensor


def _cubic(t: np.ndarray) -> np.ndarray:
  a = np.abs(t)
  a2, a3 = a * a, a * a * a
  return ((1.5 * a3 - 2.5 * a2 + 1.0) * (a <= 1)
          + (-0.5 * a3 + 2.5 * a2 - 4.0 * a + 2.0) * ((a > 1) & (a <= 2)))


def _box(t: np.ndarray) -> np.ndarray:
  return ((t >= -0.5) & (t < 0.5)).astype(np.float64)


@functools.lru_cache(maxsize=None)
def imresize_weights(n_in: int, scale: float, method: str = "bicubic",
                     antialiasing: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
  """MATLAB imresize's contributions along one axis.

  Returns (indices, weights), both (n_out, P): 0-based input indices (already
  mirrored) and normalised float64 weights; output i = sum_p w[i, p] * x[idx[i, p]].
  """
  if method == "bicubic":
    kernel, width = _cubic, 4.0
  elif method == "nearest":
    kernel, width = _box, 1.0
  else:
    raise ValueError(f"method must be 'bicubic' or 'nearest', got {method!r}")
  if antialiasing is None:
    antialiasing = method != "nearest"
  n_out = int(math.ceil(scale * n_in))
  if scale < 1 and antialiasing:
    h = lambda t: scale * kernel(scale * t)  # noqa: E731
    width = width / scale
  else:
    h = kernel
  x = np.arange(1, n_out + 1, dtype=np.float64)
  u = x / scale + 0.5 * (1.0 - 1.0 / scale)
  left = np.floor(u - width / 2.0)
  num_taps = int(math.ceil(width)) + 2
  idx = left[:, None] + np.arange(num_taps)[None, :]  # 1-based
  weights = h(u[:, None] - idx)
  weights = weights / weights.sum(axis=1, keepdims=True)
  # Mirror out-of-range indices with the edge sample repeated: 1..n, n..1, ...
  aux = np.concatenate([np.arange(n_in), np.arange(n_in)[::-1]])
  idx0 = aux[np.mod(idx.astype(np.int64) - 1, 2 * n_in)]
  keep = np.any(weights != 0, axis=0)  # MATLAB drops all-zero tap columns
  idx0, weights = idx0[:, keep], weights[:, keep]
  idx0.setflags(write=False)
  weights.setflags(write=False)
  return idx0, weights


@functools.lru_cache(maxsize=None)
def _imresize_matrix(n_in: int, scale: float, method: str,
                     antialiasing: bool | None) -> np.ndarray:
  idx, w = imresize_weights(n_in, scale, method, antialiasing)
  mat = np.zeros((idx.shape[0], n_in))
  np.add.at(mat, (np.repeat(np.arange(idx.shape[0]), idx.shape[1]), idx.ravel()), w.ravel())
  mat.setflags(write=False)
  return mat


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def _imresize_jit(x: Array, scale: float, method: str, antialiasing: bool | None) -> Array:
  ax0, ax1 = spatial_axes(x.ndim)
  idx0, w0 = imresize_weights(x.shape[ax0], scale, method, antialiasing)
  idx1, w1 = imresize_weights(x.shape[ax1], scale, method, antialiasing)
  if w0.shape[1] == 1 and w1.shape[1] == 1 and np.all(w0 == 1.0) and np.all(w1 == 1.0):
    # Nearest: pure gathers (exact, and non-finite values stay local).
    x = jnp.take(x, jnp.asarray(idx0[:, 0]), axis=ax0)
    return jnp.take(x, jnp.asarray(idx1[:, 0]), axis=ax1)
  return apply_separable(x, _imresize_matrix(x.shape[ax0], scale, method, antialiasing),
                          _imresize_matrix(x.shape[ax1], scale, method, antialiasing))


def imresize(img, scale: float, method: str = "bicubic",
             antialiasing: bool | None = None) -> Array:
  """MATLAB ``imresize(I, scale, method)`` (same scale on both spatial axes).

  Separable, axis 0 (rows) first. Antialiasing is on by default for bicubic
  shrinking and off for nearest, as in MATLAB.
  """
  if scale <= 0:
    raise ValueError(f"scale must be positive, got {scale}")
  if method not in ("bicubic", "nearest"):
    raise ValueError(f"method must be 'bicubic' or 'nearest', got {method!r}")
  x = as_float(img)
  spatial_axes(x.ndim)
  return _imresize_jit(x, float(scale), method, antialiasing)


def decimate(img, ratio: int = 4) -> Array:
  """``imresize(I, 1/ratio, 'nearest')``: keeps rows/cols ``ratio*k + ratio/2`` (0-based)."""
  return imresize(img, 1.0 / ratio, method="nearest")


def wald_degrade(ms, pan, ratio: int = 4,
                 sensor: Union[str, Sensor, Sequence[float]] = "none") -> tuple[Array, Array]:
  """Toolbox ``resize_images(I_MS, I_PAN, ratio, sensor)``: reduced-resolution pair.

  MS -> MTF filter (band-wise genMTF kernels, replicate borders) -> nearest
  decimation; PAN -> antialiased bicubic ``imresize(PAN, 1/ratio)`` (this toolbox
  version applies no MTF_PAN to the PAN).

  Args:
    ms: (H, W, C) or (N, H, W, C) MS at the scale to be degraded.
    pan: PAN at ratio x the MS size: (H', W'), (H', W', 1) or (N, H', W', 1).
    ratio: resolution ratio.
    sensor: sensor name / ``Sensor`` or per-band Nyquist gains for the MS filter.

  Returns:
    (ms_lr, pan_lr) with the layouts of the inputs.
  """
  ms_lr = decimate(mtf_filter(ms, sensor, ratio), ratio)
  pan_lr = imresize(pan, 1.0 / ratio, method="bicubic")
  return ms_lr, pan_lr


def degrade_pan_for_ds(pan, ratio: int = 4) -> Array:
  """The PAN that D_s compares LMS against: ``interp23tap(imresize(PAN, 1/ratio), ratio)``."""
  return interp23tap(imresize(pan, 1.0 / ratio, method="bicubic"), ratio)
