"""MTF-matched Gaussian filters: genMTF / MTF / MTF_PAN / LPfilterGauss.

Written from docs/metric_definitions.md §1.2.
"""

from __future__ import annotations

import functools
import math
from typing import Union

import jax
import jax.numpy as jnp
import numpy as np

from dcfnet_jax.imaging.common import (MATLAB_EPS, Array, as_float, channels_back, spatial_axes,
                                       spatial_last)
from dcfnet_jax.imaging.sensors import Sensor, gains_for, get_sensor


def _kaiser(n: int, beta: float) -> np.ndarray:
  k = np.arange(n, dtype=np.float64)
  x = 2.0 * k / (n - 1) - 1.0
  return np.i0(beta * np.sqrt(1.0 - x * x)) / np.i0(beta)


def _huang_window(n: int, beta: float = 0.5) -> np.ndarray:
  """fwind1 with a 1-D window: the Kaiser window rotated to 2-D (0 outside the unit disc)."""
  w1 = _kaiser(n, beta)
  t = np.linspace(-1.0, 1.0, n)
  r = np.sqrt(t[:, None] ** 2 + t[None, :] ** 2)
  return np.where(r > 1.0, 0.0, np.interp(np.minimum(r, 1.0), t, w1))


@functools.lru_cache(maxsize=None)
def _gaussian_fir(gnyq: float, ratio: int, n: int, design_length: int) -> np.ndarray:
  if not 0.0 < gnyq < 1.0:
    raise ValueError(f"MTF gain at Nyquist must lie in (0, 1), got {gnyq}")
  fcut = 1.0 / ratio
  alpha = math.sqrt((design_length * fcut / 2.0) ** 2 / (-2.0 * math.log(gnyq)))
  i = np.arange(n, dtype=np.float64) - (n - 1) / 2.0
  hd = np.exp(-(i[:, None] ** 2 + i[None, :] ** 2) / (2.0 * alpha ** 2))
  hd = np.where(hd < MATLAB_EPS * hd.max(), 0.0, hd)  # fspecial's cleanup
  hd = hd / hd.max()
  # fsamp2: frequency sampling of the desired response Hd.
  h0 = np.rot90(np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(hd))), 2).real
  h = h0 * _huang_window(n)
  h.setflags(write=False)
  return h


def mtf_kernel(gnyq: float, ratio: int = 4, n: int = 41) -> np.ndarray:
  """genMTF's FIR kernel (n x n, float64) for one Nyquist gain; not renormalised."""
  return _gaussian_fir(float(gnyq), int(ratio), int(n), int(n) - 1).copy()


def mtf_kernels(sensor_or_gains, ratio: int = 4, num_bands: int | None = None,
                n: int = 41, protocol: str = "toolbox") -> np.ndarray:
  """genMTF(ratio, sensor, num_bands): (n, n, C) float64 kernels, one per band.

  ``protocol`` picks the sensor's gain table (see ``Sensor.gains``); the kernels
  themselves are genMTF's either way (the reprojection protocol then clips and
  normalises them: ``metrics.reprojection.reprojection_kernels``).
  """
  if num_bands is None:
    if isinstance(sensor_or_gains, (str, Sensor)):
      num_bands = get_sensor(sensor_or_gains).num_bands
      if num_bands is None:
        raise ValueError(f"sensor {sensor_or_gains!r} needs an explicit num_bands")
    else:
      num_bands = int(np.size(sensor_or_gains))
  gains = gains_for(sensor_or_gains, num_bands, protocol)
  return np.stack([mtf_kernel(g, ratio, n) for g in gains], axis=-1)


def mtf_pan_kernel(sensor: Union[str, Sensor], ratio: int = 4, n: int = 41) -> np.ndarray:
  """MTF_PAN's kernel (n x n, float64) from the sensor's PAN gain."""
  return mtf_kernel(get_sensor(sensor).require_pan_gain(), ratio, n)


def lp_filter_gauss_kernel(ratio: int = 4, gnyq: float = 0.3, n: int = 41) -> np.ndarray:
  """LPfilterGauss's kernel: as genMTF, but designed with L = N (not N - 1)."""
  return _gaussian_fir(float(gnyq), int(ratio), int(n), int(n)).copy()


def _fast_fft_size(n: int) -> int:
  """Smallest 2,3,5-smooth integer >= n (fast FFT lengths)."""
  m = n
  while True:
    r = m
    for p in (2, 3, 5):
      while r % p == 0:
        r //= p
    if r == 1:
      return m
    m += 1


@functools.partial(jax.jit, static_argnums=(2, 3))
def _correlate_fft(x: Array, kernel_fft: Array, r: int, size: tuple[int, int]) -> Array:
  """Edge-pad by r, circular convolution at ``size`` via FFTs, keep the valid part.

  ``x`` has its spatial axes last; ``kernel_fft`` is the rfft2 of the flipped
  kernels at ``size`` (broadcasting over the leading axes).
  """
  h, w = x.shape[-2:]
  pad = [(0, 0)] * (x.ndim - 2) + [(r, r), (r, r)]
  xp = jnp.pad(x, pad, mode="edge")
  y = jnp.fft.irfft2(jnp.fft.rfft2(xp, s=size) * kernel_fft, s=size)
  # Circular convolution at a size >= the padded size is exact on indices >= 2r.
  return y[..., 2 * r:2 * r + h, 2 * r:2 * r + w].astype(x.dtype)


def correlate_replicate(img, kernels) -> Array:
  """Per-band 2-D correlation with edge-replicate borders, output the same size.

  MATLAB's ``imfilter(x, h, 'replicate')`` band by band. Computed with FFTs of the
  padded image (a 41x41 direct convolution costs 1681 multiply-adds per sample).

  Args:
    img: (H, W), (H, W, C) or (N, H, W, C).
    kernels: (k, k) applied to every band, or (k, k, C) one per band (odd k).
  """
  x = as_float(img)
  squeeze = x.ndim == 2
  if squeeze:
    x = x[..., None]
  kern = np.asarray(kernels, np.float64)
  if kern.ndim == 2:
    kern = np.repeat(kern[..., None], x.shape[-1], axis=-1)
  if kern.ndim != 3 or kern.shape[0] % 2 == 0 or kern.shape[0] != kern.shape[1]:
    raise ValueError(f"kernels must be (k, k) or (k, k, C) with odd k, got {kern.shape}")
  if kern.shape[-1] != x.shape[-1]:
    raise ValueError(f"{kern.shape[-1]} kernels for an image with {x.shape[-1]} bands")
  spatial_axes(x.ndim)  # validates the rank
  r = kern.shape[0] // 2
  h, w = x.shape[-3], x.shape[-2]
  size = (_fast_fft_size(h + 2 * r), _fast_fft_size(w + 2 * r))
  # Correlation = convolution with the flipped kernel; kernels as (C, size) spectra.
  kf = np.fft.rfft2(np.moveaxis(kern[::-1, ::-1, :], -1, 0), s=size)
  cdtype = jnp.complex128 if x.dtype == jnp.float64 else jnp.complex64
  y = channels_back(_correlate_fft(spatial_last(x), jnp.asarray(kf, cdtype), r, size))
  return y[..., 0] if squeeze else y


def mtf_filter(img, sensor_or_gains, ratio: int = 4) -> Array:
  """Toolbox ``MTF(I, sensor, ratio)``: band b filtered with genMTF kernel b.

  Args:
    img: (H, W, C) or (N, H, W, C).
    sensor_or_gains: a sensor name / ``Sensor``, or the per-band Nyquist gains.
    ratio: resolution ratio (the kernel's cut-off is 1/ratio).
  """
  num_bands = jnp.shape(img)[-1]
  if jnp.ndim(img) < 3:
    raise ValueError(f"mtf_filter expects (H, W, C) or (N, H, W, C), got {jnp.shape(img)}")
  return correlate_replicate(img, mtf_kernels(sensor_or_gains, ratio, num_bands))


def mtf_pan_filter(pan, sensor: Union[str, Sensor], ratio: int = 4) -> Array:
  """Toolbox ``MTF_PAN(P, sensor, ratio)``: the PAN filtered with the PAN MTF kernel."""
  return correlate_replicate(pan, mtf_pan_kernel(sensor, ratio))


def lp_filter_gauss(img, ratio: int = 4) -> Array:
  """Toolbox ``LPfilterGauss(I, ratio)`` (GNyq 0.3, designed with L = N)."""
  return correlate_replicate(img, lp_filter_gauss_kernel(ratio))
