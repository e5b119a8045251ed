"""Tests of the tiling / blending maths (pure numpy, no network)."""

import itertools

import numpy as np
import pytest
from scipy import ndimage

from dcfnet_jax import tiling


@pytest.mark.parametrize("length,tile,overlap", [
    (256, 64, 16), (260, 64, 16), (68, 64, 16), (64, 64, 16), (40, 64, 16), (1024, 256, 32),
    (516, 256, 0), (300, 100, 52),
])
def test_axis_starts_cover_with_overlap(length, tile, overlap):
  starts, size = tiling.axis_starts(length, tile, overlap)
  assert size == min(tile, length)
  assert starts[0] == 0 and starts[-1] + size == length
  assert all(s % 4 == 0 for s in starts)
  for a, b in zip(starts, starts[1:]):
    assert b > a
    assert a + size - b >= overlap  # neighbours overlap by at least `overlap`
  covered = np.zeros(length, bool)
  for s in starts:
    covered[s:s + size] = True
  assert covered.all()


@pytest.mark.parametrize("kwargs,match", [
    (dict(length=66, tile=64, overlap=16), "length=66"),
    (dict(length=64, tile=62, overlap=16), "tile=62"),
    (dict(length=64, tile=64, overlap=64), "overlap=64"),
    (dict(length=64, tile=64, overlap=6), "overlap=6"),
])
def test_axis_starts_rejects_bad_sizes(kwargs, match):
  with pytest.raises(ValueError, match=match):
    tiling.axis_starts(**kwargs)


@pytest.mark.parametrize("kind,trim", [("cosine", 0), ("linear", 0), ("cosine", 3), ("linear", 5)])
def test_ramps_of_neighbours_sum_to_one(kind, trim):
  size, n = 40, 16
  a = tiling.ramp(size, 0, n, kind, trim)
  b = tiling.ramp(size, n, 0, kind, trim)
  np.testing.assert_allclose(a[size - n:] + b[:n], 1.0, atol=1e-6)
  assert np.all(a[:size - n] == 1) and np.all(b[n:] == 1)
  assert np.all(b[:trim] == 0) and np.all(b[trim:] > 0)
  assert np.all(np.diff(b[:n]) >= 0)  # monotone rise


def test_ramp_rejects_trim_that_leaves_no_blend():
  with pytest.raises(ValueError, match="overlap > 2\\*trim"):
    tiling.ramp(64, 8, 0, "cosine", trim=4)
  with pytest.raises(ValueError, match="unknown blend"):
    tiling.ramp(64, 8, 0, "gaussian")


def test_grid_weights_sum_to_one_with_regular_overlaps():
  grid = tiling.make_grid(112, 160, tile=64, overlap=16, pad=0)  # 112 = 64 + 48 exactly
  assert grid.row_starts == (0, 48) and grid.col_starts == (0, 48, 96)
  total = np.zeros((112, 160))
  for t in grid.tiles():
    total[t.row:t.row + t.height, t.col:t.col + t.width] += grid.weights(t)
  np.testing.assert_allclose(total, 1.0, atol=1e-6)


def test_symmetric_and_wrap_index_match_numpy_pad():
  n = 7
  data = np.arange(n)
  for pad in (3, 7, 15):
    idx = np.arange(-pad, n + pad)
    np.testing.assert_array_equal(data[tiling.symmetric_index(idx, n)],
                                  np.pad(data, pad, mode="symmetric"))
    np.testing.assert_array_equal(data[tiling.wrap_index(idx, n)], np.pad(data, pad, mode="wrap"))


def test_gather_2d_reads_runs_as_windows():
  rng = np.random.default_rng(0)
  data = rng.normal(size=(20, 30, 3))
  rows = tiling.symmetric_index(np.arange(-4, 24), 20)
  cols = tiling.wrap_index(np.arange(25, 40), 30)
  calls = []

  def read(r0, r1, c0, c1):
    calls.append((r0, r1, c0, c1))
    return data[r0:r1, c0:c1]

  out = tiling.gather_2d(read, rows, cols)
  np.testing.assert_array_equal(out, data[np.ix_(rows, cols)])
  # Rows: 4 mirrored singles + 1 run of 20 + 4 mirrored singles; cols: 2 runs.
  assert len(tiling.contiguous_runs(rows)) == 9 and len(tiling.contiguous_runs(cols)) == 2
  assert len(calls) == 18


def _run(grid, fn, channels, batch_size, flush_multiple=1):
  """blend_tiles over a padded in-memory scene with a per-tile function `fn`."""
  padded = fn.padded
  out = np.full((grid.scene_height, grid.scene_width, channels), np.nan, np.float32)
  emitted = []

  def submit(tiles):
    return np.stack([fn(padded[t.row:t.row + t.height, t.col:t.col + t.width]) for t in tiles])

  def emit(first, rows):
    emitted.append((first, len(rows)))
    out[first:first + len(rows)] = rows

  tiling.blend_tiles(grid, submit, channels, batch_size, emit, flush_multiple=flush_multiple)
  return out, emitted


class _Filter:
  """A local operator of radius `radius` with zero padding, like a conv layer at a tile edge."""

  def __init__(self, padded, radius):
    self.padded, self.radius = padded, radius

  def __call__(self, x):
    if not self.radius:
      return x.copy()
    size = 2 * self.radius + 1
    return ndimage.uniform_filter(x, size=(size, size, 1), mode="constant") ** 2


@pytest.mark.parametrize("height,width,tile,overlap,pad,trim,batch,flush", [
    (120, 96, 32, 16, 8, 4, 3, 1),
    (64, 200, 48, 24, 0, 6, 4, 16),
    (36, 44, 64, 16, 4, 4, 2, 1),  # scene smaller than a tile
    (256, 36, 64, 32, 16, 8, 5, 32),  # narrow scene: one batch spans many tile rows
])
def test_tiled_local_filter_equals_untiled_when_trim_covers_its_radius(
    height, width, tile, overlap, pad, trim, batch, flush):
  rng = np.random.default_rng(height + width)
  scene = rng.uniform(size=(height, width, 2)).astype(np.float32)
  rows = tiling.symmetric_index(np.arange(-pad, height + pad), height)
  cols = tiling.symmetric_index(np.arange(-pad, width + pad), width)
  padded = scene[np.ix_(rows, cols)]
  grid = tiling.make_grid(height, width, tile, overlap, pad, blend="cosine", trim=trim)
  fn = _Filter(padded, radius=trim)
  out, emitted = _run(grid, fn, 2, batch, flush)
  untiled = fn(padded)[pad:pad + height, pad:pad + width]
  np.testing.assert_allclose(out, untiled, rtol=1e-5, atol=1e-6)
  # Rows come out in order, without gaps, in multiples of `flush` except the last block.
  firsts = [f for f, _ in emitted]
  assert firsts == sorted(firsts) and firsts[0] == 0
  assert sum(n for _, n in emitted) == height
  assert all(n % flush == 0 for _, n in emitted[:-1])


def test_tiled_identity_reproduces_scene_and_filter_without_trim_does_not():
  rng = np.random.default_rng(1)
  scene = rng.uniform(size=(96, 96, 1)).astype(np.float32)
  grid = tiling.make_grid(96, 96, 32, 16, 0, trim=0)
  out, _ = _run(grid, _Filter(scene, 0), 1, 4)
  np.testing.assert_allclose(out, scene, rtol=1e-6)
  # Sanity check that the test above can fail: with trim 0, tile-edge errors leak into the blend.
  fn = _Filter(scene, 3)
  out, _ = _run(grid, fn, 1, 4)
  assert np.max(np.abs(out - fn(scene))) > 1e-3


def test_accumulator_memory_stays_bounded():
  height, width, tile = 1024, 64, 64
  grid = tiling.make_grid(height, width, tile, 16, 0)
  acc = tiling.BlendAccumulator(0, height, 0, width, 1)
  most = 0
  for chunk in tiling.batches(list(grid.tiles()), 2):
    for t in chunk:
      acc.add(t.row, t.col, np.ones((t.height, t.width, 1), np.float32), grid.weights(t))
    most = max(most, len(acc._weight))
    acc.pop_final(t.row + 48 if t.row + tile < height else None)
  assert acc.done
  assert most <= 2 * tile  # never the whole 1024-row scene


def test_accumulator_reports_uncovered_pixels():
  acc = tiling.BlendAccumulator(0, 8, 0, 8, 1)
  acc.add(0, 0, np.ones((8, 4, 1), np.float32), np.ones((8, 4), np.float32))
  with pytest.raises(ValueError, match="no tile covering"):
    acc.pop_final(None)


def test_random_grids_always_have_positive_total_weight():
  for tile, overlap, trim, length in itertools.product((32, 64), (8, 16, 24), (0, 2, 3),
                                                       (32, 36, 60, 68, 100, 132)):
    if overlap >= tile or overlap <= 2 * trim:
      continue
    grid = tiling.make_grid(length, 4, tile, overlap, 0, trim=trim)
    total = np.zeros(length)
    for t in grid.tiles():
      total[t.row:t.row + t.height] += grid.weights(t)[:, 0]
    assert total.min() > 0, (tile, overlap, trim, length)
