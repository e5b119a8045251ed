"""Input checks of sharpening, run before any slow work: co-registration, values, paths, flags.

Each raises `errors.InputError` naming the file, flag or value that cannot work and what was
expected (the CLI prints it and exits with status 2).
"""

from __future__ import annotations

import dataclasses
import logging
import pathlib
from collections.abc import Sequence

import numpy as np

from dcfnet_jax import dn, files, raster, tiling
from dcfnet_jax.errors import InputError
from dcfnet_jax.scenes import Scene

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


def _scan_block(block: np.ndarray, nodata: float | None) -> tuple[np.ndarray, np.ndarray, int]:
  """(valid values, per-pixel nodata mask (any band), count of NaN/inf that are not nodata)."""
  block = np.asarray(block)
  nan_is_nodata = nodata is not None and np.isnan(nodata)
  bad = 0
  if nodata is None:
    missing = np.zeros(block.shape, bool)
  elif nan_is_nodata:
    missing = np.isnan(block) if block.dtype.kind == "f" else np.zeros(block.shape, bool)
  else:
    missing = block == nodata
  keep = ~missing
  if block.dtype.kind == "f":
    finite = np.isfinite(block)
    bad = int(np.count_nonzero(~finite & keep))
    keep &= finite
  pixels = missing.any(-1) if block.ndim == 3 else missing
  return block[keep], pixels, bad


def check_values(scene: Scene, img_range: float, bits: int = 0, nodata: float | None = None
                 ) -> dict[str, tuple[float, float]]:
  """Checks dtypes, nodata and the value range of MS and PAN against the checkpoint's img_range.

  Errors: non-numeric or complex dtypes, NaN/inf (other than a NaN nodata), an MS or PAN with
  no valid pixel (all nodata, or only zeros), MS and PAN whose valid pixels do not overlap, and
  the value-range rule of `dn.check_range` (negative values, data already scaled to [0, 1],
  values above 1.05 x img_range). Partial nodata is accepted (scene borders are often nodata):
  those output pixels are written as nodata, with a warning when they are more than half of the
  output. Returns {"ms": (min, max), "pan": (min, max)} over valid (non-nodata) pixels.
  """
  info = scene.info
  for what, dt in (("MS", info.dtype), ("PAN", info.pan_dtype)):
    if dt.kind not in SUPPORTED_KINDS:
      raise InputError(f"{info.name}: the {what} has dtype {dt}; expected integer or float DN")
  nd = {"ms": info.ms_nodata if nodata is None else nodata,
        "pan": info.pan_nodata if nodata is None else nodata}
  (height, width), (mh, mw, _) = info.pan_shape, info.ms_shape
  ratio = max(height // max(mh, 1), 1)
  lo, hi = {"ms": np.inf, "pan": np.inf}, {"ms": -np.inf, "pan": -np.inf}
  bad, valid, masked = {"ms": 0, "pan": 0}, {"ms": 0, "pan": 0}, 0
  rows = 128 * ratio  # PAN rows per block (whole MS rows)
  for r0 in range(0, height, rows):
    r1 = min(r0 + rows, height)
    blocks = {"pan": scene.read_pan(r0, r1, 0, width),
              "ms": scene.read_ms(r0 // ratio, -(-r1 // ratio), 0, mw)}
    masks = {}
    for which, block in blocks.items():
      values, masks[which], n_bad = _scan_block(block, nd[which])
      bad[which] += n_bad
      valid[which] += int(np.count_nonzero(~masks[which]))
      if values.size:
        lo[which] = min(lo[which], float(values.min()))
        hi[which] = max(hi[which], float(values.max()))
    up = np.repeat(np.repeat(masks["ms"], ratio, 0), ratio, 1)[:r1 - r0, :width]
    masked += int(np.count_nonzero(up | masks["pan"]))
  for which in ("ms", "pan"):
    what = which.upper()
    if bad[which]:
      raise InputError(f"{info.name}: the {what} has {bad[which]} NaN/inf values; mark them "
                       "as nodata (--nodata) or fill them")
    if not valid[which] or hi[which] == -np.inf:
      raise InputError(f"{info.name}: the {what} holds only nodata ({nd[which]:g}): no pixel to "
                       "sharpen; check the file, or the --nodata value")
    if hi[which] == 0 and lo[which] == 0:
      raise InputError(f"{info.name}: the {what} holds only zeros: no image data (an empty "
                       "scene?); if 0 marks missing pixels, this scene has none to sharpen")
  total = height * width
  if masked == total:
    raise InputError(f"{info.name}: every output pixel would be nodata: the valid pixels of the "
                     "MS and of the PAN do not overlap")
  if masked * 2 > total:
    log.warning("%s: %.1f%% of the output pixels are nodata (nodata in the MS or the PAN); "
                "they are written as nodata.", info.name, 100.0 * masked / total)
  elif masked:
    log.info("%s: %.2f%% of the output pixels are nodata; they are written as nodata.",
             info.name, 100.0 * masked / total)
  stats = {which: (lo[which], hi[which]) for which in ("ms", "pan")}
  which = "MS" if stats["ms"][1] >= stats["pan"][1] else "PAN"
  dn.check_range(f"{info.name}: the {which} (checkpoint img_range {img_range:g})",
                 max(stats["ms"][1], stats["pan"][1]), img_range,
                 low=min(stats["ms"][0], stats["pan"][0]), bits=bits or None,
                 fix="rescale the data, use a model trained on them, or override with "
                 "--img-range at your own risk")
  return stats


def check_output_path(out: str, inputs: Sequence[str | None], overwrite: bool) -> pathlib.Path:
  """The output path, refused when its format is unknown, or (`files.check_output_file`) it is
  a folder or an input, exists (without --overwrite), or its folder is missing or read-only."""
  path = pathlib.Path(out)
  suffix = path.suffix.lower()
  if suffix not in OUTPUT_SUFFIXES:
    raise InputError(f"--out {out}: unknown output format {suffix!r}; use one of "
                     f"{', '.join(OUTPUT_SUFFIXES)}")
  return files.check_output_file(path, flag="--out", inputs=inputs, overwrite=overwrite)
