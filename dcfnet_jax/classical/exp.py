"""EXP: the MS upsampled by the toolbox's 23-tap interpolator (baseline_definitions.md §2.1)."""

from __future__ import annotations

import jax

from dcfnet_jax import imaging


def exp(ms, pan=None, sensor=None, ratio: int = 4, lms=None) -> jax.Array:
  """Returns `lms` when given (the toolbox's EXP is its `I_MS`), else interp23tap(ms, ratio).

  `pan` and `sensor` are accepted for a uniform method signature and ignored.
  """
  del pan, sensor
  if lms is not None:
    return imaging.as_float(lms)
  return imaging.interp23tap(ms, ratio)
