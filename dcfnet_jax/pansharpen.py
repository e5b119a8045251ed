"""Sharpen real scenes with a trained model: `python -m dcfnet_jax.pansharpen`.

  python -m dcfnet_jax.pansharpen --checkpoint CKPT --ms MS.tif --pan PAN.tif --out OUT.tif \
      [--sensor S] [--tile 256 --overlap 32 --batch-size 4] [--preview] [--reference REF] \
      [--assess] [--overwrite]

Inputs: a GeoTIFF MS/PAN pair, an .npz/.mat/.h5 scene (one file holding `ms` and `pan`, or
two files), or a PanCollection h5 test file alone (`--ms test.h5`: every image is sharpened and
`--out` is an h5 with `fused`, N,C,H,W, in the file's DN).

How a scene is sharpened (docs/pansharpen.md):
- It is padded virtually by `--pad` PAN pixels (symmetric reflection), cut into tiles of
  `--tile` pixels overlapping by at least `--overlap` (all multiples of 4, so each tile is a
  whole number of MS pixels), and the tile outputs are blended with cosine ramps normalised by
  their summed weights (`dcfnet_jax.tiling`). Memory is bounded by a few tile rows, whatever the
  scene size; GeoTIFFs are read and written window by window.
- lms = interp23tap(ms, 4) of the *whole scene* (circular borders, as the MATLAB toolbox), made
  per tile from an MS window with `LMS_MARGIN` pixels of context, which is exact; mms =
  make_mms(ms tile) per tile, as in training.
- The tiles run through the jitted eval-mode model in batches sharded over all local devices;
  values are divided by img_range, lms is added when the checkpoint is residual, multiplied back,
  and rounded/clipped to the input dtype for integer data.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import logging
import math
import os
import pathlib
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dcfnet_jax import imaging, sharding, tiling
from dcfnet_jax.models import dcfnet

log = logging.getLogger("dcfnet_jax.pansharpen")

RATIO = 4  # DCFNet's fixed PAN/MS ratio (mms at 1/2, ms at 1/4 of the PAN size)
# MS pixels of context around a tile for its lms: interp23tap (ratio 4, two 23-tap passes)
# reaches 9 MS pixels; 12 leaves room, and the tests check per-tile == whole-scene lms.
LMS_MARGIN = 12
GEOTIFF_SUFFIXES = (".tif", ".tiff", ".gtif")
H5_SUFFIXES = (".h5", ".hdf5")
OUTPUT_SUFFIXES = GEOTIFF_SUFFIXES + (".npz",) + H5_SUFFIXES
GEOTIFF_BLOCK = 256
DEFAULT_TILE = 256
DEFAULT_OVERLAP = 32
DEFAULT_TRIM = 8
DEFAULT_PAD = 32
DEFAULT_CROP = 1024


class InputError(ValueError):
  """Bad user input (files, shapes, georeferencing, values, flags): the CLI prints it, exits 2."""


# ---------------------------------------------------------------------------------------------
# The model


@dataclasses.dataclass
class LoadedModel:
  """An eval-mode model and what the checkpoint says about it."""

  model: Any  # nnx.Module in eval mode
  num_bands: int
  residual: bool
  img_range: float
  bits: int
  sensor: str
  name: str
  source: str
  metadata: dict[str, Any]


def load_model(path: str | os.PathLike[str]) -> LoadedModel:
  """Loads an exported parameters file (.npz) or an Orbax checkpoint (workdir / step dir).

  For a workdir or checkpoints directory the best step by the run's validation metric is used
  (the latest when no step has metrics); a step directory `<...>/checkpoints/<step>` picks one.
  """
  from dcfnet_jax import checkpoint as ckpt_lib  # pylint: disable=g-import-not-at-top

  path = pathlib.Path(path)
  if not path.exists():
    raise InputError(f"--checkpoint {path}: no such file or directory (expected an exported "
                     ".npz or a training workdir / checkpoint directory)")
  if path.is_file():
    try:
      model, meta = ckpt_lib.load_exported(path)
    except (ValueError, KeyError, OSError) as e:
      raise InputError(f"--checkpoint {path}: cannot be loaded: {e}") from e
  else:
    model, meta = _load_orbax(path)
  img_range = float(meta.get("img_range", 0) or 0)
  if img_range <= 0:
    raise InputError(f"--checkpoint {path}: the metadata has no img_range; pass --img-range")
  return LoadedModel(model=model, num_bands=int(meta["num_bands"]), residual=bool(meta["residual"]),
                     img_range=img_range, bits=int(meta.get("bits", 0) or 0),
                     sensor=str(meta.get("sensor", "none")), name=str(meta.get("model", "?")),
                     source=str(path), metadata=dict(meta))


def _load_orbax(path: pathlib.Path) -> tuple[Any, dict[str, Any]]:
  """(eval model, metadata) from an Orbax training checkpoint, via the training code's helpers."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  from dcfnet_jax import checkpoint as ckpt_lib  # pylint: disable=g-import-not-at-top
  from dcfnet_jax import train  # pylint: disable=g-import-not-at-top

  directory, step = ckpt_lib.find_checkpoint(path)
  try:
    manager = ckpt_lib.Checkpoints(directory, _config_for_reading(), read_only=True)
  except (FileNotFoundError, ValueError) as e:
    raise InputError(f"--checkpoint {path}: not an exported .npz nor a checkpoint directory: {e}"
                     ) from e
  try:
    latest = manager.latest_step()
    if latest is None:
      raise InputError(f"--checkpoint {path}: no complete checkpoint in {directory}")
    config = ml_collections.ConfigDict(manager.restore_config(latest))
    if step is None:  # the best step by the run's own validation metric
      manager.close()
      manager = ckpt_lib.Checkpoints(directory, config, read_only=True)
      step = manager.best_step()
      step = latest if step is None else step
      config = ml_collections.ConfigDict(manager.restore_config(step))
    log.info("Loading step %d of %s.", step, directory)
    spec = train.model_spec(config)
    total = int(config.num_train_steps) if config.num_train_steps > 0 else 1
    tx, _ = train.make_optimizer(config, total)
    mesh = sharding.make_mesh(jax.local_devices()[:1])
    state, _ = train.restore_train_state(manager, step,
                                         train.abstract_train_state(config, tx, mesh))
  finally:
    manager.close()
  params, model_state = jax.device_get((state.params, state.model_state))
  model = train.merge_model(spec, params, model_state, train=False)
  meta = ckpt_lib.metadata_from_config(config, spec.residual, step=int(step),
                                       source=str(directory))
  return model, meta


def _config_for_reading():
  from dcfnet_jax import config_lib  # pylint: disable=g-import-not-at-top
  return config_lib.get_config("default")


# ---------------------------------------------------------------------------------------------
# Scenes: windowed access to PAN, MS (and lms for PanCollection files)


@dataclasses.dataclass
class SceneInfo:
  """What the writer needs to know about a scene's inputs."""

  name: str  # for messages
  pan_shape: tuple[int, int]
  ms_shape: tuple[int, int, int]
  dtype: np.dtype  # MS dtype = output dtype
  pan_dtype: np.dtype
  crs: str | None = None  # of the PAN (the output grid)
  pan_transform: tuple[float, ...] | None = None
  ms_transform: tuple[float, ...] | None = None
  band_names: tuple[str, ...] | None = None
  ms_nodata: float | None = None
  pan_nodata: float | None = None

  @property
  def nodata(self) -> float | None:
    return self.ms_nodata if self.ms_nodata is not None else self.pan_nodata


class Scene:
  """Windowed reads of one scene; subclasses hold arrays or open GeoTIFFs."""

  info: SceneInfo
  has_lms = False
  ms_crs: str | None = None  # the MS's CRS (info.crs is the PAN's)

  def read_pan(self, r0: int, r1: int, c0: int, c1: int) -> np.ndarray:  # (h, w)
    raise NotImplementedError

  def read_ms(self, r0: int, r1: int, c0: int, c1: int) -> np.ndarray:  # (h, w, C)
    raise NotImplementedError

  def read_lms(self, r0: int, r1: int, c0: int, c1: int) -> np.ndarray:  # (h, w, C)
    raise NotImplementedError(f"{self.info.name} has no stored lms")

  def row_blocks(self, which: str, rows: int = 512) -> Iterator[np.ndarray]:
    """The whole MS or PAN image in blocks of rows (for value scans of any size)."""
    height, width = self.info.pan_shape if which == "pan" else self.info.ms_shape[:2]
    read = self.read_pan if which == "pan" else self.read_ms
    for r in range(0, height, rows):
      yield read(r, min(r + rows, height), 0, width)

  def close(self) -> None:
    pass

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


class ArrayScene(Scene):
  """A scene held in memory (.npz/.mat/.h5 files, PanCollection images, tests)."""

  def __init__(self, ms: np.ndarray, pan: np.ndarray, info: SceneInfo,
               lms: np.ndarray | None = None, bands: Sequence[int] | None = None):
    self._ms, self._pan, self._lms = ms, pan, lms
    self._bands = None if bands is None else list(bands)
    self.info = info
    self.has_lms = lms is not None
    self.ms_crs: str | None = None  # when it may differ from info.crs (the PAN's)

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
  """An MS/PAN GeoTIFF pair read window by window through rasterio."""

  def __init__(self, ms_path: str, pan_path: str, bands: Sequence[int] | None = None):
    self._files = []
    try:
      self._setup(ms_path, pan_path, bands)
    except BaseException:
      self.close()
      raise

  def _setup(self, ms_path: str, pan_path: str, bands: Sequence[int] | None) -> None:
    rasterio = _rasterio()
    self._ms = self._open(rasterio, ms_path, "MS")
    self._pan = self._open(rasterio, pan_path, "PAN")
    if self._pan.count != 1:
      raise InputError(f"--pan {pan_path}: has {self._pan.count} bands; a PAN image has 1")
    count = self._ms.count
    self._indexes = list(range(1, count + 1)) if bands is None else [b + 1 for b in bands]
    dtypes = {self._ms.dtypes[i - 1] for i in self._indexes}
    if len(dtypes) != 1:
      raise InputError(f"--ms {ms_path}: the bands have different dtypes {sorted(dtypes)}")
    descriptions = [self._ms.descriptions[i - 1] for i in self._indexes]
    self.info = SceneInfo(
        name=f"{ms_path} + {pan_path}", pan_shape=(self._pan.height, self._pan.width),
        ms_shape=(self._ms.height, self._ms.width, len(self._indexes)),
        dtype=np.dtype(dtypes.pop()), pan_dtype=np.dtype(self._pan.dtypes[0]),
        crs=self._pan.crs.to_wkt() if self._pan.crs else None,
        pan_transform=_transform_or_none(self._pan),
        ms_transform=_transform_or_none(self._ms),
        band_names=tuple(d or "" for d in descriptions) if any(descriptions) else None,
        ms_nodata=self._ms.nodata, pan_nodata=self._pan.nodata)
    self.ms_crs = self._ms.crs.to_wkt() if self._ms.crs else None

  def _open(self, rasterio, path: str, what: str):
    try:
      f = rasterio.open(path)
    except rasterio.errors.RasterioIOError as e:
      raise InputError(f"--{what.lower()} {path}: cannot be read as a raster: {e}") from e
    self._files.append(f)
    return f

  def _window(self, r0, r1, c0, c1):
    from rasterio.windows import Window  # pylint: disable=g-import-not-at-top
    return Window(c0, r0, c1 - c0, r1 - r0)

  def read_pan(self, r0, r1, c0, c1):
    return self._pan.read(1, window=self._window(r0, r1, c0, c1))

  def read_ms(self, r0, r1, c0, c1):
    return np.moveaxis(self._ms.read(self._indexes, window=self._window(r0, r1, c0, c1)), 0, -1)

  def close(self):
    for f in self._files:
      f.close()
    self._files = []


def _rasterio():
  try:
    import rasterio  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise InputError("GeoTIFF input/output needs rasterio: pip install 'dcfnet_jax[geo]'") from e
  return rasterio


def _transform_or_none(dataset) -> tuple[float, ...] | None:
  t = dataset.transform
  return None if t is None or t.is_identity else tuple(t)[:6]


def _parse_bands(bands: str | None, count: int, where: str) -> list[int] | None:
  """'--bands 2,3,4,5' (1-based, GDAL style) -> 0-based indices, checked against `count`."""
  if not bands:
    return None
  try:
    out = [int(b) - 1 for b in bands.split(",") if b.strip()]
  except ValueError as e:
    raise InputError(f"--bands {bands!r}: expected comma-separated band numbers (1-based)") from e
  bad = [b + 1 for b in out if not 0 <= b < count]
  if not out or bad:
    raise InputError(f"--bands {bands!r}: {where} has bands 1..{count}; {bad or 'none'} chosen")
  return out


def open_scene(ms_path: str, pan_path: str | None = None, *, bands: str | None = None,
               ms_key: str | None = None, pan_key: str | None = None) -> Scene:
  """A GeoTIFF pair (windowed), or a scene from .npz/.mat/.h5 (in memory, via data.scenes)."""
  for what, p in (("ms", ms_path), ("pan", pan_path)):
    if p is not None and not pathlib.Path(p).is_file():
      raise InputError(f"--{what} {p}: no such file")
  suffix = pathlib.Path(ms_path).suffix.lower()
  pan_suffix = pathlib.Path(pan_path).suffix.lower() if pan_path else suffix
  if suffix in GEOTIFF_SUFFIXES or pan_suffix in GEOTIFF_SUFFIXES:
    if pan_path is None:
      raise InputError(f"--ms {ms_path} is a GeoTIFF: give the PAN GeoTIFF with --pan")
    if not (suffix in GEOTIFF_SUFFIXES and pan_suffix in GEOTIFF_SUFFIXES):
      raise InputError(f"--ms {ms_path} and --pan {pan_path}: give two GeoTIFFs, or two array "
                       "files, not one of each")
    rasterio = _rasterio()
    try:
      with rasterio.open(ms_path) as f:
        count = f.count
    except rasterio.errors.RasterioIOError as e:
      raise InputError(f"--ms {ms_path}: cannot be read as a raster: {e}") from e
    return GeoTiffScene(ms_path, pan_path, _parse_bands(bands, count, ms_path))

  from dcfnet_jax.data import scenes  # pylint: disable=g-import-not-at-top
  try:
    scene = scenes.read_scene(ms_path, pan_path, ms_key=ms_key, pan_key=pan_key)
  except (KeyError, ValueError, OSError) as e:
    raise InputError(f"cannot read the scene: {e}") from e
  idx = _parse_bands(bands, scene.ms.shape[-1], ms_path)
  names = scene.band_names
  if idx is not None and names:
    names = tuple(names[b] for b in idx)
  info = SceneInfo(
      name=" + ".join(scene.sources), pan_shape=tuple(scene.pan.shape[:2]),
      ms_shape=tuple(scene.ms.shape[:2]) + (len(idx) if idx else scene.ms.shape[-1],),
      dtype=scene.ms.dtype, pan_dtype=scene.pan.dtype,
      crs=scene.pan_geo.crs or scene.ms_geo.crs,
      pan_transform=scene.pan_geo.transform, ms_transform=scene.ms_geo.transform,
      band_names=names)
  out = ArrayScene(scene.ms, scene.pan, info, bands=idx)
  out.ms_crs = scene.ms_geo.crs
  return out


# ---------------------------------------------------------------------------------------------
# Input validation


def check_coregistration(info: SceneInfo, ratio: int = RATIO, ms_crs: str | None = None) -> None:
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
  if ms_crs and info.crs and not _same_crs(ms_crs, info.crs):
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


def _same_crs(a: str, b: str) -> bool:
  if a == b:
    return True
  try:
    from rasterio.crs import CRS  # pylint: disable=g-import-not-at-top
    return CRS.from_user_input(a) == CRS.from_user_input(b)
  except Exception:  # pylint: disable=broad-except  (no rasterio, or an unparsable string)
    return False


SUPPORTED_KINDS = "uif"


def check_values(scene: Scene, img_range: float, bits: int = 0, nodata: float | None = None
                 ) -> dict[str, tuple[float, float]]:
  """Checks dtypes and the value range of MS and PAN against the checkpoint's img_range.

  Errors: non-numeric or complex dtypes, negative values, NaN/inf, values above 1.05 x
  img_range (data with more bits than the model was trained on), data already scaled to [0, 1].
  Returns {"ms": (min, max), "pan": (min, max)} over valid (non-nodata) pixels.
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
  peak = max(stats["ms"][1], stats["pan"][1])
  low = min(stats["ms"][0], stats["pan"][0])
  if low < 0:
    raise InputError(f"{info.name}: negative values (min {low:g}); the model expects DN >= 0")
  if img_range > 1.5 and peak <= 1.0:
    raise InputError(f"{info.name}: values look scaled to [0, 1] (max {peak:g}) but the model "
                     f"expects DN and divides by img_range = {img_range:g}; pass DN")
  if peak > 1.05 * img_range:
    which = "MS" if stats["ms"][1] >= stats["pan"][1] else "PAN"
    raise InputError(
        f"{info.name}: the {which} reaches {peak:g} DN, more than the checkpoint's img_range "
        f"{img_range:g}{f' ({bits}-bit)' if bits else ''}: these data have a different "
        "radiometric scale than the training data (rescale them, or use a model trained on "
        "them; --img-range overrides the range at your own risk)")
  if peak < 0.25 * img_range:
    log.warning("%s: the largest value is %g, far below img_range %g: are these data of the same "
                "bit depth as the training data?", info.name, peak, img_range)
  return stats


# ---------------------------------------------------------------------------------------------
# Tile inputs and the jitted network


def tile_indices(tile: tiling.Tile, grid: tiling.TileGrid, info: SceneInfo
                 ) -> tuple[np.ndarray, np.ndarray]:
  """Scene PAN rows and cols of a (padded-grid) tile, reflected at the borders."""
  (h, w), pad = info.pan_shape, grid.pad
  rows = tiling.symmetric_index(tile.row - pad + np.arange(tile.height), h)
  cols = tiling.symmetric_index(tile.col - pad + np.arange(tile.width), w)
  return rows, cols


def lms_window(scene: Scene, rows: np.ndarray, cols: np.ndarray, margin: int = LMS_MARGIN
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, int]:
  """The MS window whose interp23tap gives the whole-scene lms at PAN `rows` x `cols`.

  Returns (window (nr, nc, C) raw, MS row/col indices of the window, its origin (a0, b0) in
  MS pixels). The window spans the tile's MS pixels plus `margin` on each side, wrapped
  circularly at the scene borders as the toolbox's interp23tap wraps, so that
  `interp23tap(window)[4*(r//4 - a0) + r%4 ...]` equals the whole-scene lms exactly.
  The window size depends only on the tile size (reflection never widens an index range).
  """
  mh, mw = scene.info.ms_shape[:2]
  nr = len(rows) // RATIO + 2 * margin
  nc = len(cols) // RATIO + 2 * margin
  a0 = int(rows.min()) // RATIO - margin
  b0 = int(cols.min()) // RATIO - margin
  wr = tiling.wrap_index(a0 + np.arange(nr), mh)
  wc = tiling.wrap_index(b0 + np.arange(nc), mw)
  return tiling.gather_2d(scene.read_ms, wr, wc), wr, wc, a0, b0


def _network(state, pan, lms, ms, *, graphdef, img_range: float, residual: bool):
  """Eval-mode model on scaled inputs; returns DN (x img_range), lms added when residual."""
  model = nnx.merge(graphdef, state)
  out = model(pan, lms, dcfnet.make_mms(ms), ms)
  if residual:
    out = out + lms
  return out * jnp.float32(img_range)


def _scaled(x, img_range: float):
  return x.astype(jnp.float32) / jnp.float32(img_range)


@functools.partial(jax.jit, static_argnames=("graphdef", "img_range", "residual"))
def _run_from_window(state, pan, window, lms_rows, lms_cols, ms_rows, ms_cols, *, graphdef,
                     img_range: float, residual: bool):
  """Tiles whose lms is interp23tap of an MS window (see `lms_window`), made on device."""
  window = _scaled(window, img_range)
  full = imaging.interp23tap(window, RATIO)
  take = jax.vmap(lambda x, r, c: x[r][:, c])
  return _network(state, _scaled(pan, img_range)[..., None], take(full, lms_rows, lms_cols),
                  take(window, ms_rows, ms_cols), graphdef=graphdef, img_range=img_range,
                  residual=residual)


@functools.partial(jax.jit, static_argnames=("graphdef", "img_range", "residual"))
def _run_from_lms(state, pan, lms, ms, *, graphdef, img_range: float, residual: bool):
  """Tiles with a stored lms (PanCollection files)."""
  return _network(state, _scaled(pan, img_range)[..., None], _scaled(lms, img_range),
                  _scaled(ms, img_range), graphdef=graphdef, img_range=img_range,
                  residual=residual)


class TileRunner:
  """Runs batches of tiles through the jitted eval-mode model on all local devices.

  The tile batch is sharded over a 1-D mesh of the local devices; the global batch is
  `batch_size` rounded up to a multiple of the device count, and short batches are padded.
  The jitted functions are module-level (the graph definition is a static argument), so runs
  with the same architecture and tile shape reuse one compilation.
  """

  def __init__(self, loaded: LoadedModel, batch_size: int, *, precision: str = "highest",
               devices: Sequence[Any] | None = None):
    if batch_size < 1:
      raise InputError(f"--batch-size must be >= 1, got {batch_size}")
    self.loaded = loaded
    devices = list(jax.local_devices() if devices is None else devices)
    self.mesh = sharding.make_mesh(devices)
    self.num_devices = len(devices)
    self.batch_size = -(-batch_size // self.num_devices) * self.num_devices
    self._batch_sharding = sharding.batch_sharding(self.mesh)
    loaded.model.eval()
    self._graphdef, state = nnx.split(loaded.model)
    self._state = sharding.replicate(state, self.mesh)
    self._precision = precision
    self._static = dict(graphdef=self._graphdef, img_range=float(loaded.img_range),
                        residual=bool(loaded.residual))

  def batch_for(self, num_tiles: int) -> int:
    """Tiles per call for a grid of `num_tiles`: `batch_size`, or fewer for small grids (one
    call, no padding beyond the device count; e.g. one 256x256 test image = one tile)."""
    return min(self.batch_size, -(-num_tiles // self.num_devices) * self.num_devices)

  def _put(self, arrays: dict[str, np.ndarray], batch: int) -> dict[str, Any]:
    out = {}
    for key, x in arrays.items():
      if x.shape[0] < batch:  # pad the last batch (one compiled shape per grid)
        x = np.concatenate([x, np.zeros((batch - x.shape[0],) + x.shape[1:], x.dtype)])
      out[key] = jax.device_put(x, self._batch_sharding)
    return out

  def gather(self, scene: Scene, grid: tiling.TileGrid, tiles: Sequence[tiling.Tile]
             ) -> dict[str, np.ndarray]:
    """Host-side inputs of a batch of tiles (raw dtypes; scaling happens on device)."""
    batch: dict[str, list[np.ndarray]] = {}
    for tile in tiles:
      rows, cols = tile_indices(tile, grid, scene.info)
      item = {"pan": tiling.gather_2d(scene.read_pan, rows, cols)}
      if scene.has_lms:
        item["lms"] = tiling.gather_2d(scene.read_lms, rows, cols)
        item["ms"] = tiling.gather_2d(scene.read_ms, rows[::RATIO] // RATIO,
                                      cols[::RATIO] // RATIO)
      else:
        window, _, _, a0, b0 = lms_window(scene, rows, cols)
        item.update(window=window,
                    lms_rows=(rows - RATIO * a0).astype(np.int32),
                    lms_cols=(cols - RATIO * b0).astype(np.int32),
                    ms_rows=(rows[::RATIO] // RATIO - a0).astype(np.int32),
                    ms_cols=(cols[::RATIO] // RATIO - b0).astype(np.int32))
      for key, value in item.items():
        if value.dtype.kind == "f":  # NaN nodata would spread over the receptive field
          value = np.nan_to_num(value, nan=0.0, posinf=0.0, neginf=0.0)
        batch.setdefault(key, []).append(value)
    return {k: np.stack(v) for k, v in batch.items()}

  def submit(self, arrays: dict[str, np.ndarray], batch: int | None = None):
    """Starts the network on a gathered batch; returns (device array, n) without waiting.

    The batch is padded to `batch` tiles (default: `batch_for(n)`), a multiple of the device
    count.
    """
    n = len(arrays["pan"])
    batch = self.batch_for(n) if batch is None else batch
    if n > batch or batch % self.num_devices:
      raise ValueError(f"{n} tiles in a batch of {batch} on {self.num_devices} devices")
    d = self._put(arrays, batch)
    with jax.default_matmul_precision(self._precision):
      if "window" in d:
        out = _run_from_window(self._state, d["pan"], d["window"], d["lms_rows"], d["lms_cols"],
                               d["ms_rows"], d["ms_cols"], **self._static)
      else:
        out = _run_from_lms(self._state, d["pan"], d["lms"], d["ms"], **self._static)
    return out, n

  @staticmethod
  def fetch(handle) -> np.ndarray:
    out, n = handle
    return np.asarray(out)[:n]


# ---------------------------------------------------------------------------------------------
# Sharpening one scene


@dataclasses.dataclass(frozen=True)
class TilingOptions:
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


def sharpen_scene(scene: Scene, runner: TileRunner, options: TilingOptions,
                  emit: Callable[[int, np.ndarray], None], *, flush_multiple: int = RATIO,
                  progress: bool = True, label: str = "") -> dict[str, float]:
  """Sharpens `scene` tile by tile; `emit(first_row, rows)` gets blended float32 DN rows.

  Returns timing facts (seconds, tiles, PAN Mpixel/s).
  """
  height, width = scene.info.pan_shape
  options.validate()
  grid = options.grid(height, width)
  bar = _progress(grid.num_tiles, label or scene.info.name, enabled=progress)
  start = time.perf_counter()

  batch = runner.batch_for(grid.num_tiles)

  def submit(tiles):
    return runner.submit(runner.gather(scene, grid, tiles), batch)

  def on_batch(done: int) -> None:
    elapsed = max(time.perf_counter() - start, 1e-9)
    bar(done, height * width * done / grid.num_tiles / elapsed / 1e6)

  tiling.blend_tiles(grid, submit, scene.info.ms_shape[-1], batch, emit,
                     fetch=runner.fetch, flush_multiple=math.lcm(flush_multiple, RATIO),
                     on_batch=on_batch)
  elapsed = time.perf_counter() - start
  bar(None, 0.0)
  return dict(seconds=elapsed, tiles=grid.num_tiles, tile_height=grid.tile_height,
              tile_width=grid.tile_width, mpixels_per_s=height * width / elapsed / 1e6)


def _progress(total: int, label: str, enabled: bool) -> Callable[[int | None, float], None]:
  """A progress callback: tqdm bar when available, log lines otherwise."""
  if not enabled:
    return lambda done, rate: None
  try:
    from tqdm import tqdm  # pylint: disable=g-import-not-at-top
  except ImportError:
    tqdm = None
  if tqdm is not None:
    bar = tqdm(total=total, desc=label[-40:], unit="tile", dynamic_ncols=True, file=sys.stderr)

    def update(done, rate):
      if done is None:
        bar.close()
        return
      bar.update(done - bar.n)
      bar.set_postfix_str(f"{rate:.3f} Mpx/s")
    return update
  last = [-1.0]

  def log_line(done, rate):
    if done is None:
      return
    if done == total or time.monotonic() - last[0] > 10:
      last[0] = time.monotonic()
      log.info("%s: %d/%d tiles, %.3f Mpixel/s (PAN)", label, done, total, rate)
  return log_line


def to_output_dtype(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
  """Float DN -> `dtype`: rounded and clipped to the dtype's range for integer types."""
  dtype = np.dtype(dtype)
  if dtype.kind in "ui":
    info = np.iinfo(dtype)
    return np.clip(np.rint(values), info.min, info.max).astype(dtype)
  return values.astype(dtype if dtype.kind == "f" else np.float32)


def nodata_mask(scene: Scene, first: int, count: int, nodata: float | None) -> np.ndarray | None:
  """(count, W) True where the PAN or any MS band of rows [first, first+count) is nodata."""
  info = scene.info
  pan_nd = info.pan_nodata if nodata is None else nodata
  ms_nd = info.ms_nodata if nodata is None else nodata
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
                  nodata: float | None, nodata_override: float | None = None) -> np.ndarray:
  """Converts blended rows to the output dtype and writes `nodata` where inputs are nodata.

  Valid pixels that would round to the nodata value are moved one DN away from it (integers).
  """
  out = to_output_dtype(rows, dtype)
  if nodata is None:
    return out
  mask = nodata_mask(scene, first, len(rows), nodata_override)
  if np.dtype(dtype).kind in "ui" and not np.isnan(nodata):
    clash = out == nodata
    if clash.any():
      info = np.iinfo(dtype)
      out[clash] = nodata + 1 if nodata < info.max else nodata - 1
  if mask is not None:
    out[mask] = nodata
  return out


# ---------------------------------------------------------------------------------------------
# Output files (written to a temporary file in the same folder, then renamed)


def check_output_path(out: str, inputs: Sequence[str | None], overwrite: bool) -> pathlib.Path:
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


@contextlib.contextmanager
def atomic_path(path: pathlib.Path) -> Iterator[pathlib.Path]:
  """Yields a temp path beside `path`; renames it to `path` on success, deletes it on failure."""
  fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
  os.close(fd)
  tmp_path = pathlib.Path(tmp)
  try:
    yield tmp_path
    os.replace(tmp_path, path)
  except BaseException:
    tmp_path.unlink(missing_ok=True)
    raise


class GeoTiffWriter:
  """Writes rows of a (H, W, C) image into an open, tiled, deflate-compressed GeoTIFF."""

  def __init__(self, path: pathlib.Path, info: SceneInfo, dtype: np.dtype,
               nodata: float | None):
    rasterio = _rasterio()
    from affine import Affine  # pylint: disable=g-import-not-at-top  (a rasterio dependency)

    height, width = info.pan_shape
    profile = dict(driver="GTiff", width=width, height=height, count=info.ms_shape[-1],
                   dtype=np.dtype(dtype).name, tiled=True, blockxsize=GEOTIFF_BLOCK,
                   blockysize=GEOTIFF_BLOCK, compress="deflate",
                   predictor=3 if np.dtype(dtype).kind == "f" else 2, BIGTIFF="IF_SAFER")
    if info.crs:
      profile["crs"] = info.crs
    if info.pan_transform:
      profile["transform"] = Affine(*info.pan_transform)
    if nodata is not None:
      profile["nodata"] = nodata
    with warnings.catch_warnings():
      warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
      self._dst = rasterio.open(path, "w", **profile)
    if info.band_names:
      for i, name in enumerate(info.band_names):
        if name:
          self._dst.set_band_description(i + 1, str(name))
    self.width = width

  def write(self, first: int, rows: np.ndarray) -> None:
    from rasterio.windows import Window  # pylint: disable=g-import-not-at-top
    self._dst.write(np.moveaxis(rows, -1, 0), window=Window(0, first, self.width, len(rows)))

  def close(self) -> None:
    self._dst.close()


class ArrayWriter:
  """Collects rows into an in-memory (H, W, C) array (for .npz/.h5 outputs and h5 mode)."""

  def __init__(self, height: int, width: int, channels: int, dtype: np.dtype):
    self.array = np.zeros((height, width, channels), dtype)

  def write(self, first: int, rows: np.ndarray) -> None:
    self.array[first:first + len(rows)] = rows

  def close(self) -> None:
    pass


def _write_array_output(path: pathlib.Path, tmp: pathlib.Path, fused: np.ndarray,
                        info: SceneInfo, nodata: float | None) -> None:
  """The scene result as .npz ((H, W, C) + georeferencing) or .h5 (`fused`, 1,C,H,W)."""
  if path.suffix.lower() == ".npz":
    extra: dict[str, Any] = {}
    if info.crs:
      extra["crs_wkt"] = np.asarray(info.crs)
    if info.pan_transform:
      extra["transform"] = np.asarray(info.pan_transform, np.float64)
    if info.band_names:
      extra["band_names"] = np.asarray(info.band_names)
    if nodata is not None:
      extra["nodata"] = np.asarray(nodata)
    with open(tmp, "wb") as f:
      np.savez(f, fused=fused, **extra)
  else:
    _save_h5(tmp, {"fused": np.moveaxis(fused, -1, 0)[None]})


def _save_h5(path: pathlib.Path, arrays: dict[str, np.ndarray]) -> None:
  import h5py  # pylint: disable=g-import-not-at-top
  with h5py.File(path, "w") as f:
    for key, value in arrays.items():
      f.create_dataset(key, data=value)


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
                  reference: np.ndarray | None = None) -> pathlib.Path:
  """PNG: true colour of lms | result (| |result - reference| with colour bar)."""
  from dcfnet_jax import previews  # pylint: disable=g-import-not-at-top

  bounds = previews.stretch_bounds(lms, rgb)
  big = functools.partial(previews.upscale, min_size=256)  # small crops: nearest x k
  panels = [big(previews.true_color(x, rgb, bounds)) for x in (lms, fused)]
  titles = ["input MS upsampled (lms)", "pansharpened"]
  if reference is not None:
    err, vmax = previews.error_map(fused, reference)
    err = big(err)
    bar = previews.colorbar(err.shape[0], 0.0, vmax)
    gap = np.full((err.shape[0], 4, 3), 255, np.uint8)
    panels.append(np.concatenate([err, gap, bar], axis=1))
    titles.append("|result - ref| (DN, band mean)")
  return previews.save_png(path, previews.tile(panels, titles))


def assess(fused: np.ndarray, ms: np.ndarray, pan: np.ndarray, lms: np.ndarray, sensor: str,
           bits: int) -> dict[str, float]:
  """Full-resolution indexes (D_lambda, D_s, QNR, D_lambda_K, HQNR) of one DN image."""
  from dcfnet_jax import metrics  # pylint: disable=g-import-not-at-top

  with jax.enable_x64(True):  # the toolbox computes in double (metric_definitions.md §4, item 11)
    values = metrics.full_resolution_indexes(
        fused[None], ms[None], pan[None, ..., None], sensor=sensor, ratio=RATIO, bits=bits,
        thvalues=False, lms=lms[None])
    order = ("D_lambda", "D_s", "QNR", "D_lambda_K", "HQNR")
    keys = [k for k in order if k in values] + [k for k in values if k not in order]
    return {k: float(np.asarray(values[k]).reshape(-1)[0]) for k in keys}


# ---------------------------------------------------------------------------------------------
# Whole runs


@dataclasses.dataclass
class RunOptions:
  """Everything a run needs besides the model (the CLI flags)."""

  ms: str
  out: str
  pan: str | None = None
  sensor: str | None = None
  tiling: TilingOptions = TilingOptions()
  batch_size: int = 4
  preview: bool = False
  reference: str | None = None
  assess: bool = False
  crop: int = DEFAULT_CROP
  overwrite: bool = False
  bands: str | None = None
  nodata: float | None = None
  ms_key: str | None = None
  pan_key: str | None = None
  progress: bool = True


def is_pancollection_file(ms: str, pan: str | None) -> bool:
  """An h5 file given alone whose `ms` is N,C,h,w: every image of it is sharpened."""
  suffix = pathlib.Path(ms).suffix.lower()
  return pan is None and suffix in H5_SUFFIXES and _looks_like_pancollection(ms)


def _looks_like_pancollection(path: str) -> bool:
  import h5py  # pylint: disable=g-import-not-at-top
  try:
    with h5py.File(path, "r") as f:
      return all(k in f for k in ("ms", "pan")) and f["ms"].ndim == 4
  except OSError:
    return False


def _sidecar(out: pathlib.Path, suffix: str) -> pathlib.Path:
  return out.with_name(out.stem + suffix)


def run_scene(loaded: LoadedModel, runner: TileRunner, opts: RunOptions) -> dict[str, Any]:
  """Sharpens one scene into `opts.out` (GeoTIFF, .npz or .h5); returns a summary dict."""
  out = check_output_path(opts.out, [opts.ms, opts.pan, opts.reference], opts.overwrite)
  scene = open_scene(opts.ms, opts.pan, bands=opts.bands, ms_key=opts.ms_key, pan_key=opts.pan_key)
  with scene:
    info = scene.info
    if opts.nodata is not None:
      info.ms_nodata = info.pan_nodata = float(opts.nodata)
    check_coregistration(info, RATIO, scene.ms_crs)
    if info.ms_shape[-1] != loaded.num_bands:
      raise InputError(
          f"{info.name}: the MS has {info.ms_shape[-1]} bands but the checkpoint "
          f"{loaded.source} is a {loaded.num_bands}-band model; choose bands with --bands "
          "(1-based, e.g. --bands 2,3,4,5)")
    stats = check_values(scene, loaded.img_range, loaded.bits)
    sensor = opts.sensor or loaded.sensor
    rgb = _rgb_bands(sensor, loaded.num_bands)
    height, width = info.pan_shape
    crop = reference = None
    if opts.preview or opts.assess or opts.reference:
      if opts.crop < (32 if opts.assess else RATIO):
        raise InputError(f"--crop {opts.crop} is too small (at least 32 for --assess)")
      crop = central_crop(height, width, opts.crop, 32 if opts.assess else RATIO)
    if opts.reference:  # read (and checked) before the long part
      reference = _read_reference(opts.reference, info, loaded.num_bands, opts.bands)
    collector = CropCollector(crop, info.ms_shape[-1]) if crop else None
    nodata = info.nodata
    suffix = out.suffix.lower()
    with atomic_path(out) as tmp:
      if suffix in GEOTIFF_SUFFIXES:
        writer = GeoTiffWriter(tmp, info, info.dtype, nodata)
        flush = GEOTIFF_BLOCK
      else:
        writer = ArrayWriter(height, width, info.ms_shape[-1], info.dtype)
        flush = RATIO

      def emit(first: int, rows: np.ndarray) -> None:
        final = finalize_rows(scene, first, rows, info.dtype, nodata)
        writer.write(first, final)
        if collector is not None:
          collector(first, final.astype(np.float64))

      try:
        timing = sharpen_scene(scene, runner, opts.tiling, emit, flush_multiple=flush,
                               progress=opts.progress, label=out.name)
      finally:
        writer.close()
      if isinstance(writer, ArrayWriter):
        _write_array_output(out, tmp, writer.array, info, nodata)
    summary: dict[str, Any] = dict(
        output=str(out), scene=info.name, pan_shape=list(info.pan_shape),
        bands=info.ms_shape[-1], dtype=str(info.dtype), checkpoint=loaded.source,
        residual=loaded.residual, img_range=loaded.img_range, input_range=stats,
        tiling=dataclasses.asdict(opts.tiling), batch_size=runner.batch_size,
        devices=runner.num_devices, **timing)
    log.info("Wrote %s: %dx%d PAN pixels, %d tiles in %.1f s (%.3f Mpixel/s).", out, height,
             width, timing["tiles"], timing["seconds"], timing["mpixels_per_s"])
    if crop is not None:
      summary.update(_crop_products(scene, out, collector, crop, sensor, loaded, rgb, opts,
                                    reference))
  return summary


def _rgb_bands(sensor: str, num_bands: int) -> tuple[int, int, int]:
  try:
    rgb = imaging.get_sensor(sensor).rgb
  except ValueError as e:
    raise InputError(f"--sensor: {e}") from e
  if max(rgb) >= num_bands:
    rgb = (min(2, num_bands - 1), min(1, num_bands - 1), 0)
  return rgb


def _crop_products(scene: Scene, out: pathlib.Path, collector: CropCollector,
                   crop: tuple[int, int, int, int], sensor: str, loaded: LoadedModel,
                   rgb: Sequence[int], opts: RunOptions,
                   reference: np.ndarray | None = None) -> dict[str, Any]:
  """Preview PNG and/or assessment JSON of the central crop."""
  r0, c0, h, w = crop
  result: dict[str, Any] = {}
  full = (h, w) == tuple(scene.info.pan_shape)
  where = "the whole scene" if full else f"the central crop rows {r0}:{r0 + h}, cols {c0}:{c0 + w}"
  lms = scene_lms(scene, r0, c0, h, w)
  if reference is not None:
    reference = reference[r0:r0 + h, c0:c0 + w].astype(np.float64)
  if opts.preview or reference is not None:
    png = write_preview(_sidecar(out, ".preview.png"), lms, collector.array, rgb, reference)
    result["preview"] = str(png)
    result["preview_region"] = where
    log.info("Preview of %s: %s", where, png)
  if opts.assess:
    ms = tiling.gather_2d(scene.read_ms, np.arange(r0 // RATIO, (r0 + h) // RATIO),
                          np.arange(c0 // RATIO, (c0 + w) // RATIO)).astype(np.float64)
    pan = scene.read_pan(r0, r0 + h, c0, c0 + w).astype(np.float64)
    bits = loaded.bits or int(math.ceil(math.log2(loaded.img_range + 1)))
    values = assess(collector.array, ms, pan, lms, sensor, bits)
    report = dict(indexes=values, region=where, crop=dict(row=r0, col=c0, height=h, width=w),
                  sensor=sensor, bits=bits, ratio=RATIO, output=str(out))
    path = _sidecar(out, ".assess.json")
    with atomic_path(path) as tmp:
      tmp.write_text(json.dumps(report, indent=2) + "\n")
    result["assess"] = report
    print(f"Full-resolution indexes of {where} ({sensor}, {bits}-bit): " +
          ", ".join(f"{k} {v:.4f}" for k, v in values.items()))
    log.info("Assessment written to %s", path)
  return result


def _read_reference(path: str, info: SceneInfo, num_bands: int, bands: str | None) -> np.ndarray:
  from dcfnet_jax.data import scenes  # pylint: disable=g-import-not-at-top
  try:
    ref, _, _ = scenes.read_image(path, kind="ms")
  except (KeyError, ValueError, OSError) as e:
    raise InputError(f"--reference {path}: cannot be read: {e}") from e
  idx = _parse_bands(bands, ref.shape[-1], path) if ref.shape[-1] != num_bands else None
  if idx is not None:
    ref = ref[..., idx]
  expected = tuple(info.pan_shape) + (num_bands,)
  if ref.shape != expected:
    raise InputError(f"--reference {path}: shape {ref.shape}, expected the output's {expected}")
  return ref


def run_pancollection(loaded: LoadedModel, runner: TileRunner, opts: RunOptions
                      ) -> dict[str, Any]:
  """Sharpens every image of a PanCollection h5 file into `opts.out` (`fused`, N,C,H,W, DN)."""
  from dcfnet_jax.data import pancollection  # pylint: disable=g-import-not-at-top

  out = check_output_path(opts.out, [opts.ms], opts.overwrite)
  if out.suffix.lower() not in H5_SUFFIXES:
    raise InputError(f"--out {out}: a PanCollection input gives an h5 output (fused, N,C,H,W)")
  try:
    source = pancollection.PanCollectionSource(opts.ms, img_range=loaded.img_range, ratio=RATIO,
                                               num_bands=loaded.num_bands)
  except (pancollection.DataFormatError, OSError) as e:
    raise InputError(f"--ms {opts.ms}: {e}") from e
  fused, timings = [], []
  with source:
    n = len(source)
    for i in range(n):
      item = source.read_dn([i])
      ms, pan, lms = item["ms"][0], item["pan"][0, ..., 0], item["lms"][0]
      info = SceneInfo(name=f"{opts.ms}[{i}]", pan_shape=pan.shape, ms_shape=ms.shape,
                       dtype=np.dtype(np.float32), pan_dtype=np.dtype(np.float32))
      scene = ArrayScene(ms, pan, info, lms=lms)
      writer = ArrayWriter(pan.shape[0], pan.shape[1], ms.shape[-1], np.float32)
      timings.append(sharpen_scene(scene, runner, opts.tiling, writer.write,
                                   progress=opts.progress, label=f"image {i + 1}/{n}"))
      fused.append(np.moveaxis(writer.array, -1, 0))
  stacked = np.stack(fused)
  with atomic_path(out) as tmp:
    _save_h5(tmp, {"fused": stacked})
  seconds = sum(t["seconds"] for t in timings)
  pixels = stacked.shape[0] * stacked.shape[2] * stacked.shape[3]
  log.info("Wrote %s: %d images, %.1f s (%.3f Mpixel/s).", out, n, seconds,
           pixels / seconds / 1e6)
  return dict(output=str(out), images=n, shape=list(stacked.shape), seconds=seconds,
              mpixels_per_s=pixels / seconds / 1e6, checkpoint=loaded.source,
              residual=loaded.residual, img_range=loaded.img_range)


# ---------------------------------------------------------------------------------------------
# Command line


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
  """Shows defaults, except the uninformative None / False."""

  def _get_help_string(self, action):
    if action.default is None or action.default is False:
      return action.help
    return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
      prog="python -m dcfnet_jax.pansharpen", description=__doc__.split("\n\n")[0],
      formatter_class=_HelpFormatter)
  p.add_argument("--checkpoint", required=True,
                 help="exported parameters .npz, or a training workdir / checkpoint directory")
  p.add_argument("--ms", required=True, help="MS GeoTIFF, .npz/.mat/.h5 scene, or a PanCollection "
                 "h5 test file (then omit --pan)")
  p.add_argument("--pan", help="PAN GeoTIFF (or array file); omit when --ms holds both")
  p.add_argument("--out", required=True, help="output .tif/.tiff, .npz or .h5")
  p.add_argument("--sensor", help="sensor name for RGB bands and the MTF of --assess "
                 "(default: the checkpoint's)")
  p.add_argument("--tile", type=int, default=DEFAULT_TILE, help="tile size in PAN pixels "
                 "(multiple of 4)")
  p.add_argument("--overlap", type=int, default=DEFAULT_OVERLAP,
                 help="minimum overlap of neighbouring tiles, PAN pixels (multiple of 4)")
  p.add_argument("--trim", type=int, default=DEFAULT_TRIM,
                 help="pixels at each overlapped tile edge that get zero blending weight")
  p.add_argument("--pad", type=int, default=None,
                 help=f"symmetric padding of the scene borders, PAN pixels (multiple of 4); "
                 f"default {DEFAULT_PAD} for scenes, 0 for PanCollection files (official "
                 "one-pass parity)")
  p.add_argument("--blend", choices=tiling.BLEND_KINDS, default="cosine")
  p.add_argument("--batch-size", type=int, default=4, help="tiles per batch (rounded up to a "
                 "multiple of the local device count)")
  p.add_argument("--bands", help="MS bands to use, 1-based comma-separated (e.g. 2,3,4,5)")
  p.add_argument("--nodata", type=float, help="input value to treat as nodata (default: the "
                 "GeoTIFFs' own)")
  p.add_argument("--ms-key", help="array name of the MS in .npz/.mat/.h5 scenes")
  p.add_argument("--pan-key", help="array name of the PAN in .npz/.mat/.h5 scenes")
  p.add_argument("--img-range", type=float, help="override the checkpoint's img_range (DN of "
                 "full scale)")
  p.add_argument("--precision", choices=("default", "high", "highest"), default="highest",
                 help="matmul/conv precision on GPU/TPU (no effect on CPU)")
  p.add_argument("--preview", action="store_true", help="write OUT.preview.png: lms | result")
  p.add_argument("--reference", help="reference image at PAN resolution; adds an error map to "
                 "the preview")
  p.add_argument("--assess", action="store_true", help="print and save OUT.assess.json: "
                 "D_lambda, D_s, QNR, HQNR")
  p.add_argument("--crop", type=int, default=DEFAULT_CROP, help="side of the central crop used "
                 "by --preview/--assess for big scenes (PAN pixels)")
  p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
  p.add_argument("--no-progress", action="store_true", help="no progress bar")
  p.add_argument("--summary-json", help="also write the run summary to this JSON file")
  return p


def main(argv: Sequence[str] | None = None) -> int:
  args = build_parser().parse_args(argv)
  logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
  try:
    summary = run(args)
  except InputError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  if args.summary_json:
    pathlib.Path(args.summary_json).write_text(json.dumps(summary, indent=2, default=str) + "\n")
  return 0


def run(args: argparse.Namespace) -> dict[str, Any]:
  """Runs the CLI with parsed `args`; raises InputError on bad input."""
  h5_mode = is_pancollection_file(args.ms, args.pan)
  pad = args.pad if args.pad is not None else (0 if h5_mode else DEFAULT_PAD)
  options = TilingOptions(tile=args.tile, overlap=args.overlap, pad=pad, trim=args.trim,
                          blend=args.blend)
  options.validate()  # before any slow work
  opts = RunOptions(ms=args.ms, pan=args.pan, out=args.out, sensor=args.sensor, tiling=options,
                    batch_size=args.batch_size, preview=args.preview, reference=args.reference,
                    assess=args.assess, crop=args.crop, overwrite=args.overwrite,
                    bands=args.bands, nodata=args.nodata, ms_key=args.ms_key,
                    pan_key=args.pan_key, progress=not args.no_progress)
  out = check_output_path(opts.out, [opts.ms, opts.pan, opts.reference], opts.overwrite)
  sidecars = ([".preview.png"] if opts.preview or opts.reference else []) + (
      [".assess.json"] if opts.assess else [])
  for suffix in sidecars:
    if _sidecar(out, suffix).exists() and not opts.overwrite:
      raise InputError(f"{_sidecar(out, suffix)} exists; pass --overwrite to replace it")
  if h5_mode and (opts.preview or opts.assess or opts.reference):
    raise InputError("--preview/--assess/--reference apply to scenes; for PanCollection files "
                     "use python -m dcfnet_jax.evaluate")
  if not h5_mode:  # fail on unreadable or misregistered inputs before loading anything
    with open_scene(opts.ms, opts.pan, bands=opts.bands, ms_key=opts.ms_key,
                    pan_key=opts.pan_key) as scene:
      check_coregistration(scene.info, RATIO, scene.ms_crs)
  loaded = load_model(args.checkpoint)
  if args.img_range:
    loaded.img_range = float(args.img_range)
  runner = TileRunner(loaded, opts.batch_size, precision=args.precision)
  if h5_mode:
    return run_pancollection(loaded, runner, opts)
  return run_scene(loaded, runner, opts)


if __name__ == "__main__":
  sys.exit(main())
