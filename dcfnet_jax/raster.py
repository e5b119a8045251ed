"""The one GeoTIFF home: rasterio access, windowed reads, windowed tiled writes, profiles.

Used by the scene readers (`scenes`, for the dataset maker and sharpening) and the sharpening
writer. GeoTIFF support needs rasterio (`pip install 'dcfnet_jax[geo]'`), imported on first use
by `rasterio()`. Transforms are affine 6-tuples (a, b, c, d, e, f) in rasterio / affine order:
`x = a*col + b*row + c`, `y = d*col + e*row + f`, (col, row) = (0, 0) being the outer corner of
the upper-left pixel (GDAL's GeoTransform is (c, a, b, f, d, e)).
"""

from __future__ import annotations

import contextlib
import importlib
import os
import pathlib
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from dcfnet_jax import files
from dcfnet_jax.errors import InputError

GEOTIFF_SUFFIXES = (".tif", ".tiff", ".gtif")
BLOCK = 256  # tile size of written GeoTIFFs (and the row multiple writers flush at)

Transform = tuple[float, float, float, float, float, float]


def rasterio() -> Any:
  """The rasterio module, or an InputError saying how to install it."""
  try:
    return importlib.import_module("rasterio")
  except ImportError as e:
    raise InputError("GeoTIFF input/output needs rasterio: pip install 'dcfnet_jax[geo]'") from e


def is_geotiff(path: str | os.PathLike[str]) -> bool:
  return pathlib.Path(path).suffix.lower() in GEOTIFF_SUFFIXES


def _window(r0: int, r1: int, c0: int, c1: int) -> Any:
  return importlib.import_module("rasterio.windows").Window(c0, r0, c1 - c0, r1 - r0)


def same_crs(a: str, b: str) -> bool:
  """Whether two CRS strings (WKT, EPSG:n, ...) describe the same system."""
  if a == b:
    return True
  try:
    crs = importlib.import_module("rasterio.crs").CRS
    return crs.from_user_input(a) == crs.from_user_input(b)
  except Exception:  # pylint: disable=broad-except  (no rasterio, or an unparsable string)
    return False


def crs_label(crs: str) -> str:
  """A short name of a CRS for messages ("EPSG:32630"), or its text cut short."""
  try:
    epsg = importlib.import_module("rasterio.crs").CRS.from_user_input(crs).to_epsg()
    if epsg:
      return f"EPSG:{epsg}"
  except Exception:  # pylint: disable=broad-except  (no rasterio, or an unparsable string)
    pass
  return crs if len(crs) <= 60 else crs[:57] + "..."


class Reader:
  """An open GeoTIFF read window by window (bands as the last axis)."""

  def __init__(self, path: str | os.PathLike[str], what: str = "raster"):
    rio = rasterio()
    self.path = str(path)
    try:
      with warnings.catch_warnings():  # a plain TIFF without georeferencing is fine
        warnings.simplefilter("ignore", rio.errors.NotGeoreferencedWarning)
        self._f = rio.open(self.path)
    except rio.errors.RasterioIOError as e:
      raise InputError(f"{what} {self.path}: cannot be read as a raster: {e}") from e
    f = self._f
    self.count, self.height, self.width = f.count, f.height, f.width
    self.dtypes = tuple(np.dtype(d) for d in f.dtypes)
    self.crs = f.crs.to_wkt() if f.crs else None
    t = f.transform
    self.transform: Transform | None = None if t is None or t.is_identity else tuple(t)[:6]
    self.descriptions = tuple(f.descriptions)
    self.nodata = f.nodata

  def read(self, bands: Sequence[int], r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
    """(r1 - r0, c1 - c0, len(bands)) of the 0-based `bands`."""
    data = self._f.read([b + 1 for b in bands], window=_window(r0, r1, c0, c1))
    return np.moveaxis(data, 0, -1)

  def read_all(self) -> np.ndarray:
    return self.read(range(self.count), 0, self.height, 0, self.width)

  def close(self) -> None:
    self._f.close()

  def __enter__(self) -> Reader:
    return self

  def __exit__(self, *exc) -> None:
    self.close()


class Writer:
  """Writes rows of an (H, W, C) image into a new tiled, deflate-compressed GeoTIFF at `path`.

  Write into a temporary path (`files.atomic_path`) so that the result appears only when done.
  """

  def __init__(self, path: str | os.PathLike[str], *, height: int, width: int, count: int,
               dtype: Any, crs: str | None = None, transform: Transform | None = None,
               nodata: float | None = None, band_names: Sequence[str] | None = None):
    rio = rasterio()
    affine = importlib.import_module("affine")  # a rasterio dependency
    dtype = np.dtype(dtype)
    profile = dict(driver="GTiff", width=width, height=height, count=count, dtype=dtype.name,
                   tiled=True, blockxsize=BLOCK, blockysize=BLOCK, compress="deflate",
                   predictor=3 if dtype.kind == "f" else 2, BIGTIFF="IF_SAFER")
    if crs:
      profile["crs"] = crs
    if transform:
      profile["transform"] = affine.Affine(*transform)
    if nodata is not None:
      profile["nodata"] = nodata
    self.path = str(path)
    with warnings.catch_warnings(), self._errors("creating"):
      warnings.simplefilter("ignore", rio.errors.NotGeoreferencedWarning)
      self._dst = rio.open(path, "w", **profile)
    for i, name in enumerate(band_names or ()):
      if name:
        self._dst.set_band_description(i + 1, str(name))
    self.width = width

  @contextlib.contextmanager
  def _errors(self, doing: str) -> Iterator[None]:
    """GDAL's errors while writing (a full disk reads "Write error at scanline 0") as a
    `files.WriteError`; `files.atomic_path` then names the output and says what is kept."""
    try:
      yield
    except (OSError, importlib.import_module("rasterio._err").CPLE_BaseError,
            rasterio().errors.RasterioError) as e:
      reason = files.disk_full_reason(e) or f"GDAL: {e} (is the disk full?)"
      raise files.WriteError(f"{doing} the GeoTIFF {self.path} failed: {reason}", reason) from e

  def write(self, first: int, rows: np.ndarray) -> None:
    """Rows [first, first + len(rows)) of the image, (rows, W, C)."""
    with self._errors("writing"):
      self._dst.write(np.moveaxis(rows, -1, 0), window=_window(first, first + len(rows), 0,
                                                               self.width))

  def close(self) -> None:
    with self._errors("writing"):
      self._dst.close()
    self._check_complete()

  def _check_complete(self) -> None:
    """Every tile lies inside the written file. GDAL writes cached tiles when the file is
    closed and rasterio does not report a failure there (a full disk), so the tile table the
    file ended with is checked: cheap (no pixel is read), and a file cut short fails it."""
    size = os.path.getsize(self.path)
    rio = rasterio()
    with warnings.catch_warnings():
      warnings.simplefilter("ignore", rio.errors.NotGeoreferencedWarning)
      try:
        src = rio.open(self.path)
      except rio.errors.RasterioIOError as e:
        raise files.WriteError(f"the GeoTIFF {self.path} is unreadable after writing: {e}",
                               "GDAL could not complete the file (is the disk full?)") from e
    with src:
      bands = range(1, src.count + 1) if src.interleaving == rio.enums.Interleaving.band else [1]
      for band in bands:
        for (row, col), _ in src.block_windows(band):
          offset = int(src.get_tag_item(f"BLOCK_OFFSET_{col}_{row}", "TIFF", bidx=band) or 0)
          length = int(src.get_tag_item(f"BLOCK_SIZE_{col}_{row}", "TIFF", bidx=band) or 0)
          if offset <= 0 or offset + length > size:
            reason = (f"the file is incomplete: tile (row {row}, col {col}) of band {band} ends "
                      f"at byte {offset + length}, the file has {size} (is the disk full?)")
            raise files.WriteError(f"writing the GeoTIFF {self.path} failed: {reason}", reason)


@contextlib.contextmanager
def writing(path: str | os.PathLike[str], **profile: Any) -> Iterator[Writer]:
  """A `Writer` on a temporary file that becomes `path` (umask mode) when the block succeeds."""
  with files.atomic_path(path) as tmp:
    writer = Writer(tmp, **profile)
    try:
      yield writer
    finally:
      writer.close()


def write_geotiff(path: str | os.PathLike[str], image: np.ndarray, *, crs: str | None = None,
                  transform: Transform | None = None, band_names: Sequence[str] | None = None,
                  nodata: float | None = None) -> pathlib.Path:
  """Writes a whole (H, W) or (H, W, C) image as a GeoTIFF atomically; returns the path."""
  image = np.asarray(image)
  if image.ndim == 2:
    image = image[..., None]
  if image.ndim != 3:
    raise InputError(f"{path}: expected (H, W) or (H, W, C), got shape {image.shape}")
  with writing(path, height=image.shape[0], width=image.shape[1], count=image.shape[2],
               dtype=image.dtype, crs=crs, transform=transform, nodata=nodata,
               band_names=band_names) as writer:
    writer.write(0, image)
  return pathlib.Path(path)
