"""Digital numbers (DN): scaling for the model, the one value-range rule, storage dtypes.

Data enter and leave the project in the sensor's DN (0 .. img_range, img_range = 2^L - 1 for
L-bit data). The model sees DN / img_range (`to_model_units`); outputs go back to DN and, for
integer files, are rounded and clipped to the dtype (`to_dtype`).

The value-range rule (`check_range`), used for every file and scene we read:
- a maximum <= 1.0 while img_range > 1.5 means data already scaled to [0, 1]: refused;
- sensor data (gt, ms, pan, a scene) above `RANGE_OVER_FRACTION` x img_range are refused: they
  have more bits than declared. 1.05 is the toolbox-faithful threshold: the toolbox treats
  [0, 2^L] as the valid range (its `thvalues` clamps the fused image at 2^L, not 2^L - 1), and
  1.05 x (2^L - 1) >= 2^L for every L >= 5, so every value the toolbox accepts passes, while data
  with one bit more than declared (up to 2 x the range) are caught;
- fused images may overshoot the range (the toolbox leaves them unclipped unless `thvalues`), so
  only a maximum above `FUSED_OVER_FACTOR` x 2^L (data scaled twice, a wrong bit depth) is refused;
- a maximum below `RANGE_UNDER_FRACTION` x img_range of an 11- or 12-bit declaration gets a
  warning (10-bit data declared 11-bit is the usual mix-up; 8-bit data rarely fill their range).
"""

from __future__ import annotations

import warnings

import numpy as np

from dcfnet_jax.errors import DataWarning, InputError

RANGE_OVER_FRACTION = 1.05
FUSED_OVER_FACTOR = 2.0
UNIT_DATA_MAX = 1.0
RANGE_UNDER_FRACTION = 0.55
RANGE_UNDER_CHECKED = (1023.0, 4095.0)  # img_range in (low, high]: 11- and 12-bit declarations


def to_model_units(dn: np.ndarray, img_range: float) -> np.ndarray:
  """DN -> float32 divided by img_range, the scaling of every batch the model sees."""
  return np.asarray(dn, np.float32) / np.float32(img_range)


def to_dtype(values: np.ndarray, dtype) -> np.ndarray:
  """Float DN -> `dtype`: rounded and clipped to the dtype's range for integer types."""
  dtype = np.dtype(dtype)
  if dtype.kind in "ui":
    info = np.iinfo(dtype)
    return np.clip(np.rint(values), info.min, info.max).astype(dtype)
  return np.asarray(values, dtype if dtype.kind == "f" else np.float32)


def check_range(where: str, peak: float, img_range: float, *, low: float | None = None,
                fused: bool = False, bits: int | None = None, fix: str = "") -> None:
  """Applies the value-range rule (module docstring) to data whose maximum is `peak`.

  `where` starts every message (a file, key or scene); `low` (the minimum, when known) must
  not be negative; `fused` selects the tolerance of fused images; `fix` is appended to the
  messages about the scale (e.g. "pass --scale 2047").
  """
  peak, img_range = float(peak), float(img_range)
  bit_text = f" ({bits}-bit)" if bits else ""
  if low is not None and low < 0:
    raise InputError(f"{where}: negative values (min {low:g}); DN are >= 0")
  if img_range > 1.5 and peak <= UNIT_DATA_MAX:
    raise InputError(f"{where}: the maximum {peak:.4g} looks like [0, 1] data, but DN up to "
                     f"img_range = {img_range:g}{bit_text} are expected{_tail(fix)}")
  if fused:
    limit = FUSED_OVER_FACTOR * (img_range + 1)
    if peak > limit:
      raise InputError(f"{where}: the maximum {peak:.6g} is far above 2^L = {img_range + 1:g}: "
                       f"wrong bit depth, or data scaled twice?{_tail(fix)}")
    return
  if peak > RANGE_OVER_FRACTION * img_range:
    raise InputError(f"{where}: values up to {peak:g} DN, more than {RANGE_OVER_FRACTION:g} x "
                     f"img_range {img_range:g} = {RANGE_OVER_FRACTION * img_range:.6g}"
                     f"{bit_text}: the data have more bits than declared (e.g. 11-bit data, "
                     f"range 2047, declared as 10-bit, range 1023){_tail(fix)}")
  lo, hi = RANGE_UNDER_CHECKED
  if lo < img_range <= hi and peak < RANGE_UNDER_FRACTION * img_range:
    warnings.warn(f"{where}: the largest DN is {peak:g}, below {RANGE_UNDER_FRACTION:g} x "
                  f"img_range {img_range:g} = {RANGE_UNDER_FRACTION * img_range:.6g}: the data "
                  "may have fewer bits than declared (e.g. 10-bit data, range 1023, declared as "
                  "11-bit, 2047).", DataWarning, stacklevel=2)


def _tail(fix: str) -> str:
  return f"; {fix}" if fix else ""
