"""Tiling maths for sharpening scenes of any size with bounded memory.

A scene (PAN H x W, MS h x w with H = ratio*h) is padded virtually by `pad` PAN pixels on each
side (symmetric reflection, the edge sample repeated), cut into tiles of `tile` PAN pixels that
overlap by at least `overlap`, and the tile outputs are blended back with separable ramps whose
weights are normalised by their sum. Every tile origin, size, overlap and pad is a multiple of
`ratio` (the MS/PAN ratio), so a PAN tile always covers whole MS pixels and the MS tile is an exact
slice of the MS grid.

Everything here is pure numpy and knows nothing about the network: `pansharpen` builds on it.
Coordinates are PAN pixels of the padded scene unless a name says otherwise.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence

import numpy as np

BLEND_KINDS = ("cosine", "linear")


def axis_starts(length: int, tile: int, overlap: int, multiple: int = 4) -> tuple[list[int], int]:
  """Tile origins along one axis of `length` pixels, and the tile size used.

  Tiles are `tile` long and step by `tile - overlap`; the last one is moved back so that it ends
  exactly at `length` (it then overlaps its neighbour by more than `overlap`). An axis no longer
  than `tile` gets a single tile of the whole length. All values are multiples of `multiple`.
  """
  for name, value in (("length", length), ("tile", tile), ("overlap", overlap)):
    if value % multiple:
      raise ValueError(f"{name}={value} must be a multiple of {multiple}")
  if tile <= 0 or length <= 0:
    raise ValueError(f"tile ({tile}) and length ({length}) must be positive")
  if not 0 <= overlap < tile:
    raise ValueError(f"overlap={overlap} must be in [0, tile={tile})")
  if length <= tile:
    return [0], length
  step = tile - overlap
  starts = list(range(0, length - tile, step))
  starts.append(length - tile)
  return starts, tile


def ramp(size: int, before: int, after: int, kind: str = "cosine", trim: int = 0) -> np.ndarray:
  """1-D blending weights of a tile that overlaps `before` pixels at its start, `after` at its end.

  In an overlap of n pixels the first `trim` pixels (the tile's edge, where zero padding inside
  the network hurts most) get weight 0, the next m = n - 2*trim pixels rise as f((k + 0.5) / m),
  k = 0..m-1, with f(t) = t (linear) or (1 - cos(pi t)) / 2 (cosine), and the rest is 1. Because
  f(t) + f(1 - t) = 1 and the neighbour's ramp is the mirror image, two tiles that overlap by the
  same n get weights summing to exactly 1, and every pixel keeps a positive total weight.
  """
  if kind not in BLEND_KINDS:
    raise ValueError(f"unknown blend {kind!r}; expected one of {BLEND_KINDS}")
  if before < 0 or after < 0 or before > size or after > size:
    raise ValueError(f"overlaps ({before}, {after}) must lie in [0, size={size}]")
  for n in (before, after):
    if n and n <= 2 * trim:
      raise ValueError(f"an overlap of {n} pixels leaves nothing to blend with trim={trim} "
                       "(need overlap > 2*trim)")
  weights = np.ones(size, np.float64)

  def rise(n: int) -> np.ndarray:
    m = n - 2 * trim
    t = (np.arange(m) + 0.5) / m
    core = t if kind == "linear" else 0.5 - 0.5 * np.cos(np.pi * t)
    return np.concatenate([np.zeros(trim), core, np.ones(trim)])

  if before:
    weights[:before] *= rise(before)
  if after:
    weights[size - after:] *= rise(after)[::-1]
  return weights.astype(np.float32)


@dataclasses.dataclass(frozen=True)
class Tile:
  """One tile: grid index (i, j), origin (row, col) and size, in padded PAN pixels."""
  i: int
  j: int
  row: int
  col: int
  height: int
  width: int


@dataclasses.dataclass(frozen=True)
class TileGrid:
  """The tiles covering a scene padded by `pad` on every side."""
  scene_height: int  # PAN pixels, unpadded
  scene_width: int
  pad: int
  tile_height: int
  tile_width: int
  row_starts: tuple[int, ...]
  col_starts: tuple[int, ...]
  overlap: int
  blend: str = "cosine"
  trim: int = 0

  @property
  def num_tiles(self) -> int:
    return len(self.row_starts) * len(self.col_starts)

  def tiles(self) -> Iterator[Tile]:
    """Row-major order (all tiles of a grid row before the next row)."""
    for i, row in enumerate(self.row_starts):
      for j, col in enumerate(self.col_starts):
        yield Tile(i, j, row, col, self.tile_height, self.tile_width)

  def weights(self, tile: Tile) -> np.ndarray:
    """(height, width) float32 blending weights of `tile` (separable ramps)."""
    rows = _axis_ramp(self.row_starts, tile.i, self.tile_height, self.blend, self.trim)
    cols = _axis_ramp(self.col_starts, tile.j, self.tile_width, self.blend, self.trim)
    return rows[:, None] * cols[None, :]


def _axis_ramp(starts: Sequence[int], k: int, size: int, blend: str, trim: int) -> np.ndarray:
  before = starts[k - 1] + size - starts[k] if k > 0 else 0
  after = starts[k] + size - starts[k + 1] if k + 1 < len(starts) else 0
  return ramp(size, before, after, blend, trim)


def make_grid(scene_height: int, scene_width: int, tile: int, overlap: int, pad: int,
              ratio: int = 4, blend: str = "cosine", trim: int = 0) -> TileGrid:
  """Tiles for an H x W PAN scene (H, W, tile, overlap and pad all multiples of `ratio`).

  `trim` pixels at each overlapped tile edge get zero weight (see `ramp`); overlap > 2*trim.
  """
  for name, value in (("scene height", scene_height), ("scene width", scene_width),
                      ("tile", tile), ("overlap", overlap), ("pad", pad)):
    if value % ratio:
      raise ValueError(f"{name}={value} must be a multiple of the ratio {ratio}")
  if pad < 0:
    raise ValueError(f"pad={pad} must be >= 0")
  if blend not in BLEND_KINDS:
    raise ValueError(f"unknown blend {blend!r}; expected one of {BLEND_KINDS}")
  if trim < 0 or (trim and overlap <= 2 * trim):
    raise ValueError(f"trim={trim} must be >= 0 and less than half the overlap ({overlap})")
  rows, tile_h = axis_starts(scene_height + 2 * pad, tile, overlap, ratio)
  cols, tile_w = axis_starts(scene_width + 2 * pad, tile, overlap, ratio)
  return TileGrid(scene_height, scene_width, pad, tile_h, tile_w, tuple(rows), tuple(cols),
                  overlap, blend, trim)


def symmetric_index(index: np.ndarray, n: int) -> np.ndarray:
  """Maps any integer index onto [0, n) by mirror reflection with the edge repeated.

  The sequence is ..., 1, 0 | 0, 1, ..., n-1 | n-1, n-2, ... (numpy's mode='symmetric'),
  repeated as often as needed, so pads larger than the scene work too.
  """
  index = np.asarray(index) % (2 * n)
  return np.where(index < n, index, 2 * n - 1 - index)


def wrap_index(index: np.ndarray, n: int) -> np.ndarray:
  """Maps any integer index onto [0, n) periodically (a circular boundary)."""
  return np.asarray(index) % n


def contiguous_runs(index: np.ndarray) -> list[tuple[int, int, int, int]]:
  """Splits an index vector into runs of consecutive increasing values.

  Returns (src_start, src_stop, dst_start, dst_stop) per run, so that a reader can fetch each run
  as one window: `out[dst_start:dst_stop] = data[src_start:src_stop]`. A reflected or wrapped
  index vector has at most a few runs (reversed stretches give one-element runs).
  """
  index = np.asarray(index)
  if index.ndim != 1 or not len(index):
    raise ValueError(f"expected a non-empty 1-D index vector, got shape {index.shape}")
  breaks = np.flatnonzero(np.diff(index) != 1) + 1
  bounds = np.concatenate([[0], breaks, [len(index)]])
  return [(int(index[a]), int(index[b - 1]) + 1, int(a), int(b))
          for a, b in zip(bounds[:-1], bounds[1:])]


def gather_2d(read_window, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
  """Reads `data[rows][:, cols]` through `read_window(r0, r1, c0, c1) -> data[r0:r1, c0:c1, ...]`.

  Consecutive stretches of `rows`/`cols` are read as single windows, reversed (mirrored) stretches
  element by element, so a reflected tile costs a handful of reads, not one per pixel.
  """
  row_runs = contiguous_runs(rows)
  col_runs = contiguous_runs(cols)
  out = None
  for r0, r1, dr0, dr1 in row_runs:
    for c0, c1, dc0, dc1 in col_runs:
      block = np.asarray(read_window(r0, r1, c0, c1))
      if out is None:
        out = np.empty((len(rows), len(cols)) + block.shape[2:], block.dtype)
      out[dr0:dr1, dc0:dc1] = block
  return out


class BlendAccumulator:
  """Weighted sum of overlapping tile outputs, kept only for rows not yet final.

  Holds the region [row0, row1) x [col0, col1) of the padded scene (the unpadded scene, normally)
  as a rolling buffer: `add` grows it downwards, `pop_final(next_row)` divides the rows above
  `next_row` (no tile still to come starts above it) by their summed weights and drops them. Memory
  is therefore about (tiles spanned by one batch + one tile) rows x scene width, whatever the
  scene height.
  """

  def __init__(self, row0: int, row1: int, col0: int, col1: int, channels: int,
               flush_multiple: int = 1):
    if row1 <= row0 or col1 <= col0:
      raise ValueError(f"empty region rows [{row0}, {row1}) cols [{col0}, {col1})")
    self.row0, self.row1, self.col0, self.col1 = row0, row1, col0, col1
    self.channels = channels
    self.flush_multiple = max(1, flush_multiple)
    self._start = row0  # first row held in the buffer
    self._sum = np.zeros((0, col1 - col0, channels), np.float32)
    self._weight = np.zeros((0, col1 - col0), np.float32)

  @property
  def done(self) -> bool:
    return self._start >= self.row1

  def add(self, row: int, col: int, values: np.ndarray, weights: np.ndarray) -> None:
    """Adds `values` (h, w, C) with `weights` (h, w) at padded origin (row, col)."""
    h, w = weights.shape
    if values.shape != (h, w, self.channels):
      raise ValueError(f"tile values {values.shape} do not match weights {weights.shape} "
                       f"and {self.channels} channels")
    r0, r1 = max(row, self.row0), min(row + h, self.row1)
    c0, c1 = max(col, self.col0), min(col + w, self.col1)
    if r0 >= r1 or c0 >= c1:
      return  # the tile lies entirely in the padding
    if r0 < self._start:
      raise ValueError(f"tile at row {row} adds to rows already popped (below {self._start})")
    end = self._start + len(self._weight)
    if r1 > end:  # grow the buffer downwards
      extra = r1 - end
      self._sum = np.concatenate(
          [self._sum, np.zeros((extra,) + self._sum.shape[1:], np.float32)])
      self._weight = np.concatenate(
          [self._weight, np.zeros((extra,) + self._weight.shape[1:], np.float32)])
    b0, b1 = r0 - self._start, r1 - self._start
    t_rows = slice(r0 - row, r1 - row)
    t_cols = slice(c0 - col, c1 - col)
    wt = weights[t_rows, t_cols]
    self._sum[b0:b1, c0 - self.col0:c1 - self.col0] += values[t_rows, t_cols] * wt[..., None]
    self._weight[b0:b1, c0 - self.col0:c1 - self.col0] += wt

  def pop_final(self, next_row: int | None) -> tuple[int, np.ndarray] | None:
    """Returns (first scene row, blended rows (n, width, C)) of rows that no tile can change.

    `next_row` is the padded origin row of the next tile to be added, or None when all tiles are
    in. Rows are released in multiples of `flush_multiple` (counted from `row0`) except the last
    ones, so a block-tiled writer never rewrites a block. Returns None when nothing is final.
    """
    stop = self.row1 if next_row is None else min(max(next_row, self._start), self.row1)
    if stop < self.row1:
      stop = self.row0 + (stop - self.row0) // self.flush_multiple * self.flush_multiple
    count = stop - self._start
    if count <= 0:
      return None
    if count > len(self._weight):
      raise ValueError(f"rows [{self._start}, {stop}) were never covered by a tile")
    weight = self._weight[:count]
    if not np.all(weight > 0):
      bad = np.argwhere(weight <= 0)[0]
      raise ValueError(f"pixel (row {self._start + bad[0]}, col {self.col0 + bad[1]}) "
                       "has no tile covering it")
    blended = self._sum[:count] / weight[..., None]
    self._sum = self._sum[count:]
    self._weight = self._weight[count:]
    first = self._start - self.row0
    self._start = stop
    return first, blended


def batches(items: Sequence, size: int) -> Iterator[list]:
  """Consecutive chunks of `size` items (the last one may be shorter)."""
  if size < 1:
    raise ValueError(f"batch size must be >= 1, got {size}")
  for k in range(0, len(items), size):
    yield list(items[k:k + size])


def blend_tiles(grid: TileGrid, submit, channels: int, batch_size: int, emit,
                fetch=np.asarray, flush_multiple: int = 1, on_batch=None) -> None:
  """Runs every tile of `grid` in batches and streams the blended scene out row block by block.

  submit(tiles: list[Tile]) -> handle  starts the work for a batch (e.g. an async jitted call);
  fetch(handle) -> (n, tile_h, tile_w, channels) array  waits for it. The next batch is submitted
  before the previous one is fetched, so reading inputs overlaps with computing.
  emit(first_row, rows)  receives the final blended rows of the unpadded scene, in order, each
  call `rows` (n, scene_width, channels) float32. on_batch(num_tiles_done) reports progress.
  """
  tiles = list(grid.tiles())
  acc = BlendAccumulator(grid.pad, grid.pad + grid.scene_height, grid.pad,
                         grid.pad + grid.scene_width, channels, flush_multiple)
  chunks = list(batches(tiles, batch_size))
  done = 0
  pending = None  # (chunk, handle)
  for k in range(len(chunks) + 1):
    submitted = (chunks[k], submit(chunks[k])) if k < len(chunks) else None
    if pending is not None:
      chunk, handle = pending
      values = fetch(handle)
      if values.shape[0] < len(chunk):
        raise ValueError(f"a batch of {len(chunk)} tiles gave only {values.shape[0]} outputs")
      for n, tile in enumerate(chunk):
        acc.add(tile.row, tile.col, values[n], grid.weights(tile))
      done += len(chunk)
      next_row = chunks[k][0].row if k < len(chunks) else None
      while (block := acc.pop_final(next_row)) is not None:
        emit(*block)
      if on_batch is not None:
        on_batch(done)
    pending = submitted
  if not acc.done:
    raise RuntimeError("tiling finished with rows left unwritten (a bug)")
