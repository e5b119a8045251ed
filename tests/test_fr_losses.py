"""Full-resolution losses of Z-PNN and lambda-PNN (losses.full_resolution)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fr_reference as ref
from dcfnet_jax import imaging
from dcfnet_jax import losses
from dcfnet_jax import metrics

SIZE, BANDS = 128, 4
PHASES = np.array([[2, 2], [1, 3], [2, 2], [0, 1]])


@pytest.fixture(scope="module")
def scene():
  """Normalised data (DN / 2^11): output, ms (from the scene at PHASES), pan, lms."""
  pan, hr = ref.synthetic_scene(17, SIZE, BANDS)
  ms = ref.reproject(hr, PHASES, "none", 4) / 2048.0
  lms = np.asarray(imaging.interp23tap(ms, 4), np.float64)
  output = hr / 2048.0 + np.random.default_rng(0).normal(0, 0.01, hr.shape)
  return output, ms, pan / 2048.0, lms


def test_spectral_terms_vanish_when_the_reprojection_equals_the_ms(scene):
  output, _, _, _ = scene
  ms_exact = ref.reproject(output, PHASES, "none", 4)  # the reference's own reprojection
  with jax.enable_x64(True):
    assert float(losses.spectral_l1(output, ms_exact, PHASES)) == pytest.approx(0, abs=1e-13)
    terms = losses.lambda_spectral(output, ms_exact, PHASES)
    assert float(terms["R_ERGAS"]) == pytest.approx(0, abs=1e-11)
    assert float(terms["D_lambda_K"]) == pytest.approx(0, abs=1e-12)
  assert float(losses.spectral_l1(output, ms_exact, PHASES)) < 1e-6
  # Other phases: not zero.
  assert float(losses.spectral_l1(output, ms_exact, np.roll(PHASES, 1, axis=0))) > 1e-3


def test_spectral_l1_uses_the_valid_area_only(scene):
  output, ms, _, _ = scene
  bank = ref.mtf_bank("none", 4, BANDS)
  diffs = []
  for b in range(BANDS):
    # 'valid' filtering: no padding at all; its sample (k, l) sits at PAN row 20 + k.
    valid = ref.filter_valid(output[..., b], bank[..., b])
    rows = PHASES[b, 0] + 4 * np.arange(SIZE // 4)
    cols = PHASES[b, 1] + 4 * np.arange(SIZE // 4)
    keep_r = (rows >= 20) & (rows <= SIZE - 21)
    keep_c = (cols >= 20) & (cols <= SIZE - 21)
    low = valid[np.ix_(rows[keep_r] - 20, cols[keep_c] - 20)]
    diffs.append(np.abs(low - ms[np.ix_(keep_r, keep_c, [b])][..., 0]).ravel())
  expected = np.mean(np.concatenate(diffs))
  with jax.enable_x64(True):
    assert float(losses.spectral_l1(output, ms, PHASES)) == pytest.approx(expected, rel=1e-12)
  assert float(losses.spectral_l1(output, ms, PHASES)) == pytest.approx(expected, rel=1e-5)
  # Changing the output where no valid sample looks leaves the loss unchanged: bands 0 and 2
  # (row phase 2) have their first valid sample at row 22, whose kernel starts at row 2.
  edited = output.copy()
  edited[:2, :, [0, 2]] += 5.0
  with jax.enable_x64(True):
    assert float(losses.spectral_l1(edited, ms, PHASES)) == pytest.approx(expected, rel=1e-12)
    edited[30, :, 0] += 5.0
    assert float(losses.spectral_l1(edited, ms, PHASES)) != pytest.approx(expected, rel=1e-3)


def test_lambda_spectral_matches_reference(scene):
  output, ms, _, _ = scene
  low = ref.reproject(output, PHASES, "none", 4)
  with jax.enable_x64(True):
    terms = losses.lambda_spectral(output, ms, PHASES)
    # Q2n without the uint16 rounding: the toolbox formula on the raw values.
    q2n_raw = metrics.q2n(ms, low, round_to_uint16=False)
  assert float(terms["R_ERGAS"]) == pytest.approx(ref.ergas(ms, low, 4), rel=1e-9)
  assert float(terms["D_lambda_K"]) == pytest.approx(1 - float(q2n_raw), rel=1e-9)
  # The rounded (toolbox) Q2n sees normalised data as 0s and 1s (and has no gradient): that is
  # why the loss skips the rounding.
  assert abs(float(metrics.q2n(ms, low)) - float(q2n_raw)) > 1e-3
  # Reference Q2n on data scaled to DN-like magnitudes (rounding then harmless to ~1e-4).
  assert 1 - float(terms["D_lambda_K"]) == pytest.approx(ref.q2n(ms * 50000, low * 50000),
                                                          rel=1e-4)


def test_threshold_map_matches_reference(scene):
  _, _, pan, lms = scene
  kernel = ref.mtf_bank("none", 4, 1)[..., 0]
  pan_lp = ref.filter_valid(np.pad(pan, 20, mode="reflect"), kernel)  # reflect: no edge repeat
  expected = 1 - ref.local_correlation(lms, pan_lp, 8).astype(np.float64)
  with jax.enable_x64(True):
    got = np.asarray(losses.spatial_threshold(lms, pan))
  np.testing.assert_allclose(got, expected, atol=2.5e-7)
  np.testing.assert_allclose(np.asarray(losses.spatial_threshold(lms, pan)), expected, atol=1e-4)


def test_spatial_term_thresholds(scene):
  output, _, pan, lms = scene
  distance = 1 - np.maximum(ref.local_correlation(output, pan, 2).astype(np.float64), -1)
  tau = np.quantile(distance, 0.7, axis=(0, 1), keepdims=True) * np.ones_like(distance)
  above = distance > tau
  selected = np.mean([distance[..., b][above[..., b]].mean() for b in range(BANDS)])
  everywhere = np.mean(np.where(above, distance, 0))
  with jax.enable_x64(True):
    got_sel = float(losses.spatial_term(output, pan, tau))
    got_all = float(losses.spatial_term(output, pan, tau, spatial_mean="all"))
    assert float(losses.spatial_term(output, pan, 2.0)) == 0.0  # nothing exceeds 2
    assert float(losses.spatial_term(output, pan, -1.0)) == pytest.approx(distance.mean(),
                                                                          rel=1e-9)
  assert got_sel == pytest.approx(selected, rel=1e-9)
  assert got_all == pytest.approx(everywhere, rel=1e-9)
  # A fused image equal to the PAN correlates perfectly: below any positive threshold, 0.
  pan_like = np.repeat(pan[..., None], BANDS, axis=-1)
  tau_lms = losses.spatial_threshold(lms, pan)
  assert float(jnp.min(tau_lms)) > -1
  assert float(losses.spatial_term(pan_like, pan, np.maximum(tau_lms, 1e-3))) == 0.0
  with pytest.raises(ValueError, match="spatial_mean must be one of"):
    losses.spatial_term(output, pan, tau, spatial_mean="mean")


def test_losses_differentiable_and_jittable(scene):
  output, ms, pan, lms = scene
  batch = [np.stack([x, x[::-1]]) for x in (output, ms, pan, lms)]

  def zpnn(o):  # a batch, per-image phases (N, C, 2)
    return losses.zpnn_loss(o, *batch[1:], np.stack([PHASES] * 2), beta=0.36)

  def lam(o):  # one image
    return losses.lambda_pnn_loss(o, ms, pan, lms, PHASES, beta_prime=1.25, gamma=5.0)

  for fn, x, names in ((zpnn, batch[0], losses.ZPNN_TERMS), (lam, output,
                                                             losses.LAMBDA_PNN_TERMS)):
    (total, terms), grad = jax.jit(jax.value_and_grad(fn, has_aux=True))(
        jnp.asarray(x, jnp.float32))
    assert set(terms) == set(names) and np.isfinite(float(total))
    assert grad.shape == x.shape and grad.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(grad))) and float(jnp.max(jnp.abs(grad))) > 0
    if fn is zpnn:
      assert float(total) == pytest.approx(float(terms["spectral"] + 0.36 * terms["spatial"]))
      # Batch = mean of the images.
      first = losses.zpnn_loss(output, ms, pan, lms, PHASES, beta=0.36)[0]
      second = losses.zpnn_loss(*(x[::-1] for x in (output, ms, pan, lms)), PHASES, beta=0.36)
      assert float(total) == pytest.approx((float(first) + float(second[0])) / 2, rel=1e-5)
    else:
      assert float(total) == pytest.approx(float(
          0.05 * terms["R_ERGAS"] + 1.25 * terms["D_lambda_K"] + 5 * terms["spatial"]), rel=1e-6)


def test_loss_gradients_match_finite_differences(scene):
  # The smooth parts (the threshold mask is piecewise constant, so the thresholded term is
  # checked with every pixel selected).
  output, ms, pan, _ = scene
  direction = np.random.default_rng(3).normal(size=output.shape)
  # Steps: small for the L1 (kinks where a sample crosses the MS value), well above single
  # precision for the correlation (it keeps the authors' single-precision steps under x64).
  parts = {
      "spectral_l1": (lambda o: losses.spectral_l1(o, ms, PHASES), 1e-6),
      "spatial, all selected": (lambda o: losses.spatial_term(o, pan, -1.0), 1e-4),
      "lambda spectral": (lambda o: sum(losses.lambda_spectral(o, ms, PHASES).values()), 1e-6),
  }
  with jax.enable_x64(True):
    for name, (fn, eps) in parts.items():
      grad = jax.grad(fn)(jnp.asarray(output))
      numeric = (float(fn(output + eps * direction)) - float(fn(output - eps * direction))) / (
          2 * eps)
      assert float(jnp.sum(grad * direction)) == pytest.approx(numeric, rel=1e-4), name


def test_bad_input(scene):
  output, ms, pan, lms = scene
  with pytest.raises(ValueError, match="no MS sample whose 41x41 MTF kernel fits"):
    losses.spectral_l1(output[:40, :40], ms[:10, :10], PHASES)
  with pytest.raises(ValueError, match="not in the ratio 4"):
    losses.spectral_l1(output, ms[:-1], PHASES)
  with pytest.raises(ValueError, match=r"phases of shape \(3, 2\) do not fit"):
    losses.spectral_l1(output, ms, PHASES[:3])
  bad = output.copy()
  bad[7, 8, 1] = np.nan
  with pytest.raises(ValueError, match=r"output of shape .* has the value nan at index "
                                       r"\(7, 8, 1\)"):
    losses.zpnn_loss(bad, ms, pan, lms, PHASES, beta=0.36)
  with pytest.raises(ValueError, match="lms"):
    losses.zpnn_loss(output, ms, pan, lms[:-4], PHASES, beta=0.36)
