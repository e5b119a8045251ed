"""Shared helpers of the imaging tools: working dtype, array layouts, separable products."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
HIGHEST = jax.lax.Precision.HIGHEST
MATLAB_EPS = np.finfo(np.float64).eps  # MATLAB eps = 2^-52


def working_dtype():
  """float64 when ``jax_enable_x64`` is on (also inside ``jax.enable_x64()``), else float32."""
  return jax.dtypes.canonicalize_dtype(jnp.float64)


def as_float(x) -> Array:
  """``x`` as a jnp array of the working float dtype."""
  return jnp.asarray(x, dtype=working_dtype())


def spatial_axes(ndim: int) -> tuple[int, int]:
  if ndim in (2, 3):
    return (0, 1)
  if ndim == 4:
    return (1, 2)
  raise ValueError(
      f"expected an (H, W), (H, W, C) or (N, H, W, C) array, got {ndim} dimensions")


def check_ratio(ratio: int) -> int:
  if int(ratio) != ratio or ratio < 2 or (int(ratio) & (int(ratio) - 1)):
    raise ValueError(f"ratio must be a power of 2 >= 2, got {ratio}")
  return int(ratio)


def spatial_last(x: Array) -> Array:
  """(H, W, C) -> (C, H, W); (N, H, W, C) -> (N, C, H, W); (H, W) unchanged."""
  return x if x.ndim == 2 else jnp.moveaxis(x, -1, -3)


def channels_back(x: Array) -> Array:
  return x if x.ndim == 2 else jnp.moveaxis(x, -3, -1)


def apply_separable(x: Array, rows: np.ndarray, cols: np.ndarray) -> Array:
  """``rows @ X @ cols^T`` on the spatial axes of every band (axis 0 first, then axis 1).

  The float64 matrices are cast to x's dtype; products at full precision.
  """
  z = spatial_last(x)
  z = jnp.matmul(jnp.asarray(rows, x.dtype), z, precision=HIGHEST)
  z = jnp.matmul(z, jnp.asarray(cols.T, x.dtype), precision=HIGHEST)
  return channels_back(z)
