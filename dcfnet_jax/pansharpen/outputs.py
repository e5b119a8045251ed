"""What sharpening writes: output rows in the input dtype with nodata, array outputs, and the
central-crop products (preview PNG, no-reference assessment).

Every file goes through the atomic helpers (`files`, `raster.writing`): a temporary file in the
output folder, renamed when complete, with the mode the umask gives.
"""

from __future__ import annotations

import functools
import math
import pathlib
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from dcfnet_jax import dn, files, imaging, names, previews, tiling
from dcfnet_jax.errors import InputError
from dcfnet_jax.metrics import host
from dcfnet_jax.pansharpen.checks import RATIO
from dcfnet_jax.pansharpen.tiles import lms_window
from dcfnet_jax.scenes import Scene, SceneInfo


def nodata_mask(scene: Scene, first: int, count: int) -> np.ndarray | None:
  """(count, W) True where the PAN or any MS band of rows [first, first+count) is nodata."""
  info = scene.info
  pan_nd, ms_nd = info.pan_nodata, info.ms_nodata
  if pan_nd is None and ms_nd is None:
    return None
  width = info.pan_shape[1]
  mask = np.zeros((count, width), bool)
  if pan_nd is not None:
    mask |= _is_value(scene.read_pan(first, first + count, 0, width), pan_nd)
  if ms_nd is not None:
    r0, r1 = first // RATIO, -(-(first + count) // RATIO)
    ms = scene.read_ms(r0, r1, 0, info.ms_shape[1])
    up = np.repeat(np.repeat(_is_value(ms, ms_nd).any(-1), RATIO, 0), RATIO, 1)
    mask |= up[first - RATIO * r0:first - RATIO * r0 + count]
  return mask


def _is_value(x: np.ndarray, value: float) -> np.ndarray:
  return np.isnan(x) if np.isnan(value) else x == value


def finalize_rows(scene: Scene, first: int, rows: np.ndarray, dtype: np.dtype,
                  nodata: float | None) -> np.ndarray:
  """Converts blended rows to the output dtype and writes `nodata` where inputs are nodata.

  Valid pixels that would round to the nodata value are moved one DN away from it (integers).
  """
  out = dn.to_dtype(rows, dtype)
  if nodata is None:
    return out
  mask = nodata_mask(scene, first, len(rows))
  if np.dtype(dtype).kind in "ui" and not np.isnan(nodata):
    clash = out == nodata
    if clash.any():
      info = np.iinfo(dtype)
      out[clash] = nodata + 1 if nodata < info.max else nodata - 1
  if mask is not None:
    out[mask] = nodata
  return out


class ArrayWriter:
  """Collects rows into an in-memory (H, W, C) array (for .npz/.h5 outputs and h5 mode)."""

  def __init__(self, height: int, width: int, channels: int, dtype: np.dtype):
    self.array = np.zeros((height, width, channels), dtype)

  def write(self, first: int, rows: np.ndarray) -> None:
    self.array[first:first + len(rows)] = rows

  def close(self) -> None:
    pass


def write_array_output(path: pathlib.Path, fused: np.ndarray, info: SceneInfo,
                       nodata: float | None) -> None:
  """The scene result as .npz ((H, W, C) + georeferencing) or .h5 (`fused`, 1,C,H,W)."""
  if path.suffix.lower() != ".npz":
    files.save_arrays_h5(path, {"fused": np.moveaxis(fused, -1, 0)[None]})
    return
  extra: dict[str, Any] = {}
  if info.crs:
    extra["crs_wkt"] = np.asarray(info.crs)
  if info.pan_transform:
    extra["transform"] = np.asarray(info.pan_transform, np.float64)
  if info.band_names:
    extra["band_names"] = np.asarray(info.band_names)
  if nodata is not None:
    extra["nodata"] = np.asarray(nodata)
  files.save_npz(path, dict(fused=fused, **extra))


def sidecar(out: pathlib.Path, suffix: str) -> pathlib.Path:
  """`OUT.preview.png` / `OUT.assess.json` beside `out`."""
  return out.with_name(out.stem + suffix)


# ---------------------------------------------------------------------------------------------
# Central crop, previews and no-reference assessment


def central_crop(height: int, width: int, size: int, multiple: int = 32
                 ) -> tuple[int, int, int, int]:
  """(r0, c0, h, w) of the central crop of at most size x size, sides multiples of `multiple`,
  origin a multiple of RATIO (so that it falls on whole MS pixels)."""
  h = min(height, size) // multiple * multiple
  w = min(width, size) // multiple * multiple
  if h == 0 or w == 0:
    raise InputError(f"the scene ({height}x{width}) is smaller than {multiple} PAN pixels; "
                     "the full-resolution indexes need sides that are multiples of 32")
  r0 = (height - h) // 2 // RATIO * RATIO
  c0 = (width - w) // 2 // RATIO * RATIO
  return r0, c0, h, w


ASSESS_HINT = ("pass --fr-indexes toolbox for the QNR/HQNR family only, or assess a larger scene "
               "(--crop)")


def assess_crop(height: int, width: int, size: int, indexes: str = "all"
                ) -> tuple[int, int, int, int]:
  """The central crop of `--assess` (sides multiples of 32), refused when too small for the
  full-resolution families `indexes` (`metrics.host`'s small-image rule: the reprojection
  family needs 128x128 PAN pixels)."""
  crop = central_crop(height, width, size, 32)
  host.check_full_size(crop[2], crop[3], ratio=RATIO, indexes=indexes, hint=ASSESS_HINT)
  return crop


def scene_lms(scene: Scene, r0: int, c0: int, h: int, w: int) -> np.ndarray:
  """float64 DN whole-scene lms over PAN rows [r0, r0+h) x cols [c0, c0+w) (exact, windowed)."""
  rows, cols = np.arange(r0, r0 + h), np.arange(c0, c0 + w)
  if scene.has_lms:
    return np.asarray(tiling.gather_2d(scene.read_lms, rows, cols), np.float64)
  window, _, _, a0, b0 = lms_window(scene, rows, cols)
  with jax.enable_x64(True):
    full = np.asarray(imaging.interp23tap(np.asarray(window, np.float64), RATIO))
  return full[np.ix_(rows - RATIO * a0, cols - RATIO * b0)]


class CropCollector:
  """Keeps the rows of a central crop while the result streams past (for preview / assess)."""

  def __init__(self, crop: tuple[int, int, int, int], channels: int):
    self.r0, self.c0, self.h, self.w = crop
    self.array = np.zeros((self.h, self.w, channels), np.float64)

  def __call__(self, first: int, rows: np.ndarray) -> None:
    a, b = max(first, self.r0), min(first + len(rows), self.r0 + self.h)
    if a < b:
      self.array[a - self.r0:b - self.r0] = rows[a - first:b - first, self.c0:self.c0 + self.w]


def write_preview(path: pathlib.Path, lms: np.ndarray, fused: np.ndarray, rgb: Sequence[int],
                  reference: np.ndarray | None = None, before: np.ndarray | None = None
                  ) -> pathlib.Path:
  """PNG: true colour of lms | (before adaptation |) result (| |result - reference| with colour
  bar)."""
  bounds = previews.stretch_bounds(lms, rgb)
  big = functools.partial(previews.upscale, min_size=256)  # small crops: nearest x k
  images = (lms,) + (() if before is None else (before,)) + (fused,)
  panels = [big(previews.true_color(x, rgb, bounds)) for x in images]
  titles = ["input MS upsampled (lms)"] + ([] if before is None else ["before adaptation"]) + [
      "pansharpened" if before is None else "adapted"]
  if reference is not None:
    err, vmax = previews.error_map(fused, reference)
    err = big(err)
    bar = previews.colorbar(err.shape[0], 0.0, vmax)
    gap = np.full((err.shape[0], 4, 3), 255, np.uint8)
    panels.append(np.concatenate([err, gap, bar], axis=1))
    titles.append("|result - ref| (DN, band mean)")
  return previews.save_png(path, previews.tile(panels, titles))


def assess(fused: np.ndarray, ms: np.ndarray, pan: np.ndarray, lms: np.ndarray, sensor: str,
           bits: int, indexes: str = "all") -> dict[str, float]:
  """Full-resolution indexes of one DN image: the toolbox's D_lambda, D_s, QNR, D_lambda_K,
  HQNR, then the reprojection protocol's R_Q2n, R_Q, R_SAM, R_ERGAS, D_rho (or one family)."""
  values = host.full_resolution(fused[None], ms[None], pan[None, ..., None], sensor=sensor,
                                lms=lms[None], ratio=RATIO, bits=bits, indexes=indexes,
                                hint=ASSESS_HINT)
  return {k: float(v[0]) for k, v in values.items()}


def assess_names(values: dict[str, float], num_bands: int) -> dict[str, str]:
  """Display names of the assessed indexes (R-Q4 / R-Q8 by band count, ...), `names`' table."""
  return {k: names.index(k, num_bands) for k in values}


def assess_line(values: dict[str, float], num_bands: int, where: str, sensor: str, bits: int
                ) -> str:
  """The line `--assess` prints: every index under its display name."""
  shown = assess_names(values, num_bands)
  return (f"Full-resolution indexes of {where} ({sensor}, {bits}-bit): " +
          ", ".join(f"{shown[k]} {v:.4f}" for k, v in values.items()))


def assess_bits(bits: int, img_range: float) -> int:
  """The checkpoint's bits, or those of its img_range (2^bits - 1 >= img_range)."""
  return bits or int(math.ceil(math.log2(img_range + 1)))
