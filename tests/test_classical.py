"""Classical methods (docs/baseline_definitions.md §2): properties the papers/toolbox state,
demo-data quality, degenerate inputs and the command-line tool. Everything in float64 inside
`jax.enable_x64`."""

import pathlib

import h5py
import jax
import numpy as np
import pytest
import scipy.optimize

from dcfnet_jax import imaging, metrics
from dcfnet_jax.classical import METHODS, batch, get_method
from dcfnet_jax.classical import cli
from dcfnet_jax.classical import bdsd_pc as bdsd_lib
from dcfnet_jax.classical import cvpr19 as cvpr19_lib
from dcfnet_jax.classical import mtf_glp_hpm as hpm_lib

DEMO = pathlib.Path(__file__).resolve().parents[1] / "dcfnet_jax" / "data" / "demo"
RATIO = 4


@pytest.fixture(scope="module")
def demo():
  """First two demo test images (128×128 PAN, 4 bands, sensor 'none') as float64 NHWC DN."""
  data, attrs = cli.read_input(str(DEMO / "test_reduced.h5"), RATIO, False, 2)
  with h5py.File(DEMO / "test_reduced.h5", "r") as f:
    data["gt"] = np.moveaxis(f["gt"][:2], 1, -1).astype(np.float64)
  assert attrs["sensor"] == "none"
  return data


@pytest.fixture(scope="module")
def synthetic():
  """A random smooth 8-band WV3-like scene with a correlated PAN (64×64 PAN, 16×16 MS)."""
  rng = np.random.default_rng(0)
  base = rng.normal(size=(64, 64))
  for _ in range(3):  # cheap smoothing
    base = (base + np.roll(base, 1, 0) + np.roll(base, 1, 1) + np.roll(base, (1, 1), (0, 1))) / 4
  gt = 500 + 150 * base[..., None] * np.linspace(0.8, 1.2, 8) + 20 * rng.normal(size=(64, 64, 8))
  pan = gt.mean(-1) + 5 * rng.normal(size=(64, 64))
  with jax.enable_x64(True):
    ms = np.asarray(imaging.decimate(imaging.mtf_filter(gt, "wv3", RATIO), RATIO))
    lms = np.asarray(imaging.interp23tap(ms, RATIO))
  return dict(ms=ms, pan=pan, lms=lms, gt=gt)


def _run(name, ms, pan, sensor, lms=None, **kw):
  with jax.enable_x64(True):
    return np.asarray(get_method(name)(ms, pan, sensor, RATIO, lms=lms, **kw))


# ------------------------------------------------------------------------------------- EXP


def test_exp_decimates_back_to_ms_and_returns_file_lms(synthetic):
  ms = synthetic["ms"]
  fused = _run("exp", ms, synthetic["pan"], "wv3")
  with jax.enable_x64(True):
    np.testing.assert_array_equal(np.asarray(imaging.decimate(fused, RATIO)), ms)
  const = _run("exp", np.full((8, 8, 3), 700.0), None, None)
  # The odd taps sum to 1 − 4e-10; four interpolating passes (2 per axis) compound to ~1.2e-9.
  np.testing.assert_allclose(const, 700.0, rtol=1.3e-9)
  np.testing.assert_array_equal(_run("exp", ms, None, None, lms=synthetic["gt"]), synthetic["gt"])


# -------------------------------------------------------------------------------- GLP-FS


def test_glp_fs_injects_pan_detail_with_full_scale_regression_gains(synthetic):
  ms, pan, lms = synthetic["ms"], synthetic["pan"], synthetic["lms"]
  fused = _run("mtf_glp_fs", ms, pan, "wv3", lms=lms)
  with jax.enable_x64(True):
    kernels = imaging.mtf_kernels("wv3", RATIO, 8)
    pan_low = np.stack([np.asarray(imaging.interp23tap(imaging.decimate(
        imaging.correlate_replicate(pan, kernels[..., b]), RATIO), RATIO)) for b in range(8)], -1)
  detail = pan[..., None] - pan_low
  for b in range(8):  # F_b − M~_b = g_b (P − P_L,b), g_b = cov(M~_b, P)/cov(P_L,b, P)
    g = np.cov(lms[..., b].ravel(), pan.ravel())[0, 1] / np.cov(pan_low[..., b].ravel(),
                                                               pan.ravel())[0, 1]
    np.testing.assert_allclose(fused[..., b] - lms[..., b], g * detail[..., b], atol=1e-9)
  # The regression makes the result invariant to the PAN's scale.
  np.testing.assert_allclose(_run("mtf_glp_fs", ms, 3.0 * pan, "wv3", lms=lms), fused,
                             rtol=1e-12, atol=1e-9)


def test_glp_fs_constant_pan_injects_nothing(synthetic):
  fused = _run("mtf_glp_fs", synthetic["ms"], np.full((64, 64), 300.0), "wv3",
               lms=synthetic["lms"])
  np.testing.assert_allclose(fused, synthetic["lms"], atol=1e-9)  # g_b = 0, no NaN


# ------------------------------------------------------------------------------- GLP-HPM


def test_glp_hpm_is_high_pass_modulation(synthetic):
  ms, pan, lms = synthetic["ms"], synthetic["pan"], synthetic["lms"]
  fused = _run("mtf_glp_hpm", ms, pan, "wv3", lms=lms)
  with jax.enable_x64(True):
    pan_eq = np.asarray(hpm_lib.equalized_pan(pan, lms, RATIO))
    pan_low = np.asarray(imaging.interp23tap(imaging.decimate(
        imaging.mtf_filter(pan_eq, "wv3", RATIO), RATIO), RATIO))
    lp_std = np.std(np.asarray(imaging.lp_filter_gauss(pan, RATIO)), ddof=1)
  # Equalisation uses the std of the LPfilterGauss'd PAN (GNyq 0.3 designed with L = N).
  np.testing.assert_allclose(pan_eq[..., 2], (pan - pan.mean()) * lms[..., 2].std(ddof=1) / lp_std
                             + lms[..., 2].mean(), rtol=1e-12)
  np.testing.assert_allclose(fused / lms, pan_eq / (pan_low + np.finfo(float).eps), rtol=1e-12)


def test_lp_filter_gauss_matches_baselines_validation_values():
  h = imaging.lp_filter_gauss_kernel(RATIO)
  assert h[20, 20] == pytest.approx(0.040771, abs=5e-7)
  assert h.sum() == pytest.approx(0.998800, abs=5e-7)


def test_glp_hpm_constant_band_is_scaled_by_the_filter_gain(synthetic):
  ms, lms = synthetic["ms"].copy(), synthetic["lms"].copy()
  ms[..., 3] = 400.0
  lms[..., 3] = 400.0
  fused = _run("mtf_glp_hpm", ms, synthetic["pan"], "wv3", lms=lms)
  gain = imaging.mtf_kernels("wv3", RATIO, 8)[..., 3].sum()  # ≈ 0.9988, not renormalised
  assert np.all(np.isfinite(fused))
  # 1.2e-9: interp23tap's odd taps sum to 1 − 4e-10 per pass (see the EXP test).
  np.testing.assert_allclose(fused[..., 3], 400.0 / gain, rtol=1.3e-9)


def test_glp_hpm_degrades_back_to_the_ms(demo):
  """Wald consistency: MTF-filtering and decimating the fused image gives back ≈ the MS."""
  fused = _run("mtf_glp_hpm", demo["ms"][0], demo["pan"][0], "none", lms=demo["lms"][0])
  with jax.enable_x64(True):
    back = np.asarray(imaging.decimate(imaging.mtf_filter(fused, "none", RATIO), RATIO))
    exp_back = np.asarray(imaging.decimate(imaging.mtf_filter(demo["lms"][0], "none", RATIO),
                                           RATIO))
  rel = np.linalg.norm(back - demo["ms"][0]) / np.linalg.norm(demo["ms"][0])
  assert rel < 0.02
  # Not worse than EXP, which is consistent by construction up to the MTF blur.
  assert rel < 1.5 * np.linalg.norm(exp_back - demo["ms"][0]) / np.linalg.norm(demo["ms"][0])


# ------------------------------------------------------------------------------- BDSD-PC


def _bdsd_problem(lms, pan, sensor):
  with jax.enable_x64(True):
    reduced = np.asarray(imaging.imresize(lms, 1 / RATIO))
    low = np.asarray(imaging.mtf_filter(reduced, sensor, RATIO))
    pan_low = np.asarray(imaging.decimate(imaging.mtf_pan_filter(pan, sensor, RATIO), RATIO))
  c = lms.shape[-1]
  design = np.concatenate([pan_low[..., None], low], -1).reshape(-1, c + 1)
  return design, (reduced - low).reshape(-1, c)


@pytest.mark.parametrize("which", ["demo", "synthetic"])
def test_bdsd_pc_coefficients_are_the_constrained_least_squares_optimum(which, demo, synthetic):
  if which == "demo":
    lms, pan, sensor = demo["lms"][0], demo["pan"][0][..., 0], "none"
  else:
    lms, pan, sensor = synthetic["lms"], synthetic["pan"], "wv3"
  with jax.enable_x64(True):
    gamma = np.asarray(bdsd_lib.bdsd_pc_coefficients(lms, pan, sensor, RATIO))
  design, targets = _bdsd_problem(lms, pan, sensor)
  c = lms.shape[-1]
  assert np.all(gamma[0] >= 0) and np.all(gamma[1:] <= 0)  # physical constraints
  signs = np.r_[1.0, -np.ones(c)]
  for b in range(c):
    # Independent solver: scipy's Lawson–Hanson NNLS on β = signs·γ.
    # The synthetic bands are nearly collinear, so compare the cost to 1e-10 and the
    # coefficients to 1e-6 of the largest one.
    a_beta = design * signs
    beta_ref, _ = scipy.optimize.nnls(a_beta, targets[:, b], maxiter=1000)
    np.testing.assert_allclose(signs * gamma[:, b], beta_ref, atol=1e-6 * np.abs(beta_ref).max())
    cost = lambda x: np.sum((a_beta @ x - targets[:, b]) ** 2)  # noqa: E731
    assert cost(signs * gamma[:, b]) <= cost(beta_ref) * (1 + 1e-10)
    # KKT: gradient ≥ 0 on the bound, ≈ 0 where the variable is free.
    beta = signs * gamma[:, b]
    grad = (design * signs).T @ ((design * signs) @ beta - targets[:, b])
    scale = np.abs((design * signs).T @ targets[:, b]).max()
    assert np.all(grad >= -1e-7 * scale)
    np.testing.assert_allclose(grad[beta > 0], 0.0, atol=1e-7 * scale)


def test_bdsd_pc_fused_is_lms_plus_weighted_pan_and_bands(synthetic):
  lms, pan = synthetic["lms"], synthetic["pan"]
  with jax.enable_x64(True):
    gamma = np.asarray(bdsd_lib.bdsd_pc_coefficients(lms, pan, "wv3", RATIO))
  fused = _run("bdsd_pc", synthetic["ms"], pan, "wv3", lms=lms)
  full = np.concatenate([pan[..., None], lms], -1)  # PAN first, as the toolbox orders columns
  np.testing.assert_allclose(fused, lms + full @ gamma, rtol=1e-10, atol=1e-8)


def test_nnls_enumeration_handles_unconstrained_and_zero_problems():
  rng = np.random.default_rng(1)
  a = rng.normal(size=(50, 4))
  x_true = np.array([1.0, 2.0, 0.5, 3.0])
  y = a @ x_true
  with jax.enable_x64(True):
    beta = np.asarray(bdsd_lib.nnls_gram(a.T @ a, (a.T @ y)[:, None]))[:, 0]
    zero = np.asarray(bdsd_lib.nnls_gram(np.zeros((4, 4)), np.zeros((4, 1))))
  np.testing.assert_allclose(beta, x_true, rtol=1e-9)
  np.testing.assert_array_equal(zero, 0.0)


# --------------------------------------------------------------------------------- CVPR19


def test_cvpr19_without_iterations_is_exp_and_params_are_checked(synthetic):
  params = cvpr19_lib.CVPR19Params(outer_iterations=0)
  fused = _run("cvpr19", synthetic["ms"], synthetic["pan"], "wv3", lms=synthetic["lms"],
               params=params)
  np.testing.assert_allclose(fused, synthetic["lms"], rtol=1e-12)
  with pytest.raises(ValueError, match="odd"):
    cvpr19_lib.CVPR19Params(window=4)


# -------------------------------------------------------------------- all methods, demo data


@pytest.fixture(scope="module")
def demo_results(demo):
  out = {}
  for name in METHODS:
    fused = batch.fuse_images(name, demo["ms"], demo["pan"], demo["lms"], sensor="none")
    with jax.enable_x64(True):
      out[name] = {k: np.asarray(v) for k, v in metrics.reduced_resolution_indexes(
          fused, demo["gt"], bits=8).items()}
  return out


@pytest.mark.parametrize("name", [m for m in METHODS if m != "exp"])
def test_method_beats_exp_on_demo_images(name, demo_results):
  ours, exp = demo_results[name], demo_results["exp"]
  assert np.all(ours["ERGAS"] < exp["ERGAS"]), (ours["ERGAS"], exp["ERGAS"])
  assert np.all(ours["SAM"] < exp["SAM"]), (ours["SAM"], exp["SAM"])
  assert np.all(ours["Q2n"] > exp["Q2n"]), (ours["Q2n"], exp["Q2n"])


def test_exp_on_demo_equals_the_files_lms(demo):
  fused = batch.fuse_images("exp", demo["ms"], demo["pan"], None, sensor="none")
  np.testing.assert_allclose(fused, demo["lms"], rtol=1e-12)


@pytest.mark.parametrize("name", list(METHODS))
def test_degenerate_inputs_give_no_nan(name):
  rng = np.random.default_rng(2)
  ms = rng.uniform(100, 200, size=(8, 8, 4))
  ms[..., 1] = 150.0  # one constant band
  pan = rng.uniform(100, 200, size=(32, 32))
  zeros = (np.zeros((8, 8, 4)), np.zeros((32, 32)))
  cases = [(ms, pan), zeros, (ms, np.full((32, 32), 7.0))]
  # NaNs would appear in the first CVPR19 iteration; a few keep the test fast.
  kw = dict(params=cvpr19_lib.CVPR19Params(outer_iterations=2, cg_iterations=3)) \
      if name == "cvpr19" else {}
  for i, (ms_case, pan_case) in enumerate(cases):
    fused = _run(name, ms_case, pan_case, "qb", **kw)
    assert fused.shape == (32, 32, 4)
    assert np.all(np.isfinite(fused)), (name, i)
    if i == 1:
      np.testing.assert_allclose(fused, 0.0, atol=1e-12)


def test_float32_agrees_with_float64(synthetic, demo):
  for name in ("mtf_glp_fs", "mtf_glp_hpm"):
    f64 = batch.fuse_images(name, synthetic["ms"][None], synthetic["pan"][None], None,
                            sensor="wv3")
    f32 = batch.fuse_images(name, synthetic["ms"][None], synthetic["pan"][None], None,
                            sensor="wv3", float64=False)
    np.testing.assert_allclose(f32, f64, atol=5e-6 * np.abs(f64).max())
  # BDSD-PC's Gram system squares the design's condition number: float32 is only close on
  # well-conditioned real data (the synthetic scene's collinear bands lose 3 digits).
  f64 = batch.fuse_images("bdsd_pc", demo["ms"][:1], demo["pan"][:1], None, sensor="none")
  f32 = batch.fuse_images("bdsd_pc", demo["ms"][:1], demo["pan"][:1], None, sensor="none",
                          float64=False)
  np.testing.assert_allclose(f32, f64, atol=2e-4 * np.abs(f64).max())


def test_bad_shapes_and_sensor_raise_clear_errors(synthetic):
  with pytest.raises(ValueError, match="not ratio=4"):
    _run("mtf_glp_fs", synthetic["ms"], synthetic["pan"][:60], "wv3")
  with pytest.raises(ValueError, match="unknown sensor"):
    _run("mtf_glp_fs", synthetic["ms"], synthetic["pan"], "wv5")
  with pytest.raises(ValueError, match="no PAN MTF"):  # MATLAB's MTF_PAN errors too
    _run("bdsd_pc", synthetic["ms"][..., :4], synthetic["pan"], "gf2")
  with pytest.raises(ValueError, match="unknown classical method"):
    get_method("brovey")


# ------------------------------------------------------------------------------------ CLI


def test_cli_writes_fused_h5_and_rejects_bad_input(tmp_path, capsys):
  out = tmp_path / "fused.h5"
  argv = ["mtf_glp_fs", "--input", str(DEMO / "test_full.h5"), "--out", str(out),
          "--max-images", "1"]
  assert cli.main(argv) == 0
  with h5py.File(out, "r") as f:
    fused = f["fused"][()]
    assert f.attrs["sensor"] == "none" and f.attrs["method"] == "mtf_glp_fs"
  assert fused.shape == (1, 4, 256, 256)
  data, _ = cli.read_input(str(DEMO / "test_full.h5"), RATIO, False, 1)
  expected = batch.fuse_images("mtf_glp_fs", data["ms"], data["pan"], data["lms"], sensor="none")
  np.testing.assert_allclose(np.moveaxis(fused, 1, -1), expected, rtol=1e-12)
  assert "mtf_glp_fs: 1/1 images" in capsys.readouterr().err

  assert cli.main(argv) == 2  # exists, no --overwrite
  assert "--overwrite" in capsys.readouterr().err
  assert cli.main(["exp", "--input", str(tmp_path / "missing.h5"), "--out",
                   str(tmp_path / "x.h5")]) == 2
  assert "no such file" in capsys.readouterr().err
  with h5py.File(tmp_path / "bad.h5", "w") as f:
    f["ms"] = np.zeros((1, 4, 16, 16))
    f["pan"] = np.zeros((1, 1, 60, 64))
  assert cli.main(["exp", "--input", str(tmp_path / "bad.h5"), "--out", str(tmp_path / "y.h5"),
                   "--sensor", "qb"]) == 2
  assert "is not ratio 4 x MS size (16, 16)" in capsys.readouterr().err
  assert not (tmp_path / "y.h5").exists()
