"""Tests of dcfnet_jax.imaging against the toolbox's golden tool outputs and spec values."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.ndimage
from conftest import data_file

from dcfnet_jax import imaging


@pytest.fixture(scope="module")
def cases():
  with np.load(data_file("metrics_cases.npz")) as f:
    return {k: f[k] for k in f.files}


def _rel(actual, expected):
  actual = np.asarray(actual, np.float64)
  expected = np.asarray(expected, np.float64)
  assert actual.shape == expected.shape
  return np.max(np.abs(actual - expected)) / np.max(np.abs(expected))


_SCENES = (("A", "qb"), ("B", "wv3"), ("C", "none"))


@pytest.mark.parametrize("x64,tol", [(True, 1e-9), (False, 1e-4)])
def test_golden_tool_outputs(cases, x64, tol):
  with jax.enable_x64(x64):
    f = lambda k: cases[k].astype(np.float64)  # noqa: E731
    assert _rel(imaging.interp23tap(f("A_lrms"), 4), f("A_interp23tap")) < tol
    for scene, sensor in _SCENES:
      ms_lr, pan_lr = imaging.wald_degrade(f(f"{scene}_gt"), f(f"{scene}_pan"), 4, sensor)
      assert ms_lr.dtype == (jnp.float64 if x64 else jnp.float32)
      assert _rel(ms_lr, f(f"{scene}_lrms")) < tol, scene
      assert _rel(pan_lr, f(f"{scene}_pan_lr")) < tol, scene
    assert _rel(imaging.imresize(f("B_pan"), 0.25), f("B_pan_ds_lowres")) < tol
    assert _rel(imaging.degrade_pan_for_ds(f("B_pan"), 4), f("B_pan_ds_filt")) < tol


def test_golden_genmtf(cases):
  # Kernels are designed in numpy float64 regardless of the JAX mode.
  assert _rel(imaging.mtf_kernels("qb", 4, 4), cases["A_genMTF_QB"]) < 1e-12
  assert _rel(imaging.mtf_kernels("WV3", 4), cases["B_genMTF_WV3"]) < 1e-12
  assert _rel(imaging.mtf_kernels("none", 4, 3), cases["C_genMTF_none"]) < 1e-12
  # Any unknown-to-the-toolbox sensor uses 0.3 per band, like 'none'.
  np.testing.assert_array_equal(imaging.mtf_kernels("gf2", 4, 3), imaging.mtf_kernels("none", 4, 3))


def test_kernel_validation_values():
  # docs/baseline_definitions.md §1.1 validation values (also: kernels are not renormalised).
  k = imaging.mtf_kernel(0.325, 4)
  assert k.shape == (41, 41)
  np.testing.assert_allclose([k[20, 20], k[20, 21], k.sum()], [0.041570, 0.036475, 0.998823],
                             atol=1e-6)
  wv3 = imaging.mtf_kernels("wv3", 4)
  np.testing.assert_allclose([wv3[20, 20, 4], wv3[..., 4].sum(), wv3[..., 7].sum()],
                             [0.046358, 0.998943, 0.998790], atol=1e-6)
  p = imaging.mtf_pan_kernel("wv3", 4)
  np.testing.assert_allclose([p[20, 20], p.sum()], [0.023764, 0.997953], atol=1e-6)
  lp = imaging.lp_filter_gauss_kernel(4)
  np.testing.assert_allclose([lp[20, 20], lp.sum()], [0.040771, 0.998800], atol=1e-6)


def test_sensor_table():
  wv3 = imaging.get_sensor("wv3")
  assert wv3.toolbox_name == "WV3" and wv3.num_bands == 8 and wv3.max_value == 2047.0
  assert wv3.gains(8)[4] == 0.365 and wv3.pan_gain == 0.14 and wv3.rgb == (4, 2, 1)
  assert imaging.get_sensor("GeoEye1") is imaging.get_sensor("geoeye1")
  assert imaging.get_sensor("wv2").gains(8) == (0.35,) * 7 + (0.27,)
  assert imaging.get_sensor("qb").rgb == (2, 1, 0)
  gf2 = imaging.get_sensor("gf2")
  assert gf2.max_value == 1023.0 and gf2.gains(4) == (0.3,) * 4
  assert imaging.get_sensor("none").gains(5) == (0.3,) * 5
  assert imaging.get_sensor("qb").gains(3) == (0.34, 0.32, 0.30)  # first entries, like genMTF
  with pytest.raises(ValueError, match="valid names: .*wv3"):
    imaging.get_sensor("wv9")
  with pytest.raises(ValueError, match="has MTF gains for 4 bands"):
    imaging.get_sensor("qb").gains(8)
  with pytest.raises(ValueError, match="no PAN MTF gain"):
    imaging.mtf_pan_kernel("gf2")
  np.testing.assert_array_equal(imaging.mtf_pan_kernel("none"), imaging.mtf_kernel(0.15))
  custom = imaging.custom_sensor(3, [0.3, 0.31, 0.32], pan_gain=0.2, bits=12)
  assert custom.max_value == 4095.0 and custom.gains(3) == (0.3, 0.31, 0.32)
  np.testing.assert_array_equal(imaging.mtf_kernels(custom, 4)[..., 1], imaging.mtf_kernel(0.31))
  with pytest.raises(ValueError, match="2 MTF gains for 3 bands"):
    imaging.custom_sensor(3, [0.3, 0.3])
  with pytest.raises(ValueError, match=r"\(0, 1\)"):
    imaging.custom_sensor(2, 1.5)


def test_correlate_replicate_matches_scipy():
  rng = np.random.default_rng(0)
  img = rng.normal(size=(2, 23, 19, 3))
  kern = rng.normal(size=(7, 7, 3))  # not symmetric: checks correlation orientation
  with jax.enable_x64(True):
    out = imaging.correlate_replicate(img, kern)
  for n in range(2):
    for c in range(3):
      ref = scipy.ndimage.correlate(img[n, ..., c], kern[..., c], mode="nearest")
      np.testing.assert_allclose(out[n, ..., c], ref, rtol=0, atol=1e-12)
  # 2-D input, kernel larger than the image (41x41 on 16x16): replicate still holds.
  small = rng.normal(size=(16, 16))
  k41 = imaging.mtf_kernel(0.3)
  with jax.enable_x64(True):
    out = imaging.correlate_replicate(small, k41)
  np.testing.assert_allclose(out, scipy.ndimage.correlate(small, k41, mode="nearest"), atol=1e-12)


def test_mtf_filter_constant_gain_not_renormalised():
  with jax.enable_x64(True):
    out = imaging.mtf_filter(np.full((40, 40, 8), 1000.0), "wv3", 4)
  sums = imaging.mtf_kernels("wv3", 4).sum(axis=(0, 1))
  np.testing.assert_allclose(out, np.broadcast_to(1000.0 * sums, out.shape), rtol=1e-12)


def test_interp23tap_properties():
  rng = np.random.default_rng(1)
  ms = rng.uniform(0, 2047, size=(3, 8, 12, 2))
  with jax.enable_x64(True):
    up = imaging.interp23tap(ms, 4)
    assert up.shape == (3, 32, 48, 2)
    # Original samples are kept at 4i+2 and decimation returns them exactly.
    np.testing.assert_array_equal(up[:, 2::4, 2::4], ms)
    np.testing.assert_array_equal(imaging.decimate(up, 4), ms)
    # Circular borders: interpolating a rolled image = rolling the result.
    rolled = imaging.interp23tap(np.roll(ms, 1, axis=1), 4)
    np.testing.assert_allclose(rolled, np.roll(up, 4, axis=1), atol=1e-9)
    # Constants are preserved up to the taps' 4e-10 deficit.
    const = imaging.interp23tap(np.full((8, 8), 1000.0), 4)
    np.testing.assert_allclose(const, 1000.0, rtol=2e-9)
    # Ratio 2: one pass, samples at odd positions.
    up2 = imaging.interp23tap(ms[0], 2)
    assert up2.shape == (16, 24, 2)
    np.testing.assert_array_equal(up2[1::2, 1::2], ms[0])
    # Batched = per image.
    np.testing.assert_allclose(imaging.interp23tap(ms[1], 4), up[1], atol=1e-12)
  with pytest.raises(ValueError, match="num_passes"):
    imaging.interp23tap(ms, 8)
  with pytest.raises(ValueError, match="power of 2"):
    imaging.interp23tap(ms, 3)
  assert imaging.interp23tap(ms[0, :4, :4], 8, num_passes=3).shape == (32, 32, 2)


def test_imresize_matlab_weights_and_borders():
  # docs/baseline_definitions.md §1.4: 16 symmetric weights at offsets 4k-6 .. 4k+9 for scale 1/4.
  idx, w = imaging.imresize_weights(64, 0.25, "bicubic")
  assert idx.shape == (16, 16)
  half = [-0.00170898, -0.01098633, -0.01831055, -0.01196289,
          0.02270508, 0.09741211, 0.18188477, 0.24096680]
  np.testing.assert_allclose(w[5], half + half[::-1], atol=5e-9)
  np.testing.assert_array_equal(idx[5], np.arange(4 * 5 - 6, 4 * 5 + 10))
  # Left border mirrors with the edge repeated: -6..-1 -> 5..0.
  np.testing.assert_array_equal(idx[0, :6], [5, 4, 3, 2, 1, 0])
  # Nearest keeps 4k+2; sizes not divisible by the ratio give ceil(n/4) samples.
  idx, w = imaging.imresize_weights(65, 0.25, "nearest")
  assert idx.shape == (17, 1) and np.all(w == 1)
  np.testing.assert_array_equal(idx[:16, 0], np.arange(2, 66, 4)[:16])
  assert idx[16, 0] == 63  # 0-based 66 lies past the end (65) and mirrors to 63
  x = np.arange(10.0)
  with jax.enable_x64(True):
    np.testing.assert_array_equal(imaging.decimate(np.tile(x, (10, 1)), 2)[0], x[1::2])
    # Upscaling (no antialiasing) reproduces constants and has the right size.
    up = imaging.imresize(np.full((5, 7, 2), 3.0), 2.0)
    assert up.shape == (10, 14, 2)
    np.testing.assert_allclose(up, 3.0, rtol=1e-14)
  with pytest.raises(ValueError, match="bicubic"):
    imaging.imresize(x[None], 0.5, method="bilinear")


def test_imresize_differs_from_jax_image_resize():
  rng = np.random.default_rng(2)
  img = rng.uniform(0, 2047, size=(32, 32))
  ours = np.asarray(imaging.imresize(img, 0.25))
  theirs = np.asarray(jax.image.resize(jnp.asarray(img, jnp.float32), (8, 8), "bicubic"))
  assert np.max(np.abs(ours - theirs)) > 1.0  # pitfall 10: not interchangeable


def test_wald_degrade_batch_and_jit(cases):
  ms = np.stack([cases["B_gt"], cases["B_gt"][::-1]])
  pan = np.stack([cases["B_pan"], cases["B_pan"][::-1]])[..., None]
  fn = jax.jit(lambda m, p: imaging.wald_degrade(m, p, 4, "wv3"))
  ms_lr, pan_lr = fn(ms, pan)
  assert ms_lr.shape == (2, 32, 32, 8) and pan_lr.shape == (2, 32, 32, 1)
  assert ms_lr.dtype == jnp.float32
  single_ms, single_pan = imaging.wald_degrade(ms[1], pan[1], 4, "wv3")
  np.testing.assert_allclose(ms_lr[1], single_ms, rtol=1e-5, atol=1e-3)
  np.testing.assert_allclose(pan_lr[1], single_pan, rtol=1e-5, atol=1e-3)
  np.testing.assert_allclose(ms_lr[0], cases["B_lrms"], rtol=1e-5)
  with pytest.raises(ValueError, match="dimensions"):
    imaging.imresize(np.zeros((1, 2, 3, 4, 5)), 0.5)
