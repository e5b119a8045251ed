"""The toolbox's 23-tap polynomial interpolator `interp23tap` (metric_definitions.md §1.1)."""

from __future__ import annotations

import functools
import math

import jax
import numpy as np

from dcfnet_jax.imaging.common import Array, apply_separable, as_float, check_ratio, spatial_axes

# Odd-offset taps k(+-1), k(+-3), ..., k(+-11) of the 23-tap kernel (2 x the half-band
# coefficients); k(0) = 1 and the other even offsets are 0.
INTERP23_ODD_TAPS = (0.61066818237, -0.145397186478, 0.043619155884,
                     -0.010385513306, 0.001615524292, -0.000120162964)


@functools.lru_cache(maxsize=None)
def _interp23tap_matrix(n: int, odd_phase: bool) -> np.ndarray:
  """(2n, n) float64 matrix of one doubling pass along an axis of length n.

  Polyphase form of the toolbox pass (zero stuffing + circular 23-tap filter):
  with ``odd_phase`` the input sits at odd output positions (first pass),
  otherwise at even ones. Only odd kernel offsets meet non-zero samples, so the
  kept phase copies the input (rows of the identity) and the interpolated phase
  is a 12-tap circular filter on the low-resolution samples.
  """
  mat = np.zeros((2 * n, n))
  m = np.arange(n)
  kept, interp = (2 * m + 1, 2 * m) if odd_phase else (2 * m, 2 * m + 1)
  mat[kept, m] = 1.0
  for j, c in enumerate(INTERP23_ODD_TAPS, start=1):
    # Odd phase: out[2m] uses x[m+j-1] + x[m-j]; even: out[2m+1] uses x[m+j] + x[m-j+1].
    right, left = (m + j - 1, m - j) if odd_phase else (m + j, m - j + 1)
    np.add.at(mat, (interp, right % n), c)
    np.add.at(mat, (interp, left % n), c)
  mat.setflags(write=False)
  return mat


@functools.lru_cache(maxsize=None)
def _interp23tap_composed(n: int, num_passes: int) -> np.ndarray:
  """All doubling passes along one axis as one (2^p n, n) float64 matrix."""
  mat = np.eye(n)
  for p in range(num_passes):
    mat = _interp23tap_matrix(mat.shape[0], p == 0) @ mat
  mat.setflags(write=False)
  return mat


def interp23tap(img, ratio: int = 4, num_passes: int | None = None) -> Array:
  """Toolbox ``interp23tap(I, ratio)``: MS upsampled to PAN size (the EXP baseline).

  LR pixel i lands on HR index ``ratio*i + ratio/2`` (ratio 4: 4i+2), the phase
  the Wald decimation keeps, so ``decimate(interp23tap(M)) == M`` exactly.

  Args:
    img: (H, W), (H, W, C) or (N, H, W, C).
    ratio: power of 2. The toolbox runs ``ratio/2`` doubling passes, which is the
      right count only for ratio 2 and 4; for larger ratios ``num_passes`` must be
      given explicitly (``log2(ratio)`` for a true x ratio upsampling, or
      ``ratio // 2`` to reproduce the toolbox's result).
    num_passes: number of doubling passes (see ``ratio``).
  """
  ratio = check_ratio(ratio)
  if num_passes is None:
    if ratio > 4:
      raise ValueError(
          f"interp23tap with ratio {ratio}: the toolbox runs ratio/2 = {ratio // 2} "
          f"doubling passes ({2 ** (ratio // 2)}x), not log2(ratio) = "
          f"{int(math.log2(ratio))}; pass num_passes explicitly")
    num_passes = ratio // 2
  return _interp23tap_passes(as_float(img), num_passes)


@functools.partial(jax.jit, static_argnums=1)
def _interp23tap_passes(x: Array, num_passes: int) -> Array:
  ax0, ax1 = spatial_axes(x.ndim)
  return apply_separable(x, _interp23tap_composed(x.shape[ax0], num_passes),
                          _interp23tap_composed(x.shape[ax1], num_passes))
