"""The one host-side wrapper of the quality indices: per-image values from DN arrays.

Every tool that reports indices (training's validation and test reports, `evaluate`, `compare`,
`pansharpen --assess`) calls these two functions. They run the pure-jnp indices of this package
on the host CPU in float64 (the toolbox computes in double; docs/metric_definitions.md §4 item 11),
image batch by image batch, and return `{index: (N,) float64}` with the keys in the package's
order (`RR_KEYS`; at full resolution `FR_KEYS` then `REPROJECTION_KEYS`).

Full resolution has two families (`FR_FAMILIES`): the toolbox's D_lambda, D_s, QNR, D_lambda_K,
HQNR, and the reprojection protocol's R_Q2n, R_Q, R_SAM, R_ERGAS, D_rho (Scarpa & Ciotola 2022,
docs/full_resolution.md). Both by default; `indexes="toolbox"` / `"reprojection"` computes one.
Both use the same sensor (its toolbox MTF for D_lambda_K, the protocol's clipped unit-sum bank
for the reprojection), block size and `thvalues` clipping of the fused image.

Small images. The settings are applied exactly as given; a wrapper never changes them by itself.
Images too small for them (after the reduced-resolution border crop, less than one Q/Q2n block;
at full resolution, sides that are not multiples of the block, or an MS smaller than one block
for the reprojection family) are refused with an `InputError` that names the sizes and the
setting to change. Training's validation, whose patches are usually 64x64, therefore uses its own
stated settings (`config.eval.valid_*`, no crop by default: `settings_from_config(config,
validation=True)`).

Non-finite values: an MS or PAN with NaN/inf is refused (`InputError`); a fused image with
NaN/inf (a diverged network) gets NaN for every index, as the toolbox's arithmetic gives.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from dcfnet_jax import imaging
from dcfnet_jax.errors import InputError
from dcfnet_jax.metrics._common import cut_size
from dcfnet_jax.metrics.full import FR_KEYS, full_resolution_indexes
from dcfnet_jax.metrics.reduced import RR_KEYS, reduced_resolution_indexes
from dcfnet_jax.metrics.reprojection import (REPROJECTION_KEYS, REPROJECTION_STEP,
                                             reprojection_indexes)

ProgressFn = Callable[[int, int], None]  # (images done, total)

# The full-resolution families, and the choices of the tools' --fr-indexes / config.eval.fr_indexes.
FR_FAMILIES = {"toolbox": FR_KEYS, "reprojection": REPROJECTION_KEYS}
FR_INDEXES = ("all",) + tuple(FR_FAMILIES)


def settings_from_config(config: Any, *, validation: bool = False) -> dict[str, Any]:
  """Keyword arguments of `reduced_resolution` from config.data / config.eval."""
  ev = config.eval
  cut, block = bool(ev.flag_cut_bounds), int(ev.block_size)
  if validation:
    cut = bool(ev.get("valid_flag_cut_bounds", cut))
    block = int(ev.get("valid_block_size", block))
  return dict(ratio=int(config.data.ratio), bits=int(config.data.bits), block_size=block,
              flag_cut_bounds=cut, dim_cut=int(ev.dim_cut), thvalues=bool(ev.thvalues))


def fr_settings_from_config(config: Any) -> dict[str, Any]:
  """Keyword arguments of `full_resolution` from config.data / config.eval (sensor, ratio, bits,
  block, thvalues, families)."""
  ev = config.eval
  return dict(sensor=config.data.sensor, ratio=int(config.data.ratio), bits=int(config.data.bits),
              block_size=int(ev.block_size), thvalues=bool(ev.thvalues),
              indexes=str(ev.get("fr_indexes", "all")))


def check_reduced_size(height: int, width: int, *, block_size: int, flag_cut_bounds: bool,
                       dim_cut: int, hint: str = "") -> None:
  """Refuses images too small for the crop plus one Q block (the small-image rule)."""
  ch, cw = ((cut_size(height, dim_cut), cut_size(width, dim_cut)) if flag_cut_bounds
            else (height, width))
  if min(ch, cw) < block_size:
    where = (f"leave {ch}x{cw} after the toolbox's border crop (dim_cut {dim_cut})"
             if flag_cut_bounds else "are")
    raise InputError(
        f"images of {height}x{width} {where}: smaller than the {block_size}-pixel Q/Q2n block; "
        f"{hint or 'lower dim_cut or block_size, or turn the crop off'} (the toolbox's "
        "defaults, dim_cut 21 and block 32, need at least 73x73 images)")


def _cpu_device() -> jax.Device:
  return jax.local_devices(backend="cpu")[0]


def _run(fn: Callable[..., Mapping[str, Any]], arrays: Mapping[str, np.ndarray | None],
         order: tuple[str, ...], float64: bool, batch_size: int | None,
         progress: ProgressFn | None) -> dict[str, np.ndarray]:
  dtype = np.float64 if float64 else np.float32
  n = len(next(iter(arrays.values())))
  step = n if not batch_size else int(batch_size)
  chunks: dict[str, list[np.ndarray]] = {}
  with jax.enable_x64(float64), jax.default_device(_cpu_device()):
    for lo in range(0, n, max(step, 1)):
      part = {k: None if v is None else jnp.asarray(v[lo:lo + step], dtype)
              for k, v in arrays.items()}
      for key, value in fn(**part).items():
        chunks.setdefault(key, []).append(np.asarray(value, np.float64).reshape(-1))
      if progress is not None:
        progress(min(lo + step, n), n)
  keys = [k for k in order if k in chunks] + [k for k in chunks if k not in order]
  return {k: np.concatenate(chunks[k]) for k in keys}


def reduced_resolution(fused: np.ndarray, gt: np.ndarray, *, ratio: int = 4, bits: int = 11,
                       block_size: int = 32, flag_cut_bounds: bool = True, dim_cut: int = 21,
                       thvalues: bool = False, float64: bool = True, batch_size: int | None = None,
                       progress: ProgressFn | None = None, hint: str = ""
                       ) -> dict[str, np.ndarray]:
  """Per-image Q2n, Q, SAM, ERGAS, SCC of (N, H, W, C) DN arrays (`indexes_evaluation`)."""
  fused = np.asarray(fused)
  check_reduced_size(fused.shape[1], fused.shape[2], block_size=block_size,
                     flag_cut_bounds=flag_cut_bounds, dim_cut=dim_cut, hint=hint)

  def fn(fused, gt):
    return reduced_resolution_indexes(fused, gt, ratio=ratio, bits=bits, block_size=block_size,
                                      flag_cut_bounds=flag_cut_bounds, dim_cut=dim_cut,
                                      thvalues=thvalues)

  return _run(fn, dict(fused=fused, gt=np.asarray(gt)), RR_KEYS, float64, batch_size, progress)


def fr_families(indexes: str) -> tuple[str, ...]:
  """"all" -> both families (toolbox first); "toolbox" / "reprojection" -> that one."""
  if indexes == "all":
    return tuple(FR_FAMILIES)
  if indexes not in FR_FAMILIES:
    raise InputError(f"full-resolution indexes {indexes!r}: expected one of "
                     f"{', '.join(FR_INDEXES)}")
  return (indexes,)


def check_full_size(height: int, width: int, *, ratio: int = 4, block_size: int = 32,
                    indexes: str = "all", hint: str = "") -> None:
  """Refuses images too small for the full-resolution families (the small-image rule).

  Toolbox: H and W multiples of the block (its distinct blocks tile the image). Reprojection:
  ratio 4 (the authors sample every 4 pixels) and an MS of at least one block (R-Q2n and R-Q
  compare 32x32 blocks at MS scale, so PAN 128x128).
  """
  families = fr_families(indexes)
  fix = f"; {hint}" if hint else ""
  if "toolbox" in families and (height % block_size or width % block_size):
    raise InputError(f"full-resolution indices need H and W multiples of the block size "
                     f"{block_size}, got {height}x{width}{fix}")
  if "reprojection" not in families:
    return
  if ratio != REPROJECTION_STEP:
    raise InputError(f"the reprojection indexes sample every {REPROJECTION_STEP} pixels (the "
                     f"authors' step), which fits ratio {REPROJECTION_STEP} only, not ratio "
                     f"{ratio}{fix} (or call metrics.reprojection_indexes with step=ratio)")
  ms_h, ms_w = height // ratio, width // ratio
  if min(ms_h, ms_w) < block_size:
    raise InputError(f"images of {height}x{width} (MS {ms_h}x{ms_w}) are too small for the "
                     f"{block_size}x{block_size} blocks of R-Q2n/R-Q at MS scale: the "
                     f"reprojection indexes need at least {block_size * ratio}x"
                     f"{block_size * ratio} (MS {block_size}x{block_size}){fix}")


def _check_fr_arrays(fused: np.ndarray, ms: np.ndarray, pan: np.ndarray, ratio: int) -> None:
  """Shapes in the ratio and finite MS/PAN, one line each (the tools check them earlier)."""
  n, h, w, c = fused.shape
  expected = (n, h // ratio, w // ratio, c)
  if h % ratio or w % ratio or ms.shape != expected:
    raise InputError(f"MS of shape {ms.shape} and fused of shape {fused.shape} are not in the "
                     f"ratio {ratio}; expected MS of shape {expected}")
  if pan.shape[:3] != (n, h, w) or pan.size != n * h * w:
    raise InputError(f"PAN of shape {pan.shape} does not match fused {fused.shape}; expected "
                     f"{(n, h, w, 1)}")
  for name, x in (("MS", ms), ("PAN", pan)):
    bad = ~np.isfinite(x)
    if bad.any():
      index = tuple(int(i) for i in np.argwhere(bad)[0])
      raise InputError(f"{name} of shape {x.shape} has the value {x[index]} at index {index}; "
                       "expected finite values")


def full_resolution(fused: np.ndarray, ms: np.ndarray, pan: np.ndarray, *,
                    sensor: str | imaging.Sensor, lms: np.ndarray | None = None, ratio: int = 4,
                    bits: int = 11, thvalues: bool = False, block_size: int = 32,
                    indexes: str = "all", float64: bool = True, batch_size: int | None = None,
                    progress: ProgressFn | None = None, hint: str = ""
                    ) -> dict[str, np.ndarray]:
  """Per-image full-resolution indices of both families (or one, `indexes`).

  Toolbox (`indexes_evaluation_FS`): D_lambda, D_s, QNR, D_lambda_K, HQNR; reprojection
  protocol: R_Q2n, R_Q, R_SAM, R_ERGAS, D_rho. `fused` (N, H, W, C), `ms` (N, H/ratio,
  W/ratio, C), `pan` (N, H, W[, 1]), `lms` (N, H, W, C) or None (interp23tap(ms), as the toolbox
  computes it when not given; the reprojection family does not use it), all in DN. `hint` ends
  the small-image message (the tool's flag to change).
  """
  families = fr_families(indexes)
  fused, ms, pan = np.asarray(fused), np.asarray(ms), np.asarray(pan)
  if pan.ndim == 3:
    pan = pan[..., None]
  _check_fr_arrays(fused, ms, pan, ratio)
  check_full_size(fused.shape[1], fused.shape[2], ratio=ratio, block_size=block_size,
                  indexes=indexes, hint=hint)
  arrays = dict(fused=fused, ms=ms, pan=pan, lms=None if lms is None else np.asarray(lms))
  diverged = None
  if "reprojection" in families:
    # The protocol's functions refuse NaN; an image of a diverged network gets NaN instead.
    # The toolbox's thvalues clipping is applied here for the reprojection (its own function
    # has none). Only then is a second copy of the fused images made (and transferred).
    finite = np.isfinite(fused)
    diverged = ~finite.all(axis=(1, 2, 3))
    if diverged.any() or thvalues:
      clean = np.where(finite, fused, 0.0)
      arrays["fused_r"] = np.clip(clean, 0.0, 2.0 ** bits) if thvalues else clean

  def fn(fused, ms, pan, lms, fused_r=None):
    out = {}
    if "toolbox" in families:
      out.update(full_resolution_indexes(fused, ms, pan, sensor=sensor, ratio=ratio, bits=bits,
                                         thvalues=thvalues, block_size=block_size, lms=lms))
    if "reprojection" in families:
      out.update(reprojection_indexes(fused if fused_r is None else fused_r, ms, pan,
                                      sensor=sensor, ratio=ratio, block_size=block_size))
    return out

  values = _run(fn, arrays, FR_KEYS + REPROJECTION_KEYS, float64, batch_size, progress)
  if diverged is not None and diverged.any():
    for key in REPROJECTION_KEYS:
      values[key][diverged] = np.nan
  return values
