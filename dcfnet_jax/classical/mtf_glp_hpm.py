"""MTF-GLP-HPM, high-pass modulation (Aiazzi et al.; toolbox MTF_GLP_HPM).

Definition: docs/baseline_definitions.md §2.3.

For every band b:
  P̂_b = (P − mean2(P)) · std2(M~_b) / std2(LPfilterGauss(P)) + mean2(M~_b)
  P_L,b = interp23tap(decimate(MTF_b(P̂_b)), r)
  F_b = M~_b · P̂_b / (P_L,b + eps),   eps = 2^-52 as in MATLAB.
No clipping; the unnormalised MTF kernels give flat areas F ≈ 1.0012 M~ (as the toolbox does).
Guard (not in MATLAB): std2(LP(P)) = 0 gives an equalisation gain of 0.
"""

from __future__ import annotations

import jax

from dcfnet_jax import imaging
from dcfnet_jax.classical import common


def equalized_pan(pan: jax.Array, lms: jax.Array, ratio: int) -> jax.Array:
  """P̂ (H, W, C): the PAN histogram-matched to each band, using the low-passed PAN's std."""
  gain = common.safe_divide(common.std2(lms), common.std2(imaging.lp_filter_gauss(pan, ratio)))
  return (pan - common.mean2(pan))[..., None] * gain + common.mean2(lms)


def mtf_glp_hpm(ms, pan, sensor, ratio: int = 4, lms=None) -> jax.Array:
  """Fused image (H, W, C) in the units of the inputs (DN)."""
  ms, pan, lms = common.prepare_inputs(ms, pan, lms, ratio)
  pan_eq = equalized_pan(pan, lms, ratio)
  pan_low = common.low_pass_detail_path(pan_eq, sensor, ratio)
  return lms * pan_eq / (pan_low + common.MATLAB_EPS)
