"""The tile runner: tiles of a scene through the one predictor, blended back into rows.

- A scene is padded virtually by `pad` PAN pixels (symmetric reflection), cut into tiles
  overlapping by at least `overlap` (all multiples of 4, so each tile is a whole number of MS
  pixels), and the tile outputs are blended with ramps normalised by their summed weights
  (`dcfnet_jax.tiling`). Memory is bounded by a few tile rows, whatever the scene size.
- lms = interp23tap(ms, 4) of the *whole scene* (circular borders, as the MATLAB toolbox), made
  per tile on the device from an MS window with `LMS_MARGIN` pixels of context, which is exact.
- Each batch of tiles runs through `inference.predict_dn` (network + lms when residual, clipped
  to [0, 1] unless told otherwise, x img_range) sharded over the local devices.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from dcfnet_jax import imaging, inference, sharding, tiling, xla_flags
from dcfnet_jax.errors import InputError
from dcfnet_jax.pansharpen.checks import RATIO, TilingOptions
from dcfnet_jax.progress import Progress
from dcfnet_jax.scenes import Scene, SceneInfo

# MS pixels of context around a tile for its lms: interp23tap (ratio 4, two 23-tap passes)
# reaches 9 MS pixels; 12 leaves room, and the tests check per-tile == whole-scene lms.
LMS_MARGIN = 12


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


def _scaled(x, img_range: float):
  return x.astype(jnp.float32) / jnp.float32(img_range)


_STATIC = ("graphdef", "residual", "clip", "img_range", "fold")


def _run_from_window(params, model_state, pan, window, lms_rows, lms_cols, ms_rows, ms_cols, *,
                     graphdef, residual: bool, clip: bool, img_range: float, fold: bool):
  """Tiles whose lms is interp23tap of an MS window (see `lms_window`), made on device."""
  window = _scaled(window, img_range)
  full = imaging.interp23tap(window, RATIO)
  take = jax.vmap(lambda x, r, c: x[r][:, c])
  return inference.predict_dn(params, model_state, _scaled(pan, img_range)[..., None],
                              take(full, lms_rows, lms_cols), take(window, ms_rows, ms_cols),
                              graphdef=graphdef, residual=residual, clip=clip,
                              img_range=img_range, fold=fold)


def _run_from_lms(params, model_state, pan, lms, ms, *, graphdef, residual: bool, clip: bool,
                  img_range: float, fold: bool):
  """Tiles with a stored lms (PanCollection files)."""
  return inference.predict_dn(params, model_state, _scaled(pan, img_range)[..., None],
                              _scaled(lms, img_range), _scaled(ms, img_range),
                              graphdef=graphdef, residual=residual, clip=clip,
                              img_range=img_range, fold=fold)


@functools.cache
def _jitted(options: tuple[tuple[str, Any], ...]) -> tuple[Callable, Callable]:
  """The two tile functions jitted with these XLA compiler options (one pair per option set,
  so runs with the same architecture and tile shape reuse one compilation)."""
  return tuple(jax.jit(fn, static_argnames=_STATIC, compiler_options=dict(options) or None)
               for fn in (_run_from_window, _run_from_lms))


class TileRunner:
  """Runs batches of tiles through the jitted eval-mode model on all local devices.

  The tile batch is sharded over a 1-D mesh of the local devices; the global batch is
  `batch_size` rounded up to a multiple of the device count, and short batches are padded.
  The jitted functions are shared between runners (the graph definition is a static argument),
  so runs with the same architecture and tile shape reuse one compilation. `clip`,
  `img_range`, `precision` and BatchNorm folding are those of `inference.Predictor`, and so are
  the XLA:CPU compiler options (`xla_flags`).
  """

  def __init__(self, loaded: inference.LoadedModel, batch_size: int, *,
               precision: str = "highest", devices: Sequence[Any] | None = None,
               clip: bool = True, img_range: float | None = None):
    if batch_size < 1:
      raise InputError(f"--batch-size must be >= 1, got {batch_size}")
    self.loaded = loaded
    devices = list(jax.local_devices() if devices is None else devices)
    self.mesh = sharding.make_mesh(devices)
    self.num_devices = len(devices)
    self.batch_size = -(-batch_size // self.num_devices) * self.num_devices
    self._batch_sharding = sharding.batch_sharding(self.mesh)
    self.predictor = loaded.predictor(self.mesh, clip=clip, img_range=img_range,
                                      precision=precision)
    self._weights = self.predictor.replicate(loaded.params, loaded.model_state)
    options = xla_flags.mesh_compiler_options(self.mesh) or {}
    self._from_window, self._from_lms = _jitted(tuple(sorted(options.items())))

  @property
  def img_range(self) -> float:
    return self.predictor.img_range

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
    static = self.predictor.static
    with self.predictor.precision_scope():
      if "window" in d:
        out = self._from_window(*self._weights, d["pan"], d["window"], d["lms_rows"],
                                d["lms_cols"], d["ms_rows"], d["ms_cols"], **static)
      else:
        out = self._from_lms(*self._weights, d["pan"], d["lms"], d["ms"], **static)
    return out, n

  @staticmethod
  def fetch(handle) -> np.ndarray:
    out, n = handle
    return np.asarray(out)[:n]


def sharpen_scene(scene: Scene, runner: TileRunner, options: TilingOptions,
                  emit: Callable[[int, np.ndarray], None], *, flush_multiple: int = RATIO,
                  progress: bool = True, label: str = "") -> dict[str, float]:
  """Sharpens `scene` tile by tile; `emit(first_row, rows)` gets blended float32 DN rows.

  Returns timing facts (seconds, tiles, PAN Mpixel/s).
  """
  height, width = scene.info.pan_shape
  options.validate()
  grid = options.grid(height, width)
  bar = Progress(grid.num_tiles, label or scene.info.name, "tiles", enabled=progress)
  start = time.perf_counter()
  batch = runner.batch_for(grid.num_tiles)

  def submit(tiles):
    return runner.submit(runner.gather(scene, grid, tiles), batch)

  def on_batch(done: int) -> None:
    mpx = height * width * done / grid.num_tiles / max(time.perf_counter() - start, 1e-9) / 1e6
    bar.update(done, f"{mpx:.3f} Mpx/s (PAN)")

  tiling.blend_tiles(grid, submit, scene.info.ms_shape[-1], batch, emit,
                     fetch=runner.fetch, flush_multiple=math.lcm(flush_multiple, RATIO),
                     on_batch=on_batch)
  elapsed = time.perf_counter() - start
  return dict(seconds=elapsed, tiles=grid.num_tiles, tile_height=grid.tile_height,
              tile_width=grid.tile_width, mpixels_per_s=height * width / elapsed / 1e6)
