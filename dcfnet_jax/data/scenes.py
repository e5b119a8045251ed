"""Reading (and writing) co-registered MS/PAN scenes: GeoTIFF, .npz, .mat, .h5.

A scene is one MS image (H, W, C) and its PAN (r*H, r*W) in their own dtype (DN), with the
georeferencing when the file has it (GeoTIFF; .npz files such as the Landsat pairs of
tests/data store `crs_wkt`/`crs_epsg` and `ms_transform`/`pan_transform`). Used by the Wald
dataset maker and by the `pansharpen` tool.

GeoTIFF support needs rasterio (`pip install dcfnet_jax[geo]`); it is imported only when a
GeoTIFF is read or written.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from dcfnet_jax.data import pancollection

GEOTIFF_SUFFIXES = (".tif", ".tiff", ".gtif")
ARRAY_SUFFIXES = (".npz", ".mat", ".h5", ".hdf5")
# Array names tried, in order, when the caller names no key.
MS_KEYS = ("ms", "MS", "I_MS", "mul", "msi")
PAN_KEYS = ("pan", "PAN", "I_PAN", "P", "panchromatic")

Affine6 = tuple[float, float, float, float, float, float]


@dataclasses.dataclass
class GeoInfo:
  """Map placement of one raster: CRS as WKT and the affine (a, b, c, d, e, f) transform.

  `x = a*col + b*row + c`, `y = d*col + e*row + f`, (col, row) = (0, 0) being the outer corner
  of the upper-left pixel (rasterio / affine order; GDAL's GeoTransform is (c, a, b, f, d, e)).
  """

  crs: str | None = None
  transform: Affine6 | None = None

  @property
  def is_georeferenced(self) -> bool:
    return self.crs is not None and self.transform is not None


@dataclasses.dataclass
class Scene:
  """One co-registered pair in DN: ms (H, W, C), pan (H', W'), plus georeferencing."""

  ms: np.ndarray
  pan: np.ndarray
  ms_geo: GeoInfo = dataclasses.field(default_factory=GeoInfo)
  pan_geo: GeoInfo = dataclasses.field(default_factory=GeoInfo)
  band_names: tuple[str, ...] | None = None
  sources: tuple[str, ...] = ()

  @property
  def ratio(self) -> int:
    """PAN/MS size ratio; raises when the sizes are not an integer multiple."""
    (h, w), (ph, pw) = self.ms.shape[:2], self.pan.shape
    r = ph // h if h else 0
    if r < 1 or ph != r * h or pw != r * w:
      raise ValueError(f"{', '.join(self.sources) or 'scene'}: PAN size {self.pan.shape} is not an "
                       f"integer multiple of the MS size {self.ms.shape[:2]}.")
    return r

  def select_bands(self, bands: Sequence[int]) -> Scene:
    """The scene with MS bands `bands` (0-based, in that order)."""
    bands = list(bands)
    c = self.ms.shape[-1]
    bad = [b for b in bands if not -c <= b < c]
    if bad:
      raise ValueError(f"{', '.join(self.sources)}: band indices {bad} out of range for {c} bands.")
    names = tuple(self.band_names[b] for b in bands) if self.band_names else None
    return dataclasses.replace(self, ms=self.ms[..., bands], band_names=names)


# ------------------------------------------------------------------------------- GeoTIFF


def _rasterio():
  try:
    import rasterio  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError("reading or writing GeoTIFF needs rasterio: pip install 'dcfnet_jax[geo]' "
                      "(or pip install rasterio).") from e
  return rasterio


def read_geotiff(path: str | os.PathLike[str]) -> tuple[np.ndarray, GeoInfo, tuple[str, ...] | None]:
  """A GeoTIFF as (H, W, C) in its own dtype, its GeoInfo and band descriptions."""
  rasterio = _rasterio()
  with warnings.catch_warnings():  # a plain TIFF without georeferencing is fine here
    warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
    src = rasterio.open(path)
  with src:
    data = np.moveaxis(src.read(), 0, -1)
    crs = src.crs.to_wkt() if src.crs else None
    transform = tuple(src.transform)[:6] if src.transform and not src.transform.is_identity else None
    names = tuple(src.descriptions) if any(src.descriptions) else None
  return data, GeoInfo(crs, transform), names


def write_geotiff(path: str | os.PathLike[str], image: np.ndarray, geo: GeoInfo | None = None,
                  band_names: Sequence[str] | None = None) -> None:
  """Writes (H, W) or (H, W, C) as a GeoTIFF atomically (temp file, then rename)."""
  rasterio = _rasterio()
  from affine import Affine  # pylint: disable=g-import-not-at-top  (a rasterio dependency)

  image = np.asarray(image)
  if image.ndim == 2:
    image = image[..., None]
  if image.ndim != 3:
    raise ValueError(f"{path}: expected (H, W) or (H, W, C), got shape {image.shape}")
  geo = geo or GeoInfo()
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
  os.close(fd)
  profile = dict(driver="GTiff", width=image.shape[1], height=image.shape[0],
                 count=image.shape[2], dtype=image.dtype.name, compress="deflate")
  if geo.crs:
    profile["crs"] = geo.crs
  if geo.transform:
    profile["transform"] = Affine(*geo.transform)
  try:
    with warnings.catch_warnings():
      warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
      dst = rasterio.open(tmp, "w", **profile)
    with dst:
      dst.write(np.moveaxis(image, -1, 0))
      for i, name in enumerate(band_names or ()):
        dst.set_band_description(i + 1, str(name))
    pancollection.set_default_mode(tmp)
    os.replace(tmp, path)
  except BaseException:
    pathlib.Path(tmp).unlink(missing_ok=True)
    raise


# ------------------------------------------------------------------------------- array files


def _load_arrays(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
  from dcfnet_jax import io_utils  # pylint: disable=g-import-not-at-top
  return io_utils.load_arrays(path)


def _pick(arrays: Mapping[str, np.ndarray], key: str | None, candidates: Sequence[str],
          ndims: Sequence[int], what: str, path: str) -> tuple[str, np.ndarray]:
  if key is not None:
    if key not in arrays:
      raise KeyError(f"{path}: no array {key!r} (the {what}); found {sorted(arrays)}.")
    return key, np.asarray(arrays[key])
  for name in candidates:
    if name in arrays:
      return name, np.asarray(arrays[name])
  numeric = {k: np.asarray(v) for k, v in arrays.items()
             if np.issubdtype(np.asarray(v).dtype, np.number) and np.asarray(v).ndim in ndims
             and np.asarray(v).size > 64}
  if len(numeric) == 1:
    return next(iter(numeric.items()))
  raise KeyError(f"{path}: cannot tell which array is the {what} (tried {list(candidates)}, "
                 f"found {sorted(arrays)}); name it explicitly (--ms-key / --pan-key).")


def _as_hwc(x: np.ndarray, path: str, key: str) -> np.ndarray:
  if x.ndim == 2:
    return x[..., None]
  if x.ndim == 4 and x.shape[0] == 1:
    x = x[0]
  if x.ndim != 3:
    raise ValueError(f"{path}: {key!r} has shape {x.shape}; expected an MS image (H, W, C).")
  if x.shape[-1] > 32 and x.shape[0] <= 32:  # stored band-first (C, H, W)
    x = np.moveaxis(x, 0, -1)
  return x


def _as_hw(x: np.ndarray, path: str, key: str) -> np.ndarray:
  x = np.squeeze(x)
  if x.ndim != 2:
    raise ValueError(f"{path}: {key!r} has shape {x.shape}; expected a PAN image (H, W).")
  return x


def _npz_geo(arrays: Mapping[str, np.ndarray], prefix: str) -> GeoInfo:
  """Georeferencing stored in an .npz: `crs_wkt` or `crs_epsg`, and `{ms,pan}_transform`."""
  crs = None
  if "crs_wkt" in arrays and str(np.asarray(arrays["crs_wkt"])).strip():
    crs = str(np.asarray(arrays["crs_wkt"]))
  elif "crs_epsg" in arrays and int(np.asarray(arrays["crs_epsg"])) > 0:
    crs = f"EPSG:{int(np.asarray(arrays['crs_epsg']))}"
  key = f"{prefix}_transform"
  transform = None
  if key in arrays and np.asarray(arrays[key]).size >= 6:
    transform = tuple(float(v) for v in np.asarray(arrays[key]).ravel()[:6])
  return GeoInfo(crs, transform)


def _band_names(arrays: Mapping[str, np.ndarray]) -> tuple[str, ...] | None:
  if "band_names" in arrays:
    return tuple(str(b) for b in np.asarray(arrays["band_names"]).ravel())
  return None


def read_image(path: str | os.PathLike[str], *, key: str | None = None, kind: str = "ms"
               ) -> tuple[np.ndarray, GeoInfo, tuple[str, ...] | None]:
  """One MS ((H, W, C)) or PAN ((H, W)) image from a GeoTIFF or an array file."""
  path = str(path)
  suffix = pathlib.Path(path).suffix.lower()
  if not pathlib.Path(path).is_file():
    raise FileNotFoundError(f"{path}: no such file (the {kind.upper()} image).")
  if suffix in GEOTIFF_SUFFIXES:
    data, geo, names = read_geotiff(path)
    if kind == "pan":
      return _as_hw(data, path, "band 1"), geo, None
    return data, geo, names
  if suffix not in ARRAY_SUFFIXES:
    raise ValueError(f"{path}: unsupported scene format {suffix!r}; use GeoTIFF "
                     f"({', '.join(GEOTIFF_SUFFIXES)}) or {', '.join(ARRAY_SUFFIXES)}.")
  arrays = _load_arrays(path)
  if kind == "pan":
    name, x = _pick(arrays, key, PAN_KEYS, (2, 3), "PAN", path)
    return _as_hw(x, path, name), _npz_geo(arrays, "pan"), None
  name, x = _pick(arrays, key, MS_KEYS, (3, 4), "MS", path)
  return _as_hwc(x, path, name), _npz_geo(arrays, "ms"), _band_names(arrays)


def read_scene(ms_path: str | os.PathLike[str], pan_path: str | os.PathLike[str] | None = None,
               *, ms_key: str | None = None, pan_key: str | None = None) -> Scene:
  """Reads an MS/PAN pair; `pan_path` None reads the PAN from the MS file (e.g. one .npz)."""
  ms, ms_geo, names = read_image(ms_path, key=ms_key, kind="ms")
  pan_file = ms_path if pan_path is None else pan_path
  pan, pan_geo, _ = read_image(pan_file, key=pan_key, kind="pan")
  for name, x, path in (("MS", ms, ms_path), ("PAN", pan, pan_file)):
    if not np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.complexfloating):
      raise ValueError(f"{path}: the {name} has dtype {x.dtype}; expected real numbers (DN).")
  sources = (str(ms_path),) if pan_path is None else (str(ms_path), str(pan_path))
  scene = Scene(ms=ms, pan=pan, ms_geo=ms_geo, pan_geo=pan_geo, band_names=names, sources=sources)
  _ = scene.ratio  # validates the sizes
  return scene
