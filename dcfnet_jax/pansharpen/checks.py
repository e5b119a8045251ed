"""Input checks of sharpening, run before any slow work: co-registration, values, paths, flags.

Each raises `errors.InputError` naming the file, flag or value that cannot work and what was
expected (the CLI prints it and exits with status 2).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import pathlib
from collections.abc import Sequence

import numpy as np

from dcfnet_jax import dn, raster, tiling
from dcfnet_jax.errors import InputError
from dcfnet_jax.scenes import Scene, SceneInfo

log = logging.getLogger(__name__)

RATIO = 4  # DCFNet's fixed PAN/MS ratio (mms at 1/2, ms at 1/4 of the PAN size)
OUTPUT_SUFFIXES = raster.GEOTIFF_SUFFIXES + (".npz", ".h5", ".hdf5")
SUPPORTED_KINDS = "uif"
DEFAULT_TILE = 256
DEFAULT_OVERLAP = 32
DEFAULT_TRIM = 8
DEFAULT_PAD = 32


@dataclasses.dataclass(frozen=True)
class TilingOptions:
  """How a scene is cut into tiles (PAN pixels; see `tiling`)."""

  tile: int = DEFAULT_TILE
  overlap: int = DEFAULT_OVERLAP
  pad: int = DEFAULT_PAD
  trim: int = DEFAULT_TRIM
  blend: str = "cosine"

  def validate(self) -> None:
    """Raises InputError naming the flag whose value cannot work."""
    for flag, value in (("--tile", self.tile), ("--overlap", self.overlap), ("--pad", self.pad)):
      if value < 0 or value % RATIO:
        raise InputError(f"{flag} {value} must be a non-negative multiple of {RATIO} (PAN "
                         "pixels per MS pixel)")
    if self.tile < RATIO:
      raise InputError(f"--tile {self.tile} must be at least {RATIO}")
    if self.overlap >= self.tile:
      raise InputError(f"--overlap {self.overlap} must be smaller than --tile {self.tile}")
    if self.trim < 0 or (self.trim and self.overlap <= 2 * self.trim):
      raise InputError(f"--trim {self.trim} must be >= 0 and less than half of --overlap "
                       f"{self.overlap} (use --trim 0 with --overlap 0)")
    if self.blend not in tiling.BLEND_KINDS:
      raise InputError(f"--blend {self.blend!r}: expected one of {tiling.BLEND_KINDS}")

  def grid(self, height: int, width: int) -> tiling.TileGrid:
    try:
      return tiling.make_grid(height, width, self.tile, self.overlap, self.pad, RATIO, self.blend,
                              self.trim)
    except ValueError as e:
      raise InputError(f"tiling options: {e}") from e


def parse_bands(text: str | None) -> list[int] | None:
  """'--bands 2,3,4,5' (1-based, GDAL style) -> 0-based indices (checked when the file is open)."""
  if not text:
    return None
  try:
    return [int(b) - 1 for b in text.split(",") if b.strip()]
  except ValueError as e:
    raise InputError(f"--bands {text!r}: expected comma-separated band numbers (1-based)") from e


def check_coregistration(info: SceneInfo, ratio: int = RATIO) -> None:
  """Raises InputError unless MS and PAN are co-registered by `ratio`.

  Sizes: PAN = ratio x MS exactly. With georeferencing: same CRS, PAN pixel size x ratio = MS
  pixel size (also the rotation terms), and the upper-left corners within half a PAN pixel.
  """
  (ph, pw), (mh, mw, _) = info.pan_shape, info.ms_shape
  if (ph, pw) != (ratio * mh, ratio * mw):
    raise InputError(
        f"{info.name}: MS is {mh}x{mw} and PAN {ph}x{pw}; the model needs PAN = {ratio} x MS "
        f"exactly ({ratio * mh}x{ratio * mw}). Crop both to matching extents (a PAN/MS pair of "
        f"another ratio, e.g. Landsat's 2, must be resampled first).")
  if info.ms_crs and info.crs and not raster.same_crs(info.ms_crs, info.crs):
    raise InputError(f"{info.name}: the MS and PAN are in different coordinate reference systems")
  tm, tp = info.ms_transform, info.pan_transform
  if tm is None or tp is None:
    if (tm is None) != (tp is None):
      log.warning("%s: only one of MS/PAN has a geotransform; co-registration is assumed from "
                  "the sizes alone.", info.name)
    return
  a, b, c, d, e, f = tp
  am, bm, cm, dm, em, fm = tm
  pixel = math.hypot(a, d)
  if a * e - b * d == 0:
    raise InputError(f"{info.name}: the PAN geotransform {tuple(tp)} is degenerate")
  for name, p, m in (("a (x pixel size)", a, am), ("b (row rotation)", b, bm),
                     ("d (column rotation)", d, dm), ("e (y pixel size)", e, em)):
    if abs(p * ratio - m) > 1e-6 * max(abs(m), pixel * ratio):
      raise InputError(
          f"{info.name}: not co-registered by the ratio {ratio}: PAN geotransform {name} = {p:g} "
          f"x {ratio} = {p * ratio:g}, but the MS has {m:g} (PAN transform {tuple(tp)}, MS "
          f"transform {tuple(tm)})")
  # The corner offset in PAN pixels (columns, rows), through the PAN transform's linear part.
  det = a * e - b * d
  dcol = (e * (cm - c) - b * (fm - f)) / det
  drow = (-d * (cm - c) + a * (fm - f)) / det
  if max(abs(dcol), abs(drow)) > 0.5:
    raise InputError(
        f"{info.name}: the MS and PAN upper-left corners differ by ({dcol:+.3g}, {drow:+.3g}) PAN "
        f"pixels (columns, rows), more than half a PAN pixel: MS ({cm:g}, {fm:g}), PAN "
        f"({c:g}, {f:g}). Crop them to the same extent.")


def check_values(scene: Scene, img_range: float, bits: int = 0, nodata: float | None = None
                 ) -> dict[str, tuple[float, float]]:
  """Checks dtypes and the value range of MS and PAN against the checkpoint's img_range.

  Errors: non-numeric or complex dtypes, NaN/inf, and the value-range rule of `dn.check_range`
  (negative values, data already scaled to [0, 1], values above 1.05 x img_range). Returns
  {"ms": (min, max), "pan": (min, max)} over valid (non-nodata) pixels.
  """
  info = scene.info
  for what, dt in (("MS", info.dtype), ("PAN", info.pan_dtype)):
    if dt.kind not in SUPPORTED_KINDS:
      raise InputError(f"{info.name}: the {what} has dtype {dt}; expected integer or float DN")
  stats = {}
  for which in ("ms", "pan"):
    nd = (info.ms_nodata if which == "ms" else info.pan_nodata) if nodata is None else nodata
    nan_is_nodata = nd is not None and np.isnan(nd)
    lo, hi, bad = np.inf, -np.inf, 0
    for block in scene.row_blocks(which):
      block = np.asarray(block)
      if block.dtype.kind == "f":
        finite = np.isfinite(block)
        bad += int(np.count_nonzero(np.isinf(block) if nan_is_nodata else ~finite))
        block = block[finite]
      if nd is not None and not nan_is_nodata:
        block = block[block != nd]
      if block.size:
        lo, hi = min(lo, float(block.min())), max(hi, float(block.max()))
    if bad:
      raise InputError(f"{info.name}: the {which.upper()} has {bad} NaN/inf values; mark them "
                       "as nodata (--nodata) or fill them")
    stats[which] = (lo, hi)
  which = "MS" if stats["ms"][1] >= stats["pan"][1] else "PAN"
  dn.check_range(f"{info.name}: the {which} (checkpoint img_range {img_range:g})",
                 max(stats["ms"][1], stats["pan"][1]), img_range,
                 low=min(stats["ms"][0], stats["pan"][0]), bits=bits or None,
                 fix="rescale the data, use a model trained on them, or override with "
                 "--img-range at your own risk")
  return stats


def check_output_path(out: str, inputs: Sequence[str | None], overwrite: bool) -> pathlib.Path:
  """The output path, refused when its format is unknown, it is an input, it exists (without
  --overwrite) or its folder does not exist."""
  path = pathlib.Path(out)
  suffix = path.suffix.lower()
  if suffix not in OUTPUT_SUFFIXES:
    raise InputError(f"--out {out}: unknown output format {suffix!r}; use one of "
                     f"{', '.join(OUTPUT_SUFFIXES)}")
  for p in inputs:
    if p is not None and path.exists() and path.resolve() == pathlib.Path(p).resolve():
      raise InputError(f"--out {out} is also an input file; choose another output path")
  if path.exists() and not overwrite:
    raise InputError(f"--out {out} exists; pass --overwrite to replace it")
  if path.exists() and path.is_dir():
    raise InputError(f"--out {out} is a directory")
  if not path.parent.is_dir():
    raise InputError(f"--out {out}: the folder {path.parent} does not exist")
  return path
