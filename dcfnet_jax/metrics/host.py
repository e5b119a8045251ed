"""The one host-side wrapper of the quality indices: per-image values from DN arrays.

Every tool that reports indices (training's validation and test reports, `evaluate`, `compare`,
`pansharpen --assess`) calls these two functions. They run the pure-jnp indices of this package
on the host CPU in float64 (the toolbox computes in double; docs/metric_definitions.md §4 item 11),
image batch
by image batch, and return `{index: (N,) float64}` with the keys in the toolbox's order
(`RR_KEYS`, `FR_KEYS`).

Small images. The toolbox's settings are applied exactly as given; a wrapper never changes them
by itself. Images too small for them (after the reduced-resolution border crop, less than one
Q/Q2n block; at full resolution, sides that are not multiples of the block) are refused with an
`InputError` that names the sizes and the setting to change. Training's validation, whose
patches are usually 64x64, therefore uses its own stated settings (`config.eval.valid_*`, no
crop by default: `settings_from_config(config, validation=True)`).
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

ProgressFn = Callable[[int, int], None]  # (images done, total)


def settings_from_config(config: Any, *, validation: bool = False) -> dict[str, Any]:
  """Keyword arguments of `reduced_resolution` from config.data / config.eval."""
  ev = config.eval
  cut, block = bool(ev.flag_cut_bounds), int(ev.block_size)
  if validation:
    cut = bool(ev.get("valid_flag_cut_bounds", cut))
    block = int(ev.get("valid_block_size", block))
  return dict(ratio=int(config.data.ratio), bits=int(config.data.bits), block_size=block,
              flag_cut_bounds=cut, dim_cut=int(ev.dim_cut), thvalues=bool(ev.thvalues))


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


def full_resolution(fused: np.ndarray, ms: np.ndarray, pan: np.ndarray, *,
                    sensor: str | imaging.Sensor, lms: np.ndarray | None = None, ratio: int = 4,
                    bits: int = 11, thvalues: bool = False, block_size: int = 32,
                    float64: bool = True, batch_size: int | None = None,
                    progress: ProgressFn | None = None) -> dict[str, np.ndarray]:
  """Per-image D_lambda, D_s, QNR, D_lambda_K, HQNR (`indexes_evaluation_FS`).

  `fused` (N, H, W, C), `ms` (N, H/ratio, W/ratio, C), `pan` (N, H, W[, 1]), `lms` (N, H, W, C)
  or None (interp23tap(ms), as the toolbox computes it when not given), all in DN.
  """
  fused = np.asarray(fused)
  h, w = fused.shape[1:3]
  if h % block_size or w % block_size:
    raise InputError(f"full-resolution indices need H and W multiples of the block size "
                     f"{block_size}, got {h}x{w}")

  def fn(fused, ms, pan, lms):
    return full_resolution_indexes(fused, ms, pan, sensor=sensor, ratio=ratio, bits=bits,
                                   thvalues=thvalues, block_size=block_size, lms=lms)

  arrays = dict(fused=fused, ms=np.asarray(ms), pan=np.asarray(pan),
                lms=None if lms is None else np.asarray(lms))
  return _run(fn, arrays, FR_KEYS, float64, batch_size, progress)
