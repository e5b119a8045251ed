"""Imaging tools with the exact semantics of the MATLAB pansharpening toolbox.

Sensor table, MTF-matched Gaussian filters (``genMTF`` / ``MTF`` / ``MTF_PAN`` /
``LPfilterGauss``), the 23-tap polynomial interpolator (``interp23tap``), MATLAB's
``imresize`` and the Wald degradation (``resize_images``). Written from
``shared/spec/METRICS.md`` §1 and ``shared/spec/BASELINES.md`` §1.

Array layouts: 2-D arrays are ``(H, W)``, 3-D arrays ``(H, W, C)`` and 4-D arrays
``(N, H, W, C)``. All functions are pure ``jnp`` and jittable (shapes are static).
They compute in float64 when ``jax_enable_x64`` is on and in float32 otherwise;
filters are designed in numpy float64 and then cast.

Toolbox quirks reproduced on purpose (each changes digits):
- ``interp23tap`` runs ``ratio/2`` doubling passes (right only for ratio 2 and 4;
  ratio 8 would upsample 16x), places the input at odd positions in the first pass
  and at even positions afterwards, and filters with circular (periodic) borders.
- The MTF kernels are frequency-sampled Gaussians times a Huang/Kaiser window and
  are *not* renormalised (taps sum to about 0.998). They are applied as
  correlations with edge-replicate borders.
- Sensors unknown to the toolbox get a Nyquist gain of 0.3 per band; ``MTF_PAN``
  knows a PAN gain only for the listed sensors and ``none`` (0.15).
- One sensor table serves two protocols: the toolbox's (genMTF gains, kernels not
  renormalised: D_lambda_K, Wald degradation) and the reprojection protocol of
  ``metrics.reprojection`` (the same gains plus Sentinel-2's, 0.3 otherwise; its
  kernels are clipped at 0 and divided by their sum).
- ``imresize`` is MATLAB's: antialiased bicubic (Keys a=-0.5) when shrinking,
  mirrored borders with the edge sample repeated. ``jax.image.resize``, OpenCV,
  PIL and Octave all give different numbers.
- The Wald degradation of this toolbox version filters the MS with the MTF and
  decimates with nearest ``imresize`` (keeps rows ``ratio*k + ratio/2``), but the
  PAN is only bicubic-resized (no ``MTF_PAN``).

The separable steps (interp23tap, bicubic imresize) are small dense matrix products
``A @ X @ B^T`` on channel-first views (fast to compile and run; interp23tap's passes
are composed into one matrix per axis); they use ``Precision.HIGHEST``
so that accelerators do not silently drop to bfloat16. A consequence: a NaN or
inf in the input spreads along its whole row/column (MATLAB keeps it local);
inputs are expected to be finite. The 41x41 MTF filters run as FFT convolutions.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
_HIGHEST = jax.lax.Precision.HIGHEST
_EPS = np.finfo(np.float64).eps  # MATLAB eps = 2^-52


# ---------------------------------------------------------------------------
# Sensor table
# ---------------------------------------------------------------------------

_DEFAULT_GAIN = 0.3  # genMTF's GNyq for every sensor it does not know
# Which MTF gain table: the MATLAB toolbox's genMTF, or the reprojection protocol's.
MTF_PROTOCOLS = ("toolbox", "reprojection")


@dataclasses.dataclass(frozen=True)
class Sensor:
  """Radiometric and MTF description of a pansharpening sensor.

  Attributes:
    name: lower-case key used by CLIs and configs (``wv3``, ``qb``, ...).
    toolbox_name: the sensor string of the MATLAB toolbox (case-sensitive).
    num_bands: number of MS bands, or None when any band count is accepted.
    bits: radiometric resolution L (DN range 0 .. 2^L - 1).
    mtf_gains: MTF amplitude at the MS Nyquist frequency per MS band, or None for
      the toolbox default (0.3 for every band).
    pan_gain: PAN MTF gain at the MS Nyquist frequency (``MTF_PAN``), or None when
      the toolbox's ``MTF_PAN`` does not know the sensor (it raises an error).
    rgb: 0-based indices of the true-colour (R, G, B) bands.
    reprojection_gains: the Nyquist gains of the reprojection protocol
      (``metrics.reprojection``) where its table differs from the toolbox's
      ``genMTF`` (Sentinel-2), else None: that protocol then uses ``mtf_gains``.
  """
  name: str
  toolbox_name: str
  num_bands: int | None
  bits: int
  mtf_gains: tuple[float, ...] | None
  pan_gain: float | None
  rgb: tuple[int, int, int]
  reprojection_gains: tuple[float, ...] | None = None

  @property
  def max_value(self) -> float:
    """Full-scale DN value 2^bits - 1 (2047 for 11-bit data, 1023 for GF-2)."""
    return float(2 ** self.bits - 1)

  def gains(self, num_bands: int, protocol: str = "toolbox") -> tuple[float, ...]:
    """Per-band MTF Nyquist gains for an image with ``num_bands`` bands.

    As in genMTF, band b uses entry b of the sensor's table (fewer bands use the
    first entries); sensors without a table get 0.3 for every band.
    ``protocol``: "toolbox" (genMTF of the MATLAB toolbox: QNR, HQNR, Wald) or
    "reprojection" (Scarpa & Ciotola's table: the same plus Sentinel-2).
    """
    if protocol not in MTF_PROTOCOLS:
      raise ValueError(f"protocol must be one of {MTF_PROTOCOLS}, got {protocol!r}")
    if num_bands < 1:
      raise ValueError(f"num_bands must be >= 1, got {num_bands}")
    table = self.mtf_gains
    if protocol == "reprojection" and self.reprojection_gains is not None:
      table = self.reprojection_gains
    if table is None:
      return (_DEFAULT_GAIN,) * num_bands
    if num_bands > len(table):
      raise ValueError(
          f"sensor {self.name!r} has MTF gains for {len(table)} bands, "
          f"but the image has {num_bands} bands")
    return tuple(table[:num_bands])

  def require_pan_gain(self) -> float:
    if self.pan_gain is None:
      raise ValueError(
          f"sensor {self.name!r} (toolbox name {self.toolbox_name!r}) has no PAN MTF "
          "gain in the toolbox's MTF_PAN; use sensor 'none' (0.15) or "
          "custom_sensor(..., pan_gain=...)")
    return self.pan_gain


_RGB_4 = (2, 1, 0)  # 4-band B, G, R, NIR
_RGB_8 = (4, 2, 1)  # WorldView 8-band: bands 5, 3, 2 (1-based)

SENSORS: dict[str, Sensor] = {
    s.name: s for s in (
        Sensor("qb", "QB", 4, 11, (0.34, 0.32, 0.30, 0.22), 0.15, _RGB_4),
        Sensor("ikonos", "IKONOS", 4, 11, (0.26, 0.28, 0.29, 0.28), 0.17, _RGB_4),
        Sensor("geoeye1", "GeoEye1", 4, 11, (0.23,) * 4, 0.16, _RGB_4),
        Sensor("wv4", "WV4", 4, 11, (0.23,) * 4, 0.16, _RGB_4),
        Sensor("wv2", "WV2", 8, 11, (0.35,) * 7 + (0.27,), 0.11, _RGB_8),
        Sensor("wv3", "WV3", 8, 11,
               (0.325, 0.355, 0.360, 0.350, 0.365, 0.360, 0.335, 0.315), 0.14, _RGB_8),
        # Unknown to the toolbox: default gains, and MTF_PAN raises.
        Sensor("pleiades", "Pleiades", 4, 12, None, None, _RGB_4),
        Sensor("gf2", "GF2", 4, 10, None, None, _RGB_4),
        # Sentinel-2 (10 m B2 B3 B4 B8; 20 m B5 B6 B7 B8A B11 B12; 60 m B1 B9 B10): only the
        # reprojection protocol has their gains; the toolbox's genMTF uses 0.3.
        Sensor("s2-10m", "S2-10m", 4, 12, None, None, _RGB_4,
               reprojection_gains=(0.275, 0.28, 0.25, 0.24)),
        Sensor("s2-20m", "S2-20m", 6, 12, None, None, (5, 3, 0),  # false colour
               reprojection_gains=(0.365, 0.33, 0.34, 0.32, 0.205, 0.235)),
        Sensor("s2-60m", "S2-60m", 3, 12, None, None, (2, 1, 0),  # false colour
               reprojection_gains=(0.3175, 0.295, 0.30)),
        # The toolbox's generic sensor: any band count, PAN gain 0.15.
        Sensor("none", "none", None, 11, None, 0.15, _RGB_4),
    )
}


def get_sensor(name: Union[str, Sensor]) -> Sensor:
  """Returns the sensor for a table key (``wv3``) or toolbox name (``WV3``)."""
  if isinstance(name, Sensor):
    return name
  key = str(name).strip().lower()
  if key in SENSORS:
    return SENSORS[key]
  raise ValueError(
      f"unknown sensor {name!r}; valid names: {', '.join(sorted(SENSORS))} "
      "(or build one with imaging.custom_sensor)")


def custom_sensor(num_bands: int, gains: Union[float, Sequence[float]],
                  pan_gain: float | None = None, bits: int = 11,
                  name: str = "custom",
                  rgb: tuple[int, int, int] | None = None) -> Sensor:
  """A sensor with user-given MTF gains (one value for all bands, or one per band)."""
  if np.ndim(gains) == 0:
    gains = (float(gains),) * num_bands
  gains = tuple(float(g) for g in gains)
  if len(gains) != num_bands:
    raise ValueError(f"got {len(gains)} MTF gains for {num_bands} bands")
  for g in gains + ((pan_gain,) if pan_gain is not None else ()):
    if not 0.0 < g < 1.0:
      raise ValueError(f"MTF gains must lie in (0, 1), got {g}")
  if rgb is None:
    rgb = _RGB_8 if num_bands >= 8 else (_RGB_4 if num_bands >= 3 else (0, 0, 0))
  return Sensor(name, name, num_bands, bits, gains, pan_gain, rgb)


def _gains_for(sensor_or_gains, num_bands: int, protocol: str = "toolbox") -> tuple[float, ...]:
  if isinstance(sensor_or_gains, (str, Sensor)):
    return get_sensor(sensor_or_gains).gains(num_bands, protocol)
  gains = np.atleast_1d(np.asarray(sensor_or_gains, np.float64))
  if gains.size == 1:
    gains = np.repeat(gains, num_bands)
  if gains.shape != (num_bands,):
    raise ValueError(f"got {gains.size} MTF gains for {num_bands} bands")
  return tuple(float(g) for g in gains)


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------


def working_dtype():
  """float64 when ``jax_enable_x64`` is on (also inside ``jax.enable_x64()``), else float32."""
  return jax.dtypes.canonicalize_dtype(jnp.float64)


def as_float(x) -> Array:
  """``x`` as a jnp array of the working float dtype."""
  return jnp.asarray(x, dtype=working_dtype())


def _spatial_axes(ndim: int) -> tuple[int, int]:
  if ndim in (2, 3):
    return (0, 1)
  if ndim == 4:
    return (1, 2)
  raise ValueError(
      f"expected an (H, W), (H, W, C) or (N, H, W, C) array, got {ndim} dimensions")


def _check_ratio(ratio: int) -> int:
  if int(ratio) != ratio or ratio < 2 or (int(ratio) & (int(ratio) - 1)):
    raise ValueError(f"ratio must be a power of 2 >= 2, got {ratio}")
  return int(ratio)


# ---------------------------------------------------------------------------
# MTF-matched Gaussian filters
# ---------------------------------------------------------------------------


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
  hd = np.where(hd < _EPS * hd.max(), 0.0, hd)  # fspecial's cleanup
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
  gains = _gains_for(sensor_or_gains, num_bands, protocol)
  return np.stack([mtf_kernel(g, ratio, n) for g in gains], axis=-1)


def mtf_pan_kernel(sensor: Union[str, Sensor], ratio: int = 4, n: int = 41) -> np.ndarray:
  """MTF_PAN's kernel (n x n, float64) from the sensor's PAN gain."""
  return mtf_kernel(get_sensor(sensor).require_pan_gain(), ratio, n)


def lp_filter_gauss_kernel(ratio: int = 4, gnyq: float = 0.3, n: int = 41) -> np.ndarray:
  """LPfilterGauss's kernel: as genMTF, but designed with L = N (not N - 1)."""
  return _gaussian_fir(float(gnyq), int(ratio), int(n), int(n)).copy()


def _spatial_last(x: Array) -> Array:
  """(H, W, C) -> (C, H, W); (N, H, W, C) -> (N, C, H, W); (H, W) unchanged."""
  return x if x.ndim == 2 else jnp.moveaxis(x, -1, -3)


def _channels_back(x: Array) -> Array:
  return x if x.ndim == 2 else jnp.moveaxis(x, -3, -1)


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
  _spatial_axes(x.ndim)  # validates the rank
  r = kern.shape[0] // 2
  h, w = x.shape[-3], x.shape[-2]
  size = (_fast_fft_size(h + 2 * r), _fast_fft_size(w + 2 * r))
  # Correlation = convolution with the flipped kernel; kernels as (C, size) spectra.
  kf = np.fft.rfft2(np.moveaxis(kern[::-1, ::-1, :], -1, 0), s=size)
  cdtype = jnp.complex128 if x.dtype == jnp.float64 else jnp.complex64
  y = _channels_back(_correlate_fft(_spatial_last(x), jnp.asarray(kf, cdtype), r, size))
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


# ---------------------------------------------------------------------------
# interp23tap
# ---------------------------------------------------------------------------

# Odd-offset taps k(+-1), k(+-3), ..., k(+-11) of the 23-tap kernel (2 x the
# half-band coefficients); k(0) = 1 and the other even offsets are 0.
INTERP23_ODD_TAPS = (0.61066818237, -0.145397186478, 0.043619155884,
                     -0.010385513306, 0.001615524292, -0.000120162964)


def interp23tap_kernel() -> np.ndarray:
  """The 23 taps (offsets -11 .. 11) of the toolbox interpolator, float64."""
  k = np.zeros(23)
  k[11] = 1.0
  for j, c in enumerate(INTERP23_ODD_TAPS):
    k[11 + 2 * j + 1] = k[11 - 2 * j - 1] = c
  return k


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


def _apply_separable(x: Array, rows: np.ndarray, cols: np.ndarray) -> Array:
  """``rows @ X @ cols^T`` on the spatial axes of every band (axis 0 first, then axis 1).

  The float64 matrices are cast to x's dtype; products at full precision.
  """
  z = _spatial_last(x)
  z = jnp.matmul(jnp.asarray(rows, x.dtype), z, precision=_HIGHEST)
  z = jnp.matmul(z, jnp.asarray(cols.T, x.dtype), precision=_HIGHEST)
  return _channels_back(z)


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
  ratio = _check_ratio(ratio)
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
  ax0, ax1 = _spatial_axes(x.ndim)
  return _apply_separable(x, _interp23tap_composed(x.shape[ax0], num_passes),
                          _interp23tap_composed(x.shape[ax1], num_passes))


# ---------------------------------------------------------------------------
# MATLAB imresize
# ---------------------------------------------------------------------------


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
  ax0, ax1 = _spatial_axes(x.ndim)
  idx0, w0 = imresize_weights(x.shape[ax0], scale, method, antialiasing)
  idx1, w1 = imresize_weights(x.shape[ax1], scale, method, antialiasing)
  if w0.shape[1] == 1 and w1.shape[1] == 1 and np.all(w0 == 1.0) and np.all(w1 == 1.0):
    # Nearest: pure gathers (exact, and non-finite values stay local).
    x = jnp.take(x, jnp.asarray(idx0[:, 0]), axis=ax0)
    return jnp.take(x, jnp.asarray(idx1[:, 0]), axis=ax1)
  return _apply_separable(x, _imresize_matrix(x.shape[ax0], scale, method, antialiasing),
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
  _spatial_axes(x.ndim)
  return _imresize_jit(x, float(scale), method, antialiasing)


def decimate(img, ratio: int = 4) -> Array:
  """``imresize(I, 1/ratio, 'nearest')``: keeps rows/cols ``ratio*k + ratio/2`` (0-based)."""
  return imresize(img, 1.0 / ratio, method="nearest")


# ---------------------------------------------------------------------------
# Wald protocol and the D_s PAN degradation
# ---------------------------------------------------------------------------


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
