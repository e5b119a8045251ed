"""Reprojection indexes (R-Q2n, R-Q, R-SAM, R-ERGAS) and D_rho at full resolution.

The full-resolution protocol of Scarpa & Ciotola ("Full-Resolution Quality
Assessment for Pansharpening", Remote Sensing 14(8):1808, 2022), as the authors'
MATLAB code computes it; docs/full_resolution.md describes it in full.

- Spectral consistency: the fused image F is brought back to the MS scale with the
  sensor's MTF (``reprojection_kernels``: genMTF's kernels clipped at 0 and divided
  by their sum, unlike the toolbox's) and sampled at the phase where each MS band
  correlates best with the low-passed PAN (``coregistration_phases``); the toolbox
  indices then compare the MS (reference) with that image: R-Q2n, R-Q, R-SAM,
  R-ERGAS, no border cut.
- Spatial consistency: D_rho = mean over pixels and bands of 1 - rho between F_b and
  the PAN, rho the local correlation field (``local_correlation``) of half width
  ratio/2.

The authors' code samples every 4th pixel whatever the ratio (``step = 4``); so do
we, and shapes that do not fit raise an error naming ``step``. Images in DN,
(H, W, C) or batches (N, H, W, C); float32, or float64 under ``jax_enable_x64``.
"""

from __future__ import annotations

import functools
from typing import Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np

from dcfnet_jax import imaging
from dcfnet_jax.metrics import _common
from dcfnet_jax.metrics import correlation_field as lc
from dcfnet_jax.metrics import reduced

Array = jax.Array
SensorLike = Union[str, imaging.Sensor, Sequence[float]]

REPROJECTION_KEYS = ("R_Q2n", "R_Q", "R_SAM", "R_ERGAS", "D_rho")
REPROJECTION_STEP = 4  # the authors' sampling step, whatever the ratio
PHASE_HALF_WIDTH = 2  # half width of the correlation in the co-registration search
KERNEL_SIZE = 41


# ---------------------------------------------------------------------------
# MTF bank of the protocol
# ---------------------------------------------------------------------------


def static_sensor(sensor: SensorLike):
  """A hashable sensor argument for jit (lists / arrays of gains become tuples)."""
  if isinstance(sensor, (str, imaging.Sensor)):
    return sensor
  return tuple(float(g) for g in np.atleast_1d(np.asarray(sensor, np.float64)))


@functools.lru_cache(maxsize=None)
def _kernels(sensor, ratio: int, num_bands: int) -> np.ndarray:
  bank = imaging.mtf_kernels(sensor, ratio, num_bands, KERNEL_SIZE, protocol="reprojection")
  bank = np.maximum(bank, 0.0)
  bank = bank / bank.sum(axis=(0, 1), keepdims=True)
  bank.setflags(write=False)
  return bank


def reprojection_kernels(sensor: SensorLike, ratio: int = 4, num_bands: int | None = None
                         ) -> np.ndarray:
  """The protocol's MTF bank: (41, 41, C) float64, genMTF kernels clipped at 0, unit sum.

  Gains from the sensor table's "reprojection" protocol (toolbox gains plus
  Sentinel-2; 0.3 for other sensors). The toolbox's indices (D_lambda_K, the Wald
  degradation) use ``imaging.mtf_kernels`` instead: not clipped, not normalised.
  """
  sensor = static_sensor(sensor)
  if num_bands is None:
    num_bands = (len(sensor) if isinstance(sensor, tuple)
                 else imaging.get_sensor(sensor).num_bands)
    if num_bands is None:
      raise ValueError(f"sensor {sensor!r} needs an explicit num_bands")
  return _kernels(sensor, int(ratio), int(num_bands)).copy()


def flat_windows_on_grid(region: Array, half: int, step: int, out_hw: tuple[int, int]) -> Array:
  """(h, w, ...) bool: is ``region`` constant over each window rows step k .. step k + 2 half
  (and likewise columns)? Axes 0 and 1; any trailing axes.

  Decided exactly from the data. A window is constant iff, in its top-left
  (2 half) x (2 half) part, no sample differs from its right, lower or lower-right
  neighbour (those comparisons chain every sample of the window, its last row,
  column and corner included). When ``step`` divides 2 half, the change map is
  first OR-reduced over step x step blocks, so the sliding OR runs at 1/step^2 size.
  """
  here = region[:-1, :-1]
  changes = (here != region[1:, :-1]) | (here != region[:-1, 1:]) | (here != region[1:, 1:])
  size, rest = 2 * half, changes.shape[2:]

  def sliding_or(z, n):
    z = _common.box_reduce_valid(z, n, 0, jnp.logical_or)
    return _common.box_reduce_valid(z, n, 1, jnp.logical_or)

  rows, cols = changes.shape[:2]
  if size % step == 0 and rows % step == 0 and cols % step == 0:
    blocks = changes.reshape((rows // step, step, cols // step, step) + rest).any(axis=(1, 3))
    any_change = sliding_or(blocks, size // step)
  else:
    any_change = sliding_or(changes, size)[::step, ::step]
  return ~any_change[:out_hw[0], :out_hw[1]]


def flat_neighbourhoods(x: Array, half: int) -> Array:
  """(H, W, ...) bool: x constant over the (2 half + 1)^2 window (replicate borders) of a pixel."""
  pads = ((half, half), (half, half)) + ((0, 0),) * (x.ndim - 2)
  return flat_windows_on_grid(jnp.pad(x, pads, mode="edge"), half, 1, x.shape[:2])


def mtf_filter(x: Array, kernels: np.ndarray) -> Array:
  """MATLAB ``imfilter(x, h_b, 'replicate')`` per band, (H, W) or (H, W, C).

  FFT correlation (``imaging.correlate_replicate``), made exact where the kernel's
  whole window is constant: there MATLAB's direct sums give exactly the constant
  (for every pixel alike) while FFT rounding leaves noise, which would turn the
  toolbox's "constant window" cases of Q_avg (fill areas, saturation) into others.
  Gradients are those of the linear filter everywhere.
  """
  squeeze = x.ndim == 2
  x3 = x[..., None] if squeeze else x
  filtered = imaging.correlate_replicate(x3, kernels)
  flat = flat_neighbourhoods(x3, kernels.shape[0] // 2)
  out = jnp.where(flat, filtered + jax.lax.stop_gradient(x3 - filtered), filtered)
  return out[..., 0] if squeeze else out


# ---------------------------------------------------------------------------
# Input checks (one line each)
# ---------------------------------------------------------------------------


def check_finite(what: str, **arrays) -> None:
  """ValueError naming the first NaN/inf of concrete arrays (traced ones are skipped)."""
  for name, a in arrays.items():
    if a is None or isinstance(a, jax.core.Tracer):
      continue
    values = np.asarray(a)
    if not np.issubdtype(values.dtype, np.floating):
      continue
    bad = ~np.isfinite(values)
    if bad.any():
      index = tuple(int(i) for i in np.argwhere(bad)[0])
      raise ValueError(f"{what}: {name} of shape {values.shape} has the value "
                       f"{values[index]} at index {index}; expected finite values")


def pan_2d(pan: Array, fused_ndim: int, what: str) -> Array:
  """PAN (H, W) / (H, W, 1), or batched (N, H, W) / (N, H, W, 1) -> without band axis.

  ``fused_ndim``: 3 for (H, W, C) images, 4 for batches; ``what`` prefixes the error.
  """
  if pan.ndim == fused_ndim and pan.shape[-1] == 1:
    return pan[..., 0]
  if pan.ndim != fused_ndim - 1:
    raise ValueError(f"{what}: PAN of shape {pan.shape} should be (H, W) or (H, W, 1) "
                     "(batched: (N, H, W) or (N, H, W, 1))")
  return pan


def check_shapes(what: str, fused_shape, ms_shape, pan_shape, ratio: int, block_size: int,
                 step: int) -> None:
  """The protocol's shape rules for fused (…, H, W, C), MS (…, h, w, C), PAN (…, H, W)."""
  if len(fused_shape) not in (3, 4):
    raise ValueError(f"{what}: fused of shape {fused_shape} should be (H, W, C) or "
                     "(N, H, W, C)")
  hw = tuple(fused_shape[-3:-1])
  if len(ms_shape) != len(fused_shape) or ms_shape[-1] != fused_shape[-1] or (
      ms_shape[:-3] != fused_shape[:-3]):
    raise ValueError(f"{what}: MS of shape {ms_shape} does not match fused {fused_shape}; "
                     "expected the same batch and band count")
  ms_hw = tuple(ms_shape[-3:-1])
  if tuple(s * ratio for s in ms_hw) != hw:
    raise ValueError(f"{what}: MS of {ms_hw[0]}x{ms_hw[1]} and fused/PAN of {hw[0]}x{hw[1]} "
                     f"are not in the ratio {ratio}; expected MS of "
                     f"{hw[0] / ratio:g}x{hw[1] / ratio:g}")
  if tuple(pan_shape) != tuple(fused_shape[:-1]):
    raise ValueError(f"{what}: PAN of shape {tuple(pan_shape)} does not match fused "
                     f"{fused_shape}; expected {tuple(fused_shape[:-1])}")
  if min(ms_hw) < block_size:
    raise ValueError(f"{what}: MS of {ms_hw[0]}x{ms_hw[1]} is too small for the "
                     f"{block_size}x{block_size} blocks of R-Q2n/R-Q at MS scale; expected "
                     f"at least {block_size}x{block_size} (PAN {block_size * ratio}x"
                     f"{block_size * ratio})")
  check_step(what, hw, ms_hw, ratio, step)


def check_step(what: str, hw, ms_hw, ratio: int, step: int) -> None:
  """Every phase 0..ratio-1 sampled every ``step`` pixels must give the MS size."""
  for size, ms_size in zip(hw, ms_hw):
    counts = {-(-(size - o) // step) for o in range(ratio)}
    if counts != {ms_size}:
      raise ValueError(
          f"{what}: sampling the {hw[0]}x{hw[1]} fused image every {step} pixels (the "
          f"authors' step, whatever the ratio) gives {sorted(counts)} samples per side, "
          f"not the MS size {ms_size}; ratio {ratio} needs step={ratio}")


# ---------------------------------------------------------------------------
# Co-registration and reprojection (one image)
# ---------------------------------------------------------------------------


def best_phases(mean_rho: Array) -> Array:
  """(ratio, ratio, C) mean correlations indexed [i, j, b] -> (C, 2) int32 (i, j), 0-based.

  The largest value per band; ties go to the first in MATLAB's column-major order
  (i varies fastest), i.e. the smallest j, then the smallest i.
  """
  r = mean_rho.shape[0]
  flat = jnp.swapaxes(mean_rho, 0, 1).reshape(r * r, -1)  # index j * r + i
  k = jnp.argmax(flat, axis=0).astype(jnp.int32)
  return jnp.stack([k % r, k // r], axis=-1)


def phases_image(ms: Array, pan: Array, kernel: np.ndarray, ratio: int) -> Array:
  """Co-registration phases (C, 2) of one (h, w, C) MS and (H, W) PAN; no input checks.

  ``kernel`` is the first band's kernel of ``reprojection_kernels``.
  """
  rho = phase_correlation_field(ms, pan, kernel, ratio)
  return best_phases(jnp.mean(rho, axis=(0, 1)).reshape(ratio, ratio, ms.shape[-1]))


def phase_correlation_field(ms: Array, pan: Array, kernel: np.ndarray, ratio: int) -> Array:
  """(h, w, ratio * ratio, C) local correlations (half width 2) of MS_b with every phase
  P_lp[i::ratio, j::ratio] (index i * ratio + j); no input checks.

  Its mean over pixels gives the phases (``best_phases``); a scene too big for one call sums
  it window by window (the field is local: each value depends on a few pixels around it).
  """
  h, w, c = ms.shape
  pan_lp = mtf_filter(pan, kernel[:, :, None])
  # pan_lp[i::r, j::r][k, l] = pan_lp[k r + i, l r + j]: all r*r phases as bands.
  stack = pan_lp.reshape(h, ratio, w, ratio).transpose(0, 2, 1, 3).reshape(h, w, ratio * ratio)
  hw = lc.window_half(PHASE_HALF_WIDTH)
  work = ms.dtype
  mc, pc = lc.centred(ms, hw), lc.centred(stack, hw)
  var_m = lc.window_variance(mc, hw, work)[:, :, None, :]
  var_p = lc.window_variance(pc, hw, work)[:, :, :, None]
  return lc.correlation_from_centred(mc[:, :, None, :], pc[:, :, :, None], var_m, var_p, hw,
                                    work)


def reproject_image(fused: Array, phases: Array, kernels: np.ndarray, step: int,
                   ms_hw: tuple[int, int]) -> Array:
  """One (H, W, C) image filtered as ``mtf_filter`` and sampled at (phase + step k); no checks.

  Differentiable in ``fused`` (the full-resolution losses use it); ``phases`` may be traced.
  """
  half = kernels.shape[0] // 2
  filtered = imaging.correlate_replicate(fused, kernels)
  padded = jnp.pad(fused, ((half, half), (half, half), (0, 0)), mode="edge")
  size = (step * (ms_hw[0] - 1) + 1, step * (ms_hw[1] - 1) + 1)
  region_size = (size[0] + 2 * half, size[1] + 2 * half)

  def sample(filtered_band, padded_band, row, col):
    values = jax.lax.dynamic_slice(filtered_band, (row, col), size)[::step, ::step]
    # Exact where the kernel's window is constant, as in mtf_filter (only at the samples).
    region = jax.lax.dynamic_slice(padded_band, (row, col), region_size)
    flat = flat_windows_on_grid(region, half, step, ms_hw)
    centre = region[half::step, half::step][:ms_hw[0], :ms_hw[1]]
    return jnp.where(flat, values + jax.lax.stop_gradient(centre - values), values)

  return jax.vmap(sample, in_axes=(2, 2, 0, 0), out_axes=2)(
      filtered, padded, phases[:, 0], phases[:, 1])


def d_rho_image(fused: Array, pan: Array, ratio: int) -> Array:
  """D_rho of one (H, W, C) image against its (H, W) PAN; no input checks."""
  rho = lc.local_correlation(fused, pan, ratio / 2)
  return jnp.mean(1.0 - jnp.clip(rho, -1.0, 1.0))


def _over_batch(fn, *images):
  return _common.map_images(fn, *images) if images[0].ndim == 4 else fn(*images)


# ---------------------------------------------------------------------------
# Public functions
# ---------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("sensor", "ratio"))
def _phases_jit(ms, pan, sensor, ratio):
  kernel = _kernels(sensor, ratio, ms.shape[-1])[:, :, 0]
  return _over_batch(lambda m, p: phases_image(m, p, kernel, ratio), ms, pan)


def coregistration_phases(ms, pan, *, sensor: SensorLike = "none", ratio: int = 4) -> Array:
  """Per-band sampling phases (C, 2) int32, 0-based (row, col); (N, C, 2) for batches.

  P_lp = PAN filtered with the first band's kernel of ``reprojection_kernels``
  (replicate borders); for each phase (i, j) in [0, ratio)^2 the mean of the local
  correlation field (half width 2) between MS_b and P_lp[i::ratio, j::ratio]; the
  best phase per band (ties: smallest j, then smallest i). The authors' 1-based
  (r_b, c_b) are these plus 1.
  """
  ms = _common.as_float(ms)
  pan = pan_2d(_common.as_float(pan), ms.ndim, "co-registration")
  fused_shape = tuple(pan.shape) + (ms.shape[-1],)
  check_shapes("co-registration", fused_shape, ms.shape, pan.shape, ratio, 1, ratio)
  check_finite("co-registration", ms=ms, pan=pan)
  return _phases_jit(ms, pan, static_sensor(sensor), int(ratio))


@functools.partial(jax.jit, static_argnames=("sensor", "ratio", "step", "ms_hw"))
def _reproject_jit(fused, phases, sensor, ratio, step, ms_hw):
  kernels = _kernels(sensor, ratio, fused.shape[-1])
  return _over_batch(lambda f, p: reproject_image(f, p, kernels, step, ms_hw), fused, phases)


def reproject(fused, phases, *, sensor: SensorLike = "none", ratio: int = 4,
              step: int = REPROJECTION_STEP) -> Array:
  """F brought to the MS scale: band b MTF-filtered (replicate borders), rows/cols phase + step k.

  ``phases`` from ``coregistration_phases``; output (H/ratio, W/ratio, C) (or batched).
  """
  f = _common.as_float(fused)
  phases = jnp.asarray(phases, jnp.int32)
  if f.ndim not in (3, 4) or phases.shape != f.shape[:-3] + (f.shape[-1], 2):
    raise ValueError(f"reproject: phases of shape {phases.shape} do not fit fused of shape "
                     f"{f.shape}; expected {f.shape[:-3] + (f.shape[-1], 2)}")
  ms_hw = (f.shape[-3] // ratio, f.shape[-2] // ratio)
  if (ms_hw[0] * ratio, ms_hw[1] * ratio) != f.shape[-3:-1]:
    raise ValueError(f"reproject: fused of {f.shape[-3]}x{f.shape[-2]} is not a multiple of "
                     f"the ratio {ratio}")
  check_step("reproject", f.shape[-3:-1], ms_hw, ratio, step)
  if not isinstance(phases, jax.core.Tracer) and (
      int(jnp.min(phases)) < 0 or int(jnp.max(phases)) >= ratio):
    raise ValueError(f"reproject: phases must lie in [0, {ratio}), got {np.asarray(phases)}")
  check_finite("reproject", fused=f)
  return _reproject_jit(f, phases, static_sensor(sensor), int(ratio), int(step), ms_hw)


@functools.partial(jax.jit, static_argnames=("ratio",))
def _d_rho_jit(fused, pan, ratio):
  return _over_batch(lambda f, p: d_rho_image(f, p, ratio), fused, pan)


def d_rho(fused, pan, *, ratio: int = 4) -> Array:
  """D_rho: mean over pixels and bands of 1 - clip(rho(F_b, PAN), -1, 1), half width ratio/2.

  0 is ideal; plain upsampling scores about 0.6-0.7 on real scenes.
  """
  f = _common.as_float(fused)
  p = pan_2d(_common.as_float(pan), f.ndim, "D_rho")
  if f.ndim not in (3, 4) or p.shape != f.shape[:-1]:
    raise ValueError(f"D_rho: PAN of shape {p.shape} does not match fused {f.shape}; "
                     f"expected {f.shape[:-1]}")
  check_finite("D_rho", fused=f, pan=p)
  return _d_rho_jit(f, p, int(ratio))


@functools.partial(jax.jit, static_argnames=("sensor", "ratio", "block_size", "step"))
def _indexes_jit(fused, ms, pan, sensor, ratio, block_size, step):
  c = fused.shape[-1]
  kernels = _kernels(sensor, ratio, c)
  ms_hw = tuple(ms.shape[-3:-1])

  def one_image(f, m, p):
    low = reproject_image(f, phases_image(m, p, kernels[:, :, 0], ratio), kernels, step, ms_hw)
    return {
        "R_Q2n": reduced.q2n(m, low, block_size),
        "R_Q": reduced.q_avg(m, low, block_size),
        "R_SAM": reduced.sam(m, low),
        "R_ERGAS": reduced.ergas(m, low, ratio),
        "D_rho": d_rho_image(f, p, ratio),
    }

  return _over_batch(one_image, fused, ms, pan)


def reprojection_indexes(fused, ms, pan, *, sensor: SensorLike = "none", ratio: int = 4,
                         block_size: int = 32, step: int = REPROJECTION_STEP
                         ) -> dict[str, Array]:
  """R-Q2n, R-Q, R-SAM, R-ERGAS and D_rho of fused image(s), as the authors compute them.

  Args:
    fused: (H, W, C) or (N, H, W, C) fused image(s) in DN.
    ms: the MS, (H/ratio, W/ratio, C) (or batched), at least block_size square.
    pan: the PAN, (H, W) or (H, W, 1) (or batched).
    sensor: sensor name / ``imaging.Sensor`` / per-band Nyquist gains (MTF bank).
    ratio: resolution ratio (phases searched in [0, ratio)^2; D_rho half width ratio/2).
    block_size: Q2n blocks and Q_avg windows at MS scale (32 in the protocol).
    step: sampling step of the reprojection (4 in the authors' code, whatever the ratio).

  Returns:
    {"R_Q2n", "R_Q", "R_SAM", "R_ERGAS", "D_rho"}: scalars or (N,) arrays. R_Q2n is
    reported as R-Q4 / R-Q8 by band count (``q2n_name``), R_SAM in degrees.
  """
  f = _common.as_float(fused)
  ms = _common.as_float(ms)
  p = pan_2d(_common.as_float(pan), f.ndim, "reprojection indexes")
  check_shapes("reprojection indexes", f.shape, ms.shape, p.shape, ratio, block_size, step)
  check_finite("reprojection indexes", fused=f, ms=ms, pan=p)
  return _indexes_jit(f, ms, p, static_sensor(sensor), int(ratio), int(block_size), int(step))
