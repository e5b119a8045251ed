"""Unsupervised full-resolution losses of Z-PNN and lambda-PNN (no ground truth needed).

For target-adaptive fine-tuning: a network is trained on the very scene it will
sharpen, with a spectral term (its output, brought back to the MS scale, must equal
the MS) and a spatial term (its output must correlate locally with the PAN). The
building blocks are those of the reprojection protocol (``metrics.reprojection``):
the clipped unit-sum MTF bank, the co-registration phases (computed once per scene
with ``metrics.coregistration_phases``) and the local correlation field.

- Z-PNN: ``spectral_l1`` + beta * ``spatial_term``.
- lambda-PNN: alpha * R-ERGAS + beta' * (1 - Q2n) on the reprojected output
  (``lambda_spectral``; Q2n without the toolbox's uint16 rounding, so that it has
  gradients on normalised data) + gamma * ``spatial_term``.
- ``spatial_term``: 1 - rho(output_b, PAN) (half width ceil(ratio/2), rho clamped
  below at -1), counted only where it exceeds tau_b = 1 - rho(lms_b, PAN_lp) (half
  width 8, PAN_lp = PAN filtered with the first band's kernel, reflect padding):
  the network is pushed only where it matches the PAN worse than the upsampled MS
  matches the low-passed PAN.
Inputs normalised as the network sees them (the authors divide by 2^bits). Every
function takes one image (H, W, C) or a batch (N, H, W, C) (batch mean); PAN (H, W)
or (H, W, 1) (batched likewise); phases (C, 2) for all images or (N, C, 2). Pure and
jittable: call them inside a jitted, differentiated training step.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from dcfnet_jax.metrics import _common
from dcfnet_jax.metrics import correlation_field as lc
from dcfnet_jax.metrics import reduced
from dcfnet_jax.metrics import reprojection as rp

Array = jax.Array

THRESHOLD_HALF_WIDTH = 8  # half width of the correlation that makes tau_b
SPATIAL_MEANS = ("selected", "all")
ZPNN_TERMS = ("spectral", "spatial")
LAMBDA_PNN_TERMS = ("R_ERGAS", "D_lambda_K", "spatial")


# ---------------------------------------------------------------------------
# One image
# ---------------------------------------------------------------------------


def valid_sample_mask(phases: Array, image_hw, ms_hw, kernel_size: int, step: int) -> Array:
  """(h, w, C) bool: reprojected samples whose MTF kernel lies inside the image (no padding)."""
  half = kernel_size // 2
  masks = []
  for axis in (0, 1):
    pos = phases[None, :, axis] + step * jnp.arange(ms_hw[axis])[:, None]  # (n, C)
    masks.append((pos >= half) & (pos <= image_hw[axis] - 1 - half))
  return masks[0][:, None, :] & masks[1][None, :, :]


def _spectral_l1_image(output, ms, phases, sensor, ratio, step):
  kernels = rp.reprojection_kernels(sensor, ratio, output.shape[-1])
  low = rp.reproject_image(output, phases, kernels, step, ms.shape[:2])
  mask = valid_sample_mask(phases, output.shape[:2], ms.shape[:2], kernels.shape[0], step)
  return jnp.sum(jnp.where(mask, jnp.abs(low - ms), 0.0)) / jnp.sum(mask)


def _lambda_spectral_image(output, ms, phases, sensor, ratio, step, block_size):
  kernels = rp.reprojection_kernels(sensor, ratio, output.shape[-1])
  low = rp.reproject_image(output, phases, kernels, step, ms.shape[:2])
  return {"R_ERGAS": reduced.ergas(ms, low, ratio),
          "D_lambda_K": 1.0 - reduced.q2n(ms, low, block_size, round_to_uint16=False)}


def _reflect_lowpass(pan: Array, kernel) -> Array:
  half = kernel.shape[0] // 2
  padded = jnp.pad(pan, half, mode="reflect")
  return rp.mtf_filter(padded, kernel[:, :, None])[half:-half, half:-half]


def _threshold_image(lms, pan, sensor, ratio):
  kernel = rp.reprojection_kernels(sensor, ratio, lms.shape[-1])[:, :, 0]
  pan_lp = _reflect_lowpass(pan, kernel)
  return 1.0 - lc.local_correlation(lms, pan_lp, THRESHOLD_HALF_WIDTH)


def _spatial_image(output, pan, threshold, ratio, spatial_mean):
  rho = lc.local_correlation(output, pan, math.ceil(ratio / 2))
  distance = 1.0 - jnp.maximum(rho, -1.0)
  selected = jax.lax.stop_gradient(distance > threshold)
  kept = jnp.where(selected, distance, 0.0)
  if spatial_mean == "all":
    return jnp.mean(kept)
  count = jnp.sum(selected, axis=(0, 1))
  per_band = jnp.sum(kept, axis=(0, 1)) / jnp.maximum(count, 1)
  return jnp.mean(per_band)


# ---------------------------------------------------------------------------
# Batching and checks
# ---------------------------------------------------------------------------


def _batch_mean(fn, images: tuple, phases: Array | None = None):
  """fn(*images[, phases]) for one image, or its mean over a batch (vmap)."""
  if images[0].ndim == 3:
    return fn(*images) if phases is None else fn(*images, phases)
  if phases is None:
    values = jax.vmap(fn)(*images)
  else:
    values = jax.vmap(fn, in_axes=(0,) * len(images) + (0 if phases.ndim == 3 else None,))(
        *images, phases)
  return jax.tree_util.tree_map(lambda v: jnp.mean(v, axis=0), values)


def _prepare(what, output, ms=None, pan=None, lms=None, phases=None, ratio=4, step=4):
  """Casts, shape checks (one line each) and the NaN check for concrete inputs."""
  out = _common.as_float(output)
  if out.ndim not in (3, 4):
    raise ValueError(f"{what}: output of shape {out.shape} should be (H, W, C) or (N, H, W, C)")
  ms = None if ms is None else _common.as_float(ms)
  pan = None if pan is None else rp.pan_2d(_common.as_float(pan), out.ndim, what)
  lms = None if lms is None else _common.as_float(lms)
  if ms is not None:
    rp.check_shapes(what, out.shape, ms.shape, out.shape[:-1], ratio, 1, step)
  if pan is not None and pan.shape != out.shape[:-1]:
    raise ValueError(f"{what}: PAN of shape {pan.shape} does not match output {out.shape}; "
                     f"expected {out.shape[:-1]}")
  if lms is not None:
    _common.check_same_shape(what, out, lms, "output", "lms")
  if phases is not None:
    phases = jnp.asarray(phases, jnp.int32)
    expected = {(out.shape[-1], 2)} | ({(out.shape[0], out.shape[-1], 2)} if out.ndim == 4
                                      else set())
    if phases.shape not in expected:
      raise ValueError(f"{what}: phases of shape {phases.shape} do not fit output {out.shape}; "
                       f"expected {sorted(expected)}")
  rp.check_finite(what, output=out, ms=ms, pan=pan, lms=lms)
  return out, ms, pan, lms, phases


def _check_valid_area(what, hw, ratio, step, kernel_size=rp.KERNEL_SIZE):
  half = kernel_size // 2
  for size in hw:
    if any(not any(half <= o + step * k <= size - 1 - half for k in range(size // step + 1))
           for o in range(ratio)):
      raise ValueError(f"{what}: an image side of {size} pixels leaves no MS sample whose "
                       f"{kernel_size}x{kernel_size} MTF kernel fits inside; expected at least "
                       f"{kernel_size + step - 1} pixels")


# ---------------------------------------------------------------------------
# Public terms
# ---------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("sensor", "ratio", "step"))
def _spectral_l1_jit(output, ms, phases, sensor, ratio, step):
  fn = lambda o, m, p: _spectral_l1_image(o, m, p, sensor, ratio, step)  # noqa: E731
  return _batch_mean(fn, (output, ms), phases)


def spectral_l1(output, ms, phases, *, sensor="none", ratio: int = 4,
                step: int = rp.REPROJECTION_STEP) -> Array:
  """Z-PNN's spectral term: mean |reproject(output) - MS| over the valid (unpadded) samples.

  A sample counts when its whole 41x41 MTF kernel lies inside the output (the
  filtered value does not depend on border padding).
  """
  out, ms, _, _, phases = _prepare("spectral_l1", output, ms, phases=phases, ratio=ratio,
                                   step=step)
  _check_valid_area("spectral_l1", out.shape[-3:-1], ratio, step)
  return _spectral_l1_jit(out, ms, phases, rp.static_sensor(sensor), int(ratio), int(step))


@functools.partial(jax.jit, static_argnames=("sensor", "ratio", "step", "block_size"))
def _lambda_spectral_jit(output, ms, phases, sensor, ratio, step, block_size):
  fn = lambda o, m, p: _lambda_spectral_image(o, m, p, sensor, ratio, step, block_size)  # noqa
  return _batch_mean(fn, (output, ms), phases)


def lambda_spectral(output, ms, phases, *, sensor="none", ratio: int = 4,
                    step: int = rp.REPROJECTION_STEP, block_size: int = 32) -> dict[str, Array]:
  """lambda-PNN's spectral terms on the reprojected output: {"R_ERGAS", "D_lambda_K"}.

  D_lambda_K = 1 - Q2n(MS, reprojected output) without uint16 rounding.
  """
  out, ms, _, _, phases = _prepare("lambda_spectral", output, ms, phases=phases, ratio=ratio,
                                   step=step)
  return _lambda_spectral_jit(out, ms, phases, rp.static_sensor(sensor), int(ratio), int(step),
                              int(block_size))


@functools.partial(jax.jit, static_argnames=("sensor", "ratio"))
def _threshold_jit(lms, pan, sensor, ratio):
  fn = lambda m, p: _threshold_image(m, p, sensor, ratio)  # noqa: E731
  return _common.map_images(fn, lms, pan) if lms.ndim == 4 else fn(lms, pan)


def spatial_threshold(lms, pan, *, sensor="none", ratio: int = 4) -> Array:
  """tau = 1 - rho(lms_b, PAN_lp) with half width 8 (PAN_lp: first-band kernel, reflect pad)."""
  lms, _, pan, _, _ = _prepare("spatial_threshold", lms, pan=pan, ratio=ratio)
  return _threshold_jit(lms, pan, rp.static_sensor(sensor), int(ratio))


@functools.partial(jax.jit, static_argnames=("ratio", "spatial_mean"))
def _spatial_jit(output, pan, threshold, ratio, spatial_mean):
  fn = lambda o, p, t: _spatial_image(o, p, t, ratio, spatial_mean)  # noqa: E731
  return _batch_mean(fn, (output, pan, threshold))


def spatial_term(output, pan, threshold, *, ratio: int = 4,
                 spatial_mean: str = "selected") -> Array:
  """The thresholded spatial term: 1 - max(rho(output_b, PAN), -1) where it exceeds tau_b.

  Args:
    output: (H, W, C) or (N, H, W, C).
    pan: (H, W) / (H, W, 1), or batched.
    threshold: tau from ``spatial_threshold`` (output's shape), or any array that
      broadcasts to it (a scalar -1 selects every pixel).
    ratio: resolution ratio; the correlation half width is ceil(ratio / 2).
    spatial_mean: "selected" = per band the mean over the selected pixels (0 where
      none), then the mean over bands; "all" = the mean over every pixel and band,
      unselected ones counting 0.
  """
  if spatial_mean not in SPATIAL_MEANS:
    raise ValueError(f"spatial_mean must be one of {SPATIAL_MEANS}, got {spatial_mean!r}")
  out, _, pan, _, _ = _prepare("spatial_term", output, pan=pan, ratio=ratio)
  threshold = jnp.broadcast_to(_common.as_float(threshold), out.shape)
  return _spatial_jit(out, pan, threshold, int(ratio), spatial_mean)


# ---------------------------------------------------------------------------
# The two losses
# ---------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("sensor", "ratio", "step", "spatial_mean"))
def _zpnn_jit(output, ms, pan, lms, phases, beta, sensor, ratio, step, spatial_mean):
  def one_image(o, m, p, l, ph):
    tau = jax.lax.stop_gradient(_threshold_image(l, p, sensor, ratio))
    return {"spectral": _spectral_l1_image(o, m, ph, sensor, ratio, step),
            "spatial": _spatial_image(o, p, tau, ratio, spatial_mean)}

  terms = _batch_mean(one_image, (output, ms, pan, lms), phases)
  return terms["spectral"] + beta * terms["spatial"], terms


def zpnn_loss(output, ms, pan, lms, phases, *, beta, sensor="none", ratio: int = 4,
              step: int = rp.REPROJECTION_STEP, spatial_mean: str = "selected"
              ) -> tuple[Array, dict[str, Array]]:
  """Z-PNN: spectral_l1 + beta * spatial_term -> (total, {"spectral", "spatial"}).

  tau (``spatial_threshold``) is computed from ``lms`` and ``pan``, without gradient.
  beta: 0.36 for WV2/WV3 and 0.25 for GeoEye1 in the authors' settings.
  """
  if spatial_mean not in SPATIAL_MEANS:
    raise ValueError(f"spatial_mean must be one of {SPATIAL_MEANS}, got {spatial_mean!r}")
  out, ms, pan, lms, phases = _prepare("zpnn_loss", output, ms, pan, lms, phases, ratio, step)
  _check_valid_area("zpnn_loss", out.shape[-3:-1], ratio, step)
  return _zpnn_jit(out, ms, pan, lms, phases, beta, rp.static_sensor(sensor), int(ratio),
                   int(step), spatial_mean)


@functools.partial(jax.jit, static_argnames=("sensor", "ratio", "step", "block_size",
                                             "spatial_mean"))
def _lambda_jit(output, ms, pan, lms, phases, weights, sensor, ratio, step, block_size,
                spatial_mean):
  def one_image(o, m, p, l, ph):
    tau = jax.lax.stop_gradient(_threshold_image(l, p, sensor, ratio))
    terms = _lambda_spectral_image(o, m, ph, sensor, ratio, step, block_size)
    terms["spatial"] = _spatial_image(o, p, tau, ratio, spatial_mean)
    return terms

  terms = _batch_mean(one_image, (output, ms, pan, lms), phases)
  alpha, beta_prime, gamma = weights
  total = alpha * terms["R_ERGAS"] + beta_prime * terms["D_lambda_K"] + gamma * terms["spatial"]
  return total, terms


def lambda_pnn_loss(output, ms, pan, lms, phases, *, alpha=0.05, beta_prime, gamma,
                    sensor="none", ratio: int = 4, step: int = rp.REPROJECTION_STEP,
                    block_size: int = 32, spatial_mean: str = "selected"
                    ) -> tuple[Array, dict[str, Array]]:
  """lambda-PNN: alpha R-ERGAS + beta' D_lambda_K + gamma spatial -> (total, terms).

  Terms: {"R_ERGAS", "D_lambda_K", "spatial"}. The authors' settings: alpha 0.05;
  beta' 1.25 (WV3) / 1.0 (WV2); gamma 5 (WV3) / 6 (WV2).
  """
  if spatial_mean not in SPATIAL_MEANS:
    raise ValueError(f"spatial_mean must be one of {SPATIAL_MEANS}, got {spatial_mean!r}")
  out, ms, pan, lms, phases = _prepare("lambda_pnn_loss", output, ms, pan, lms, phases, ratio,
                                       step)
  return _lambda_jit(out, ms, pan, lms, phases, (alpha, beta_prime, gamma),
                     rp.static_sensor(sensor), int(ratio), int(step), int(block_size),
                     spatial_mean)
