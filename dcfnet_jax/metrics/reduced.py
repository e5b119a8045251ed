"""Reduced-resolution indices (fused vs ground truth) exactly as the MATLAB toolbox.

``indexes_evaluation(F, GT, ratio, L, Qblocks_size, flag_cut_bounds, dim_cut,
thvalues)`` of the DLPan-Toolbox test toolbox, from docs/metric_definitions.md §0
and §2. Images are (H, W, C) or (N, H, W, C) in DN (not [0, 1]); batched inputs
give one value per image.

What the toolbox does that one would not guess (each one changes digits):
- Crop is asymmetric: ``X[dim_cut-1 : H-dim_cut]`` (256 -> 215 for dim_cut 21).
- ``thvalues`` clips only the fused image, after the crop, to [0, 2^L] (2048, not
  2047).
- Q2n rounds both images to uint16 (round half away from zero, negatives -> 0
  even with thvalues = 0, NaN -> 0): [0, 1] data collapse. It pads to multiples
  of the block size by mirroring with the edge repeated, pads the band count to a
  power of 2 with zero bands (3 -> 4, 5 -> 8), normalises *both* images with the
  ground truth's block mean and std (N - 1; std 0 -> eps), and leaves a band with
  block mean 0 unscaled (``F + 1``). Reported as Q4 / Q8 (see ``q2n_name``).
- Q_avg (``Q``) slides a 32x32 window with stride 1 ('valid' windows), unlike Q2n's
  distinct blocks, and never rounds. A window where both images are constant
  gives 2*mu_x*mu_y/(mu_x^2 + mu_y^2) (1 if both means are 0 too).
- SAM drops pixels where either spectrum is all zero (from sum *and* count) and
  clips the cosine to [-1, 1] (MATLAB takes real(acos)). It is the mean of the
  per-pixel angles, in degrees. All pixels dropped -> NaN (0/0, as MATLAB).
- ERGAS divides by the ground truth's band mean (squared), factor 100/ratio.
- SCC is this toolbox version's Sobel-magnitude cosine: interior crop, zero-padded
  3x3 Sobel, one global cosine over all pixels and bands together (no mean
  removal); not the Laplacian correlation coefficient of other toolboxes.

Numerics: the toolbox's raw-sum formulas cancel badly in float32 (pitfall 11).
Here every statistic is computed in an algebraically identical mean-centred form
(Q_avg: window sums of data shifted by the band mean, with pairwise box sums;
Q2n: block-centred hypercomplex moments; SAM: Kahan's angle formula
2*atan2(|u - v|, |u + v|) on unit spectra). With ``jax_enable_x64`` the values
agree with the toolbox to ~1e-13; in float32 see docs/metrics.md for the
measured errors.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from dcfnet_jax.metrics import _common
from dcfnet_jax.metrics import hypercomplex

Array = jax.Array

RR_KEYS = ("Q2n", "Q", "SAM", "ERGAS", "SCC")


def q2n_name(num_bands: int) -> str:
  """Paper name of Q2n for a band count: Q4 for 2-4 bands, Q8 for 5-8, Q16 ... (power of 2)."""
  if num_bands < 1:
    raise ValueError(f"num_bands must be >= 1, got {num_bands}")
  return f"Q{2 ** math.ceil(math.log2(num_bands))}" if num_bands > 1 else "Q1"


# ---------------------------------------------------------------------------
# SAM, ERGAS
# ---------------------------------------------------------------------------


@jax.jit
@_common.batched(2)
def sam(gt, fused) -> Array:
  """Spectral Angle Mapper in degrees: mean per-pixel angle, zero-norm pixels dropped."""
  _common.check_same_shape("SAM", fused, gt, "fused", "gt")
  g = _common.as_float(gt)
  f = _common.as_float(fused)
  ng = jnp.sqrt(jnp.sum(g * g, axis=-1, keepdims=True))
  nf = jnp.sqrt(jnp.sum(f * f, axis=-1, keepdims=True))
  valid = (ng[..., 0] > 0) & (nf[..., 0] > 0)
  u = g / jnp.where(ng > 0, ng, 1.0)
  v = f / jnp.where(nf > 0, nf, 1.0)
  # arccos(<u, v>) without its loss of precision near 0 (and no clipping needed).
  angle = 2.0 * jnp.arctan2(jnp.linalg.norm(u - v, axis=-1), jnp.linalg.norm(u + v, axis=-1))
  total = jnp.sum(jnp.where(valid, angle, 0.0))
  count = jnp.sum(valid)
  return total / count * (180.0 / jnp.pi)


@jax.jit
@_common.batched(2)
def ergas(gt, fused, ratio: int = 4) -> Array:
  """ERGAS = (100/ratio) * sqrt(mean_c(MSE_c / mean(GT_c)^2))."""
  _common.check_same_shape("ERGAS", fused, gt, "fused", "gt")
  g = _common.as_float(gt)
  f = _common.as_float(fused)
  mse = jnp.mean(jnp.square(g - f), axis=(0, 1))
  mu = jnp.mean(g, axis=(0, 1))
  return (100.0 / jnp.asarray(ratio, g.dtype)) * jnp.sqrt(jnp.mean(mse / jnp.square(mu)))


# ---------------------------------------------------------------------------
# Q_avg (UIQI over sliding windows)
# ---------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("block_size",))
@_common.batched(2)
def q_avg(gt, fused, block_size: int = 32) -> Array:
  """Band-averaged universal image quality index over every ``block_size`` window (stride 1).

  The toolbox's img_qi with the window sums Sx, Sy, Sxx, Syy, Sxy (x = GT, y = F):
  q = 4(N Sxy - Sx Sy) Sx Sy / ((N(Sxx + Syy) - Sx^2 - Sy^2)(Sx^2 + Sy^2)); if the
  denominator is 0: 2 Sx Sy / (Sx^2 + Sy^2) when only the variance term is 0,
  else 1. The sums here come from data shifted by the GT band mean (the variance
  terms are shift-invariant), which keeps float32 accurate.
  """
  _common.check_same_shape("Q", fused, gt, "fused", "gt")
  x = _common.as_float(gt)
  y = _common.as_float(fused)
  h, w, _ = x.shape
  if h < block_size or w < block_size:
    raise ValueError(f"Q: images of {h}x{w} are smaller than the {block_size}-pixel window")
  n = float(block_size * block_size)
  shift = jnp.mean(x, axis=(0, 1))
  xs, ys = x - shift, y - shift

  def window_sum(z):
    return _common.box_sum_valid(_common.box_sum_valid(z, block_size, 0), block_size, 1)

  sx, sy = window_sum(xs), window_sum(ys)
  sxx_yy, sxy = window_sum(xs * xs + ys * ys), window_sum(xs * ys)
  cov = n * sxy - sx * sy  # shift-invariant
  d1 = n * sxx_yy - sx * sx - sy * sy  # shift-invariant
  # Unshifted window sums for the mean terms.
  sx0, sy0 = sx + n * shift, sy + n * shift
  s = sx0 * sy0
  t = sx0 * sx0 + sy0 * sy0
  # The toolbox's d1 == 0 case (exact in its integer-valued arithmetic) is "both
  # windows constant"; decided from the data, not from a rounded d1.
  both_constant = _common.windows_both_constant(x, y, block_size)
  den = jnp.where(both_constant, 0.0, d1 * t)
  safe_den = jnp.where(den != 0, den, 1.0)
  safe_t = jnp.where(t != 0, t, 1.0)
  q = jnp.where(den != 0, 4.0 * cov * s / safe_den,
                jnp.where(both_constant & (t != 0), 2.0 * s / safe_t, 1.0))
  return jnp.mean(jnp.mean(q, axis=(0, 1)))


# ---------------------------------------------------------------------------
# Q2n
# ---------------------------------------------------------------------------


def _q2n_blocks(gt_blocks: Array, fused_blocks: Array) -> Array:
  """onions_quality for a stack of blocks (B, M, n) (uint16-rounded values) -> (B,) |q|.

  The toolbox normalises per band x = (G - mu)/sigma + 1, y' = (F - mu)/sigma + 1
  (mu, sigma of the GT block; y' = F + 1 where mu == 0), y = conj(y'), and takes
  hypercomplex block moments of x and y. Those are affine per band, so everything
  follows from the block means and (cross-)covariances of G and F, computed here
  on centred data (no per-pixel x / y arrays), with s_c = sigma_c (1 where mu_c = 0):
    m1 = (1, ..., 1),  m2 = conj((mu_F - mu)/sigma + 1),
    V = k sum_c (var G_c / sigma_c^2 + var F_c / s_c^2)   (population variances),
    mean((x - m1) (x) (y - m2)) = T . [cov(G_i, F_j) / sigma_i * sign_j / s_j],
  with T the product's structure tensor. Mathematically identical to the toolbox.
  """
  m = gt_blocks.shape[1]
  k = m / (m - 1.0)
  n = gt_blocks.shape[-1]
  # Constant block bands are detected from the data: their rounded mean need not
  # reproduce the value exactly in float32. They get zero centred samples.
  g_const = jnp.max(gt_blocks, axis=1) == jnp.min(gt_blocks, axis=1)  # (B, n)
  f_const = jnp.max(fused_blocks, axis=1) == jnp.min(fused_blocks, axis=1)
  mu_g = jnp.where(g_const, gt_blocks[:, 0], jnp.mean(gt_blocks, axis=1))
  mu_f = jnp.where(f_const, fused_blocks[:, 0], jnp.mean(fused_blocks, axis=1))
  gc = jnp.where(g_const[:, None], 0.0, gt_blocks - mu_g[:, None])
  fc = jnp.where(f_const[:, None], 0.0, fused_blocks - mu_f[:, None])
  var_g = jnp.mean(gc * gc, axis=1)  # population (1/M); k turns it into 1/(M-1)
  var_f = jnp.mean(fc * fc, axis=1)
  sigma = jnp.sqrt(k * var_g)  # std2: N - 1
  sigma = jnp.where(g_const | (sigma == 0), _common.EPS, sigma)
  scale_f = jnp.where(mu_g == 0, 1.0, 1.0 / sigma)  # y' = F + 1 where mu == 0
  sign = jnp.asarray([1.0] + [-1.0] * (n - 1), gt_blocks.dtype)  # conj
  # m1 = mean((G - mu)/sigma + 1) = (1, ..., 1), so P = |m1|^2 = n.
  m2 = sign * jnp.where(mu_g == 0, mu_f + 1.0, (mu_f - mu_g) / sigma + 1.0)
  p = jnp.asarray(float(n), gt_blocks.dtype)
  r = jnp.sum(m2 * m2, axis=-1)
  # V = k mean(|x|^2) + k mean(|y|^2) - k (P + R) = k sum_c (var x_c + var y_c).
  v = k * jnp.sum(var_g / (sigma * sigma) + var_f * scale_f * scale_f, axis=-1)
  mean_bias = 2.0 * jnp.sqrt(p) * jnp.sqrt(r) / (p + r)
  # k mean(x (x) y) - k m1 (x) m2 = k mean((x - m1) (x) (y - m2)) (bilinearity), with
  # x - m1 = gc / sigma and y - m2 = sign * scale_f * fc.
  cov = jnp.einsum("bmi,bmj->bij", gc, fc, precision=jax.lax.Precision.HIGHEST) / m
  cov = cov / sigma[:, :, None] * (sign * scale_f)[:, None, :]
  tensor = jnp.asarray(hypercomplex.structure_tensor(n), gt_blocks.dtype)
  cross = k * jnp.einsum("kij,bij->bk", tensor, cov, precision=jax.lax.Precision.HIGHEST)
  q = cross * (mean_bias * 2.0 / jnp.where(v == 0, 1.0, v))[:, None]
  q_const = jnp.zeros_like(q).at[:, n - 1].set(mean_bias)
  all_constant = jnp.all(g_const & f_const, axis=-1)  # the toolbox's V == 0
  q = jnp.where((all_constant | (v == 0))[:, None], q_const, q)
  return jnp.sqrt(jnp.sum(q * q, axis=-1))


@functools.partial(jax.jit, static_argnames=("block_size", "round_to_uint16"))
@_common.batched(2)
def q2n(gt, fused, block_size: int = 32, round_to_uint16: bool = True) -> Array:
  """Q2n (Q4/Q8) of the toolbox: ``q2n(GT, F, block_size, block_size)``.

  Symmetric padding to multiples of ``block_size``, uint16 rounding, zero bands up
  to a power of 2, GT-normalised hypercomplex UIQI per distinct block, mean of the
  block moduli. ``gt`` is the reference whose block statistics normalise both.
  ``round_to_uint16=False`` skips the rounding (not the toolbox's index): a
  differentiable Q2n for losses on normalised data (``losses.full_resolution``).
  """
  _common.check_same_shape("Q2n", fused, gt, "fused", "gt")
  g = _common.as_float(gt)
  f = _common.as_float(fused)
  h, w, c = g.shape
  ph, pw = -h % block_size, -w % block_size
  if ph or pw:
    pad = ((0, ph), (0, pw), (0, 0))
    if ph > h or pw > w:
      raise ValueError(f"Q2n: images of {h}x{w} are too small to mirror-pad to "
                       f"multiples of {block_size}")
    g = jnp.pad(g, pad, mode="symmetric")
    f = jnp.pad(f, pad, mode="symmetric")
  if round_to_uint16:
    g = _common.round_uint16(g)
    f = _common.round_uint16(f)
  n = 1 << max(0, (c - 1).bit_length())
  if n != c:
    zeros = jnp.zeros(g.shape[:2] + (n - c,), g.dtype)
    g = jnp.concatenate([g, zeros], axis=-1)
    f = jnp.concatenate([f, zeros], axis=-1)
  values = _q2n_blocks(_common.to_blocks(g, block_size), _common.to_blocks(f, block_size))
  return jnp.mean(values)


# ---------------------------------------------------------------------------
# SCC
# ---------------------------------------------------------------------------


def _sobel_magnitude(x: Array) -> Array:
  """sqrt(gx^2 + gy^2) of the interior X[1:-1, 1:-1], 3x3 Sobel, zero padding, per band."""
  z = x[1:-1, 1:-1]
  p = jnp.pad(z, ((1, 1), (1, 1), (0, 0)))
  h, w = z.shape[:2]
  sl = lambda i, j: p[i:i + h, j:j + w]  # noqa: E731  p[r + i - 1 + 1, c + j - 1 + 1]
  gy = (sl(0, 0) + 2.0 * sl(0, 1) + sl(0, 2)) - (sl(2, 0) + 2.0 * sl(2, 1) + sl(2, 2))
  gx = (sl(0, 0) + 2.0 * sl(1, 0) + sl(2, 0)) - (sl(0, 2) + 2.0 * sl(1, 2) + sl(2, 2))
  return jnp.sqrt(gx * gx + gy * gy)


@jax.jit
@_common.batched(2)
def scc(fused, gt) -> Array:
  """Spatial correlation coefficient of this toolbox version (Sobel-magnitude cosine).

  Note the toolbox's argument order ``SCC(F, GT)``; the index is symmetric.
  """
  _common.check_same_shape("SCC", fused, gt, "fused", "gt")
  a = _sobel_magnitude(_common.as_float(fused))
  b = _sobel_magnitude(_common.as_float(gt))
  return jnp.sum(a * b) / (jnp.sqrt(jnp.sum(a * a)) * jnp.sqrt(jnp.sum(b * b)))


# ---------------------------------------------------------------------------
# indexes_evaluation
# ---------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("block_size", "flag_cut_bounds", "dim_cut"))
def reduced_resolution_indexes(fused, gt, *, ratio: int = 4, bits: int = 11,
                               block_size: int = 32, flag_cut_bounds: bool = True,
                               dim_cut: int = 21, thvalues: bool = False) -> dict[str, Array]:
  """The toolbox's ``indexes_evaluation`` (defaults = its demo settings).

  Args:
    fused: (H, W, C) or (N, H, W, C) fused image(s) in DN.
    gt: ground truth(s) of the same shape, in DN.
    ratio: resolution ratio (ERGAS factor 100/ratio).
    bits: radiometric bits L (only used by ``thvalues``: clip to [0, 2^L]).
    block_size: Q_avg window and Q2n block size.
    flag_cut_bounds: crop ``X[dim_cut-1 : H-dim_cut, dim_cut-1 : W-dim_cut]`` first.
    dim_cut: crop width (see above).
    thvalues: clip the fused image to [0, 2^L] after the crop.

  Returns:
    {"Q2n", "Q", "SAM", "ERGAS", "SCC"}: scalars, or (N,) arrays for batches.
    ``Q2n`` is Q4 for 4 bands and Q8 for 8 (``q2n_name``); ``Q`` is Q_avg.
  """
  _common.check_same_shape("reduced_resolution_indexes", fused, gt, "fused", "gt")
  f = _common.as_float(fused)
  g = _common.as_float(gt)
  if f.ndim not in (3, 4):
    raise ValueError(f"expected (H, W, C) or (N, H, W, C) images, got {f.shape}")
  if flag_cut_bounds:
    f = _common.cut_bounds(f, dim_cut)
    g = _common.cut_bounds(g, dim_cut)
  if min(f.shape[-3:-1]) < block_size:
    raise ValueError(f"images of {fused.shape[-3]}x{fused.shape[-2]} are "
                     f"{f.shape[-3]}x{f.shape[-2]} after the border crop (flag_cut_bounds "
                     f"{flag_cut_bounds}, dim_cut {dim_cut}): smaller than the {block_size}-pixel "
                     "Q/Q2n block; lower dim_cut or block_size")
  # ratio, bits and thvalues are traced: changing them does not recompile.
  f = _common.threshold_values(f, bits, thvalues)

  def one_image(f, g):
    return {
        "Q2n": q2n(g, f, block_size),
        "Q": q_avg(g, f, block_size),
        "SAM": sam(g, f),
        "ERGAS": ergas(g, f, ratio),
        "SCC": scc(f, g),
    }

  # A batch is evaluated image by image (cache-friendly, see _common.map_images).
  return _common.map_images(one_image, f, g) if f.ndim == 4 else one_image(f, g)
