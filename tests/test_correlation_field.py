"""The local correlation field of the full-resolution protocol (metrics.correlation_field)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fr_reference as ref
from dcfnet_jax import metrics
from dcfnet_jax.metrics import correlation_field


@pytest.fixture(scope="module")
def images():
  pan, hr = ref.synthetic_scene(3, 40, 3)
  fused = hr + np.random.default_rng(4).normal(0, 30.0, hr.shape)
  return fused[:36, :28], pan[:36, :28]


@pytest.mark.parametrize("half_width", [1, 2, 1.5, 8])
def test_field_matches_reference(images, half_width):
  fused, pan = images
  expected = ref.local_correlation(fused, pan, half_width).astype(np.float64)
  with jax.enable_x64(True):
    got64 = np.asarray(metrics.local_correlation(fused, pan, half_width))
  got32 = np.asarray(metrics.local_correlation(fused, pan, half_width), np.float64)
  # float64 mode follows the authors' single/double steps: equal up to a rare flip of the
  # last single-precision bit where two float64 sums differ in their last bit.
  assert np.max(np.abs(got64 - expected)) <= 2.5e-7
  assert np.mean(got64 == expected) > 0.99
  assert np.max(np.abs(got32 - expected)) <= 2e-5
  assert abs(np.mean(got32) - np.mean(expected)) <= 1e-6


def test_constant_images_correlate_only_near_the_border():
  # Constants c, d: centred values are c(1 - f), d(1 - f), f = the in-image fraction of each
  # pixel's window; proportional -> rho = 1 where a window meets such a pixel, 0 (0 / eps)
  # where every pixel in the window is interior: rows/cols 2w-2 .. H-1-2w.
  h, w = 16, 2
  rho = np.asarray(metrics.local_correlation(np.full((h, h), 700.0), np.full((h, h), 5.0), 2))
  inner = np.zeros((h, h), bool)
  inner[2 * w - 2:h - 2 * w, 2 * w - 2:h - 2 * w] = True
  np.testing.assert_allclose(rho[inner], 0.0, atol=0)
  np.testing.assert_allclose(rho[~inner], 1.0, atol=1e-6)


def test_window_is_even_and_reaches_one_further_down_right():
  # An impulse at (a, b): pixels whose own 2w x 2w window holds it are a-w .. a+w-1, and an
  # output window (rows i-w+1 .. i+w) meets those for i in a-2w .. a+2w-2: 2w rows above,
  # 2w-2 below. A symmetric window would give a symmetric band.
  a, b, w, h = 9, 10, 2, 20
  x = np.zeros((h, h))
  x[a, b] = 100.0
  rho = np.asarray(metrics.local_correlation(x, x, w))
  rows = np.nonzero(np.abs(rho).max(axis=1) > 0.5)[0]
  cols = np.nonzero(np.abs(rho).max(axis=0) > 0.5)[0]
  assert (rows.min(), rows.max()) == (a - 2 * w, a + 2 * w - 2)
  assert (cols.min(), cols.max()) == (b - 2 * w, b + 2 * w - 2)
  np.testing.assert_allclose(rho[rho != 0], 1.0, atol=1e-6)
  anti = np.asarray(metrics.local_correlation(x, -x, w))
  np.testing.assert_allclose(anti[rho != 0], -1.0, atol=1e-6)


def test_broadcast_and_batch(images):
  fused, pan = images
  field = metrics.local_correlation(fused, pan, 2)
  assert field.shape == fused.shape and field.dtype == jnp.float32
  for b in range(fused.shape[-1]):
    np.testing.assert_array_equal(field[..., b], metrics.local_correlation(fused[..., b], pan, 2))
  batch = metrics.local_correlation(np.stack([fused, fused[::-1]]), np.stack([pan, pan[::-1]]), 2)
  np.testing.assert_array_equal(batch[0], field)
  np.testing.assert_array_equal(batch[1], metrics.local_correlation(fused[::-1], pan[::-1], 2))
  with jax.enable_x64(True):
    assert metrics.local_correlation(fused, pan, 2).dtype == jnp.float64
  with pytest.raises(ValueError, match="does not fit x of shape"):
    metrics.local_correlation(fused, pan[:-1], 2)
  with pytest.raises(ValueError, match="half width must be > 0"):
    metrics.local_correlation(fused, pan, 0)


@pytest.mark.parametrize("case", ["16-bit, flat", "tails beside data"])
def test_float32_window_means_as_accurate_as_doubles(case):
  # The authors sum in double. Plain float32 sums lose ~1e-5 of the mean field on 16-bit data
  # with little local variation; shifting by the image mean would erase values tiny next to
  # it (filter tails beside a fill area: ~2e-2 error here).
  rng = np.random.default_rng(0)
  size = 64
  base = np.kron(rng.normal(size=(size // 16 + 1, size // 16 + 1)), np.ones((16, 16)))
  pan = 30000 + 3000 * base[:size, :size] + 2.0 * rng.normal(size=(size, size))
  fused = np.stack([0.9 * pan + 1000 + 2.0 * rng.normal(size=(size, size))
                    + rng.uniform(size=(size, size)) for _ in range(2)], -1)
  if case == "tails beside data":
    fused[:, :24] = 1e-6 * rng.uniform(size=(size, 24, 2))
  expected = ref.local_correlation(fused, pan, 2).astype(np.float64)
  got = np.asarray(metrics.local_correlation(fused, pan, 2), np.float64)
  d_expected = np.mean(1 - np.clip(expected, -1, 1))
  assert np.mean(1 - np.clip(got, -1, 1)) == pytest.approx(d_expected, rel=1e-6)
  assert np.max(np.abs(got - expected)) <= 1e-4


def test_float32_centring_rounds_like_the_authors_double_subtraction():
  # single(X - mu) with mu summed in double: the float32 path reproduces it where plain float32
  # sums of 16-bit values would not, and keeps values tiny next to the image's largest ones.
  rng = np.random.default_rng(1)
  z = (30000 + 3 * rng.normal(size=(40, 36, 2)) + rng.uniform(size=(40, 36, 2))).astype(np.float32)
  z[:, :6] = (1e-6 * rng.uniform(size=(40, 6, 2))).astype(np.float32)  # tiny beside large
  expected, scale = (np.stack([fn(z[..., b]) for b in range(2)], axis=-1) for fn in (
      lambda x: (x.astype(np.float64) - ref.window_sum(x, 2) / 16).astype(np.float32),
      lambda x: ref.window_sum(np.abs(x), 2) / 16))
  got = np.asarray(jax.jit(lambda x: correlation_field.centred(x, 2))(z))
  assert np.array_equal(got[:, 8:], expected[:, 8:])  # 16-bit values: bit-exact
  # Anywhere: within a few float32 roundings (pairwise sums of 16) of the window's magnitude.
  assert np.all(np.abs(got - expected) <= 2 ** -20 * scale)
  plain = z - np.asarray(correlation_field.window_sums(jnp.asarray(z), 2)) / 16
  assert not np.array_equal(plain[:, 8:], expected[:, 8:])
