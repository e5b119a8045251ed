"""Full-resolution (no reference) indices exactly as the MATLAB toolbox.

``indexes_evaluation_FS(F, MS_LR, PAN, L, thvalues, LMS, sensor, ratio, flagQNR)``
of the DLPan-Toolbox test toolbox, from docs/metric_definitions.md §3. Images in
DN; (H, W, C) / (h, w, C) / (H, W) or batches with a leading N.

What the toolbox does that one would not guess:
- All indices use distinct S x S blocks (S = 32, row-major tiling) and H, W must
  be multiples of S (the toolbox raises an error; so do we).
- The block UQI has no guard: a block where both images are constant gives 0/0 =
  NaN, which makes the index NaN (reproduced; real data rarely have such blocks).
- D_lambda compares band pairs of F with those of LMS *at PAN scale* (LMS =
  interp23tap(MS_LR) unless given), not of MS_LR at its own scale: F = LMS gives 0.
- D_s degrades the PAN with MATLAB's antialiased bicubic ``imresize(PAN, 1/ratio)``
  followed by ``interp23tap`` (no MTF_PAN), and compares Q(F_c, PAN) with
  Q(LMS_c, PAN_degraded).
- D_lambda_K (Khan) = 1 - Q2n(LMS, MTF(F)): the MTF-filtered fused image at full
  size (not decimated) against LMS as the reference, with Q2n's uint16 rounding.
- HQNR uses the same D_s as QNR. ``flagQNR`` = 0 in the toolbox FR demo, so its
  "QNR" column is HQNR; both are returned here.
- ``thvalues`` clips F only to [0, 2^L].
The block statistics are mean-centred per block (float32-safe).
"""

from __future__ import annotations

import functools
from typing import Sequence, Union

import jax
import jax.numpy as jnp

from dcfnet_jax import imaging
from dcfnet_jax.metrics import _common
from dcfnet_jax.metrics import reduced

Array = jax.Array

FR_KEYS = ("D_lambda", "D_s", "QNR", "D_lambda_K", "HQNR")


def _block_moments(x: Array, block: int) -> tuple[Array, Array]:
  """Per-block means (B, C) and centred samples (B, M, C) of an (H, W, C) image.

  Constant block bands get exactly zero centred samples (so two constant blocks
  give 0/0 = NaN, as the toolbox's exact arithmetic does, whatever the rounding).
  """
  h, w, _ = x.shape
  if h % block or w % block:
    raise ValueError(f"full-resolution indices need H and W multiples of the block size "
                     f"{block}, got {h}x{w}")
  blocks = _common.to_blocks(x, block)
  const = jnp.max(blocks, axis=1) == jnp.min(blocks, axis=1)
  mu = jnp.where(const, blocks[:, 0], jnp.mean(blocks, axis=1))
  return mu, jnp.where(const[:, None, :], 0.0, blocks - mu[:, None, :])


def _uqi(cov: Array, var_a: Array, var_b: Array, mu_a: Array, mu_b: Array) -> Array:
  """4 cov mu_a mu_b / ((var_a + var_b)(mu_a^2 + mu_b^2)), no guard (0/0 -> NaN)."""
  return 4.0 * cov * mu_a * mu_b / ((var_a + var_b) * (mu_a * mu_a + mu_b * mu_b))


def _band_pair_q(x: Array, block: int) -> Array:
  """(C, C) matrix of block-averaged UQI between every pair of bands of x."""
  mu, xc = _block_moments(x, block)
  cov = jnp.einsum("bmi,bmj->bij", xc, xc, precision=jax.lax.Precision.HIGHEST) / xc.shape[1]
  var = jnp.diagonal(cov, axis1=1, axis2=2)
  q = _uqi(cov, var[:, :, None], var[:, None, :], mu[:, :, None], mu[:, None, :])
  return jnp.mean(q, axis=0)


def _band_vs_pan_q(x: Array, pan: Array, block: int) -> Array:
  """(C,) block-averaged UQI between every band of x and the PAN (H, W)."""
  mu, xc = _block_moments(x, block)
  mu_p, pc = _block_moments(pan[..., None], block)
  cov = jnp.mean(xc * pc, axis=1)
  var = jnp.mean(xc * xc, axis=1)
  var_p = jnp.mean(pc * pc, axis=1)
  return jnp.mean(_uqi(cov, var, var_p, mu, mu_p), axis=0)


@functools.partial(jax.jit, static_argnames=("block_size",))
def block_uqi(x, y, block_size: int = 32) -> Array:
  """Qb(x, y): UQI averaged over distinct blocks, for single-band (H, W) images."""
  x = _common.as_float(x)
  y = _common.as_float(y)
  _common.check_same_shape("block_uqi", x, y, "x", "y")
  return _band_vs_pan_q(x[..., None], y, block_size)[0]


@functools.partial(jax.jit, static_argnames=("block_size",))
@_common.batched(2)
def d_lambda(fused, lms, block_size: int = 32) -> Array:
  """Spectral distortion: mean over band pairs i<j of |Qb(F_i, F_j) - Qb(LMS_i, LMS_j)| (p = 1)."""
  _common.check_same_shape("D_lambda", fused, lms, "fused", "lms")
  qf = _band_pair_q(_common.as_float(fused), block_size)
  ql = _band_pair_q(_common.as_float(lms), block_size)
  c = qf.shape[0]
  if c < 2:
    raise ValueError("D_lambda needs at least 2 bands")
  iu = jnp.triu_indices(c, k=1)
  return jnp.mean(jnp.abs(qf[iu] - ql[iu]))


def _pan_2d(pan: Array, ndim_images: int) -> Array:
  if pan.ndim == ndim_images and pan.shape[-1] == 1:
    return pan[..., 0]
  if pan.ndim != ndim_images - 1:
    raise ValueError(f"PAN must be (H, W) / (H, W, 1), or (N, H, W) / (N, H, W, 1) for "
                     f"batches, got {pan.shape}")
  return pan


def _d_s_single(fused: Array, lms: Array, pan: Array, ratio: int, block_size: int) -> Array:
  pan_f = imaging.degrade_pan_for_ds(pan, ratio)
  qf = _band_vs_pan_q(fused, pan, block_size)
  ql = _band_vs_pan_q(lms, pan_f, block_size)
  return jnp.mean(jnp.abs(qf - ql))


@functools.partial(jax.jit, static_argnames=("ratio", "block_size"))
def d_s(fused, lms, pan, ratio: int = 4, block_size: int = 32) -> Array:
  """Spatial distortion: mean_c |Qb(F_c, PAN) - Qb(LMS_c, interp23tap(imresize(PAN, 1/ratio)))|."""
  f = _common.as_float(fused)
  lms = _common.as_float(lms)
  _common.check_same_shape("D_s", f, lms, "fused", "lms")
  p = _pan_2d(_common.as_float(pan), f.ndim)
  if p.shape != f.shape[:-1]:
    raise ValueError(f"D_s: PAN of shape {p.shape} does not match fused {f.shape}")
  fn = functools.partial(_d_s_single, ratio=ratio, block_size=block_size)
  return _common.map_images(fn, f, lms, p) if f.ndim == 4 else fn(f, lms, p)


@functools.partial(jax.jit, static_argnames=("sensor", "ratio", "block_size"))
def d_lambda_khan(fused, lms, sensor: Union[str, imaging.Sensor, Sequence[float]],
                  ratio: int = 4, block_size: int = 32) -> Array:
  """Khan's spectral distortion: 1 - Q2n(LMS, MTF(F, sensor, ratio)) (full size)."""
  f = _common.as_float(fused)
  lms = _common.as_float(lms)
  _common.check_same_shape("D_lambda_K", f, lms, "fused", "lms")

  def one_image(f, lms):
    return 1.0 - reduced.q2n(lms, imaging.mtf_filter(f, sensor, ratio), block_size)

  return _common.map_images(one_image, f, lms) if f.ndim == 4 else one_image(f, lms)


def _check_fr_shapes(f: Array, ms: Array, p: Array, ratio: int, block_size: int) -> None:
  if f.ndim not in (3, 4):
    raise ValueError(f"fused must be (H, W, C) or (N, H, W, C), got {f.shape}")
  if ms.ndim != f.ndim or ms.shape[-1] != f.shape[-1]:
    raise ValueError(f"MS of shape {ms.shape} does not match fused {f.shape}")
  hw = f.shape[-3:-1]
  if tuple(s * ratio for s in ms.shape[-3:-1]) != hw or ms.shape[:-3] != f.shape[:-3]:
    raise ValueError(f"MS of shape {ms.shape} is not fused {f.shape} reduced by ratio {ratio}")
  if p.shape != f.shape[:-1]:
    raise ValueError(f"PAN of shape {p.shape} does not match fused {f.shape}")
  if hw[0] % block_size or hw[1] % block_size:
    raise ValueError(f"full-resolution indices need H and W multiples of {block_size}, "
                     f"got {hw[0]}x{hw[1]}")


@functools.partial(jax.jit, static_argnames=("sensor", "ratio", "block_size"))
def full_resolution_indexes(fused, ms, pan, *, sensor: Union[str, imaging.Sensor] = "none",
                            ratio: int = 4, bits: int = 11, thvalues: bool = False, lms=None,
                            block_size: int = 32) -> dict[str, Array]:
  """The toolbox's ``indexes_evaluation_FS`` with both flagQNR variants.

  Args:
    fused: (H, W, C) or (N, H, W, C) fused image(s) in DN.
    ms: the low-resolution MS, (H/ratio, W/ratio, C) (or batched).
    pan: the PAN, (H, W) or (H, W, 1) (or batched).
    sensor: sensor name or ``imaging.Sensor`` (MTF gains for D_lambda_K).
    ratio: resolution ratio.
    bits: radiometric bits L (only used by ``thvalues``).
    thvalues: clip the fused image to [0, 2^L] first.
    lms: MS upsampled to PAN size; default ``interp23tap(ms, ratio)`` as in the
      toolbox. The toolbox demos pass the dataset's ``lms`` (``I_MS``).
    block_size: block size S of the block UQI and of Q2n.

  Returns:
    {"D_lambda", "D_s", "QNR", "D_lambda_K", "HQNR"}: scalars or (N,) arrays.
  """
  f = _common.as_float(fused)
  ms = _common.as_float(ms)
  p = _pan_2d(_common.as_float(pan), f.ndim)
  _check_fr_shapes(f, ms, p, ratio, block_size)
  f = _common.threshold_values(f, bits, thvalues)  # traced: no recompilation
  if lms is not None:
    lms = _common.as_float(lms)
    _common.check_same_shape("full_resolution_indexes", f, lms, "fused", "lms")

  def one_image(f, ms, p, lms):
    if lms is None:
      lms = imaging.interp23tap(ms, ratio)
    dl = d_lambda(f, lms, block_size)
    ds = d_s(f, lms, p, ratio, block_size)
    dlk = d_lambda_khan(f, lms, sensor, ratio, block_size)
    return {
        "D_lambda": dl,
        "D_s": ds,
        "QNR": (1.0 - dl) * (1.0 - ds),
        "D_lambda_K": dlk,
        "HQNR": (1.0 - dlk) * (1.0 - ds),
    }

  # A batch is evaluated image by image (cache-friendly, see _common.map_images).
  if f.ndim == 3:
    return one_image(f, ms, p, lms)
  if lms is None:
    return _common.map_images(lambda f, ms, p: one_image(f, ms, p, None), f, ms, p)
  return _common.map_images(one_image, f, ms, p, lms)
