"""The one Scene abstraction: a co-registered MS/PAN pair read window by window.

A scene is one MS image (h, w, C) and its PAN (r*h, r*w) in their own dtype (DN), with their
georeferencing when the files have it. `open_scene` opens a GeoTIFF pair (read window by window
through `raster`, whatever the size) or an .npz/.mat/.h5 scene (one file holding both images, or
two files; held in memory). `SceneInfo` says what is known about it (shapes, dtypes, CRS,
transforms, band names, nodata); `check_coregistration` refuses an MS and a PAN that do not
cover the same ground (sizes, CRS, pixel sizes, corners). Used by the Wald dataset maker
(`data.make_dataset`, whole images via `read_all`) and by sharpening (`pansharpen`, windows).

Array files: the MS and PAN are found by name (`MS_KEYS`, `PAN_KEYS`) unless given; .npz files
may carry georeferencing as `crs_wkt` / `crs_epsg` and `ms_transform` / `pan_transform`, and
`band_names`.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import pathlib
from collections.abc import Mapping, Sequence

import numpy as np

from dcfnet_jax import files, raster
from dcfnet_jax.errors import InputError

log = logging.getLogger(__name__)

# Array names tried, in order, when the caller names no key.
MS_KEYS = ("ms", "MS", "I_MS", "mul", "msi")
PAN_KEYS = ("pan", "PAN", "I_PAN", "P", "panchromatic")
ARRAY_SUFFIXES = files.SUPPORTED_SUFFIXES


@dataclasses.dataclass
class SceneInfo:
  """What is known about a scene's two images."""

  name: str  # for messages
  pan_shape: tuple[int, int]
  ms_shape: tuple[int, int, int]
  dtype: np.dtype  # MS dtype (= the dtype of a sharpened output)
  pan_dtype: np.dtype
  crs: str | None = None  # of the PAN (the output grid)
  pan_transform: raster.Transform | None = None
  ms_transform: raster.Transform | None = None
  band_names: tuple[str, ...] | None = None
  ms_nodata: float | None = None
  pan_nodata: float | None = None
  ms_crs: str | None = None  # of the MS, when it may differ from the PAN's

  @property
  def nodata(self) -> float | None:
    return self.ms_nodata if self.ms_nodata is not None else self.pan_nodata

  @property
  def ratio(self) -> int:
    """PAN/MS size ratio; an InputError when the sizes are not an integer multiple."""
    (h, w), (ph, pw) = self.ms_shape[:2], self.pan_shape
    r = ph // h if h else 0
    if r < 1 or ph != r * h or pw != r * w:
      raise InputError(f"{self.name}: PAN size {self.pan_shape} is not an integer multiple of "
                       f"the MS size {(h, w)}.")
    return r


class Scene:
  """Windowed reads of one scene (rows r0:r1, cols c0:c1 of the PAN or of the MS grid)."""

  info: SceneInfo
  has_lms = False

  def read_pan(self, r0: int, r1: int, c0: int, c1: int) -> np.ndarray:  # (h, w)
    raise NotImplementedError

  def read_ms(self, r0: int, r1: int, c0: int, c1: int) -> np.ndarray:  # (h, w, C)
    raise NotImplementedError

  def read_lms(self, r0: int, r1: int, c0: int, c1: int) -> np.ndarray:  # (h, w, C)
    raise InputError(f"{self.info.name} has no stored lms")

  def read_all(self) -> tuple[np.ndarray, np.ndarray]:
    """(ms (h, w, C), pan (H, W)), whole."""
    (ph, pw), (mh, mw, _) = self.info.pan_shape, self.info.ms_shape
    return self.read_ms(0, mh, 0, mw), self.read_pan(0, ph, 0, pw)

  def close(self) -> None:
    pass

  def __enter__(self) -> Scene:
    return self

  def __exit__(self, *exc) -> None:
    self.close()


class ArrayScene(Scene):
  """A scene held in memory (.npz/.mat/.h5 files, PanCollection images, tests)."""

  def __init__(self, ms: np.ndarray, pan: np.ndarray, info: SceneInfo,
               lms: np.ndarray | None = None, bands: Sequence[int] | None = None):
    self._ms, self._pan, self._lms = ms, pan, lms
    self._bands = None if bands is None else list(bands)
    self.info = info
    self.has_lms = lms is not None

  def _select(self, x: np.ndarray) -> np.ndarray:
    return x if self._bands is None else x[..., self._bands]

  def read_pan(self, r0, r1, c0, c1):
    return self._pan[r0:r1, c0:c1]

  def read_ms(self, r0, r1, c0, c1):
    return self._select(self._ms[r0:r1, c0:c1])

  def read_lms(self, r0, r1, c0, c1):
    if self._lms is None:
      return super().read_lms(r0, r1, c0, c1)
    return self._select(self._lms[r0:r1, c0:c1])


class GeoTiffScene(Scene):
  """An MS/PAN GeoTIFF pair read window by window."""

  def __init__(self, ms_path: str, pan_path: str, bands: Sequence[int] | None = None):
    self._files: list[raster.Reader] = []
    try:
      self._ms = self._open(ms_path, "--ms")
      self._pan = self._open(pan_path, "--pan")
      self._setup(ms_path, pan_path, bands)
    except BaseException:
      self.close()
      raise

  def _open(self, path: str, what: str) -> raster.Reader:
    reader = raster.Reader(path, what)
    self._files.append(reader)
    return reader

  def _setup(self, ms_path: str, pan_path: str, bands: Sequence[int] | None) -> None:
    ms, pan = self._ms, self._pan
    if pan.count != 1:
      raise InputError(f"--pan {pan_path}: has {pan.count} bands; a PAN image has 1")
    self._bands = check_bands(bands, ms.count, ms_path)
    dtypes = {ms.dtypes[i] for i in self._bands}
    if len(dtypes) != 1:
      raise InputError(f"--ms {ms_path}: the bands have different dtypes "
                       f"{sorted(map(str, dtypes))}")
    descriptions = [ms.descriptions[i] for i in self._bands]
    self.info = SceneInfo(
        name=f"{ms_path} + {pan_path}", pan_shape=(pan.height, pan.width),
        ms_shape=(ms.height, ms.width, len(self._bands)), dtype=dtypes.pop(),
        pan_dtype=pan.dtypes[0], crs=pan.crs, pan_transform=pan.transform,
        ms_transform=ms.transform,
        band_names=tuple(d or "" for d in descriptions) if any(descriptions) else None,
        ms_nodata=ms.nodata, pan_nodata=pan.nodata, ms_crs=ms.crs)

  def read_pan(self, r0, r1, c0, c1):
    return self._pan.read([0], r0, r1, c0, c1)[..., 0]

  def read_ms(self, r0, r1, c0, c1):
    return self._ms.read(self._bands, r0, r1, c0, c1)

  def close(self):
    for f in self._files:
      f.close()
    self._files = []


def check_coregistration(info: SceneInfo, ratio: int, *, sizes: bool = True) -> None:
  """Raises InputError unless MS and PAN are co-registered by `ratio`.

  Sizes (unless `sizes` is False, for callers that check them with their own hint): PAN =
  ratio x MS exactly. With georeferencing: same CRS, PAN pixel size x ratio = MS pixel size
  (also the rotation terms), and the upper-left corners within half a PAN pixel.
  """
  (ph, pw), (mh, mw, _) = info.pan_shape, info.ms_shape
  if sizes and (ph, pw) != (ratio * mh, ratio * mw):
    raise InputError(
        f"{info.name}: MS is {mh}x{mw} and PAN {ph}x{pw}; PAN = {ratio} x MS exactly is needed "
        f"({ratio * mh}x{ratio * mw}). Crop both to matching extents (a PAN/MS pair of "
        f"another ratio, e.g. Landsat's 2, must be resampled first).")
  if info.ms_crs and info.crs and not raster.same_crs(info.ms_crs, info.crs):
    raise InputError(f"{info.name}: the MS and PAN are in different coordinate reference systems "
                     f"(MS {raster.crs_label(info.ms_crs)}, PAN {raster.crs_label(info.crs)}); "
                     "reproject one onto the other's grid first")
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
        f"{info.name}: the MS and PAN upper-left corners differ by ({dcol + 0.0:+.3g}, "
        f"{drow + 0.0:+.3g}) PAN pixels (columns, rows), more than half a PAN pixel: MS "
        f"({cm:.12g}, {fm:.12g}), PAN ({c:.12g}, {f:.12g}). Crop them to the same extent.")


def parse_bands(text: str | None) -> tuple[int, ...] | None:
  """'--bands 2,3,4,5' (1-based, GDAL style, every CLI) -> 0-based indices (checked against
  the file by `check_bands`)."""
  if not text:
    return None
  try:
    return tuple(int(b) - 1 for b in text.replace(" ", "").split(",") if b)
  except ValueError as e:
    raise InputError(f"--bands {text!r}: expected comma-separated band numbers (1-based)") from e


def check_bands(bands: Sequence[int] | None, count: int, where: str) -> list[int]:
  """0-based `bands` checked against `count` (all bands when None)."""
  if bands is None:
    return list(range(count))
  bands = [int(b) for b in bands]
  bad = [b + 1 for b in bands if not 0 <= b < count]
  if not bands or bad:
    raise InputError(f"--bands: {where} has bands 1..{count}; {bad or 'none'} chosen "
                     "(1-based)")
  return bands


def open_scene(ms_path: str | os.PathLike[str], pan_path: str | os.PathLike[str] | None = None,
               *, bands: Sequence[int] | None = None, ms_key: str | None = None,
               pan_key: str | None = None) -> Scene:
  """A GeoTIFF pair (windowed), or a scene from .npz/.mat/.h5 (in memory).

  `bands`: 0-based MS bands to use, in this order. `pan_path` None: the PAN is in the MS file.
  """
  ms_path = str(ms_path)
  pan_path = None if pan_path is None else str(pan_path)
  geotiffs = [raster.is_geotiff(p) for p in (ms_path, pan_path or ms_path)]
  if any(geotiffs):
    raster.rasterio()  # says how to install it
  for what, p in (("ms", ms_path), ("pan", pan_path)):
    if p is not None:
      files.check_input_file(p, f"--{what}", empty_ok=True)
  if any(geotiffs):
    if pan_path is None:
      raise InputError(f"--ms {ms_path} is a GeoTIFF: give the PAN GeoTIFF with --pan")
    if not all(geotiffs):
      raise InputError(f"--ms {ms_path} and --pan {pan_path}: give two GeoTIFFs, or two array "
                       "files, not one of each")
    return GeoTiffScene(ms_path, pan_path, bands)
  if pan_path is None:  # one array file holds both: load it once
    arrays = _load_array_file(ms_path, "ms")
    ms, ms_crs, ms_transform, names = _image_from_arrays(arrays, ms_path, ms_key, "ms")
    pan, pan_crs, pan_transform, _ = _image_from_arrays(arrays, ms_path, pan_key, "pan")
  else:
    ms, ms_crs, ms_transform, names = read_image(ms_path, key=ms_key, kind="ms")
    pan, pan_crs, pan_transform, _ = read_image(pan_path, key=pan_key, kind="pan")
  pan_file = ms_path if pan_path is None else pan_path
  for what, x, path in (("MS", ms, ms_path), ("PAN", pan, pan_file)):
    if not np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.complexfloating):
      raise InputError(f"{path}: the {what} has dtype {x.dtype}; expected real numbers (DN).")
  index = check_bands(bands, ms.shape[-1], ms_path)
  if names:
    names = tuple(names[b] for b in index)
  info = SceneInfo(
      name=ms_path if pan_path is None else f"{ms_path} + {pan_path}",
      pan_shape=tuple(pan.shape[:2]), ms_shape=tuple(ms.shape[:2]) + (len(index),),
      dtype=ms.dtype, pan_dtype=pan.dtype, crs=pan_crs or ms_crs, pan_transform=pan_transform,
      ms_transform=ms_transform, band_names=names, ms_crs=ms_crs)
  _ = info.ratio  # validates the sizes
  return ArrayScene(ms, pan, info, bands=None if bands is None else index)


# ------------------------------------------------------------------------------- array files


def _pick(arrays: Mapping[str, np.ndarray], key: str | None, candidates: Sequence[str],
          ndims: Sequence[int], what: str, path: str) -> tuple[str, np.ndarray]:
  if key is not None:
    if key not in arrays:
      raise InputError(f"{path}: no array {key!r} (the {what}); found {sorted(arrays)}.")
    return key, np.asarray(arrays[key])
  for name in candidates:
    if name in arrays:
      return name, np.asarray(arrays[name])
  numeric = {k: np.asarray(v) for k, v in arrays.items()
             if np.issubdtype(np.asarray(v).dtype, np.number) and np.asarray(v).ndim in ndims
             and np.asarray(v).size > 64}
  if len(numeric) == 1:
    return next(iter(numeric.items()))
  raise InputError(f"{path}: cannot tell which array is the {what} (tried {list(candidates)}, "
                   f"found {sorted(arrays)}); name it explicitly (--ms-key / --pan-key).")


def _as_hwc(x: np.ndarray, path: str, key: str) -> np.ndarray:
  if x.ndim == 2:
    return x[..., None]
  if x.ndim == 4 and x.shape[0] == 1:
    x = x[0]
  if x.ndim != 3:
    raise InputError(f"{path}: {key!r} has shape {x.shape}; expected an MS image (H, W, C).")
  if x.shape[-1] > 32 and x.shape[0] <= 32:  # stored band-first (C, H, W)
    x = np.moveaxis(x, 0, -1)
  return x


def _as_hw(x: np.ndarray, path: str, key: str) -> np.ndarray:
  x = np.squeeze(x)
  if x.ndim != 2:
    raise InputError(f"{path}: {key!r} has shape {x.shape}; expected a PAN image (H, W).")
  return x


def _npz_geo(arrays: Mapping[str, np.ndarray], prefix: str, path: str
             ) -> tuple[str | None, raster.Transform | None]:
  """Georeferencing in the .npz convention (crs_wkt / crs_epsg, <prefix>_transform), checked."""
  crs = None
  if "crs_wkt" in arrays:
    value = np.asarray(arrays["crs_wkt"])
    if value.dtype.kind not in "US" or value.size != 1:
      raise InputError(f"{path}: 'crs_wkt' is {value.dtype} {value.shape}; expected one string "
                       "(the CRS as WKT)")
    crs = str(value.item().decode() if value.dtype.kind == "S" else value.item()).strip() or None
  if crs is None and "crs_epsg" in arrays:
    value = np.asarray(arrays["crs_epsg"])
    if value.dtype.kind not in "iu" or value.size != 1:
      raise InputError(f"{path}: 'crs_epsg' is {value.dtype} {value.shape}; expected one integer "
                       "EPSG code (e.g. 32630)")
    crs = f"EPSG:{int(value.item())}" if int(value.item()) > 0 else None
  key = f"{prefix}_transform"
  transform = None
  if key in arrays:
    value = np.asarray(arrays[key])
    if value.dtype.kind not in "iuf" or value.size not in (6, 9):
      raise InputError(f"{path}: {key!r} is {value.dtype} {value.shape}; expected the 6 numbers "
                       "of an affine transform (a, b, c, d, e, f) or its 3x3 matrix")
    transform = tuple(float(v) for v in value.ravel()[:6])
    if not all(math.isfinite(v) for v in transform):
      raise InputError(f"{path}: {key!r} = {transform} holds NaN or inf")
  return crs, transform


def read_image(path: str | os.PathLike[str], *, key: str | None = None, kind: str = "ms"
               ) -> tuple[np.ndarray, str | None, raster.Transform | None,
                          tuple[str, ...] | None]:
  """(image, crs, transform, band names) of one MS ((H, W, C)) or PAN ((H, W)) image file."""
  path = str(path)
  files.check_input_file(path, f"--{kind}", empty_ok=True)
  if raster.is_geotiff(path):
    with raster.Reader(path, f"--{kind}") as reader:
      data = reader.read_all()
      names = reader.descriptions if any(reader.descriptions) else None
      crs, transform = reader.crs, reader.transform
    if kind == "pan":
      return _as_hw(data, path, "band 1"), crs, transform, None
    return data, crs, transform, names
  return _image_from_arrays(_load_array_file(path, kind), path, key, kind)


def _load_array_file(path: str, kind: str) -> Mapping[str, np.ndarray]:
  """Every numeric array of an .npz/.mat/.h5 scene file (refused: other formats); the file
  itself was checked by the caller (`files.check_input_file`)."""
  if pathlib.Path(path).suffix.lower() not in ARRAY_SUFFIXES:
    raise InputError(f"{path}: unsupported scene format {pathlib.Path(path).suffix.lower()!r}; "
                     f"use GeoTIFF ({', '.join(raster.GEOTIFF_SUFFIXES)}) or "
                     f"{', '.join(ARRAY_SUFFIXES)}.")
  try:
    return files.load_arrays(path)
  except (ValueError, KeyError, OSError) as e:
    raise InputError(f"cannot read the scene: {e}") from e


def _image_from_arrays(arrays: Mapping[str, np.ndarray], path: str, key: str | None, kind: str
                       ) -> tuple[np.ndarray, str | None, raster.Transform | None,
                                  tuple[str, ...] | None]:
  """`read_image`'s result for an array file already loaded."""
  if kind == "pan":
    name, x = _pick(arrays, key, PAN_KEYS, (2, 3), "PAN", path)
    return (_as_hw(x, path, name),) + _npz_geo(arrays, "pan", path) + (None,)
  name, x = _pick(arrays, key, MS_KEYS, (3, 4), "MS", path)
  x = _as_hwc(x, path, name)
  names = (tuple(str(b) for b in np.asarray(arrays["band_names"]).ravel())
           if "band_names" in arrays else None)
  if names is not None and len(names) != x.shape[-1]:
    raise InputError(f"{path}: 'band_names' has {len(names)} names for the {x.shape[-1]} bands "
                     f"of {name!r}")
  return (x,) + _npz_geo(arrays, "ms", path) + (names,)
