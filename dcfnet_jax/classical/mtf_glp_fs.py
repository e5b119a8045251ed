"""MTF-GLP-FS (Vivone 2018), the DCFNet paper's "GLP-Reg" (docs/baseline_definitions.md §2.4).

For every band b, from the raw PAN P (no equalisation):
  P_L,b = interp23tap(decimate(MTF_b(P)), r),  g_b = cov(M~_b, P) / cov(P_L,b, P),
  F_b = M~_b + g_b (P − P_L,b).
Guard (not in MATLAB, which returns NaN there): g_b = 0 when cov(P_L,b, P) = 0.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from dcfnet_jax.classical import common


def injection_gains(lms: jax.Array, pan: jax.Array, pan_low: jax.Array) -> jax.Array:
  """Full-scale regression gains g_b = cov(M~_b, P)/cov(P_L,b, P), shape (C,)."""
  p = pan[..., None]
  return common.safe_divide(common.cov2(lms, p), common.cov2(pan_low, p))


def mtf_glp_fs(ms, pan, sensor, ratio: int = 4, lms=None) -> jax.Array:
  """Fused image (H, W, C) in the units of the inputs (DN)."""
  ms, pan, lms = common.prepare_inputs(ms, pan, lms, ratio)
  c = lms.shape[-1]
  pan_stack = jnp.repeat(pan[..., None], c, axis=-1)
  pan_low = common.low_pass_detail_path(pan_stack, sensor, ratio)
  gains = injection_gains(lms, pan, pan_low)
  return lms + gains * (pan_stack - pan_low)
