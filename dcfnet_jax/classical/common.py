"""Input checks and MATLAB-style statistics shared by the classical methods.

Every method works on one image: `ms` (h, w, C) low-resolution MS, `pan` (H, W) or (H, W, 1),
`lms` (H, W, C) the MS upsampled to the PAN size (the toolbox's `I_MS`), all in DN. Statistics
follow MATLAB: `mean2`, `std2` (N−1) and `cov` (N−1) over all pixels of a band.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from dcfnet_jax import imaging

MATLAB_EPS = float(np.finfo(np.float64).eps)  # MATLAB `eps` = 2^-52, whatever the dtype


def prepare_inputs(ms, pan, lms, ratio: int) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Checks shapes and returns (ms, pan (H, W), lms) in the working float dtype.

  `lms` defaults to `interp23tap(ms, ratio)`, i.e. the dataset's lms / the toolbox's I_MS.
  """
  ms = imaging.as_float(ms)
  if ms.ndim != 3:
    raise ValueError(f"ms must be (h, w, C), got shape {ms.shape}")
  pan = imaging.as_float(pan)
  if pan.ndim == 3 and pan.shape[-1] == 1:
    pan = pan[..., 0]
  if pan.ndim != 2:
    raise ValueError(f"pan must be (H, W) or (H, W, 1), got shape {pan.shape}")
  h, w, c = ms.shape
  if pan.shape != (h * ratio, w * ratio):
    raise ValueError(f"pan shape {pan.shape} is not ratio={ratio} × the ms size {(h, w)}")
  if lms is None:
    lms = imaging.interp23tap(ms, ratio)
  lms = imaging.as_float(lms)
  if lms.shape != (h * ratio, w * ratio, c):
    raise ValueError(f"lms shape {lms.shape} must be {(h * ratio, w * ratio, c)} "
                     f"(the ms of shape {ms.shape} upsampled ×{ratio})")
  return ms, pan, lms


def mean2(x: jax.Array, axis=(0, 1)) -> jax.Array:
  return jnp.mean(x, axis=axis)


def std2(x: jax.Array, axis=(0, 1)) -> jax.Array:
  """Sample standard deviation (N−1) over the spatial axes, MATLAB's std2."""
  return jnp.std(x, axis=axis, ddof=1)


def cov2(x: jax.Array, y: jax.Array, axis=(0, 1)) -> jax.Array:
  """Sample covariance (N−1) of x and y over the spatial axes (other axes broadcast)."""
  x, y = jnp.broadcast_arrays(x, y)
  n = int(np.prod([x.shape[a] for a in axis]))
  xc = x - jnp.mean(x, axis=axis, keepdims=True)
  yc = y - jnp.mean(y, axis=axis, keepdims=True)
  return jnp.sum(xc * yc, axis=axis) / (n - 1)


def safe_divide(num: jax.Array, den: jax.Array) -> jax.Array:
  """num/den, 0 where den == 0 (where MATLAB would produce NaN/Inf), NaN-free gradients."""
  zero = den == 0
  return jnp.where(zero, 0.0, num / jnp.where(zero, 1.0, den))


def low_pass_detail_path(pan_like: jax.Array, sensor, ratio: int) -> jax.Array:
  """interp23tap(decimate(MTF_b(x_b)), r): the GLP low-pass version of each band of x.

  `pan_like` is (H, W, C): band b is filtered with the band-b MTF kernel of `sensor`.
  """
  filtered = imaging.mtf_filter(pan_like, sensor, ratio)
  return imaging.interp23tap(imaging.decimate(filtered, ratio), ratio)
