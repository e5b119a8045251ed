"""Reprojection indexes and D_rho (metrics.reprojection) against the NumPy reference and by hand."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fr_reference as ref
from dcfnet_jax import imaging
from dcfnet_jax import metrics
from dcfnet_jax.metrics import reprojection

KEYS = metrics.REPROJECTION_KEYS


def _case(seed, size, bands, sensor, phase=(2, 2)):
  """fused, ms, pan: MS = the scene MTF-filtered and sampled at ``phase`` (reference code)."""
  pan, hr = ref.synthetic_scene(seed, size, bands)
  ms = ref.reproject(hr, np.tile(phase, (bands, 1)), sensor, 4)
  fused = hr + np.random.default_rng(seed + 1).normal(0, 25.0, hr.shape)
  return fused, ms, pan


@pytest.fixture(scope="module")
def wv3_case():
  return _case(11, 128, 8, "WV3")


@pytest.fixture(scope="module")
def wv3_expected(wv3_case):
  return ref.reprojection_indexes(*wv3_case, "WV3", 4)


def test_mtf_bank_is_clipped_unit_sum_genmtf():
  bank = metrics.reprojection_kernels("wv3", 4)
  assert bank.shape == (41, 41, 8)
  np.testing.assert_allclose(bank.sum(axis=(0, 1)), 1.0, rtol=1e-14)
  assert bank.min() == 0.0
  toolbox = imaging.mtf_kernels("wv3", 4)
  assert toolbox.min() < 0 and abs(toolbox[..., 0].sum() - 0.998823) < 1e-6  # not clipped
  clipped = np.maximum(toolbox, 0)
  np.testing.assert_allclose(bank, clipped / clipped.sum(axis=(0, 1)), rtol=1e-14)
  np.testing.assert_allclose(bank, ref.mtf_bank("WV3", 4, 8), atol=1e-15)
  for sensor in ("S2-20m", "GeoEye1", "IKONOS", "pleiades"):
    bands = imaging.get_sensor(sensor).num_bands
    np.testing.assert_allclose(metrics.reprojection_kernels(sensor, 4),
                               ref.mtf_bank(sensor if sensor != "pleiades" else "x", 4, bands),
                               atol=1e-15)
  np.testing.assert_array_equal(metrics.reprojection_kernels([0.3, 0.3], 4),
                                metrics.reprojection_kernels("none", 4, 2))


def test_one_sensor_table_two_protocols():
  s2 = imaging.get_sensor("S2-10m")
  assert s2.gains(4, "reprojection") == (0.275, 0.28, 0.25, 0.24)
  assert s2.gains(4) == (0.3,) * 4  # the toolbox's genMTF does not know Sentinel-2
  assert imaging.get_sensor("s2-60m").gains(3, "reprojection") == (0.3175, 0.295, 0.30)
  assert imaging.get_sensor("s2-20m").gains(6, "reprojection")[4] == 0.205
  for name in ("qb", "ikonos", "geoeye1", "wv4", "wv2", "wv3", "gf2", "none"):
    sensor = imaging.get_sensor(name)
    bands = sensor.num_bands or 5
    assert sensor.gains(bands, "reprojection") == sensor.gains(bands, "toolbox")
  assert imaging.get_sensor("wv4").gains(4, "reprojection") == (0.23,) * 4
  with pytest.raises(ValueError, match="protocol must be one of"):
    s2.gains(4, "matlab")


@pytest.mark.parametrize("x64", [True, False], ids=["float64", "float32"])
def test_indexes_match_reference(wv3_case, wv3_expected, x64):
  fused, ms, pan = wv3_case
  with jax.enable_x64(x64):
    got = metrics.reprojection_indexes(fused, ms, pan, sensor="wv3")
    phases = metrics.coregistration_phases(ms, pan, sensor="wv3")
    low = metrics.reproject(fused, phases, sensor="wv3")
  assert {k: got[k].dtype for k in KEYS} == {k: jnp.float64 if x64 else jnp.float32 for k in KEYS}
  np.testing.assert_array_equal(phases, wv3_expected["phases"])
  rtol = 1e-9 if x64 else 1e-4
  np.testing.assert_allclose(low, wv3_expected["reprojected"], rtol=1e-12 if x64 else 1e-6)
  for k in KEYS:
    assert float(got[k]) == pytest.approx(wv3_expected[k], rel=rtol), k


def test_four_bands_and_gains_match_reference():
  fused, ms, pan = _case(5, 128, 4, "QB", phase=(1, 3))
  expected = ref.reprojection_indexes(fused, ms, pan, "QB", 4)
  with jax.enable_x64(True):
    got = metrics.reprojection_indexes(fused, ms, pan, sensor="qb")
    by_gains = metrics.reprojection_indexes(fused, ms, pan, sensor=[0.34, 0.32, 0.30, 0.22])
  np.testing.assert_array_equal(expected["phases"], [[1, 3]] * 4)
  for k in KEYS:
    assert float(got[k]) == pytest.approx(expected[k], rel=1e-9), k
    assert float(by_gains[k]) == float(got[k]), k


def test_wald_decimation_is_found_at_phase_2():
  # The toolbox's Wald degradation keeps rows/cols 4k + 2 (0-based): 3 in the authors' 1-based
  # terms, and the search must say so for a PAN that carries the bands' detail.
  pan, hr = ref.synthetic_scene(21, 128, 4)
  ms = imaging.wald_degrade(hr, pan, 4, "none")[0]
  np.testing.assert_array_equal(metrics.coregistration_phases(ms, pan), [[2, 2]] * 4)


def test_known_shift_is_found():
  pan, hr = ref.synthetic_scene(8, 128, 4)
  ms = ref.reproject(hr, np.array([[2, 2]] * 4), "none", 4)
  # Shift the PAN content by (+1, -2) pixels: the matching samples move to phase (3, 0).
  shifted = np.roll(pan, (1, -2), axis=(0, 1))
  np.testing.assert_array_equal(metrics.coregistration_phases(ms, shifted), [[3, 0]] * 4)
  # Per band: the MS bands cut from the PAN itself at four different phases.
  truth = np.array([[0, 3], [1, 2], [3, 0], [2, 1]])
  ms_pan = ref.reproject(np.repeat(pan[..., None], 4, axis=-1), truth, "none", 4)
  with jax.enable_x64(True):
    np.testing.assert_array_equal(metrics.coregistration_phases(ms_pan, pan), truth)
  np.testing.assert_array_equal(metrics.coregistration_phases(ms_pan, pan), truth)


def test_exact_reprojection_gives_ideal_values():
  # F = the PAN in every band and MS = F reprojected (reference code): the reprojected F equals
  # the MS, so R-Q2n = R-Q = 1, R-SAM = R-ERGAS = 0; D_rho of a fused equal to the PAN is 0.
  pan, _ = ref.synthetic_scene(2, 128, 1)
  fused = np.repeat(pan[..., None], 4, axis=-1)
  truth = np.array([[1, 0], [0, 2], [3, 3], [2, 1]])
  ms = ref.reproject(fused, truth, "none", 4)
  for x64, tol in ((True, 1e-12), (False, 1e-5)):
    with jax.enable_x64(x64):
      got = metrics.reprojection_indexes(fused, ms, pan)
    assert float(got["R_Q2n"]) == pytest.approx(1.0, abs=tol)
    assert float(got["R_Q"]) == pytest.approx(1.0, abs=tol)
    assert float(got["R_SAM"]) == pytest.approx(0.0, abs=1e-4 if not x64 else 1e-6)
    assert float(got["R_ERGAS"]) == pytest.approx(0.0, abs=tol)
    assert float(got["D_rho"]) == pytest.approx(0.0, abs=1e-6)


def test_constant_images():
  # Constant F, MS, PAN: R-Q2n = R-Q = 1 (the toolbox's constant-block cases), R-SAM = R-ERGAS
  # = 0, and D_rho = the share of pixels whose windows see no border pixel:
  # ((H - 4w + 2) / H)^2 with w = 2 (see test_correlation_field).
  h = 128
  fused = np.full((h, h, 4), 900.0)
  ms = np.full((h // 4, h // 4, 4), 900.0)
  pan = np.full((h, h), 1200.0)
  with jax.enable_x64(True):
    got = metrics.reprojection_indexes(fused, ms, pan)
  assert float(got["R_Q2n"]) == pytest.approx(1.0, abs=1e-12)
  assert float(got["R_Q"]) == pytest.approx(1.0, abs=1e-12)
  assert float(got["R_SAM"]) == pytest.approx(0.0, abs=1e-5)
  assert float(got["R_ERGAS"]) == pytest.approx(0.0, abs=1e-12)
  assert float(got["D_rho"]) == pytest.approx(((h - 6) / h) ** 2, abs=1e-7)
  assert float(ref.d_rho(fused, pan, 4)) == pytest.approx(((h - 6) / h) ** 2, abs=1e-7)


def test_d_rho_orders_methods(wv3_case):
  # Plain upsampling correlates poorly with the PAN (D_rho high), a PAN-injected image well.
  fused, ms, pan = wv3_case
  exp = np.asarray(imaging.interp23tap(ms, 4))
  injected = exp + (pan - np.asarray(imaging.interp23tap(ms.mean(-1), 4)))[..., None]
  d_exp, d_inj = (float(metrics.d_rho(x, pan)) for x in (exp, injected))
  assert d_exp > 0.3 and d_inj < 0.5 * d_exp
  assert d_exp == pytest.approx(ref.d_rho(exp, pan, 4), rel=1e-4)


def test_batch_equals_single_images(wv3_case):
  fused, ms, pan = wv3_case
  batch = metrics.reprojection_indexes(np.stack([fused, fused[::-1]]), np.stack([ms, ms[::-1]]),
                                       np.stack([pan, pan[::-1]])[..., None], sensor="wv3")
  first = metrics.reprojection_indexes(fused, ms, pan, sensor="wv3")
  second = metrics.reprojection_indexes(fused[::-1], ms[::-1], pan[::-1], sensor="wv3")
  for k in KEYS:
    assert batch[k].shape == (2,)
    np.testing.assert_allclose(batch[k], [first[k], second[k]], rtol=2e-6, err_msg=k)
  phases = metrics.coregistration_phases(np.stack([ms, ms]), np.stack([pan, pan]), sensor="wv3")
  assert phases.shape == (2, 8, 2)
  assert metrics.reproject(np.stack([fused] * 2), phases, sensor="wv3").shape == (2, 32, 32, 8)
  assert metrics.d_rho(np.stack([fused] * 3), np.stack([pan] * 3)).shape == (3,)


def test_ties_go_to_the_first_in_column_major_order():
  rho = np.zeros((4, 4, 3))
  rho[1, 0, 0] = rho[0, 1, 0] = 0.9  # (i=1, j=0) comes before (i=0, j=1): i varies fastest
  rho[3, 2, 1] = rho[2, 3, 1] = 0.5  # (3, 2) before (2, 3)
  # band 2: all equal -> (0, 0)
  np.testing.assert_array_equal(reprojection.best_phases(jnp.asarray(rho)),
                                [[1, 0], [3, 2], [0, 0]])


def test_bad_input_one_line_each(wv3_case):
  fused, ms, pan = wv3_case
  cases = [
      ((fused, ms[:-1], pan), "MS of 31x32 and fused/PAN of 128x128 are not in the ratio 4; "
                              "expected MS of 32x32"),
      ((fused[:64, :64], ms[:16, :16], pan[:64, :64]), "MS of 16x16 is too small for the 32x32 "
                                                         "blocks"),
      ((fused, ms, pan[:-4]), r"PAN of shape \(124, 128\) does not match fused"),
      ((fused, ms[..., :4], pan), "MS of shape .* does not match fused"),
  ]
  for args, message in cases:
    with pytest.raises(ValueError, match=message):
      metrics.reprojection_indexes(*args, sensor="wv3")
  for name, arrays in (("fused", (fused, ms, pan)), ("ms", (ms,)), ("pan", (pan,))):
    bad = [a.copy() for a in arrays]
    bad[0][(3, 5) + (0,) * (bad[0].ndim - 2)] = np.nan
    args = dict(zip(("fused", "ms", "pan"), (fused, ms, pan)))
    args[name] = bad[0]
    with pytest.raises(ValueError, match=rf"{name} of shape .* has the value nan at index "
                                         rf"\(3, 5"):
      metrics.reprojection_indexes(args["fused"], args["ms"], args["pan"], sensor="wv3")
  with pytest.raises(ValueError, match="has the value inf"):
    metrics.d_rho(np.where(fused == fused[0, 0, 0], np.inf, fused), pan)
  # Ratio 2: the authors' step of 4 does not fit; the message says what to pass.
  with pytest.raises(ValueError, match=r"every 4 pixels .* ratio 2 needs step=2"):
    metrics.reprojection_indexes(fused, ms[:, :, :][::1, ::1].repeat(2, 0).repeat(2, 1), pan,
                                 ratio=2)
  with pytest.raises(ValueError, match=r"phases must lie in \[0, 4\)"):
    metrics.reproject(fused, np.full((8, 2), 4), sensor="wv3")


def test_ratio_2_with_step_2_matches_reference():
  pan, hr = ref.synthetic_scene(6, 64, 3)
  ms = ref.reproject(hr, np.array([[1, 0]] * 3), "none", 2, step=2)
  fused = hr + np.random.default_rng(0).normal(0, 20, hr.shape)
  phases = ref.coregistration_phases(ms, pan, "none", 2)
  with jax.enable_x64(True):
    got = metrics.reprojection_indexes(fused, ms, pan, ratio=2, step=2)
    np.testing.assert_array_equal(metrics.coregistration_phases(ms, pan, ratio=2), phases)
  low = ref.reproject(fused, phases, "none", 2, step=2)
  assert float(got["R_ERGAS"]) == pytest.approx(ref.ergas(ms, low, 2), rel=1e-9)
  assert float(got["R_Q2n"]) == pytest.approx(ref.q2n(ms, low), rel=1e-9)
  assert float(got["D_rho"]) == pytest.approx(ref.d_rho(fused, pan, 2), rel=1e-9)


@pytest.mark.parametrize("ms_fill", [40, 35])
def test_fill_areas_are_exact_like_direct_filtering(ms_fill):
  # A scene with a no-data strip (zeros) on the left: MATLAB's direct filter sums give exact
  # zeros there, so Q_avg meets its "both windows constant" case (q = 1); FFT filtering alone
  # would leave rounding noise (q = 0 in those windows).
  fused, ms, pan = (x[:128] for x in _case(13, 256, 4, "none"))  # MS 32 x 64
  ms = ms[:32].copy()
  fused[:, :160] = 0.0
  ms[:, :ms_fill] = 0.0
  pan[:, :160] = 0.0
  expected = ref.reprojection_indexes(fused, ms, pan, "none", 4)
  # The reprojected fill is exactly 0 up to MS column 34 (its kernels reach no data), so the
  # Q_avg windows at MS columns 0..3 are constant 0 in both images.
  low = expected["reprojected"]
  assert np.all(low[:, :35] == 0) and np.all(low[:, 35:40] != 0)
  for x64, rtol in ((True, 1e-9), (False, 1e-4)):
    keys = KEYS
    if ms_fill == 40 and not x64:
      # Known float32 limit of the toolbox Q_avg (docs/full_resolution.md): where the MS is
      # all zero and the other image holds only kernel tails (~1e-9 DN, columns 35..39),
      # the image-mean shift of its float32 sums erases them: q = 1 instead of 0.
      keys = tuple(k for k in KEYS if k != "R_Q")
    if ms_fill == 35:
      # MS data where the reprojection holds only kernel tails (unlike real scenes, whose
      # fused fill matches the MS fill): SAM sees those tails, which FFT filtering carries
      # with an absolute (not relative) rounding error: noise at float32 precision.
      rtol = 1e-4
      keys = KEYS if x64 else tuple(k for k in KEYS if k != "R_SAM")
    with jax.enable_x64(x64):
      got = metrics.reprojection_indexes(fused, ms, pan)
    for k in keys:
      assert float(got[k]) == pytest.approx(expected[k], rel=rtol), (k, x64)


def test_flat_window_detection_brute_force():
  rng = np.random.default_rng(0)
  x = rng.integers(0, 2, size=(23, 19, 2)).astype(np.float32)
  x[3:15, 2:16, 0] = 7.0  # plateaus of several sizes
  x[10:23, 5:19, 1] = 3.0
  half = 3
  padded = np.pad(x, ((half, half), (half, half), (0, 0)), mode="edge")
  expected = np.zeros(x.shape, bool)
  for b in range(2):
    for i in range(x.shape[0]):
      for j in range(x.shape[1]):
        window = padded[i:i + 2 * half + 1, j:j + 2 * half + 1, b]
        expected[i, j, b] = np.all(window == window[0, 0])
  assert expected.any() and not expected.all()
  np.testing.assert_array_equal(reprojection.flat_neighbourhoods(jnp.asarray(x), half), expected)
  # On a grid: step 2 divides 2 * half (block path), step 4 does not (general path).
  for step in (2, 4):
    rows = (x.shape[0] - 1) // step + 1
    cols = (x.shape[1] - 1) // step + 1
    size = (step * (rows - 1) + 2 * half + 1, step * (cols - 1) + 2 * half + 1)
    region = np.pad(x, ((half, half + size[0]), (half, half + size[1]), (0, 0)), mode="edge")
    region = region[:size[0], :size[1]]
    got = reprojection.flat_windows_on_grid(jnp.asarray(region), half, step, (rows, cols))
    np.testing.assert_array_equal(got, expected[::step, ::step], err_msg=f"step {step}")
