"""Unit tests of the toolbox quirks (docs/metric_definitions.md §4) in dcfnet_jax.metrics."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dcfnet_jax import metrics
from dcfnet_jax.metrics import _common
from dcfnet_jax.metrics import hypercomplex


def _smooth_image(rng, h, w, c, mean=800.0, spread=300.0):
  """Smooth positive DN image (like a scene): random low-frequency field per band."""
  base = rng.normal(size=(h // 8 + 2, w // 8 + 2, c))
  up = np.kron(base, np.ones((8, 8, 1)))[:h, :w]
  return mean + spread * up + rng.normal(0, 15.0, size=(h, w, c))


@pytest.fixture(scope="module")
def pair():
  rng = np.random.default_rng(7)
  gt = _smooth_image(rng, 64, 64, 4)
  fused = gt + rng.normal(0, 25.0, size=gt.shape)
  return fused, gt


def test_round_uint16_half_away_from_zero():
  x = jnp.asarray([0.5, 1.5, 2.5, 2.4999, -0.4, -0.5, -3.0, 65535.4, 70000.0, jnp.nan, 1e9])
  expected = [1, 2, 3, 2, 0, 0, 0, 65535, 65535, 0, 65535]
  np.testing.assert_array_equal(_common.round_uint16(x), expected)
  # jnp.round would give 0, 2, 2 for the first three (half to even).
  assert not np.array_equal(jnp.round(x[:3]), expected[:3])


def test_cut_bounds_is_asymmetric():
  x = jnp.arange(256.0)[:, None, None] * jnp.ones((256, 256, 2))
  cut = _common.cut_bounds(x, 21)
  assert cut.shape == (215, 215, 2)
  assert float(cut[0, 0, 0]) == 20.0 and float(cut[-1, 0, 0]) == 234.0
  batch = _common.cut_bounds(jnp.stack([x, x]), 21)
  assert batch.shape == (2, 215, 215, 2)
  with pytest.raises(ValueError, match="dim_cut 40"):
    _common.cut_bounds(jnp.zeros((64, 64, 1)), 40)


def test_crop_then_indices_equals_precropped(pair):
  fused, gt = pair
  with jax.enable_x64(True):
    cut = metrics.reduced_resolution_indexes(fused, gt, flag_cut_bounds=True, dim_cut=5)
    manual = metrics.reduced_resolution_indexes(fused[4:59, 4:59], gt[4:59, 4:59],
                                                flag_cut_bounds=False)
  for k in metrics.RR_KEYS:
    assert float(cut[k]) == pytest.approx(float(manual[k]), rel=1e-13), k


def test_threshold_only_with_thvalues(pair):
  fused, gt = pair
  fused = fused.copy()
  fused[:8, :8] = 2300.0
  fused[-8:, -8:] = -150.0
  fused[20, 20, 0] = 2048.0
  th = _common.threshold_values(jnp.asarray(fused), 11)
  assert float(jnp.max(th)) == 2048.0 and float(jnp.min(th)) == 0.0  # 2^L, not 2^L - 1
  with jax.enable_x64(True):
    on = metrics.reduced_resolution_indexes(fused, gt, thvalues=True, flag_cut_bounds=False)
    off = metrics.reduced_resolution_indexes(fused, gt, thvalues=False, flag_cut_bounds=False)
    clipped = metrics.reduced_resolution_indexes(np.clip(fused, 0, 2048), gt,
                                                 flag_cut_bounds=False)
    # GT is never clipped: a GT above 2^L stays.
    gt_high = gt.copy()
    gt_high[0, 0] = 3000.0
    gt_on = metrics.reduced_resolution_indexes(gt_high, gt_high, thvalues=True,
                                               flag_cut_bounds=False)
  for k in metrics.RR_KEYS:
    assert float(on[k]) == pytest.approx(float(clipped[k]), rel=1e-13), k
  assert float(on["SAM"]) != pytest.approx(float(off["SAM"]), rel=1e-6)
  assert float(gt_on["ERGAS"]) > 0  # fused (clipped) != gt (not clipped)


def test_threshold_full_resolution(pair):
  fused, _ = pair
  rng = np.random.default_rng(3)
  ms = _smooth_image(rng, 16, 16, 4)
  pan = _smooth_image(rng, 64, 64, 1)[..., 0]
  out_of_range = fused.copy()
  out_of_range[:5] = 2500.0
  with jax.enable_x64(True):
    on = metrics.full_resolution_indexes(out_of_range, ms, pan, sensor="qb", thvalues=True)
    ref = metrics.full_resolution_indexes(np.clip(out_of_range, 0.0, 2048.0), ms, pan,
                                          sensor="qb")
    off = metrics.full_resolution_indexes(out_of_range, ms, pan, sensor="qb")
  for k in metrics.FR_KEYS:
    assert float(on[k]) == pytest.approx(float(ref[k]), rel=1e-13), k
  assert float(on["D_s"]) != pytest.approx(float(off["D_s"]), rel=1e-6)


def test_sam_drops_zero_spectra():
  rng = np.random.default_rng(1)
  gt = rng.uniform(100, 1000, size=(8, 8, 4))
  fused = gt * rng.uniform(0.9, 1.1, size=gt.shape)
  gt0, fused0 = gt.copy(), fused.copy()
  gt0[2, 3] = 0.0  # zero in gt only
  fused0[5, 5] = 0.0  # zero in fused only
  with jax.enable_x64(True):
    value = float(metrics.sam(gt0, fused0))
    u, v = gt0.reshape(-1, 4), fused0.reshape(-1, 4)
    keep = (np.linalg.norm(u, axis=1) > 0) & (np.linalg.norm(v, axis=1) > 0)
    cos = np.sum(u * v, 1)[keep] / (np.linalg.norm(u, axis=1) * np.linalg.norm(v, axis=1))[keep]
    assert keep.sum() == 62
    assert value == pytest.approx(np.degrees(np.mean(np.arccos(np.clip(cos, -1, 1)))),
                                  rel=1e-12)
    assert float(metrics.sam(gt, gt)) == 0.0
    # Opposite spectra: 180 degrees; all spectra zero: NaN (0/0 as the toolbox).
    assert float(metrics.sam(gt, -gt)) == pytest.approx(180.0, rel=1e-12)
    assert np.isnan(float(metrics.sam(np.zeros_like(gt), fused)))


def test_sam_float32_identical_is_zero():
  rng = np.random.default_rng(2)
  gt = rng.uniform(100, 2000, size=(16, 16, 8)).astype(np.float32)
  # arccos(<u,v>) would give ~0.02 degrees of float32 noise here.
  assert float(metrics.sam(gt, gt)) == 0.0
  assert float(metrics.sam(gt, 1.7 * gt)) < 1e-4


def test_ergas_formula():
  gt = np.stack([np.full((8, 8), 100.0), np.full((8, 8), 200.0)], -1)
  fused = gt + np.stack([np.full((8, 8), 10.0), np.full((8, 8), -20.0)], -1)
  # (100/4) * sqrt(((10/100)^2 + (20/200)^2) / 2) = 25 * 0.1
  assert float(metrics.ergas(gt, fused, 4)) == pytest.approx(2.5, rel=1e-6)
  assert float(metrics.ergas(gt, fused, 2)) == pytest.approx(5.0, rel=1e-6)


def _q_avg_bruteforce(gt, fused, size):
  """The toolbox's raw-sum img_qi, window by window, in float64 numpy."""
  h, w, c = gt.shape
  n = size * size
  vals = []
  for b in range(c):
    for i in range(h - size + 1):
      for j in range(w - size + 1):
        x = gt[i:i + size, j:j + size, b].ravel()
        y = fused[i:i + size, j:j + size, b].ravel()
        sx, sy = x.sum(), y.sum()
        s, t = sx * sy, sx * sx + sy * sy
        num = 4 * (n * (x * y).sum() - s) * s
        d1 = n * ((x * x).sum() + (y * y).sum()) - t
        den = d1 * t
        if den != 0:
          vals.append(num / den)
        elif d1 == 0 and t != 0:
          vals.append(2 * s / t)
        else:
          vals.append(1.0)
  return np.mean(vals)


def test_q_avg_sliding_windows_and_constant_windows():
  rng = np.random.default_rng(4)
  gt = np.round(rng.uniform(0, 50, size=(14, 13, 2)))
  fused = gt + np.round(rng.normal(0, 3, size=gt.shape))
  # Constant patches: both constant (2*mx*my/(mx^2+my^2)), both zero (1), one constant.
  gt[:7, :7, 0], fused[:7, :7, 0] = 10.0, 30.0
  gt[:7, :7, 1], fused[:7, :7, 1] = 0.0, 0.0
  gt[7:, 6:, 0] = 5.0
  with jax.enable_x64(True):
    value = float(metrics.q_avg(gt, fused, 5))
  assert value == pytest.approx(_q_avg_bruteforce(gt, fused, 5), rel=1e-12)
  with pytest.raises(ValueError, match="smaller than the 32-pixel window"):
    metrics.q_avg(gt, fused, 32)


def test_hypercomplex_algebra():
  rng = np.random.default_rng(5)
  for n in (1, 2, 4, 8):
    p, q = rng.normal(size=n), rng.normal(size=n)
    # Composition algebra up to 8 components: |p q| = |p| |q|.
    assert np.linalg.norm(hypercomplex.mult(p, q)) == pytest.approx(
        np.linalg.norm(p) * np.linalg.norm(q), rel=1e-12)
    tensor = hypercomplex.structure_tensor(n)
    assert set(np.unique(tensor)) <= {-1.0, 0.0, 1.0}
    np.testing.assert_allclose(np.einsum("kij,i,j->k", tensor, p, q),
                               hypercomplex.mult(p, q), atol=1e-12)
    np.testing.assert_allclose(hypercomplex.mult(jnp.asarray(p), jnp.asarray(q)),
                               hypercomplex.mult(p, q), rtol=1e-5, atol=1e-6)
  # n = 2 is complex multiplication.
  np.testing.assert_allclose(hypercomplex.mult(np.array([1.0, 2.0]), np.array([3.0, -1.0])),
                             [5.0, 5.0])
  # The toolbox's recursion does not conjugate the second half back, so for n = 4 the
  # unit e0 is not a left identity: e0 (x) q = (q0, q1, q2, -q3). Q2n relies on it.
  q = rng.normal(size=4)
  np.testing.assert_allclose(hypercomplex.mult(np.eye(4)[0], q), [q[0], q[1], q[2], -q[3]])
  with pytest.raises(ValueError, match="power of 2"):
    hypercomplex.mult(np.ones(3), np.ones(3))


def test_q2n_zero_band_padding_and_uint16(pair):
  fused, gt = pair
  with jax.enable_x64(True):
    q3 = float(metrics.q2n(gt[..., :3], fused[..., :3]))
    zeros = np.zeros(gt.shape[:2] + (1,))
    q4 = float(metrics.q2n(np.concatenate([gt[..., :3], zeros], -1),
                           np.concatenate([fused[..., :3], zeros], -1)))
    assert q3 == q4
    # 5 bands pad to 8.
    g5 = np.concatenate([gt, gt[..., :1]], -1)
    f5 = np.concatenate([fused, fused[..., :1]], -1)
    g8 = np.concatenate([g5, np.zeros(gt.shape[:2] + (3,))], -1)
    f8 = np.concatenate([f5, np.zeros(gt.shape[:2] + (3,))], -1)
    # The same value up to float64 rounding (jax 0.12 may order one reduction differently).
    assert float(metrics.q2n(g5, f5)) == pytest.approx(float(metrics.q2n(g8, f8)), rel=1e-14)
    # Values are rounded half away from zero to uint16 first.
    assert float(metrics.q2n(gt, fused)) == float(metrics.q2n(gt, np.round(fused + 1e-9)))
    assert float(metrics.q2n(gt, fused)) == float(metrics.q2n(gt, np.maximum(fused, -0.49)))
    # Pitfall 1: [0, 1] data collapse after rounding (all pixels become 0 or 1).
    scaled = float(metrics.q2n(gt / 2047.0, fused / 2047.0))
    assert abs(scaled - float(metrics.q2n(gt, fused))) > 0.05
    # Identical images: 1; constant identical blocks take the V == 0 branch (mean_bias = 1).
    assert float(metrics.q2n(gt, gt)) == pytest.approx(1.0, abs=1e-14)
    const = np.full((64, 64, 4), 300.0)
    assert float(metrics.q2n(const, const)) == pytest.approx(1.0, abs=1e-14)
  # float32 with 16-bit values: block sums are inexact, constancy is still detected.
  const16 = np.full((64, 64, 4), 60001.0, np.float32)
  assert float(metrics.q2n(const16, const16)) == pytest.approx(1.0, abs=1e-6)
  assert [metrics.q2n_name(c) for c in (3, 4, 5, 8)] == ["Q4", "Q4", "Q8", "Q8"]


def test_q2n_symmetric_padding(pair):
  fused, gt = pair
  g, f = gt[:50, :45], fused[:50, :45]
  pad = ((0, 14), (0, 19), (0, 0))
  with jax.enable_x64(True):
    ours = float(metrics.q2n(g, f))
    padded = float(metrics.q2n(np.pad(g, pad, mode="symmetric"), np.pad(f, pad, mode="symmetric")))
    edge = float(metrics.q2n(np.pad(g, pad, mode="edge"), np.pad(f, pad, mode="edge")))
  assert ours == padded and ours != edge


def test_scc_sobel_cosine():
  rng = np.random.default_rng(6)
  gt = rng.uniform(0, 2047, size=(20, 20, 3))
  with jax.enable_x64(True):
    assert float(metrics.scc(gt, gt)) == pytest.approx(1.0, abs=1e-14)
    assert float(metrics.scc(3.0 * gt, gt)) == pytest.approx(1.0, abs=1e-14)  # no normalisation
    fused = gt + rng.normal(0, 100, gt.shape)
    # Reference: scipy Sobel magnitude of the interior with zero ('constant') borders.
    import scipy.ndimage  # pylint: disable=g-import-not-at-top
    def mag(x):
      z = x[1:-1, 1:-1]
      gy = np.stack([scipy.ndimage.correlate(z[..., b], np.array([[1, 2, 1], [0, 0, 0],
                                                                  [-1, -2, -1.]]),
                                             mode="constant") for b in range(3)], -1)
      gx = np.stack([scipy.ndimage.correlate(z[..., b], np.array([[1, 0, -1], [2, 0, -2],
                                                                  [1, 0, -1.]]),
                                             mode="constant") for b in range(3)], -1)
      return np.hypot(gx, gy)
    a, b = mag(fused), mag(gt)
    ref = np.sum(a * b) / np.sqrt(np.sum(a * a) * np.sum(b * b))
    assert float(metrics.scc(fused, gt)) == pytest.approx(ref, rel=1e-12)


def test_full_resolution_properties():
  rng = np.random.default_rng(8)
  ms = _smooth_image(rng, 16, 16, 4)
  pan = _smooth_image(rng, 64, 64, 1)[..., 0]
  with jax.enable_x64(True):
    from dcfnet_jax import imaging  # pylint: disable=g-import-not-at-top
    lms = np.asarray(imaging.interp23tap(ms, 4))
    out = metrics.full_resolution_indexes(lms, ms, pan[..., None], sensor="qb")
    assert float(out["D_lambda"]) == 0.0  # F = LMS
    assert float(out["QNR"]) == pytest.approx(1.0 - float(out["D_s"]), rel=1e-14)
    given = metrics.full_resolution_indexes(lms, ms, pan, sensor="qb", lms=lms)
    for k in metrics.FR_KEYS:
      assert float(given[k]) == float(out[k])
    # Both images constant in a block: the block UQI is 0/0 = NaN, as in the toolbox.
    flat = lms.copy()
    flat[:32, :32] = 500.0
    nan_out = metrics.full_resolution_indexes(flat, ms, pan, sensor="qb")
    assert np.isnan(float(nan_out["D_lambda"])) and np.isnan(float(nan_out["QNR"]))
    assert np.isfinite(float(nan_out["D_lambda_K"]))
  with pytest.raises(ValueError, match="multiples of 32"):
    metrics.full_resolution_indexes(lms[:48, :48], ms[:12, :12], pan[:48, :48], sensor="qb")
  with pytest.raises(ValueError, match="reduced by ratio"):
    metrics.full_resolution_indexes(lms, ms[:8], pan, sensor="qb")
  with pytest.raises(ValueError, match="PAN of shape"):
    metrics.full_resolution_indexes(lms, ms, pan[:32], sensor="qb")
  with pytest.raises(ValueError, match="no such|unknown sensor"):
    metrics.full_resolution_indexes(lms, ms, pan, sensor="wv9")


def test_shape_errors(pair):
  fused, gt = pair
  with pytest.raises(ValueError, match="fused has shape"):
    metrics.reduced_resolution_indexes(fused[:32], gt)
  with pytest.raises(ValueError, match=r"\(H, W, C\) or \(N, H, W, C\)"):
    metrics.sam(fused[..., 0], gt[..., 0])
